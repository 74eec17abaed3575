"""GoogLeNet (Inception v1) with torchvision's layout and names, auxiliary heads included (their
outputs come back in train mode as ``GoogLeNetOutputs(logits, aux_logits2, aux_logits1)``)."""
from __future__ import annotations

from collections import namedtuple
from typing import List, Union

import torch
from torch import nn

from torchcv_ext.models._base import ClassifierModel, FeatureView
from torchcv_ext.models._registry import register_model
from torchcv_ext.nn.blocks import BasicConv2d, Inception, InceptionAux

__all__ = ["GoogLeNet", "GoogLeNetOutputs"]

GoogLeNetOutputs = namedtuple("GoogLeNetOutputs", ["logits", "aux_logits2", "aux_logits1"])


def check_transform_input(transform_input: bool, in_chans: int) -> None:
    if transform_input and in_chans != 3:
        raise ValueError(f"transform_input=True rescales ImageNet-normalised RGB input; it needs in_chans=3, "
                         f"got {in_chans}")


def imagenet_to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalised RGB input -> the [-1, 1] scaling the original GoogLeNet / Inception v3
    weights expect (torchvision's ``transform_input=True``)."""
    scale = x.new_tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) / 0.5
    shift = (x.new_tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) - 0.5) / 0.5
    return x * scale + shift


class GoogLeNet(ClassifierModel):
    head_name = "fc"

    def __init__(self, num_classes: int = 1000, aux_logits: bool = True, transform_input: bool = False,
                 dropout: float = 0.2, dropout_aux: float = 0.7, in_chans: int = 3) -> None:
        super().__init__()
        check_transform_input(transform_input, in_chans)
        self.aux_logits = aux_logits
        self.transform_input = transform_input
        self.conv1 = BasicConv2d(in_chans, 64, kernel_size=7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = BasicConv2d(64, 64, kernel_size=1)
        self.conv3 = BasicConv2d(64, 192, kernel_size=3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception3a = Inception(192, 64, 96, 128, 16, 32, 32)
        self.inception3b = Inception(256, 128, 128, 192, 32, 96, 64)
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception4a = Inception(480, 192, 96, 208, 16, 48, 64)
        self.inception4b = Inception(512, 160, 112, 224, 24, 64, 64)
        self.inception4c = Inception(512, 128, 128, 256, 24, 64, 64)
        self.inception4d = Inception(512, 112, 144, 288, 32, 64, 64)
        self.inception4e = Inception(528, 256, 160, 320, 32, 128, 128)
        self.maxpool4 = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.inception5a = Inception(832, 256, 160, 320, 32, 128, 128)
        self.inception5b = Inception(832, 384, 192, 384, 48, 128, 128)
        if aux_logits:
            self.aux1 = InceptionAux(512, num_classes, dropout=dropout_aux)
            self.aux2 = InceptionAux(528, num_classes, dropout=dropout_aux)
        else:
            self.aux1 = None
            self.aux2 = None
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(1024, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, mean=0.0, std=0.01, a=-2, b=2)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def classifier_layer_names(self) -> List[str]:
        """``fc``, then the auxiliary heads' last layers (``aux1.fc2``, ``aux2.fc2``) when present."""
        return ["fc"] + [f"{n}.fc2" for n in ("aux1", "aux2") if getattr(self, n) is not None]

    @property
    def features(self) -> nn.Sequential:
        """The backbone without the auxiliary heads, as a view over this model's modules."""
        return FeatureView(self.conv1, self.maxpool1, self.conv2, self.conv3, self.maxpool2,
                           self.inception3a, self.inception3b, self.maxpool3, self.inception4a,
                           self.inception4b, self.inception4c, self.inception4d, self.inception4e,
                           self.maxpool4, self.inception5a, self.inception5b)

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, GoogLeNetOutputs]:
        x = imagenet_to_unit_range(x) if self.transform_input else x
        x = self.maxpool2(self.conv3(self.conv2(self.maxpool1(self.conv1(x)))))
        x = self.maxpool3(self.inception3b(self.inception3a(x)))
        x = self.inception4a(x)
        use_aux = self.training and self.aux1 is not None
        aux1 = self.aux1(x) if use_aux else None
        x = self.inception4d(self.inception4c(self.inception4b(x)))
        aux2 = self.aux2(x) if use_aux else None
        x = self.maxpool4(self.inception4e(x))
        x = self.inception5b(self.inception5a(x))
        x = self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))
        if self.training and self.aux_logits:
            return GoogLeNetOutputs(x, aux2, aux1)
        return x


@register_model
def googlenet(num_classes: int = 1000, **kwargs) -> GoogLeNet:
    return GoogLeNet(num_classes, **kwargs)
