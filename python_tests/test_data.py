"""torchcv_ext.data: each on-disk format read from small files the test writes in that format
(CIFAR-10/100 pickle batches, MNIST idx files gzipped and not, image folders with and without a
split, hyperspectral .mat / .npy), format detection, --dataset forcing, and the errors."""
import numpy as np
import pytest
import torch

pytest.importorskip("torchvision")
from torchcv_ext import data  # noqa: E402
from torchcv_ext.data import DataError, LoadOptions  # noqa: E402
import data_formats as fmt  # noqa: E402

NONE = LoadOptions(augment="none")


def _unnormalize(x, stats):
    mean, std = (torch.tensor(v).view(-1, 1, 1) for v in stats)
    return ((x * std + mean) * 255).round().to(torch.uint8)


def test_cifar10_python_batches(tmp_path):
    d, hwc, labels = fmt.write_cifar10(tmp_path)
    for root in (tmp_path, d):  # the parent or the batches folder itself
        assert data.detect_format(str(root)) == "cifar10"
    ds = data.load_datasets("cifar10", str(tmp_path), NONE)
    assert len(ds.train) == 5 * 6 and len(ds.val) == 6 and ds.classes[:2] == ["airplane", "automobile"]
    assert (ds.channels, ds.img_size) == (3, 32)
    x, y = ds.val[2]
    assert x.shape == (3, 32, 32) and y == labels[2]
    # the pixels as written (HWC), through ToTensor + Normalize with CIFAR-10's statistics
    torch.testing.assert_close(_unnormalize(x, data._common.CIFAR10_STATS),
                               torch.from_numpy(hwc[2]).permute(2, 0, 1), atol=1, rtol=0)


def test_cifar100_fine_labels(tmp_path):
    fmt.write_cifar100(tmp_path)
    assert data.detect_format(str(tmp_path)) == "cifar100"
    ds = data.load_datasets("cifar100", str(tmp_path), LoadOptions(augment="crop-flip", limit=3))
    assert len(ds.classes) == 100 and ds.classes[7] == "class07"
    assert len(ds.train) == 3 and ds.train[1][1] == 7 and ds.val[1][1] == 8


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
def test_mnist_idx_files(tmp_path, gz):
    imgs, labels = fmt.write_mnist(tmp_path / "MNIST" / "raw", gz=gz)  # torchvision's layout
    assert data.detect_format(str(tmp_path)) == "mnist"
    ds = data.load_datasets("mnist", str(tmp_path), NONE)
    assert (len(ds.train), len(ds.val), ds.channels, ds.img_size) == (12, 6, 1, 28)
    assert ("gzipped" in ds.source) == gz and ds.classes == [str(i) for i in range(10)]
    x, y = ds.val[3]
    assert x.shape == (1, 28, 28) and y == labels[3]
    torch.testing.assert_close(_unnormalize(x, data._common.MNIST_STATS)[0], torch.from_numpy(imgs[3]), atol=1, rtol=0)


def test_fashion_mnist_detected_by_path_and_forced(tmp_path):
    fmt.write_mnist(tmp_path / "fashion")
    assert data.detect_format(str(tmp_path / "fashion")) == "fashion-mnist"
    fmt.write_mnist(tmp_path / "mnist")
    assert data.detect_format(str(tmp_path / "mnist")) == "mnist"
    ds = data.load_datasets("fashion-mnist", str(tmp_path / "mnist"), NONE)  # --dataset fashion-mnist
    assert ds.classes[0] == "T-shirt/top" and ds.format == "fashion-mnist"


def test_truncated_idx_file_is_named(tmp_path):
    fmt.write_mnist(tmp_path, gz=False)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte: the header says"):
        data.load_datasets("mnist", str(tmp_path), NONE)


def test_imagefolder_train_valid_layout_is_a_split_not_classes(tmp_path):
    """cats vs dogs as train/ + valid/: two classes, valid/ is the validation set."""
    pytest.importorskip("PIL")
    fmt.write_imagefolder(tmp_path / "train", per_class=3)
    fmt.write_imagefolder(tmp_path / "valid", per_class=2)
    assert data.detect_format(str(tmp_path)) == "imagefolder"
    ds = data.load_datasets("imagefolder", str(tmp_path), LoadOptions(img_size=16, augment="resized-crop-flip"))
    assert ds.classes == ["cats", "dogs"] and len(ds.train) == 6 and len(ds.val) == 4
    assert "valid/" in ds.source and ds.val[0][0].shape == (3, 16, 16)


def test_imagefolder_single_root_split_and_limit(tmp_path):
    pytest.importorskip("PIL")
    fmt.write_imagefolder(tmp_path, classes=("a", "b", "c"), per_class=4)
    ds = data.load_datasets("imagefolder", str(tmp_path), LoadOptions(img_size=8, val_split=0.25))
    assert ds.classes == ["a", "b", "c"] and (len(ds.train), len(ds.val)) == (9, 3)
    assert not set(ds.train.indices) & set(ds.val.indices)
    small = data.load_datasets("imagefolder", str(tmp_path), LoadOptions(img_size=8, val_split=0.25, limit=6))
    assert len(small.train) + len(small.val) == 6


def test_imagefolder_train_without_class_folders_is_an_error(tmp_path):
    """Kaggle's flat train/cat.0.jpg files: not read as one class named train."""
    pytest.importorskip("PIL")
    fmt.write_imagefolder(tmp_path / "x", classes=("train",), per_class=2)
    (tmp_path / "x" / "valid").mkdir()
    with pytest.raises(DataError, match="train/ holds no class sub-folders"):
        data.detect_format(str(tmp_path / "x"))


def test_corrupt_image_error_names_the_file(tmp_path):
    pytest.importorskip("PIL")
    fmt.write_imagefolder(tmp_path, per_class=2)
    bad = tmp_path / "dogs" / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    ds = data.load_datasets("imagefolder", str(tmp_path), LoadOptions(img_size=8, val_split=0.5))
    with pytest.raises(DataError, match="broken.jpg: cannot read this image"):
        for i in range(len(ds.train)):
            ds.train[i]
        for i in range(len(ds.val)):
            ds.val[i]


@pytest.mark.parametrize("kind", ["mat", "npy"])
def test_hyperspectral_pipeline(tmp_path, kind):
    pytest.importorskip("sklearn")
    if kind == "mat":
        pytest.importorskip("scipy")
    cube, gt = fmt.write_hyperspectral(tmp_path / "scene", kind)
    assert data.detect_format(str(tmp_path / "scene")) == "hyperspectral"
    k, w = 15, 9
    ds = data.load_datasets("hyperspectral", str(tmp_path / "scene"),
                            LoadOptions(img_size=w, bands=k, val_split=0.5, seed=1))
    labelled = int((gt > 0).sum())
    assert len(ds.train) + len(ds.val) == labelled  # label 0 (unlabelled) is never a sample
    assert ds.classes == ["1", "2", "3"] and (ds.channels, ds.img_size) == (k, w)
    for split in (ds.train, ds.val):  # stratified: every class on both sides, about half each
        counts = torch.bincount(split.labels, minlength=3)
        assert (counts > 0).all()
    total = torch.bincount(ds.train.labels, minlength=3) + torch.bincount(ds.val.labels, minlength=3)
    assert (torch.bincount(ds.train.labels, minlength=3) - total / 2).abs().max() <= 1
    reduced = data.hyperspectral.pca(cube, k)
    for split in (ds.train, ds.val):
        for i in range(len(split)):
            x, y = split[i]
            r, c = split.pixels[i].tolist()
            assert x.shape == (k, w, w) and y == gt[r, c] - 1  # labels shifted to 0..C-1
            torch.testing.assert_close(x[:, w // 2, w // 2], torch.from_numpy(reduced[r, c]))
            if (r, c) == (0, 0):  # zero padding around the corner pixel
                assert x[:, :w // 2, :].abs().max() == 0 and x[:, :, :w // 2].abs().max() == 0


def test_hyperspectral_errors(tmp_path):
    pytest.importorskip("sklearn")
    fmt.write_hyperspectral(tmp_path / "s", "npy", bands=20)
    with pytest.raises(DataError, match="the cube has 20 bands"):
        data.load_datasets("hyperspectral", str(tmp_path / "s"), LoadOptions(bands=30))
    np.save(tmp_path / "s" / "other.npy", np.zeros((3, 3, 3)))
    with pytest.raises(DataError, match="several hyperspectral cubes"):
        data.detect_format(str(tmp_path / "s"))


def test_unknown_layout_names_what_was_expected(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError) as e:
        data.detect_format(str(tmp_path))
    msg = str(e.value)
    for expected in ("data_batch_1", "cifar-100-python", "train-images-idx3-ubyte", "gt", "valid/", "notes.txt"):
        assert expected in msg, expected
    with pytest.raises(DataError, match="not a directory"):
        data.detect_format(str(tmp_path / "missing"))


def test_forced_format_that_does_not_fit(tmp_path):
    fmt.write_mnist(tmp_path)
    with pytest.raises(DataError, match=r"--dataset cifar10: .* does not hold CIFAR-10 python batches: "
                                        r"expected data_batch_1"):
        data.load_datasets("cifar10", str(tmp_path), NONE)


def test_recipe_transforms():
    from PIL import Image

    img = Image.fromarray(np.full((32, 32, 3), 128, np.uint8))
    stats = data._common.CIFAR10_STATS
    for augment, size, native in (("crop-flip", 32, 32), ("resized-crop-flip", 24, None), ("none", 16, None)):
        train_tf, val_tf = data.image_transforms(augment, size, stats, native)
        for tf in (train_tf, val_tf):
            x = tf(img)
            assert x.shape == (3, size, size) and x.dtype == torch.float32
    with pytest.raises(ValueError, match="augment must be one of"):
        data.image_transforms("mixup", 32, stats)
