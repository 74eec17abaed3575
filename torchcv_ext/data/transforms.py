"""The image transforms of the recipes (torchvision.transforms.v2), train and validation."""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch

from torchcv_ext.data._common import Stats

#: augmentation policies: ``crop-flip`` (CIFAR: RandomCrop(size, padding=4) + horizontal flip),
#: ``resized-crop-flip`` (ImageNet: RandomResizedCrop + flip; validation resize to size * 256/224
#: and center crop), ``none`` (the image as it is, resized when its size differs).
AUGMENTATIONS = ("crop-flip", "resized-crop-flip", "none")


def image_transforms(augment: str, size: int, stats: Stats,
                     native_size: Optional[int] = None) -> Tuple[Callable, Callable]:
    """(train, val) transforms from a PIL image to a normalized float tensor. ``native_size`` is
    the data set's own image size when all its images have one (CIFAR 32, MNIST 28): then no
    resize happens at that size."""
    from torchvision.transforms import v2

    if augment not in AUGMENTATIONS:
        raise ValueError(f"image_transforms: augment must be one of {AUGMENTATIONS}, got {augment!r}")
    to_tensor = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(*stats)]
    fit = [] if native_size == size else [v2.Resize(size), v2.CenterCrop(size)]
    if augment == "resized-crop-flip":
        train = [v2.RandomResizedCrop(size), v2.RandomHorizontalFlip()]
        val = [v2.Resize(int(round(size * 256 / 224))), v2.CenterCrop(size)]
    elif augment == "crop-flip":
        train = fit + [v2.RandomCrop(size, padding=4), v2.RandomHorizontalFlip()]
        val = fit
    else:
        train = val = fit
    return v2.Compose(train + to_tensor), v2.Compose(val + to_tensor)
