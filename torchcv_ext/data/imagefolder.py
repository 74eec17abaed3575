"""Image folders read by torchvision's ImageFolder: ``root/train/<class>/*`` plus
``root/val|valid|validation|test/<class>/*`` (the split as given), or ``root/<class>/*`` (a
seeded ``--val-split`` of it is held out). A root holding ``train/`` is never read as classes
named ``train`` and ``valid``."""
from __future__ import annotations

import os
from typing import List, Optional, Tuple

import torch

from torch.utils.data import Subset

from torchcv_ext.data._common import DataError, DataSets, LoadOptions, split_indices

VAL_DIRS = ("val", "valid", "validation", "test")


def _is_image(name: str) -> bool:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    return name.lower().endswith(IMG_EXTENSIONS)


def has_class_folders(root: str) -> bool:
    """True when some sub-folder of ``root`` holds an image file (at any depth)."""
    if not os.path.isdir(root):
        return False
    for entry in os.scandir(root):
        if entry.is_dir():
            for _, _, files in os.walk(entry.path):
                if any(_is_image(f) for f in files):
                    return True
    return False


def find(root: str) -> Optional[Tuple[str, Optional[str]]]:
    """(train dir, val dir or None) of the image-folder layout of ``root``, or None."""
    train = os.path.join(root, "train")
    split_dirs = [d for d in ("train",) + VAL_DIRS if os.path.isdir(os.path.join(root, d))]
    if split_dirs:
        if not has_class_folders(train):
            problem = "train/ holds no class sub-folders of images" if "train" in split_dirs else "no train/"
            raise DataError(f"{root}: has {', '.join(d + '/' for d in split_dirs)} but {problem}; "
                            "an image folder with a split needs train/<class>/<image> and "
                            "val/ (or valid/, validation/, test/) with the same class folders")
        for v in VAL_DIRS:
            if has_class_folders(os.path.join(root, v)):
                return train, os.path.join(root, v)
        return train, None
    return (root, None) if has_class_folders(root) else None


def load_rgb(path: str):
    """ImageFolder's loader, with an error that names the file it could not read."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except (OSError, ValueError, SyntaxError) as e:  # PIL.UnidentifiedImageError is an OSError
        raise DataError(f"{path}: cannot read this image ({type(e).__name__}: {e})") from e


def load(found: Tuple[str, Optional[str]], opts: LoadOptions) -> DataSets:
    from torchvision.datasets import ImageFolder

    train_dir, val_dir = found
    size, (train_tf, val_tf) = opts.transforms(None, 3, None)
    if val_dir is not None:
        train = ImageFolder(train_dir, train_tf, loader=load_rgb)
        val = ImageFolder(val_dir, val_tf, loader=load_rgb)
        if train.classes != val.classes:
            raise DataError(f"{train_dir} and {val_dir} have different class folders: "
                            f"{train.classes} vs {val.classes}")
        # a seeded sample under --limit, so that a quick run sees every class
        train, val = Subset(train, _sample(len(train), opts)), Subset(val, _sample(len(val), opts))
        source = f"image folder {train_dir} (validation: {os.path.basename(val_dir)}/)"
    else:
        train_all = ImageFolder(train_dir, train_tf, loader=load_rgb)
        val_all = ImageFolder(train_dir, val_tf, loader=load_rgb)
        sample = _sample(len(train_all), opts)
        train_idx, val_idx = split_indices(len(sample), opts.val_split, opts.seed)
        train_idx, val_idx = [sample[i] for i in train_idx], [sample[i] for i in val_idx]
        train, val = Subset(train_all, train_idx), Subset(val_all, val_idx)
        source = f"image folder {train_dir} ({opts.val_split:g} held out for validation)"
    classes = train.dataset.classes
    return DataSets(train, val, classes, "imagefolder", source, 3, size)


def _sample(n: int, opts: LoadOptions) -> List[int]:
    """All of ``range(n)``, or under ``opts.limit`` a seeded sample of that many (sorted)."""
    if opts.limit is None or opts.limit >= n:
        return list(range(n))
    return sorted(torch.randperm(n, generator=torch.Generator().manual_seed(opts.seed))[:opts.limit].tolist())
