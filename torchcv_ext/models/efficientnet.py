"""EfficientNet B0-B7 with torchvision's layout and names (``features``, ``classifier``; MBConv
``block`` = expand, fused DWConvBNAct, fused SqueezeExcite, project; stochastic depth)."""
from __future__ import annotations

import math
from functools import partial
from typing import List

import torch
from torch import nn

from torchcv_ext.models._base import ClassifierModel
from torchcv_ext.models._registry import register_model
from torchcv_ext.nn.blocks import ConvBNAct, MBConv, make_divisible

__all__ = ["EfficientNet"]

# expand ratio, kernel, stride, in channels, out channels, layers (B0; scaled by width / depth)
_B0 = [(1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
       (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1)]

# width_mult, depth_mult, dropout
_SCALING = {"b0": (1.0, 1.0, 0.2), "b1": (1.0, 1.1, 0.2), "b2": (1.1, 1.2, 0.3), "b3": (1.2, 1.4, 0.3),
            "b4": (1.4, 1.8, 0.4), "b5": (1.6, 2.2, 0.4), "b6": (1.8, 2.6, 0.5), "b7": (2.0, 3.1, 0.5)}


class EfficientNet(ClassifierModel):
    def __init__(self, width_mult: float, depth_mult: float, num_classes: int = 1000, dropout: float = 0.2,
                 stochastic_depth_prob: float = 0.2, bn_eps: float = 1e-5, bn_momentum: float = 0.1,
                 in_chans: int = 3) -> None:
        super().__init__()
        norm = partial(nn.BatchNorm2d, eps=bn_eps, momentum=bn_momentum)

        def ch(c: int) -> int:
            return make_divisible(c * width_mult, 8)

        stages = [(e, k, s, ch(i), ch(o), int(math.ceil(n * depth_mult))) for e, k, s, i, o, n in _B0]
        total = sum(st[-1] for st in stages)
        layers: List[nn.Module] = [ConvBNAct(in_chans, stages[0][3], 3, 2, activation=nn.SiLU, norm_layer=norm)]
        block_id = 0
        for expand, kernel, stride, cin, cout, n in stages:
            stage = []
            for i in range(n):
                inp = cin if i == 0 else cout
                stage.append(MBConv(
                    inp, cout, stride if i == 0 else 1, make_divisible(inp * expand, 8), kernel,
                    activation=nn.SiLU, squeeze_channels=max(1, inp // 4),
                    se_activation=partial(nn.SiLU, inplace=True), se_scale_activation=nn.Sigmoid,
                    stochastic_depth_prob=stochastic_depth_prob * block_id / total, norm_layer=norm))
                block_id += 1
            layers.append(nn.Sequential(*stage))
        last_in = stages[-1][4]
        layers.append(ConvBNAct(last_in, 4 * last_in, 1, activation=nn.SiLU, norm_layer=norm))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout, inplace=True), nn.Linear(4 * last_in, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                r = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -r, r)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def _efficientnet(variant: str, num_classes: int, **kwargs) -> EfficientNet:
    width, depth, dropout = _SCALING[variant]
    kwargs.setdefault("dropout", dropout)
    if variant in ("b5", "b6", "b7"):  # as torchvision builds them
        kwargs.setdefault("bn_eps", 1e-3)
        kwargs.setdefault("bn_momentum", 0.01)
    return EfficientNet(width, depth, num_classes, **kwargs)


def _register(variant: str):
    def builder(num_classes: int = 1000, **kwargs) -> EfficientNet:
        return _efficientnet(variant, num_classes, **kwargs)

    builder.__name__ = builder.__qualname__ = f"efficientnet_{variant}"
    builder.__module__ = __name__
    w, d, p = _SCALING[variant]
    builder.__doc__ = f"EfficientNet-{variant.upper()} (width x{w}, depth x{d}, dropout {p})."
    return register_model(builder)


efficientnet_b0 = _register("b0")
efficientnet_b1 = _register("b1")
efficientnet_b2 = _register("b2")
efficientnet_b3 = _register("b3")
efficientnet_b4 = _register("b4")
efficientnet_b5 = _register("b5")
efficientnet_b6 = _register("b6")
efficientnet_b7 = _register("b7")
