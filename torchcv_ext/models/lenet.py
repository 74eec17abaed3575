"""LeNet-5 (conv5-pool-conv5-pool-fc120-fc84-fc), any input size >= 16 (a 5x5 adaptive average
pool in front of the classifier; 32x32 gives 5x5 maps, as in the paper).

The default is the modern variant: BatchNorm, ReLU and max-pooling. ``classic=True`` is LeNet-5 as
LeCun et al. (1998) and most textbooks build it: no BatchNorm, sigmoid activations and 2x2 average
pooling (``activation=nn.Tanh`` for the tanh variant), Xavier-initialised."""
from __future__ import annotations

import torch
from torch import nn

from torchcv_ext.models._base import ClassifierModel, init_weights_
from torchcv_ext.models._registry import register_model
from torchcv_ext.nn.blocks import ActLike, conv_stack, get_activation

__all__ = ["LeNet"]

_CFG = [(6, 5, 1, 0), "M", (16, 5, 1, 0), "M"]


class LeNet(ClassifierModel):
    def __init__(self, num_classes: int = 10, in_chans: int = 3, classic: bool = False,
                 activation: ActLike = None) -> None:
        super().__init__()
        if activation is None:
            activation = nn.Sigmoid if classic else nn.ReLU
        self.features = conv_stack(_CFG, batch_norm=not classic, in_chans=in_chans, activation=activation,
                                   pool=nn.AvgPool2d if classic else nn.MaxPool2d)
        self.avgpool = nn.AdaptiveAvgPool2d(5)
        self.classifier = nn.Sequential(
            nn.Linear(16 * 5 * 5, 120), get_activation(activation),
            nn.Linear(120, 84), get_activation(activation),
            nn.Linear(84, num_classes))
        init_weights_(self, linear_std=0.05)
        if classic:  # saturating activations: Xavier, as in the classic recipes
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    nn.init.xavier_uniform_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


@register_model
def lenet(num_classes: int = 10, **kwargs) -> LeNet:
    """LeNet-5 for small images, e.g. 32x32 digits: BatchNorm + ReLU + max-pool by default;
    ``classic=True``: sigmoid + average pooling, no BatchNorm (``activation=nn.Tanh`` for tanh)."""
    return LeNet(num_classes, **kwargs)
