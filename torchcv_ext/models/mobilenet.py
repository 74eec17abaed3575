"""MobileNetV1 (width multiplier), MobileNetV2 and MobileNetV3 small/large.

V2/V3 follow torchvision's layout and names (``features``, ``classifier``; inverted residuals with
``conv`` / ``block``), so torchvision state_dicts load with ``strict=True``. Every depthwise
conv + BN + activation is the fused ``DWConvBNAct``; V3's squeeze-excite is ``SqueezeExcite``
and its hard-swish the ``torchcv_ext.nn.Hardswish`` drop-in."""
from __future__ import annotations

from functools import partial
from typing import List, NamedTuple

import torch
from torch import nn

from torchcv_ext.models._base import ClassifierModel
from torchcv_ext.models._registry import register_model
from torchcv_ext.nn.blocks import ConvBNAct, Hardsigmoid, Hardswish, InvertedResidual, conv_bn_act, make_divisible

__all__ = ["MobileNetV1", "MobileNetV2", "MobileNetV3"]


def _init(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


def _pool(x: torch.Tensor) -> torch.Tensor:
    return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


class MobileNetV1(ClassifierModel):
    """MobileNetV1: a 3x3 stem and 13 depthwise-separable blocks (fused DWConvBNAct + 1x1
    ConvBNAct); ``width_mult`` scales every layer's channels."""

    _CFG = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1),
            (512, 1), (512, 1), (1024, 2), (1024, 1)]

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2,
                 in_chans: int = 3) -> None:
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"MobileNetV1: width_mult must be > 0, got {width_mult}")
        c = make_divisible(32 * width_mult, 8)
        layers: List[nn.Module] = [ConvBNAct(in_chans, c, 3, 2)]
        for out, stride in self._CFG:
            out = make_divisible(out * width_mult, 8)
            layers.append(nn.Sequential(conv_bn_act(c, c, 3, stride, groups=c), ConvBNAct(c, out, 1)))
            c = out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(c, num_classes))
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(_pool(self.features(x)))


class MobileNetV2(ClassifierModel):
    _CFG = [  # t (expansion), c (out channels), n (repeats), s (first stride)
        (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, round_nearest: int = 8,
                 dropout: float = 0.2, in_chans: int = 3) -> None:
        super().__init__()
        c = make_divisible(32 * width_mult, round_nearest)
        self.last_channel = make_divisible(1280 * max(1.0, width_mult), round_nearest)
        layers: List[nn.Module] = [ConvBNAct(in_chans, c, 3, 2, activation=nn.ReLU6)]
        for t, out, n, s in self._CFG:
            out = make_divisible(out * width_mult, round_nearest)
            for i in range(n):
                layers.append(InvertedResidual(c, out, s if i == 0 else 1, int(round(c * t)),
                                               activation=nn.ReLU6, layout="conv"))
                c = out
        layers.append(ConvBNAct(c, self.last_channel, 1, activation=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes))
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(_pool(self.features(x)))


class _V3Cfg(NamedTuple):
    inp: int
    kernel: int
    exp: int
    out: int
    se: bool
    act: str
    stride: int
    dilation: int


def _v3_config(arch: str, width_mult: float = 1.0, reduced_tail: bool = False, dilated: bool = False):
    rd = 2 if reduced_tail else 1
    dil = 2 if dilated else 1
    if arch == "large":
        rows = [(16, 3, 16, 16, False, "RE", 1, 1), (16, 3, 64, 24, False, "RE", 2, 1),
                (24, 3, 72, 24, False, "RE", 1, 1), (24, 5, 72, 40, True, "RE", 2, 1),
                (40, 5, 120, 40, True, "RE", 1, 1), (40, 5, 120, 40, True, "RE", 1, 1),
                (40, 3, 240, 80, False, "HS", 2, 1), (80, 3, 200, 80, False, "HS", 1, 1),
                (80, 3, 184, 80, False, "HS", 1, 1), (80, 3, 184, 80, False, "HS", 1, 1),
                (80, 3, 480, 112, True, "HS", 1, 1), (112, 3, 672, 112, True, "HS", 1, 1),
                (112, 5, 672, 160 // rd, True, "HS", 2, dil), (160 // rd, 5, 960 // rd, 160 // rd, True, "HS", 1, dil),
                (160 // rd, 5, 960 // rd, 160 // rd, True, "HS", 1, dil)]
        last = 1280 // rd
    elif arch == "small":
        rows = [(16, 3, 16, 16, True, "RE", 2, 1), (16, 3, 72, 24, False, "RE", 2, 1),
                (24, 3, 88, 24, False, "RE", 1, 1), (24, 5, 96, 40, True, "HS", 2, 1),
                (40, 5, 240, 40, True, "HS", 1, 1), (40, 5, 240, 40, True, "HS", 1, 1),
                (40, 5, 120, 48, True, "HS", 1, 1), (48, 5, 144, 48, True, "HS", 1, 1),
                (48, 5, 288, 96 // rd, True, "HS", 2, dil), (96 // rd, 5, 576 // rd, 96 // rd, True, "HS", 1, dil),
                (96 // rd, 5, 576 // rd, 96 // rd, True, "HS", 1, dil)]
        last = 1024 // rd
    else:
        raise ValueError(f"MobileNetV3: arch must be 'large' or 'small', got {arch!r}")

    def adj(c):
        return make_divisible(c * width_mult, 8)

    cfg = [_V3Cfg(adj(i), k, adj(e), adj(o), se, a, s, d) for i, k, e, o, se, a, s, d in rows]
    return cfg, adj(last)


class MobileNetV3(ClassifierModel):
    def __init__(self, arch: str = "large", num_classes: int = 1000, width_mult: float = 1.0,
                 reduced_tail: bool = False, dilated: bool = False, dropout: float = 0.2,
                 in_chans: int = 3) -> None:
        super().__init__()
        cfg, last_channel = _v3_config(arch, width_mult, reduced_tail, dilated)
        norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)
        layers: List[nn.Module] = [ConvBNAct(in_chans, cfg[0].inp, 3, 2, activation=Hardswish, norm_layer=norm)]
        for c in cfg:
            act = Hardswish if c.act == "HS" else nn.ReLU
            layers.append(InvertedResidual(
                c.inp, c.out, 1 if c.dilation > 1 else c.stride, c.exp, c.kernel, c.dilation, activation=act,
                squeeze_channels=make_divisible(c.exp // 4, 8) if c.se else None,
                se_activation=nn.ReLU, se_scale_activation=Hardsigmoid, norm_layer=norm))
        last_in = cfg[-1].out
        layers.append(ConvBNAct(last_in, 6 * last_in, 1, activation=Hardswish, norm_layer=norm))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(6 * last_in, last_channel), Hardswish(),
                                        nn.Dropout(p=dropout), nn.Linear(last_channel, num_classes))
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


@register_model
def mobilenet_v1(num_classes: int = 1000, width_mult: float = 1.0, **kwargs) -> MobileNetV1:
    """MobileNetV1; ``width_mult`` (alpha) in (0, 1] is the paper's width multiplier."""
    return MobileNetV1(num_classes, width_mult, **kwargs)


@register_model
def mobilenet_v2(num_classes: int = 1000, **kwargs) -> MobileNetV2:
    return MobileNetV2(num_classes, **kwargs)


@register_model
def mobilenet_v3_large(num_classes: int = 1000, **kwargs) -> MobileNetV3:
    return MobileNetV3("large", num_classes, **kwargs)


@register_model
def mobilenet_v3_small(num_classes: int = 1000, **kwargs) -> MobileNetV3:
    return MobileNetV3("small", num_classes, **kwargs)
