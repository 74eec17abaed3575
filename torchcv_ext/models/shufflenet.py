"""ShuffleNetV1 (groups 1, 2, 3, 4, 8) and ShuffleNetV2 x0.5 - x2.0.

V2 has torchvision's layout and names (conv1, stage2..4, conv5, fc); its shuffles are fused with
the concatenation before them and the split after them (``shuffle_cat`` / ``shuffle_cat_split``,
see ``torchcv_ext.nn.blocks.ShuffleV2Block``) without changing the state_dict."""
from __future__ import annotations

from typing import List

import torch
from torch import nn

from torchcv_ext.models._base import ClassifierModel, FeatureView, init_weights_
from torchcv_ext.models._registry import register_model
from torchcv_ext.nn.blocks import ConvBNAct, ShuffleV1Unit, ShuffleV2Block
from torchcv_ext.nn.conv_bn import FusedSequential

__all__ = ["ShuffleNetV1", "ShuffleNetV2", "fuse_shufflenet_v2_splits"]


def fuse_shufflenet_v2_splits(stage: nn.Sequential) -> None:
    """Let each unit of a stage hand the next stride-1 unit its two halves directly
    (``shuffle_cat_split``); the stage's last unit returns one tensor."""
    units = list(stage)
    for unit, nxt in zip(units, units[1:] + [None]):
        unit.split_output = nxt is not None and nxt.stride == 1


class ShuffleNetV2(ClassifierModel):
    head_name = "fc"

    def __init__(self, stages_repeats: List[int], stages_out_channels: List[int], num_classes: int = 1000,
                 in_chans: int = 3) -> None:
        super().__init__()
        if len(stages_repeats) != 3 or len(stages_out_channels) != 5:
            raise ValueError("ShuffleNetV2: expected 3 stage repeats and 5 channel counts")
        self._stage_out_channels = stages_out_channels
        c = stages_out_channels[0]
        self.conv1 = FusedSequential(nn.Conv2d(in_chans, c, 3, 2, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        for name, repeats, out in zip(("stage2", "stage3", "stage4"), stages_repeats, stages_out_channels[1:4]):
            stage = nn.Sequential(ShuffleV2Block(c, out, 2), *[ShuffleV2Block(out, out, 1) for _ in range(repeats - 1)])
            fuse_shufflenet_v2_splits(stage)
            setattr(self, name, stage)
            c = out
        last = stages_out_channels[-1]
        self.conv5 = FusedSequential(nn.Conv2d(c, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU(inplace=True))
        self.fc = nn.Linear(last, num_classes)

    @property
    def features(self) -> nn.Sequential:
        return FeatureView(self.conv1, self.maxpool, self.stage2, self.stage3, self.stage4, self.conv5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage4(self.stage3(self.stage2(self.maxpool(self.conv1(x)))))
        return self.fc(self.conv5(x).mean([2, 3]))


class ShuffleNetV1(ClassifierModel):
    """ShuffleNetV1 (1x): stages of 4/8/4 units; the first unit's first 1x1 conv is not grouped."""

    _OUT = {1: (144, 288, 576), 2: (200, 400, 800), 3: (240, 480, 960), 4: (272, 544, 1088), 8: (384, 768, 1536)}

    def __init__(self, groups: int = 3, num_classes: int = 1000, width_mult: float = 1.0,
                 stages_repeats=(4, 8, 4), in_chans: int = 3) -> None:
        super().__init__()
        if groups not in self._OUT:
            raise ValueError(f"ShuffleNetV1: groups must be one of {sorted(self._OUT)}, got {groups}")
        outs = [int(o * width_mult) // (4 * groups) * (4 * groups) for o in self._OUT[groups]]
        c = 24
        layers: List[nn.Module] = [ConvBNAct(in_chans, c, 3, 2), nn.MaxPool2d(3, 2, 1)]
        for i, (repeats, out) in enumerate(zip(stages_repeats, outs)):
            units = [ShuffleV1Unit(c, out, 2, groups, first_group_conv=i > 0)]
            units += [ShuffleV1Unit(out, out, 1, groups) for _ in range(repeats - 1)]
            layers.append(nn.Sequential(*units))
            c = out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, num_classes)
        init_weights_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean([2, 3]))


def _shufflenet_v2(channels: List[int], num_classes: int, **kwargs) -> ShuffleNetV2:
    return ShuffleNetV2([4, 8, 4], channels, num_classes, **kwargs)


@register_model
def shufflenet_v2_x0_5(num_classes: int = 1000, **kwargs) -> ShuffleNetV2:
    return _shufflenet_v2([24, 48, 96, 192, 1024], num_classes, **kwargs)


@register_model
def shufflenet_v2_x1_0(num_classes: int = 1000, **kwargs) -> ShuffleNetV2:
    return _shufflenet_v2([24, 116, 232, 464, 1024], num_classes, **kwargs)


@register_model
def shufflenet_v2_x1_5(num_classes: int = 1000, **kwargs) -> ShuffleNetV2:
    return _shufflenet_v2([24, 176, 352, 704, 1024], num_classes, **kwargs)


@register_model
def shufflenet_v2_x2_0(num_classes: int = 1000, **kwargs) -> ShuffleNetV2:
    return _shufflenet_v2([24, 244, 488, 976, 2048], num_classes, **kwargs)


def _v1(groups: int):
    def builder(num_classes: int = 1000, **kwargs) -> ShuffleNetV1:
        return ShuffleNetV1(groups, num_classes, **kwargs)

    builder.__name__ = f"shufflenet_v1_g{groups}"
    builder.__qualname__ = builder.__name__
    builder.__module__ = __name__
    builder.__doc__ = f"ShuffleNetV1 1x with {groups} group(s)."
    return register_model(builder)


shufflenet_v1_g1 = _v1(1)
shufflenet_v1_g2 = _v1(2)
shufflenet_v1_g3 = _v1(3)
shufflenet_v1_g4 = _v1(4)
shufflenet_v1_g8 = _v1(8)
