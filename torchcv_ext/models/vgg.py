"""VGG-11/13/16/19 with and without BatchNorm (torchvision layout and names)."""
from __future__ import annotations

from typing import List, Union

import torch
from torch import nn

from torchcv_ext.models._base import ClassifierModel
from torchcv_ext.models._registry import register_model
from torchcv_ext.nn.conv_bn import FusedSequential

__all__ = ["VGG"]

_CFGS = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


def _make_features(cfg: List[Union[int, str]], batch_norm: bool, in_chans: int = 3) -> nn.Sequential:
    layers: List[nn.Module] = []
    c = in_chans
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
            continue
        layers.append(nn.Conv2d(c, v, 3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(v))
        layers.append(nn.ReLU(inplace=True))
        c = v
    return FusedSequential(*layers)


class VGG(ClassifierModel):
    """VGG: ``features`` (convs), ``avgpool`` (adaptive 7x7) and ``classifier`` (3 Linear)."""

    def __init__(self, cfg: str, batch_norm: bool = False, num_classes: int = 1000, dropout: float = 0.5,
                 in_chans: int = 3) -> None:
        super().__init__()
        self.features = _make_features(_CFGS[cfg], batch_norm, in_chans)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

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
