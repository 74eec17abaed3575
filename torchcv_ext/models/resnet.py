"""ResNet-18/34/50/101/152 (torchvision layout and names), SE-ResNet-18/50 and the CIFAR-style
SENet-18 (3x3 stride-1 stem, no max-pool, for 32x32 inputs). SE blocks use the fused
SqueezeExcite."""
from __future__ import annotations

from typing import List, Optional, Type, Union

import torch
from torch import nn

from torchcv_ext.models._base import ClassifierModel, FeatureView
from torchcv_ext.models._registry import register_model
from torchcv_ext.nn.blocks import BasicBlock, Bottleneck
from torchcv_ext.nn.conv_bn import FusedSequential, conv_bn_act_forward

__all__ = ["ResNet"]

Block = Type[Union[BasicBlock, Bottleneck]]


class ResNet(ClassifierModel):
    """ResNet with torchvision's module names (conv1, bn1, layer1..4, fc), so torchvision
    state_dicts load with ``strict=True``. ``se_reduction`` turns it into SE-ResNet;
    ``stem="cifar"`` uses a 3x3 stride-1 stem without max-pool."""

    head_name = "fc"

    def __init__(self, block: Block, layers: List[int], num_classes: int = 1000, se_reduction: Optional[int] = None,
                 stem: str = "imagenet", zero_init_residual: bool = False, in_chans: int = 3) -> None:
        super().__init__()
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"ResNet: stem must be 'imagenet' or 'cifar', got {stem!r}")
        self.inplanes = 64
        self.se_reduction = se_reduction
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_chans, 64, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        else:
            self.conv1 = nn.Conv2d(in_chans, 64, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], 2)
        self.layer3 = self._make_layer(block, 256, layers[2], 2)
        self.layer4 = self._make_layer(block, 512, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * block.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _make_layer(self, block: Block, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = FusedSequential(nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample, se_reduction=self.se_reduction)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, se_reduction=self.se_reduction) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    @property
    def features(self) -> nn.Sequential:
        """The backbone (everything before global pooling) as a view over this model's modules."""
        return FeatureView(self.conv1, self.bn1, self.relu, self.maxpool,
                           self.layer1, self.layer2, self.layer3, self.layer4)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(conv_bn_act_forward(self.conv1, self.bn1, self.relu, x))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.forward_features(x))
        return self.fc(torch.flatten(x, 1))


@register_model
def resnet18(num_classes: int = 1000, **kwargs) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, **kwargs)


@register_model
def resnet34(num_classes: int = 1000, **kwargs) -> ResNet:
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes, **kwargs)


@register_model
def resnet50(num_classes: int = 1000, **kwargs) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, **kwargs)


@register_model
def resnet101(num_classes: int = 1000, **kwargs) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 23, 3], num_classes, **kwargs)


@register_model
def resnet152(num_classes: int = 1000, **kwargs) -> ResNet:
    return ResNet(Bottleneck, [3, 8, 36, 3], num_classes, **kwargs)


@register_model
def seresnet18(num_classes: int = 1000, se_reduction: int = 16, **kwargs) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, se_reduction=se_reduction, **kwargs)


@register_model
def seresnet50(num_classes: int = 1000, se_reduction: int = 16, **kwargs) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, se_reduction=se_reduction, **kwargs)


@register_model
def senet18_cifar(num_classes: int = 10, se_reduction: int = 16, **kwargs) -> ResNet:
    """SENet-18 for 32x32 inputs (CIFAR): SE basic blocks, 3x3 stride-1 stem, no max-pool."""
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, se_reduction=se_reduction, stem="cifar", **kwargs)
