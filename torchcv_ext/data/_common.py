"""What the readers share: the error type, the result of loading, the published mean / std of the
data sets, and the train/val split helpers."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
from torch.utils.data import Dataset, Subset

Stats = Tuple[Tuple[float, ...], Tuple[float, ...]]

IMAGENET_STATS: Stats = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CIFAR10_STATS: Stats = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_STATS: Stats = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
MNIST_STATS: Stats = ((0.1307,), (0.3081,))
FASHION_MNIST_STATS: Stats = ((0.2860,), (0.3530,))


class DataError(ValueError):
    """A data directory or file that does not hold what was expected (the message names it)."""


@dataclass
class DataSets:
    """What :func:`torchcv_ext.data.load_datasets` returns."""

    train: Dataset
    val: Dataset
    classes: List[str]
    format: str          #: the format's name (``cifar10``, ``mnist``, ``imagefolder``, ...)
    source: str          #: what was read, in words (printed by the training example)
    channels: int        #: input channels of one sample (3 RGB, 1 grey, K PCA bands)
    img_size: int        #: spatial size of one sample (the patch size for hyperspectral data)


def split_indices(n: int, val_fraction: float, seed: int) -> Tuple[List[int], List[int]]:
    """A seeded random split of ``range(n)`` into train and validation indices (at least one
    validation index)."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"--val-split must be between 0 and 1, got {val_fraction}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(1, int(round(n * val_fraction)))
    return perm[n_val:], perm[:n_val]


def limit(ds: Dataset, n: Optional[int]) -> Dataset:
    """The first ``n`` samples of ``ds`` (all of it when ``n`` is None)."""
    return ds if n is None else Subset(ds, range(min(n, len(ds))))


def first_file(root: str, names: Sequence[str], subdirs: Sequence[str] = ("",)) -> Optional[str]:
    """The first ``root/<subdir>/<name>`` that is a file, in the order given."""
    for sub in subdirs:
        for name in names:
            path = os.path.join(root, sub, name)
            if os.path.isfile(path):
                return path
    return None


def listing(root: str, n: int = 12) -> str:
    """A short listing of ``root`` for error messages."""
    try:
        entries = sorted(os.listdir(root))
    except OSError as e:
        return f"cannot list it ({e.strerror})"
    if not entries:
        return "an empty directory"
    shown = [e + ("/" if os.path.isdir(os.path.join(root, e)) else "") for e in entries[:n]]
    return ", ".join(shown) + (f", ... ({len(entries)} entries)" if len(entries) > n else "")


@dataclass
class LoadOptions:
    """How to read a data set: the recipe's image size, augmentation and normalization, the
    validation fraction (formats without their own test split), the seed of that split,
    ``limit`` (at most that many samples per split) and ``bands`` (hyperspectral: PCA to this
    many bands)."""

    img_size: Optional[int] = None
    augment: str = "none"
    normalize: str = "data"     #: ``data``: the data set's published mean / std; ``imagenet``: ImageNet's
    val_split: float = 0.2
    seed: int = 0
    limit: Optional[int] = None
    bands: int = 30

    def stats(self, own: Optional[Stats], channels: int) -> Stats:
        """Normalization: ImageNet's for RGB under ``imagenet`` (what pretrained weights expect),
        otherwise the data set's own (CIFAR-10's for an image folder, which has none)."""
        if self.normalize == "imagenet" and channels == 3:
            return IMAGENET_STATS
        if own is not None:
            return own
        if channels == 3:
            return IMAGENET_STATS if self.normalize == "imagenet" else CIFAR10_STATS
        return (0.5,) * channels, (0.5,) * channels

    def transforms(self, own: Optional[Stats], channels: int, native_size: Optional[int]):
        from torchcv_ext.data.transforms import image_transforms

        size = self.img_size or native_size or 32
        return size, image_transforms(self.augment, size, self.stats(own, channels), native_size)
