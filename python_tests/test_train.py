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
