"""AlexNet (torchvision's layout and names: its state_dict loads with ``strict=True``) and ZFNet
(Zeiler & Fergus, 2013), the same network with a 7x7 stride-2 first conv.

Both have ``features`` (5 convs, 3 max-pools), ``avgpool`` (adaptive 6x6) and ``classifier``
(dropout, 4096, dropout, 4096, num_classes). As in torchvision, there is no local response
normalisation. ``batch_norm=True`` adds a BatchNorm after every conv (not in torchvision: its
state_dict then differs), and the conv + BN + ReLU runs fused in eval mode.
Inputs: at least 63x63 (AlexNet) / 64x64 (ZFNet); 224x224 is the papers' size.
"""
from __future__ import annotations

from typing import List

import torch
from torch import nn

from torchcv_ext.models._base import ClassifierModel, init_weights_
from torchcv_ext.models._registry import register_model
from torchcv_ext.nn.blocks import StackEntry, conv_stack

__all__ = ["AlexNet", "ALEXNET_CFG", "ZFNET_CFG"]

#: torchvision's AlexNet (the one-GPU variant: 64, 192, 384, 256, 256 channels).
ALEXNET_CFG: List[StackEntry] = [(64, 11, 4, 2), ("M", 3, 2), (192, 5, 1, 2), ("M", 3, 2),
                                 (384, 3, 1, 1), (256, 3, 1, 1), (256, 3, 1, 1), ("M", 3, 2)]
#: ZFNet (Fig. 3 of the paper): 96 7x7/2 filters, 256 5x5/2, 384, 384, 256 3x3; the maps of a
#: 224x224 input are 110 -> 55 -> 26 -> 13 -> 13 -> 13 -> 6, which fixes the paddings.
ZFNET_CFG: List[StackEntry] = [(96, 7, 2, 1), ("M", 3, 2, 1), (256, 5, 2, 0), ("M", 3, 2, 1),
                               (384, 3, 1, 1), (384, 3, 1, 1), (256, 3, 1, 1), ("M", 3, 2)]


class AlexNet(ClassifierModel):
    """AlexNet-style network: ``conv_stack(cfg)``, adaptive 6x6 average pool, 3-layer classifier."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5, in_chans: int = 3,
                 cfg: List[StackEntry] = ALEXNET_CFG, batch_norm: bool = False) -> None:
        super().__init__()
        self.features = conv_stack(cfg, batch_norm, in_chans)
        channels = [m.out_channels for m in self.features if isinstance(m, nn.Conv2d)][-1]
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout), nn.Linear(channels * 6 * 6, 4096), nn.ReLU(inplace=True),
            nn.Dropout(p=dropout), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes))
        init_weights_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


@register_model
def alexnet(num_classes: int = 1000, **kwargs) -> AlexNet:
    """AlexNet as torchvision builds it (``torchvision.models.alexnet`` state_dicts load unchanged)."""
    return AlexNet(num_classes, **kwargs)


@register_model
def zfnet(num_classes: int = 1000, **kwargs) -> AlexNet:
    """ZFNet (Zeiler & Fergus, 2013): AlexNet with a 7x7 stride-2 first conv and a stride-2 second conv."""
    return AlexNet(num_classes, cfg=ZFNET_CFG, **kwargs)
