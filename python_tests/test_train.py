"""The training example (python -m torchcv_ext.train): one epoch on a digits subset writes the
checkpoint, metrics and plot; resume continues the run; transfer learning trains only the head;
a short full run reaches > 90% validation accuracy."""
import json

import pytest
import torch

pytest.importorskip("sklearn")
from torchcv_ext import train  # noqa: E402
from testing import run_python  # noqa: E402

COMMON = ["--no-progress", "--batch-size", "64", "--seed", "0"]


def test_one_epoch_writes_checkpoint_metrics_and_plot(tmp_path):
    out = tmp_path / "run"
    metrics = train.main(["--epochs", "1", "--limit", "400", "--out", str(out), *COMMON])
    assert (out / "last.pt").exists() and (out / "best.pt").exists() and (out / "metrics.json").exists()
    pytest.importorskip("matplotlib")
    assert (out / "curves.png").stat().st_size > 1000
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["history"][0]["epoch"] == 1 and len(saved["history"]) == 1
    assert 0.0 <= saved["best_val_acc"] <= 1.0 and saved["best_val_acc"] == metrics["best_val_acc"]
    ckpt = torch.load(out / "last.pt", weights_only=False)
    assert ckpt["epoch"] == 1 and ckpt["classes"] == [str(i) for i in range(10)]

    # Resume: continues at epoch 2 with the saved model/optimizer and the same data split.
    resumed = train.main(["--resume", str(out / "last.pt"), "--epochs", "2", "--out", str(out), *COMMON])
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    assert resumed["history"][0] == saved["history"][0]
    assert torch.load(out / "last.pt", weights_only=False)["epoch"] == 2


def test_transfer_learning_trains_only_the_head(tmp_path):
    src = tmp_path / "src"
    train.main(["--epochs", "1", "--limit", "300", "--out", str(src), *COMMON])
    weights = tmp_path / "backbone.pth"
    torch.save(torch.load(src / "last.pt", weights_only=False)["model"], weights)
    out = tmp_path / "ft"
    train.main(["--epochs", "1", "--limit", "300", "--out", str(out), "--weights", str(weights),
                "--freeze-backbone", "--channels-last", "--amp", *COMMON])
    before = torch.load(weights)
    after = torch.load(out / "last.pt", weights_only=False)["model"]
    feature_keys = [k for k in before if k.startswith("features.")]
    assert feature_keys
    for k in feature_keys:  # frozen backbone: weights and BN statistics unchanged
        torch.testing.assert_close(after[k], before[k], msg=k)
    assert not torch.equal(after["classifier.4.weight"], before["classifier.4.weight"])


def test_export_onnx_of_the_best_checkpoint(tmp_path):
    """--export-onnx: model.onnx from best.pt, whose validation accuracy in onnxruntime is the
    run's best (the same images, the same predictions up to float rounding)."""
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    out = tmp_path / "run"
    metrics = train.main(["--model", "mobilenet_v3_small", "--epochs", "1", "--limit", "300",
                          "--out", str(out), "--export-onnx", *COMMON])
    assert (out / "model.onnx").stat().st_size > 10000
    onnx = json.loads((out / "metrics.json").read_text())["onnx"]
    n_val = 60  # 20% of 300
    assert abs(onnx["val_acc_pytorch"] - metrics["best_val_acc"]) <= 1 / n_val + 1e-9
    assert abs(onnx["val_acc_onnxruntime"] - onnx["val_acc_pytorch"]) <= 1 / n_val + 1e-9
    assert onnx["same_prediction"] >= 1 - 1 / n_val - 1e-9
    assert onnx["max_abs_logit_diff"] < 1e-3


@pytest.mark.slow  # ~15 s on an idle 2-core CPU
def test_reaches_90_percent_on_digits(tmp_path):
    metrics = train.main(["--epochs", "3", "--out", str(tmp_path / "full"), *COMMON])
    assert metrics["best_val_acc"] > 0.9


def test_command_line_entry_point(tmp_path):
    out = run_python(["-m", "torchcv_ext.train", "--help"], tmp_path)
    assert "--freeze-backbone" in out and "--resume" in out


def test_rejects_hyperspectral_model_on_images(tmp_path):
    with pytest.raises(SystemExit, match="hybridsn takes hyperspectral"):
        train.main(["--model", "hybridsn", "--epochs", "1", "--limit", "100", "--out", str(tmp_path), *COMMON])


def test_imagefolder_directory(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    pytest.importorskip("torchvision")
    root = tmp_path / "data"
    g = torch.Generator().manual_seed(0)
    for cls, level in (("dark", 40), ("light", 210)):
        (root / cls).mkdir(parents=True)
        for i in range(6):
            px = (level + torch.randint(-30, 30, (40, 40, 3), generator=g)).clamp(0, 255).to(torch.uint8)
            Image.fromarray(px.numpy()).save(root / cls / f"{i}.png")
    out = tmp_path / "run"
    metrics = train.main(["--data", str(root), "--img-size", "32", "--epochs", "1", "--batch-size", "4",
                          "--val-split", "0.25", "--out", str(out), "--no-progress"])
    assert metrics["classes"] == ["dark", "light"]
    assert (out / "last.pt").exists() and len(metrics["history"]) == 1


# ---------------------------------------------------------------------------------------------
# Data formats and recipes end to end (tiny files in the real formats, 1 epoch of lenet / hybridsn)
# ---------------------------------------------------------------------------------------------
def _is_png(path):
    from PIL import Image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as im:
        im.verify()
        return im.size


def _run(tmp_path, *argv):
    out = tmp_path / "run"
    metrics = train.main([*argv, "--epochs", argv[argv.index("--epochs") + 1] if "--epochs" in argv else "1",
                          "--out", str(out), "--no-progress"])
    return metrics, out


@pytest.mark.parametrize("layout", ["cifar10", "mnist", "cats-vs-dogs", "transfer", "hyperspectral"])
def test_each_format_with_its_default_recipe(tmp_path, layout):
    """The format is detected, its recipe chosen, and the learner's outputs written: per-class
    accuracy, the confusion matrix and the right / wrong prediction grid."""
    pytest.importorskip("torchvision")
    pytest.importorskip("matplotlib")
    import data_formats as fmt

    root = tmp_path / "data"
    model, extra = "lenet", ["--limit", "12"]
    if layout == "cifar10":
        fmt.write_cifar10(root, n=4)
        expect = ("cifar10", "cifar", 10)
    elif layout == "mnist":
        fmt.write_mnist(root, gz=True)
        expect = ("mnist", "mnist", 10)
    elif layout == "cats-vs-dogs":
        fmt.write_imagefolder(root / "train", per_class=3)
        fmt.write_imagefolder(root / "valid", per_class=2)
        extra = ["--img-size", "32", "--batch-size", "4"]
        expect = ("imagefolder", "imagenet", 2)
    elif layout == "transfer":  # --recipe transfer: the backbone frozen
        fmt.write_imagefolder(root / "train", per_class=3)
        fmt.write_imagefolder(root / "val", per_class=2)
        extra = ["--recipe", "transfer", "--img-size", "32", "--batch-size", "4"]
        expect = ("imagefolder", "transfer", 2)
    else:
        pytest.importorskip("scipy")
        fmt.write_hyperspectral(root, "mat", bands=16)
        model, extra = "hybridsn", ["--bands", "13", "--img-size", "9", "--val-split", "0.5"]
        expect = ("hyperspectral", "hyperspectral", 3)
    metrics, out = _run(tmp_path, "--data", str(root), "--model", model, *extra)
    assert (metrics["format"], metrics["recipe"], len(metrics["classes"])) == expect
    assert metrics["args"]["freeze_backbone"] == (layout == "transfer")
    assert (metrics["trainable_params"] < metrics["total_params"]) == (layout == "transfer")
    assert set(metrics["per_class_acc"]) == set(metrics["classes"])
    cm = torch.tensor(metrics["confusion_matrix"])
    assert cm.shape == (expect[2], expect[2])
    for i, c in enumerate(metrics["classes"]):  # per-class accuracy: the diagonal over the row
        acc, row = metrics["per_class_acc"][c], cm[i]
        assert acc is None if row.sum() == 0 else abs(acc - row[i].item() / row.sum().item()) < 1e-9
    assert abs(cm.trace().item() / cm.sum().item() - metrics["best_val_acc"]) < 1e-6
    assert min(_is_png(out / "confusion.png")) > 100 and min(_is_png(out / "predictions.png")) > 100


def test_cifar_recipe_settings_and_overrides(tmp_path):
    """--recipe cifar: SGD momentum 0.9 without Nesterov, weight decay 5e-4, batch 128, the
    CIFAR transforms; --nesterov and --lr-schedule step override it (x0.1 at 50% and 75%)."""
    pytest.importorskip("torchvision")
    import data_formats as fmt

    fmt.write_cifar10(tmp_path / "c", n=4)
    metrics, out = _run(tmp_path, "--data", str(tmp_path / "c"), "--recipe", "cifar", "--limit", "8",
                        "--nesterov", "--lr-schedule", "step", "--epochs", "2")
    a = metrics["args"]
    assert (a["optimizer"], a["momentum"], a["weight_decay"], a["batch_size"], a["augment"]) == \
        ("sgd", 0.9, 5e-4, 128, "crop-flip")
    assert a["nesterov"] is True and a["lr_schedule"] == "step"
    assert [round(h["lr"], 6) for h in metrics["history"]] == [0.01, 0.001]  # milestones at epochs 1, 2
    group = torch.load(out / "last.pt", weights_only=False)["optimizer"]["param_groups"][0]
    assert group["nesterov"] is True and group["momentum"] == 0.9


def test_trainable_pattern_selects_parameters(tmp_path):
    out = tmp_path / "run"
    metrics = train.main(["--epochs", "1", "--limit", "120", "--trainable", "classifier.4.*",
                          "--out", str(out), *COMMON])
    assert metrics["trainable_params"] == 84 * 10 + 10  # lenet's last Linear only
    assert metrics["total_params"] > metrics["trainable_params"]
    with pytest.raises(SystemExit, match="'nothing.*' matches no parameter"):
        train.main(["--epochs", "1", "--limit", "50", "--trainable", "nothing.*", "--out", str(out), *COMMON])


def test_unknown_data_layout_is_a_clear_error(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(SystemExit, match="no known data-set layout.*data_batch_1"):
        train.main(["--data", str(tmp_path), "--out", str(tmp_path / "run"), "--no-progress"])
