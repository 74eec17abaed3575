"""Train a torchcv_ext model on a data set on disk (CIFAR-10/100 batches, MNIST / Fashion-MNIST idx
files, an image folder, a hyperspectral cube: see torchcv_ext.data), or (no ``--data``) on
scikit-learn's bundled 8x8 digits upsampled to RGB images -- a complete example in a few CPU minutes.

    python -m torchcv_ext.train                                   # lenet on digits, ~97% val accuracy
    python -m torchcv_ext.train --data ~/data/mnist --model lenet        # format detected, recipe mnist
    python -m torchcv_ext.train --data ~/data/cifar-10-batches-py --model resnet18 --recipe cifar
    python -m torchcv_ext.train --data ~/data/IndianPines --model hybridsn   # recipe hyperspectral
    python -m torchcv_ext.train --model mobilenet_v2 --epochs 15 --channels-last --amp
    python -m torchcv_ext.train --data /path/to/imagefolder --model resnet18 \\
        --weights resnet18_tv.pth --freeze-backbone                # transfer learning: new head only
    python -m torchcv_ext.train --resume runs/lenet/last.pt --epochs 20   # continue a run
    python -m torchcv_ext.train --model mobilenet_v3_small --export-onnx  # + model.onnx, checked
    torchrun --nproc_per_node=2 -m torchcv_ext.train --sync-bn     # 2 processes (GPUs, or gloo on the CPU)

Writes to ``--out`` (default ``runs/<model>``): ``last.pt`` every epoch, ``best.pt`` (best val
accuracy), ``metrics.json`` (history, trainable parameter count, and for the best checkpoint the
per-class validation accuracy and confusion matrix), ``curves.png`` (loss / accuracy per epoch),
``confusion.png`` and ``predictions.png`` (right and wrong validation predictions with their
labels); with ``--export-onnx`` also ``model.onnx`` (the best checkpoint, dynamic batch) and, when
onnxruntime is installed, its validation accuracy in onnxruntime next to PyTorch's.
An image folder with ``train/`` and ``val/`` (``valid/``, ``validation/``, ``test/``) uses them;
otherwise ``--val-split`` of the images are held out (same split on resume).
Under torchrun (torchcv_ext/distributed.py), ``--batch-size`` is per process, every process trains
on its share of each epoch (DistributedSampler) and validates on its slice of the validation set,
accuracies are summed over the processes, and rank 0 alone prints and writes files; a run resumes
at any number of processes.

Recipes (``--recipe``; every setting can still be given as a flag): ``mnist`` (AdamW 2e-3, batch
64, cosine, 10 epochs, no augmentation), ``cifar`` (SGD 0.1, momentum 0.9, weight decay 5e-4,
batch 128, 200 epochs, cosine or ``--lr-schedule step``, RandomCrop(32, padding=4) + flip, the
data set's mean / std), ``imagenet`` (SGD 0.1, weight decay 1e-4, batch 256, 90 epochs, step
x0.1 at 1/3 and 2/3, RandomResizedCrop(224) + flip, ImageNet mean / std), ``transfer`` (the
imagenet transforms, ``--freeze-backbone``, SGD 1e-3, batch 32, 25 epochs, step at 7 and 14),
``hyperspectral`` (HybridSN: PCA to 30 bands, 25 x 25 patches, 70% of each class held out,
Adam 1e-3, batch 256, 100 epochs). Default: ``mnist`` for digits / MNIST / Fashion-MNIST,
``cifar`` for CIFAR, ``hyperspectral`` for a cube, and for an image folder ``transfer`` with
``--weights``, else ``imagenet``.
"""
from __future__ import annotations

import argparse
import contextlib
import fnmatch
import json
import os
import sys
import time
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.utils.data import DataLoader

from torchcv_ext import data, distributed, models
from torchcv_ext.nn import convert_sync_batchnorm

#: the settings every recipe starts from
_RECIPE_BASE = dict(momentum=0.9, nesterov=False, freeze_backbone=False, bands=30, img_size=None,
                    val_split=0.2, lr_milestones=(0.5, 0.75), normalize="data", augment="none")
#: --recipe presets: each key is an argument (flag or not) that an explicit flag overrides.
#: ``lr_milestones``: the step schedule's x0.1 points as fractions of ``epochs``; ``augment`` and
#: ``normalize``: torchcv_ext.data.LoadOptions (``data``: the data set's own mean / std).
RECIPES: Dict[str, Dict] = {
    "mnist": dict(optimizer="adamw", lr=2e-3, weight_decay=5e-4, batch_size=64, epochs=10, lr_schedule="cosine"),
    "cifar": dict(optimizer="sgd", lr=0.1, weight_decay=5e-4, batch_size=128, epochs=200, lr_schedule="cosine",
                  augment="crop-flip", img_size=32),
    "imagenet": dict(optimizer="sgd", lr=0.1, weight_decay=1e-4, batch_size=256, epochs=90, lr_schedule="step",
                     lr_milestones=(1 / 3, 2 / 3), augment="resized-crop-flip", normalize="imagenet", img_size=224),
    "transfer": dict(optimizer="sgd", lr=1e-3, weight_decay=0.0, batch_size=32, epochs=25, lr_schedule="step",
                     lr_milestones=(0.28, 0.56), augment="resized-crop-flip", normalize="imagenet", img_size=224,
                     freeze_backbone=True),
    "hyperspectral": dict(optimizer="adamw", lr=1e-3, weight_decay=0.0, batch_size=256, epochs=100,
                          lr_schedule="constant", img_size=25, bands=30, val_split=0.7),
}
#: the recipe of each data format when --recipe is not given (an image folder with --weights: transfer)
DEFAULT_RECIPE = {"digits": "mnist", "mnist": "mnist", "fashion-mnist": "mnist", "cifar10": "cifar",
                  "cifar100": "cifar", "hyperspectral": "hyperspectral", "imagefolder": "imagenet"}
#: --lr when --optimizer differs from the recipe's
OPTIMIZER_LR = {"adamw": 2e-3, "sgd": 0.05}


def _positive_int(text: str) -> int:
    """argparse type: an int >= 1 (``--limit 0`` would leave no image to train on)."""
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def _fraction(text: str) -> float:
    """argparse type: a fraction strictly between 0 and 1 (both parts of the split non-empty)."""
    v = float(text)
    if not 0.0 < v < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive): the fraction of the "
                                         f"data held out for validation, got {v:g}")
    return v


def _device(name: Optional[str]) -> torch.device:
    """``--device`` as a torch.device; a CUDA device without a usable GPU is a clear error."""
    try:
        device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as e:
        raise SystemExit(f"--device {name}: not a device name ({e}); use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise SystemExit(f"--device {name}: no CUDA GPU is available in this process "
                             f"(torch {torch.__version__}, CUDA build: {torch.version.cuda}); use --device cpu")
        if device.index is not None and device.index >= n:
            raise SystemExit(f"--device {name}: only {n} CUDA device(s) (cuda:0 .. cuda:{n - 1})")
    return device


_CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "epoch", "history", "best_acc", "args")


def load_checkpoint(path: str) -> Dict:
    """A training checkpoint (last.pt / best.pt written by this script), or SystemExit saying what
    the file is instead: missing, corrupt or truncated, or a plain state_dict (use --weights)."""
    if not os.path.isfile(path):
        raise SystemExit(f"--resume {path}: no such file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # pickle / zip / EOF errors of a corrupt or truncated file
        raise SystemExit(f"--resume {path}: not a readable checkpoint (corrupt or truncated? "
                         f"{os.path.getsize(path)} bytes; {type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in _CHECKPOINT_KEYS):
        if isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            raise SystemExit(f"--resume {path}: this is a plain state_dict (model weights only), not a "
                             f"training checkpoint; start from it with --weights {path}")
        keys = sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise SystemExit(f"--resume {path}: not a checkpoint of this script (expected the keys "
                         f"{', '.join(_CHECKPOINT_KEYS)}; got {keys})")
    return ckpt


def save_atomic(obj, path: str) -> None:
    """torch.save to a temporary file in the same directory, then os.replace: a crash or a full
    disk during the write leaves the previous ``path`` intact, never a truncated one."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m torchcv_ext.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None,
                   help="data directory; its format is detected (CIFAR-10/100 batches, MNIST / Fashion-MNIST "
                        "idx files, image folder, hyperspectral cube + gt; default: scikit-learn digits)")
    p.add_argument("--dataset", choices=list(data.FORMATS), default=None,
                   help="read --data as this format instead of detecting it")
    p.add_argument("--recipe", choices=list(RECIPES), default=None,
                   help="training preset (see above); default by data format: digits / MNIST -> mnist, "
                        "CIFAR -> cifar, hyperspectral -> hyperspectral, image folder -> transfer with "
                        "--weights, else imagenet")
    p.add_argument("--model", default="lenet", help="a name from torchcv_ext.models.list_models() (default lenet)")
    p.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    p.add_argument("--batch-size", type=int, default=None, help="default: the recipe's")
    p.add_argument("--lr", type=float, default=None,
                   help="default: the recipe's (2e-3 for adamw / 0.05 for sgd when --optimizer is not the recipe's)")
    p.add_argument("--optimizer", choices=("adamw", "sgd"), default=None, help="default: the recipe's")
    p.add_argument("--momentum", type=float, default=None, help="SGD momentum (default 0.9)")
    p.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None,
                   help="Nesterov momentum for SGD (default off)")
    p.add_argument("--weight-decay", type=float, default=None, help="default: the recipe's")
    p.add_argument("--lr-schedule", choices=("cosine", "step", "constant"), default=None,
                   help="cosine annealing, or x0.1 steps at the recipe's milestones (default: the recipe's)")
    p.add_argument("--img-size", type=int, default=None,
                   help="input size (hyperspectral: the patch size); default: the recipe's, else the data's own")
    p.add_argument("--bands", type=int, default=None, help="hyperspectral: PCA to this many bands (default 30)")
    p.add_argument("--val-split", type=_fraction, default=None,
                   help="fraction held out when the data has no validation / test split (default 0.2; "
                        "hyperspectral: 0.7 of each class)")
    p.add_argument("--limit", type=_positive_int, default=None, help="use at most this many images (quick runs)")
    p.add_argument("--amp", action="store_true", help="autocast: bf16 on CPU, fp16 + GradScaler on CUDA")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--weights", default=None,
                   help="state_dict (.pth, e.g. a torchvision model's) to start from; a head with "
                        "another class count is skipped and re-initialised")
    p.add_argument("--freeze-backbone", action=argparse.BooleanOptionalAction, default=None,
                   help="transfer learning: train only a new classifier head (the layer reset_classifier "
                        "replaces; frozen BN layers in eval); default on in the transfer recipe")
    p.add_argument("--trainable", action="append", default=None, metavar="PATTERN",
                   help="train only the parameters whose names match this shell pattern (e.g. 'layer4.*', "
                        "'classifier.*'; repeatable; with --freeze-backbone: these and the head)")
    p.add_argument("--resume", default=None, help="checkpoint (last.pt) to continue from")
    p.add_argument("--out", default=None, help="output directory (default runs/<model>)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="plain per-epoch prints, no progress bar")
    p.add_argument("--export-onnx", action="store_true",
                   help="export the best checkpoint to <out>/model.onnx (torchcv_ext.export.to_onnx; needs "
                        "onnx + onnxscript) and, with onnxruntime, check its validation accuracy there")
    p.add_argument("--sync-bn", action="store_true",
                   help="under torchrun: BatchNorm statistics over the global batch, the fused layers' "
                        "included (torchcv_ext.nn.convert_sync_batchnorm)")
    args = p.parse_args(argv)
    if args.out is None:
        args.out = os.path.join("runs", args.model)
    return args


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
def apply_recipe(args: argparse.Namespace, data_format: str) -> None:
    """Fill every setting not given on the command line from ``args.recipe`` (chosen from the data
    format when not given)."""
    if args.recipe is None:
        args.recipe = ("transfer" if data_format == "imagefolder" and args.weights
                       else DEFAULT_RECIPE[data_format])
    recipe = {**_RECIPE_BASE, **RECIPES[args.recipe]}
    if args.lr is None:
        args.lr = recipe["lr"] if args.optimizer in (None, recipe["optimizer"]) else OPTIMIZER_LR[args.optimizer]
    for key, value in recipe.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)


def load_data(args: argparse.Namespace) -> data.DataSets:
    """The data of ``--data`` (format detected or ``--dataset``), read with the recipe's
    transforms; fills the recipe's settings into ``args``."""
    forced = args.dataset is not None
    data_format = args.dataset or data.detect_format(args.data)
    apply_recipe(args, data_format)
    opts = data.LoadOptions(img_size=args.img_size, augment=args.augment, normalize=args.normalize,
                            val_split=args.val_split, seed=args.seed, limit=args.limit, bands=args.bands)
    ds = data.load_datasets(data_format, args.data, opts)
    args.dataset, args.img_size = data_format, ds.img_size
    print(f"data: {ds.source}; format {data_format} ({'--dataset' if forced else 'detected'}), "
          f"recipe {args.recipe}")
    return ds


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------
def build_model(args: argparse.Namespace, num_classes: int, channels: int = 3) -> nn.Module:
    kwargs = {}
    if args.model.startswith("vit"):
        kwargs["img_size"] = args.img_size
    if args.model == "hybridsn":
        if args.dataset != "hyperspectral":
            raise SystemExit("hybridsn takes hyperspectral (bands x S x S) patches, not RGB images: give --data "
                             "a directory holding a hyperspectral cube and its ground-truth map")
        kwargs.update(in_bands=channels, patch_size=args.img_size)
    elif channels != 3:
        kwargs["in_chans"] = channels
    model = models.create_model(args.model, num_classes=num_classes, **kwargs)
    if args.weights:
        state = torch.load(args.weights, map_location="cpu", weights_only=True)
        state = state.get("model", state)
        own = model.state_dict()
        usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        skipped = sorted(set(state) - set(usable))
        missing = sorted(set(own) - set(usable))
        model.load_state_dict(usable, strict=False)
        print(f"loaded {len(usable)} tensors from {args.weights}; skipped {len(skipped)} (e.g. a head for "
              f"another class count), left at init: {missing[:6]}{' ...' if len(missing) > 6 else ''}")
        if missing:
            model.reset_classifier(num_classes)
    if args.freeze_backbone:
        model.reset_classifier(num_classes)
        model.freeze_backbone()
    if args.trainable:
        select_trainable(model, args.trainable, keep=args.freeze_backbone)
    return model


def select_trainable(model: nn.Module, patterns: List[str], keep: bool = False) -> None:
    """Train only the parameters whose names match one of the shell ``patterns`` (and, with
    ``keep``, those already trainable); a pattern that matches nothing is an error."""
    names = [n for n, _ in model.named_parameters()]
    for pat in patterns:
        if not any(fnmatch.fnmatchcase(n, pat) for n in names):
            raise SystemExit(f"--trainable {pat!r} matches no parameter of {type(model).__name__}; its names "
                             f"look like {', '.join(names[:3])}, ..., {', '.join(names[-2:])}")
    for n, p in model.named_parameters():
        p.requires_grad_(any(fnmatch.fnmatchcase(n, pat) for pat in patterns) or (keep and p.requires_grad))


def build_scheduler(optimizer: torch.optim.Optimizer, args: argparse.Namespace):
    epochs = max(args.epochs, 1)
    if args.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    if args.lr_schedule == "step":
        milestones = sorted({max(1, int(round(f * epochs))) for f in args.lr_milestones})
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


def _loss(out, target: torch.Tensor, criterion) -> Tuple[torch.Tensor, torch.Tensor]:
    """Loss and main logits; auxiliary heads (GoogLeNet in train mode) weigh 0.3 each."""
    if isinstance(out, torch.Tensor):
        return criterion(out, target), out
    main, *aux = out
    return criterion(main, target) + 0.3 * sum(criterion(a, target) for a in aux if a is not None), main


def _progress(iterable, total: int, desc: str, enabled: bool):
    if enabled:
        try:
            from tqdm import tqdm
            return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)
        except ImportError:
            pass
    return iterable


def _set_postfix(bar, **kw) -> None:
    if hasattr(bar, "set_postfix"):
        bar.set_postfix(**kw)


def run_epoch(model, loader, criterion, device, args, optimizer=None, scaler=None, desc="") -> Dict[str, float]:
    train = optimizer is not None
    model.train(train)
    if train:  # frozen BN layers keep their statistics too
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None and not m.weight.requires_grad:
                m.eval()
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    total_loss, correct, seen = 0.0, 0, 0
    bar = _progress(loader, len(loader), desc, not args.no_progress)
    grad_ctx = contextlib.nullcontext() if train else torch.no_grad()
    with grad_ctx:
        for x, y in bar:
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            if args.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=args.amp):
                loss, logits = _loss(model(x), y, criterion)
            if train:
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
            total_loss += loss.item() * y.shape[0]
            correct += (logits.argmax(1) == y).sum().item()
            seen += y.shape[0]
            _set_postfix(bar, loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.3f}")
    total_loss, correct, seen = distributed.all_reduce_sum([total_loss, correct, seen], device)
    return {"loss": total_loss / max(seen, 1), "acc": correct / max(seen, 1)}


def _pyplot():
    """matplotlib's pyplot on the Agg backend, or None (with a message) when it is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plots (pip install matplotlib)")
        return None
    return plt


def save_plot(history: List[Dict[str, float]], path: str, title: str) -> bool:
    plt = _pyplot()
    if plt is None:
        return False
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax1.plot(epochs, [h["val_loss"] for h in history], "o-", label="val")
    ax1.set_xlabel("epoch"), ax1.set_ylabel("loss"), ax1.legend(), ax1.grid(alpha=0.3)
    ax2.plot(epochs, [h["train_acc"] for h in history], "o-", label="train")
    ax2.plot(epochs, [h["val_acc"] for h in history], "o-", label="val")
    ax2.set_xlabel("epoch"), ax2.set_ylabel("accuracy"), ax2.legend(), ax2.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def learner_report(model: nn.Module, checkpoint: str, val_loader: DataLoader, device: torch.device,
                   args: argparse.Namespace, classes: List[str], examples: int = 8) -> Dict:
    """The checkpoint's predictions on the validation set: per-class accuracy and the confusion
    matrix (rows: true class, columns: predicted) for metrics.json, ``confusion.png``, and
    ``predictions.png`` with up to ``examples`` right and ``examples`` wrong predictions."""
    model.load_state_dict(torch.load(checkpoint, map_location=device, weights_only=False)["model"])
    model.eval()
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    preds, targets, shown = [], [], {True: [], False: []}
    with torch.no_grad():
        for x, y in val_loader:
            xd = x.to(device)
            if args.channels_last and xd.dim() == 4:
                xd = xd.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=args.amp):
                out = model(xd)
            pred = (out if isinstance(out, torch.Tensor) else out[0]).argmax(1).cpu()
            preds.append(pred)
            targets.append(y)
            for xi, yi, pi in zip(x, y.tolist(), pred.tolist()):
                if len(shown[yi == pi]) < examples:
                    shown[yi == pi].append((xi, yi, pi))
    n = len(classes)
    pred, true = torch.cat(preds), torch.cat(targets)
    cm = torch.bincount(true * n + pred, minlength=n * n).view(n, n)
    per_class = {c: cm[i, i].item() / cm[i].sum().item() if cm[i].sum() > 0 else None for i, c in enumerate(classes)}
    plt = _pyplot()
    if plt is not None:
        acc = cm.trace().item() / max(len(true), 1)
        save_confusion_matrix(plt, cm, classes, os.path.join(args.out, "confusion.png"),
                              f"{args.model}, {os.path.basename(checkpoint)}: val acc {acc:.4f}")
        save_prediction_grid(plt, shown[True], shown[False], classes, os.path.join(args.out, "predictions.png"))
    worst = sorted((a, c) for c, a in per_class.items() if a is not None)[:3]
    print("per-class val accuracy, lowest: " + ", ".join(f"{c} {a:.3f}" for a, c in worst))
    return {"per_class_acc": per_class, "confusion_matrix": cm.tolist()}


def save_confusion_matrix(plt, cm: torch.Tensor, classes: List[str], path: str, title: str) -> None:
    n = len(classes)
    size = min(4 + 0.35 * n, 24)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(cm.numpy(), cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046)
    if n <= 40:
        ax.set_xticks(range(n), classes, rotation=90)
        ax.set_yticks(range(n), classes)
    if n <= 20:
        hi = cm.max().item() / 2
        for i in range(n):
            for j in range(n):
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if cm[i, j] > hi else "black")
    ax.set_xlabel("predicted"), ax.set_ylabel("true"), ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _displayable(x: torch.Tensor) -> torch.Tensor:
    """An input sample as an (H, W) or (H, W, 3) image in [0, 1]: its first three channels (RGB;
    for hyperspectral patches the first three PCA bands), stretched to its own range."""
    x = x.float()
    if x.dim() == 4:  # (1, bands, H, W)
        x = x[0]
    x = x[:3] if x.shape[0] >= 3 else x[:1]
    x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-8)
    return x[0] if x.shape[0] == 1 else x.permute(1, 2, 0)


def save_prediction_grid(plt, right: List, wrong: List, classes: List[str], path: str) -> None:
    """Right predictions in the top row(s), wrong ones below, each titled with its labels."""
    cols = max(len(right), len(wrong), 1)
    fig, axes = plt.subplots(2, cols, figsize=(1.8 * cols, 4.2), squeeze=False)
    for row, (items, name, color) in enumerate(((right, "right", "green"), (wrong, "wrong", "red"))):
        for col in range(cols):
            ax = axes[row][col]
            ax.axis("off")
            if col < len(items):
                x, y, p = items[col]
                ax.imshow(_displayable(x).numpy(), cmap="gray")
                title = f"{classes[y]}" if y == p else f"true {classes[y]}\npred {classes[p]}"
                ax.set_title(title, fontsize=8, color=color)
        axes[row][0].text(-0.1, 0.5, f"{name} ({len(items)})", transform=axes[row][0].transAxes, rotation=90,
                          ha="right", va="center", color=color)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def export_onnx(model: nn.Module, checkpoint: str, val_loader: DataLoader, path: str) -> Dict:
    """The checkpoint's weights in ``model``, exported to ONNX on the CPU in float32 and NCHW (what
    a deployment runtime takes), then -- with onnxruntime -- the validation set run through both:
    accuracy in each, how often their predictions agree, and the largest logit difference."""
    from torchcv_ext.export import to_onnx

    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=False)["model"])
    model = model.cpu().float().to(memory_format=torch.contiguous_format).eval()
    example = next(iter(val_loader))[0][:2]
    to_onnx(model, example, path)
    info = {"path": path}
    try:
        import onnxruntime
    except ImportError:
        print(f"wrote {path} (onnxruntime not installed: not checked)")
        return info
    sess = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    correct_pt = correct_ort = agree = seen = 0
    max_diff = 0.0
    with torch.no_grad():
        for x, y in val_loader:
            ref = model(x)
            got = torch.from_numpy(sess.run(None, {name: x.numpy()})[0])
            max_diff = max(max_diff, (got - ref).abs().max().item())
            correct_pt += (ref.argmax(1) == y).sum().item()
            correct_ort += (got.argmax(1) == y).sum().item()
            agree += (got.argmax(1) == ref.argmax(1)).sum().item()
            seen += y.shape[0]
    n = max(seen, 1)
    info.update(val_acc_pytorch=correct_pt / n, val_acc_onnxruntime=correct_ort / n,
                same_prediction=agree / n, max_abs_logit_diff=max_diff)
    print(f"wrote {path}: val acc {info['val_acc_onnxruntime']:.4f} in onnxruntime, "
          f"{info['val_acc_pytorch']:.4f} in PyTorch, same prediction on {agree}/{seen} images; "
          f"largest logit difference {max_diff:.2e}")
    return info


def main(argv: Optional[List[str]] = None) -> Dict:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    _device(args.device)  # a clear error for a device this process does not have
    ctx = distributed.init(args.device)
    device = ctx.device
    distributed.silence_other_ranks(ctx)
    args.no_progress = args.no_progress or not ctx.is_main
    resume = load_checkpoint(args.resume) if args.resume else None
    if resume is not None:  # the data split and model come from the run being resumed
        for key in ("data", "dataset", "model", "img_size", "val_split", "seed", "limit", "freeze_backbone",
                    "trainable", "bands"):
            setattr(args, key, resume["args"].get(key))
        for key, value in resume["args"].items():  # and every setting not given again
            if getattr(args, key, None) is None:
                setattr(args, key, value)

    try:
        ds = load_data(args)
    except data.DataError as e:
        raise SystemExit(f"error: {e}") from e
    train_ds, val_ds, classes, source = ds.train, ds.val, ds.classes, ds.source
    sampler = distributed.train_sampler(train_ds, ctx, args.seed)  # None in a single process
    per_process = len(sampler) if sampler is not None else len(train_ds)
    train_loader = DataLoader(train_ds, args.batch_size, shuffle=sampler is None, sampler=sampler,
                              num_workers=args.workers, drop_last=per_process > args.batch_size,
                              generator=torch.Generator().manual_seed(args.seed))
    val_loader = DataLoader(val_ds, args.batch_size * 2, shuffle=False, num_workers=args.workers)
    val_shard_loader = val_loader if not ctx.distributed else DataLoader(
        distributed.shard(val_ds, ctx), args.batch_size * 2, shuffle=False, num_workers=args.workers)

    model = build_model(args, len(classes), ds.channels).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if args.sync_bn:
        model = convert_sync_batchnorm(model)
    params = [p for p in model.parameters() if p.requires_grad]
    if args.optimizer == "adamw":
        optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    else:
        optimizer = torch.optim.SGD(params, lr=args.lr, momentum=args.momentum, nesterov=args.nesterov,
                                    weight_decay=args.weight_decay)
    scheduler = build_scheduler(optimizer, args)
    scaler = torch.amp.GradScaler("cuda") if args.amp and device.type == "cuda" else None
    criterion = nn.CrossEntropyLoss()

    history: List[Dict[str, float]] = []
    start_epoch, best_acc = 1, 0.0
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        # A longer run than first planned: keep the schedule's progress, stretch a cosine's horizon.
        horizon = {"T_max": max(args.epochs, 1)} if args.lr_schedule == "cosine" else {}
        scheduler.load_state_dict({**resume["scheduler"], **horizon})
        if scaler is not None and resume.get("scaler"):
            scaler.load_state_dict(resume["scaler"])
        history, start_epoch, best_acc = resume["history"], resume["epoch"] + 1, resume["best_acc"]
        print(f"resumed {args.resume} at epoch {resume['epoch']} (best val acc {best_acc:.4f})")

    net = distributed.wrap(model, ctx)  # trains; `model` (the same parameters) evaluates and is saved
    torch.manual_seed(args.seed + ctx.rank)  # the same initial weights everywhere, per-rank randomness from here
    if ctx.is_main:
        os.makedirs(args.out, exist_ok=True)
    n_train = sum(p.numel() for p in params)
    n_total = sum(p.numel() for p in model.parameters())
    print(f"{args.model}: {n_train:,} trainable of {n_total:,} params; {len(train_ds)} train / "
          f"{len(val_ds)} val, {len(classes)} classes, {args.img_size}px, {args.optimizer} lr {args.lr:g}, "
          f"batch {args.batch_size}, {args.epochs} epochs ({args.lr_schedule}); device {device}"
          f"{', AMP' if args.amp else ''}{', channels_last' if args.channels_last else ''}"
          f"{f', {ctx.world_size} processes ({ctx.backend}), global batch {ctx.world_size * args.batch_size}' if ctx.distributed else ''}"
          f"{', sync BN' if args.sync_bn else ''}")
    for epoch in range(start_epoch, args.epochs + 1):
        t0 = time.time()
        if sampler is not None:
            sampler.set_epoch(epoch)
        tr = run_epoch(net, train_loader, criterion, device, args, optimizer, scaler, desc=f"epoch {epoch} train")
        va = run_epoch(model, val_shard_loader, criterion, device, args, desc=f"epoch {epoch} val")
        scheduler.step()
        rec = {"epoch": epoch, "train_loss": tr["loss"], "train_acc": tr["acc"], "val_loss": va["loss"],
               "val_acc": va["acc"], "lr": optimizer.param_groups[0]["lr"], "seconds": time.time() - t0}
        history.append(rec)
        best = va["acc"] > best_acc
        best_acc = max(best_acc, va["acc"])
        print(f"epoch {epoch:3d}/{args.epochs}  train loss {tr['loss']:.4f} acc {tr['acc']:.4f}  |  "
              f"val loss {va['loss']:.4f} acc {va['acc']:.4f}  ({rec['seconds']:.1f}s){'  *best' if best else ''}",
              flush=True)
        ckpt = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None, "epoch": epoch, "history": history,
                "best_acc": best_acc, "classes": classes, "args": vars(args)}
        if ctx.is_main:
            save_atomic(ckpt, os.path.join(args.out, "last.pt"))
            if best:
                save_atomic(ckpt, os.path.join(args.out, "best.pt"))

    metrics = {"model": args.model, "data": source, "format": args.dataset, "recipe": args.recipe,
               "classes": classes, "trainable_params": n_train, "total_params": n_total, "best_val_acc": best_acc,
               "history": history, "args": vars(args)}
    if ctx.distributed:
        metrics["world_size"] = ctx.world_size
    distributed.cleanup()
    if not ctx.is_main:  # rank 0 alone writes the reports, on the whole validation set
        return metrics
    best_path = os.path.join(args.out, "best.pt")  # absent if no epoch beat 0% accuracy
    final = best_path if os.path.exists(best_path) else os.path.join(args.out, "last.pt")
    if history:
        metrics.update(learner_report(model, final, val_loader, device, args, classes))
    if args.export_onnx and history:
        metrics["onnx"] = export_onnx(model, final, val_loader, os.path.join(args.out, "model.onnx"))
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    if history:
        name = os.path.basename(os.path.normpath(args.data)) if args.data else args.dataset
        save_plot(history, os.path.join(args.out, "curves.png"), f"{args.model} on {name}")
    onnx = ", model.onnx" if "onnx" in metrics else ""
    print(f"best val acc {best_acc:.4f}; wrote {args.out}/{{last.pt, best.pt, metrics.json, curves.png, "
          f"confusion.png, predictions.png{onnx}}}")
    return metrics


if __name__ == "__main__":
    main()
