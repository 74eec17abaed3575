"""VGG-11/13/16/19 with and without BatchNorm (torchvision layout and names), and the CIFAR
variants ``vgg11_cifar`` ... ``vgg19_bn_cifar`` (same convs, 32x32 inputs, a 512 -> 10 head)."""
from __future__ import annotations

import torch
from torch import nn

from torchcv_ext.models._base import ClassifierModel, init_weights_
from torchcv_ext.models._registry import register_model
from torchcv_ext.nn.blocks import conv_stack

__all__ = ["VGG"]

_CFGS = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


class VGG(ClassifierModel):
    """VGG: ``features`` (convs) then, with ``head="imagenet"``, ``avgpool`` (adaptive 7x7) and
    ``classifier`` (3 Linear, torchvision's layout); with ``head="cifar"`` (32x32 inputs: the
    features end at 1x1), ``avgpool`` (global) and ``classifier`` = one ``Linear(512, num_classes)``."""

    def __init__(self, cfg: str, batch_norm: bool = False, num_classes: int = 1000, dropout: float = 0.5,
                 in_chans: int = 3, head: str = "imagenet") -> None:
        super().__init__()
        if head not in ("imagenet", "cifar"):
            raise ValueError(f"VGG: head must be 'imagenet' or 'cifar', got {head!r}")
        self.features = conv_stack(_CFGS[cfg], batch_norm, in_chans)
        if head == "imagenet":
            self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
            self.classifier = nn.Sequential(
                nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(p=dropout),
                nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(p=dropout),
                nn.Linear(4096, num_classes))
        else:
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Linear(512, num_classes)
        init_weights_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def _vgg(cfg: str, bn: bool, num_classes: int, **kwargs) -> VGG:
    return VGG(cfg, bn, num_classes, **kwargs)


@register_model
def vgg11(num_classes: int = 1000, **kwargs) -> VGG:
    return _vgg("A", False, num_classes, **kwargs)


@register_model
def vgg11_bn(num_classes: int = 1000, **kwargs) -> VGG:
    return _vgg("A", True, num_classes, **kwargs)


@register_model
def vgg13(num_classes: int = 1000, **kwargs) -> VGG:
    return _vgg("B", False, num_classes, **kwargs)


@register_model
def vgg13_bn(num_classes: int = 1000, **kwargs) -> VGG:
    return _vgg("B", True, num_classes, **kwargs)


@register_model
def vgg16(num_classes: int = 1000, **kwargs) -> VGG:
    return _vgg("D", False, num_classes, **kwargs)


@register_model
def vgg16_bn(num_classes: int = 1000, **kwargs) -> VGG:
    return _vgg("D", True, num_classes, **kwargs)


@register_model
def vgg19(num_classes: int = 1000, **kwargs) -> VGG:
    return _vgg("E", False, num_classes, **kwargs)


@register_model
def vgg19_bn(num_classes: int = 1000, **kwargs) -> VGG:
    return _vgg("E", True, num_classes, **kwargs)


def _register_cifar(depth: int, cfg: str, bn: bool):
    def builder(num_classes: int = 10, **kwargs) -> VGG:
        return VGG(cfg, bn, num_classes, head="cifar", **kwargs)

    name = f"vgg{depth}{'_bn' if bn else ''}_cifar"
    builder.__name__ = builder.__qualname__ = name
    builder.__module__ = __name__
    builder.__doc__ = (f"VGG-{depth}{' with BatchNorm' if bn else ''} for 32x32 inputs (CIFAR): the VGG convs, "
                       "then global pooling and one Linear(512, num_classes).")
    return register_model(builder)


vgg11_cifar, vgg11_bn_cifar = _register_cifar(11, "A", False), _register_cifar(11, "A", True)
vgg13_cifar, vgg13_bn_cifar = _register_cifar(13, "B", False), _register_cifar(13, "B", True)
vgg16_cifar, vgg16_bn_cifar = _register_cifar(16, "D", False), _register_cifar(16, "D", True)
vgg19_cifar, vgg19_bn_cifar = _register_cifar(19, "E", False), _register_cifar(19, "E", True)
