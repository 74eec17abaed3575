"""LeNet-5 (conv5-pool-conv5-pool-fc120-fc84-fc), ReLU and max-pool, any input size >= 16
(a 5x5 adaptive average pool in front of the classifier)."""
from __future__ import annotations

import torch
from torch import nn

from torchcv_ext.models._base import ClassifierModel, init_weights_
from torchcv_ext.models._registry import register_model
from torchcv_ext.nn.conv_bn import FusedSequential

__all__ = ["LeNet"]


class LeNet(ClassifierModel):
    def __init__(self, num_classes: int = 10, in_chans: int = 3) -> None:
        super().__init__()
        self.features = FusedSequential(
            nn.Conv2d(in_chans, 6, 5), nn.BatchNorm2d(6), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.BatchNorm2d(16), nn.ReLU(inplace=True), nn.MaxPool2d(2))
        self.avgpool = nn.AdaptiveAvgPool2d(5)
        self.classifier = nn.Sequential(
            nn.Linear(16 * 5 * 5, 120), nn.ReLU(inplace=True),
            nn.Linear(120, 84), nn.ReLU(inplace=True),
            nn.Linear(84, num_classes))
        init_weights_(self, linear_std=0.05)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


@register_model
def lenet(num_classes: int = 10, **kwargs) -> LeNet:
    """LeNet-5 (with BatchNorm) for small images, e.g. 32x32 digits."""
    return LeNet(num_classes, **kwargs)
