"""Train a torchcv_ext model on an ImageFolder directory, or (no ``--data``) on scikit-learn's
bundled 8x8 digits upsampled to RGB images -- a complete example in a few CPU minutes.

    python -m torchcv_ext.train                                   # lenet on digits, ~97% val accuracy
    python -m torchcv_ext.train --model mobilenet_v2 --epochs 15 --channels-last --amp
    python -m torchcv_ext.train --data /path/to/imagefolder --model resnet18 \\
        --weights resnet18_tv.pth --freeze-backbone                # transfer learning: new head only
    python -m torchcv_ext.train --resume runs/lenet/last.pt --epochs 20   # continue a run
    python -m torchcv_ext.train --model mobilenet_v3_small --export-onnx  # + model.onnx, checked

Writes to ``--out`` (default ``runs/<model>``): ``last.pt`` every epoch, ``best.pt`` (best val
accuracy), ``metrics.json`` and ``curves.png`` (loss / accuracy per epoch); with ``--export-onnx``
also ``model.onnx`` (the best checkpoint, dynamic batch) and, when onnxruntime is installed, its
validation accuracy in onnxruntime next to PyTorch's in ``metrics.json``.
An ImageFolder directory with ``train/`` and ``val/`` sub-folders uses them; otherwise
``--val-split`` of the images are held out (same split on resume).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

from torchcv_ext import models

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m torchcv_ext.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="ImageFolder root (default: scikit-learn digits)")
    p.add_argument("--model", default="lenet", help="a name from torchcv_ext.models.list_models() (default lenet)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=None, help="default 2e-3 (adamw) / 0.05 (sgd)")
    p.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--img-size", type=int, default=None, help="default 32 (digits) / 224 (ImageFolder)")
    p.add_argument("--val-split", type=float, default=0.2)
    p.add_argument("--limit", type=int, default=None, help="use at most this many images (quick runs)")
    p.add_argument("--amp", action="store_true", help="autocast: bf16 on CPU, fp16 + GradScaler on CUDA")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--weights", default=None,
                   help="state_dict (.pth, e.g. a torchvision model's) to start from; a head with "
                        "another class count is skipped and re-initialised")
    p.add_argument("--freeze-backbone", action="store_true",
                   help="transfer learning: train only a new classifier head (backbone frozen, BN in eval)")
    p.add_argument("--resume", default=None, help="checkpoint (last.pt) to continue from")
    p.add_argument("--out", default=None, help="output directory (default runs/<model>)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="plain per-epoch prints, no progress bar")
    p.add_argument("--export-onnx", action="store_true",
                   help="export the best checkpoint to <out>/model.onnx (torchcv_ext.export.to_onnx; needs "
                        "onnx + onnxscript) and, with onnxruntime, check its validation accuracy there")
    args = p.parse_args(argv)
    if args.lr is None:
        args.lr = 2e-3 if args.optimizer == "adamw" else 0.05
    if args.out is None:
        args.out = os.path.join("runs", args.model)
    return args


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
def _split(n: int, val_fraction: float, seed: int) -> Tuple[List[int], List[int]]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(1, int(round(n * val_fraction)))
    return perm[n_val:], perm[:n_val]


def digits_datasets(img_size: int, val_split: float, seed: int, limit: Optional[int] = None):
    """scikit-learn's 1797 8x8 digit images, upsampled to ``img_size`` and repeated to 3 channels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - environment dependent
        raise SystemExit("the default dataset needs scikit-learn: pip install scikit-learn") from e
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    if limit is not None:
        x, y = x[:limit], y[:limit]
    x = nn.functional.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False)
    x = ((x - 0.5) / 0.5).expand(-1, 3, -1, -1).contiguous()
    train_idx, val_idx = _split(len(y), val_split, seed)
    return TensorDataset(x[train_idx], y[train_idx]), TensorDataset(x[val_idx], y[val_idx]), [str(i) for i in range(10)]


def imagefolder_datasets(root: str, img_size: int, val_split: float, seed: int, limit: Optional[int] = None):
    try:
        from torchvision import datasets, transforms
    except ImportError as e:  # pragma: no cover
        raise SystemExit("--data needs torchvision (ImageFolder and transforms)") from e
    norm = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_tf = transforms.Compose([transforms.RandomResizedCrop(img_size), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor(), norm])
    val_tf = transforms.Compose([transforms.Resize(int(round(img_size * 256 / 224))), transforms.CenterCrop(img_size),
                                 transforms.ToTensor(), norm])
    if os.path.isdir(os.path.join(root, "train")) and os.path.isdir(os.path.join(root, "val")):
        train = datasets.ImageFolder(os.path.join(root, "train"), train_tf)
        val = datasets.ImageFolder(os.path.join(root, "val"), val_tf)
        if train.classes != val.classes:
            raise SystemExit(f"{root}: train/ and val/ have different class folders")
        classes = train.classes
        if limit is not None:
            train, val = Subset(train, range(min(limit, len(train)))), Subset(val, range(min(limit, len(val))))
    else:
        train_all = datasets.ImageFolder(root, train_tf)
        val_all = datasets.ImageFolder(root, val_tf)
        classes = train_all.classes
        n = len(train_all) if limit is None else min(limit, len(train_all))
        train_idx, val_idx = _split(n, val_split, seed)
        train, val = Subset(train_all, train_idx), Subset(val_all, val_idx)
    return train, val, classes


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------
def build_model(args: argparse.Namespace, num_classes: int) -> nn.Module:
    kwargs = {}
    if args.model.startswith("vit"):
        kwargs["img_size"] = args.img_size
    if args.model == "hybridsn":
        raise SystemExit("hybridsn takes hyperspectral (bands x S x S) patches, not RGB images")
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
    return model


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
    if train and args.freeze_backbone:
        model.features.eval()  # frozen BN statistics too
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
    return {"loss": total_loss / max(seen, 1), "acc": correct / max(seen, 1)}


def save_plot(history: List[Dict[str, float]], path: str, title: str) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install matplotlib)")
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
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    resume = torch.load(args.resume, map_location="cpu", weights_only=False) if args.resume else None
    if resume is not None:  # the data split and model come from the run being resumed
        for key in ("data", "model", "img_size", "val_split", "seed", "limit", "freeze_backbone"):
            setattr(args, key, resume["args"][key])
    if args.img_size is None:
        args.img_size = 32 if args.data is None else 224

    if args.data is None:
        train_ds, val_ds, classes = digits_datasets(args.img_size, args.val_split, args.seed, args.limit)
        source = "scikit-learn digits"
    else:
        train_ds, val_ds, classes = imagefolder_datasets(args.data, args.img_size, args.val_split, args.seed, args.limit)
        source = args.data
    train_loader = DataLoader(train_ds, args.batch_size, shuffle=True, num_workers=args.workers,
                              drop_last=len(train_ds) > args.batch_size, generator=torch.Generator().manual_seed(args.seed))
    val_loader = DataLoader(val_ds, args.batch_size * 2, shuffle=False, num_workers=args.workers)

    model = build_model(args, len(classes)).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    if args.optimizer == "adamw":
        optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    else:
        optimizer = torch.optim.SGD(params, lr=args.lr, momentum=0.9, nesterov=True, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(args.epochs, 1))
    scaler = torch.amp.GradScaler("cuda") if args.amp and device.type == "cuda" else None
    criterion = nn.CrossEntropyLoss()

    history: List[Dict[str, float]] = []
    start_epoch, best_acc = 1, 0.0
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        # A longer run than first planned: keep the schedule's progress, stretch its horizon.
        scheduler.load_state_dict({**resume["scheduler"], "T_max": max(args.epochs, 1)})
        if scaler is not None and resume.get("scaler"):
            scaler.load_state_dict(resume["scaler"])
        history, start_epoch, best_acc = resume["history"], resume["epoch"] + 1, resume["best_acc"]
        print(f"resumed {args.resume} at epoch {resume['epoch']} (best val acc {best_acc:.4f})")

    os.makedirs(args.out, exist_ok=True)
    n_train = sum(p.numel() for p in params)
    print(f"{args.model}: {n_train / 1e6:.2f}M trainable params; data: {source} ({len(train_ds)} train / "
          f"{len(val_ds)} val, {len(classes)} classes, {args.img_size}px); device {device}"
          f"{', AMP' if args.amp else ''}{', channels_last' if args.channels_last else ''}")
    for epoch in range(start_epoch, args.epochs + 1):
        t0 = time.time()
        tr = run_epoch(model, train_loader, criterion, device, args, optimizer, scaler, desc=f"epoch {epoch} train")
        va = run_epoch(model, val_loader, criterion, device, args, desc=f"epoch {epoch} val")
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
        torch.save(ckpt, os.path.join(args.out, "last.pt"))
        if best:
            torch.save(ckpt, os.path.join(args.out, "best.pt"))

    metrics = {"model": args.model, "data": source, "classes": classes, "best_val_acc": best_acc,
               "history": history, "args": vars(args)}
    if args.export_onnx and history:
        best_path = os.path.join(args.out, "best.pt")  # absent if no epoch beat 0% accuracy
        metrics["onnx"] = export_onnx(model, best_path if os.path.exists(best_path) else
                                      os.path.join(args.out, "last.pt"), val_loader,
                                      os.path.join(args.out, "model.onnx"))
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    if history:
        save_plot(history, os.path.join(args.out, "curves.png"), f"{args.model} on {os.path.basename(str(source))}")
    onnx = ", model.onnx" if "onnx" in metrics else ""
    print(f"best val acc {best_acc:.4f}; wrote {args.out}/{{last.pt, best.pt, metrics.json, curves.png{onnx}}}")
    return metrics


if __name__ == "__main__":
    main()
