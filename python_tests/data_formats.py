"""Writers of small data sets in the real on-disk formats that torchcv_ext.data reads (CIFAR
python batches, MNIST idx files, image folders, hyperspectral .mat / .npy), for the tests."""
import gzip
import pickle
import struct

import numpy as np


def _images(n, h, w, c, labels, seed):
    """Images whose brightness depends on the label (so a model can learn something)."""
    rng = np.random.default_rng(seed)
    base = (np.asarray(labels, np.float64) * 37 % 200 + 30)[:, None, None, None]
    return np.clip(base + rng.normal(0, 20, (n, h, w, c)), 0, 255).astype(np.uint8)


def write_cifar10(root, n=6, seed=0):
    """cifar-10-batches-py under ``root`` with ``n`` images per batch; returns that folder and
    the test batch's (images HWC, labels)."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        labels = [(j + i) % 10 for j in range(n)]
        hwc = _images(n, 32, 32, 3, labels, seed + i)
        with open(d / name, "wb") as f:
            pickle.dump({"batch_label": name, "labels": labels, "data": hwc.transpose(0, 3, 1, 2).reshape(n, -1),
                         "filenames": [f"{j}.png" for j in range(n)]}, f)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names, "num_cases_per_batch": n, "num_vis": 3072}, f)
    return d, hwc, labels


def write_cifar100(root, n=8, seed=0):
    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    for i, name in enumerate(("train", "test")):
        labels = [(j * 7 + i) % 100 for j in range(n)]
        hwc = _images(n, 32, 32, 3, labels, seed + i)
        with open(d / name, "wb") as f:
            pickle.dump({"fine_labels": labels, "coarse_labels": [x // 5 for x in labels],
                         "data": hwc.transpose(0, 3, 1, 2).reshape(n, -1)}, f)
    with open(d / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"class{k:02d}" for k in range(100)],
                     "coarse_label_names": [f"super{k}" for k in range(20)]}, f)
    return d


def write_idx(path, array, gz):
    array = np.ascontiguousarray(array, np.uint8)
    data = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    opener = gzip.open if gz else open
    with opener(str(path) + (".gz" if gz else ""), "wb") as f:
        f.write(data)


def write_mnist(d, n_train=12, n_test=6, gz=True, seed=0):
    """The four idx files in ``d``; returns (test images, test labels)."""
    d.mkdir(parents=True, exist_ok=True)
    out = None
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        imgs = _images(n, 28, 28, 1, labels, seed)[..., 0]
        write_idx(d / f"{split}-images-idx3-ubyte", imgs, gz)
        write_idx(d / f"{split}-labels-idx1-ubyte", labels, gz)
        out = imgs, labels
    return out


def write_imagefolder(root, classes=("cats", "dogs"), per_class=4, size=20, seed=0):
    from PIL import Image

    for k, cls in enumerate(classes):
        (root / cls).mkdir(parents=True)
        for i, img in enumerate(_images(per_class, size, size, 3, [k] * per_class, seed + k)):
            Image.fromarray(img).save(root / cls / f"{cls}.{i}.png")


def hyperspectral_scene(h=14, w=12, bands=20, classes=3, seed=0):
    """A cube (h, w, bands) whose spectra depend on the class, and its ground truth (0: unlabelled):
    fields of one class each (stripes of 4 columns), a fifth of their pixels unlabelled."""
    rng = np.random.default_rng(seed)
    field = (np.arange(w) // 4 % classes + 1)[None, :].repeat(h, 0)
    gt = np.where(rng.random((h, w)) < 0.2, 0, field)
    gt[0, 0] = 1  # a labelled corner pixel: its patch is mostly zero padding
    spectra = rng.normal(0, 1, (classes + 1, bands)) * 100 + 1000
    cube = spectra[gt] + rng.normal(0, 5, (h, w, bands))
    return cube.astype(np.float32), gt.astype(np.uint8)


def write_hyperspectral(d, kind="mat", **kw):
    d.mkdir(parents=True)
    cube, gt = hyperspectral_scene(**kw)
    if kind == "mat":
        from scipy.io import savemat

        savemat(d / "Indian_pines_corrected.mat", {"indian_pines_corrected": cube})
        savemat(d / "Indian_pines_gt.mat", {"indian_pines_gt": gt})
    else:
        np.save(d / "scene.npy", cube)
        np.save(d / "scene_gt.npy", gt)
    return cube, gt
