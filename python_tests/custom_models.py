"""Networks written the way tutorials and popular repositories write them -- no torchvision or
torchcv_ext classes -- for ``torchcv_ext.convert``'s structural pass (python_tests/
test_convert_custom.py) and its benchmark (benchmarks/bench_convert.py).

Each follows a common source's style: MobileNetV3 as torchvision's pre-0.9 reference code
(``ConvBNActivation(nn.Sequential)``, its own SE class, hardswish), ShuffleNetV2 with the
``channel_shuffle`` function every ShuffleNet repository has, EfficientNet-B0 as
EfficientNet-PyTorch writes its MBConv block (attributes, functional SE, swish), the CIFAR ResNet
of kuangliu/pytorch-cifar (``conv1/bn1/conv2/bn2`` + ``shortcut``), SENet with the ``SELayer`` of
moskomule/senet.pytorch (Linear layers, ``x * y.expand_as(x)``), and a ViT whose attention is
spelled out (``softmax(q @ k^T * scale) @ v``).
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F
from torch import nn


def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


# ------------------------------------------------------------------------------ MobileNetV3
class ConvBNActivation(nn.Sequential):
    def __init__(self, in_planes, out_planes, kernel_size=3, stride=1, groups=1, activation_layer=None):
        padding = (kernel_size - 1) // 2
        if activation_layer is None:
            activation_layer = nn.ReLU6
        super().__init__(nn.Conv2d(in_planes, out_planes, kernel_size, stride, padding, groups=groups, bias=False),
                         nn.BatchNorm2d(out_planes, eps=0.001, momentum=0.01),
                         activation_layer(inplace=True))
        self.out_channels = out_planes


class SqueezeExcitation(nn.Module):
    def __init__(self, input_channels: int, squeeze_factor: int = 4):
        super().__init__()
        squeeze_channels = _make_divisible(input_channels // squeeze_factor, 8)
        self.fc1 = nn.Conv2d(input_channels, squeeze_channels, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(squeeze_channels, input_channels, 1)

    def _scale(self, input):
        scale = F.adaptive_avg_pool2d(input, 1)
        scale = self.fc1(scale)
        scale = self.relu(scale)
        scale = self.fc2(scale)
        return F.hardsigmoid(scale, inplace=True)

    def forward(self, input):
        scale = self._scale(input)
        return scale * input


class MBv3Block(nn.Module):
    def __init__(self, inp, kernel, expanded, out, use_se, use_hs, stride):
        super().__init__()
        self.use_res_connect = stride == 1 and inp == out
        act = nn.Hardswish if use_hs else nn.ReLU
        layers: List[nn.Module] = []
        if expanded != inp:
            layers.append(ConvBNActivation(inp, expanded, kernel_size=1, activation_layer=act))
        layers.append(ConvBNActivation(expanded, expanded, kernel_size=kernel, stride=stride, groups=expanded,
                                       activation_layer=act))
        if use_se:
            layers.append(SqueezeExcitation(expanded))
        layers.append(ConvBNActivation(expanded, out, kernel_size=1, activation_layer=nn.Identity))
        self.block = nn.Sequential(*layers)

    def forward(self, input):
        result = self.block(input)
        if self.use_res_connect:
            result += input
        return result


# (kernel, expanded, out, SE, hardswish, stride), MobileNetV3-Large.
MBV3_LARGE = [(3, 16, 16, False, False, 1), (3, 64, 24, False, False, 2), (3, 72, 24, False, False, 1),
              (5, 72, 40, True, False, 2), (5, 120, 40, True, False, 1), (5, 120, 40, True, False, 1),
              (3, 240, 80, False, True, 2), (3, 200, 80, False, True, 1), (3, 184, 80, False, True, 1),
              (3, 184, 80, False, True, 1), (3, 480, 112, True, True, 1), (3, 672, 112, True, True, 1),
              (5, 672, 160, True, True, 2), (5, 960, 160, True, True, 1), (5, 960, 160, True, True, 1)]


class MobileNetV3(nn.Module):
    def __init__(self, num_classes=1000):
        super().__init__()
        layers: List[nn.Module] = [ConvBNActivation(3, 16, kernel_size=3, stride=2, activation_layer=nn.Hardswish)]
        inp = 16
        for k, exp, out, se, hs, s in MBV3_LARGE:
            layers.append(MBv3Block(inp, k, exp, out, se, hs, s))
            inp = out
        layers.append(ConvBNActivation(inp, 6 * inp, kernel_size=1, activation_layer=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(6 * inp, 1280), nn.Hardswish(inplace=True),
                                        nn.Dropout(p=0.2, inplace=True), nn.Linear(1280, num_classes))

    def forward(self, x):
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


# ------------------------------------------------------------------------------ ShuffleNetV2
def channel_shuffle(x, groups):
    batchsize, num_channels, height, width = x.size()
    channels_per_group = num_channels // groups
    # reshape
    x = x.view(batchsize, groups, channels_per_group, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    # flatten
    x = x.view(batchsize, -1, height, width)
    return x


class ShuffleUnit(nn.Module):
    def __init__(self, inp, oup, stride):
        super().__init__()
        self.stride = stride
        branch_features = oup // 2
        if self.stride > 1:
            self.branch1 = nn.Sequential(
                nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False), nn.BatchNorm2d(inp),
                nn.Conv2d(inp, branch_features, 1, bias=False), nn.BatchNorm2d(branch_features),
                nn.ReLU(inplace=True))
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            nn.Conv2d(inp if self.stride > 1 else branch_features, branch_features, 1, bias=False),
            nn.BatchNorm2d(branch_features), nn.ReLU(inplace=True),
            nn.Conv2d(branch_features, branch_features, 3, stride, 1, groups=branch_features, bias=False),
            nn.BatchNorm2d(branch_features),
            nn.Conv2d(branch_features, branch_features, 1, bias=False), nn.BatchNorm2d(branch_features),
            nn.ReLU(inplace=True))

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        out = channel_shuffle(out, 2)
        return out


class ShuffleNetV2(nn.Module):
    def __init__(self, stages_out_channels=(24, 116, 232, 464, 1024), num_classes=1000):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, stages_out_channels[0], 3, 2, 1, bias=False),
                                   nn.BatchNorm2d(stages_out_channels[0]), nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inp = stages_out_channels[0]
        for name, repeats, out in zip(["stage2", "stage3", "stage4"], [4, 8, 4], stages_out_channels[1:4]):
            seq = [ShuffleUnit(inp, out, 2)] + [ShuffleUnit(out, out, 1) for _ in range(repeats - 1)]
            setattr(self, name, nn.Sequential(*seq))
            inp = out
        self.conv5 = nn.Sequential(nn.Conv2d(inp, stages_out_channels[-1], 1, 1, 0, bias=False),
                                   nn.BatchNorm2d(stages_out_channels[-1]), nn.ReLU(inplace=True))
        self.fc = nn.Linear(stages_out_channels[-1], num_classes)

    def forward(self, x):
        x = self.conv1(x)
        x = self.maxpool(x)
        x = self.stage2(x)
        x = self.stage3(x)
        x = self.stage4(x)
        x = self.conv5(x)
        x = x.mean([2, 3])  # globalpool
        return self.fc(x)


# ------------------------------------------------------------------------------ EfficientNet-B0
class MBConvBlock(nn.Module):
    def __init__(self, inp, out, kernel, stride, expand_ratio, se_ratio=0.25, bn_mom=0.01, bn_eps=1e-3):
        super().__init__()
        self.inp, self.out, self.stride, self.expand_ratio = inp, out, stride, expand_ratio
        self.has_se = se_ratio is not None and 0 < se_ratio <= 1
        oup = inp * expand_ratio
        if expand_ratio != 1:
            self._expand_conv = nn.Conv2d(inp, oup, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(oup, momentum=bn_mom, eps=bn_eps)
        self._depthwise_conv = nn.Conv2d(oup, oup, kernel, stride, kernel // 2, groups=oup, bias=False)
        self._bn1 = nn.BatchNorm2d(oup, momentum=bn_mom, eps=bn_eps)
        if self.has_se:
            num_squeezed = max(1, int(inp * se_ratio))
            self._se_reduce = nn.Conv2d(oup, num_squeezed, 1)
            self._se_expand = nn.Conv2d(num_squeezed, oup, 1)
        self._project_conv = nn.Conv2d(oup, out, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(out, momentum=bn_mom, eps=bn_eps)
        self._swish = nn.SiLU()

    def forward(self, inputs):
        x = inputs
        if self.expand_ratio != 1:
            x = self._expand_conv(inputs)
            x = self._bn0(x)
            x = self._swish(x)
        x = self._depthwise_conv(x)
        x = self._bn1(x)
        x = self._swish(x)
        if self.has_se:
            x_squeezed = F.adaptive_avg_pool2d(x, 1)
            x_squeezed = self._se_reduce(x_squeezed)
            x_squeezed = self._swish(x_squeezed)
            x_squeezed = self._se_expand(x_squeezed)
            x = torch.sigmoid(x_squeezed) * x
        x = self._project_conv(x)
        x = self._bn2(x)
        if self.stride == 1 and self.inp == self.out:
            x = x + inputs
        return x


# (expand, kernel, stride, in, out, repeats), EfficientNet-B0.
EFFNET_B0 = [(1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
             (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1)]


class EfficientNet(nn.Module):
    def __init__(self, num_classes=1000, dropout_rate=0.2):
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self._bn0 = nn.BatchNorm2d(32, momentum=0.01, eps=1e-3)
        self._blocks = nn.ModuleList()
        for e, k, s, i, o, r in EFFNET_B0:
            for j in range(r):
                self._blocks.append(MBConvBlock(i if j == 0 else o, o, k, s if j == 0 else 1, e))
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, momentum=0.01, eps=1e-3)
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(dropout_rate)
        self._fc = nn.Linear(1280, num_classes)
        self._swish = nn.SiLU()

    def forward(self, inputs):
        x = self._swish(self._bn0(self._conv_stem(inputs)))
        for block in self._blocks:
            x = block(x)
        x = self._swish(self._bn1(self._conv_head(x)))
        x = self._avg_pooling(x).flatten(start_dim=1)
        x = self._dropout(x)
        return self._fc(x)


# ------------------------------------------------------------------------------ CIFAR ResNet
def _shortcut(in_planes, out_planes, stride):
    """Identity (an empty Sequential), or a strided 1x1 conv + BN where the shape changes."""
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
                         nn.BatchNorm2d(out_planes))


class CifarBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, self.expansion * planes, stride)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        out = F.relu(out)
        return out


class CifarBottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, self.expansion * planes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(self.expansion * planes)
        self.shortcut = _shortcut(in_planes, self.expansion * planes, stride)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += self.shortcut(x)
        out = F.relu(out)
        return out


class CifarResNet(nn.Module):
    def __init__(self, block, num_blocks, num_classes=10):
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(block, 64, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(block, 128, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(block, 256, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(block, 512, num_blocks[3], stride=2)
        self.linear = nn.Linear(512 * block.expansion, num_classes)

    def _make_layer(self, block, planes, num_blocks, stride):
        strides = [stride] + [1] * (num_blocks - 1)
        layers = []
        for stride in strides:
            layers.append(block(self.in_planes, planes, stride))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer1(out)
        out = self.layer2(out)
        out = self.layer3(out)
        out = self.layer4(out)
        out = F.adaptive_avg_pool2d(out, 1)  # kuangliu: F.avg_pool2d(out, 4) at 32 px
        out = out.view(out.size(0), -1)
        return self.linear(out)


def cifar_resnet18(num_classes=10):
    return CifarResNet(CifarBasicBlock, [2, 2, 2, 2], num_classes)


def cifar_resnet50(num_classes=10):
    return CifarResNet(CifarBottleneck, [3, 4, 6, 3], num_classes)


# ------------------------------------------------------------------------------ SENet
class SELayer(nn.Module):
    def __init__(self, channel, reduction=16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(channel, channel // reduction, bias=False), nn.ReLU(inplace=True),
                                nn.Linear(channel // reduction, channel, bias=False), nn.Sigmoid())

    def forward(self, x):
        b, c, _, _ = x.size()
        y = self.avg_pool(x).view(b, c)
        y = self.fc(y).view(b, c, 1, 1)
        return x * y.expand_as(x)


class SEBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, reduction=16):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.se = SELayer(planes, reduction)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes))
        self.stride = stride

    def forward(self, x):
        residual = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        out = self.se(out)
        if self.downsample is not None:
            residual = self.downsample(x)
        out += residual
        out = self.relu(out)
        return out


def senet18_cifar(num_classes=10):
    return CifarResNet(SEBasicBlock, [2, 2, 2, 2], num_classes)


# ------------------------------------------------------------------------------ ViT
class Attention(nn.Module):
    def __init__(self, dim, num_heads=8, qkv_bias=True, attn_drop=0.0):
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        attn = self.attn_drop(attn)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class Block(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio=4.0, attn_drop=0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, attn_drop=attn_drop)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, int(dim * mlp_ratio)), nn.GELU(), nn.Linear(int(dim * mlp_ratio), dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return x


class ViT(nn.Module):
    def __init__(self, img_size=32, patch_size=8, dim=64, depth=4, num_heads=4, num_classes=10, attn_drop=0.0):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch_size, patch_size)
        n = (img_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, num_heads, attn_drop=attn_drop) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
        x = self.blocks(x)
        return self.head(self.norm(x)[:, 0])


def vit_small_cifar(num_classes=10, img_size=32):
    """ViT-Small width (384, 6 heads), 4 blocks, patch 8 (head dim 64)."""
    return ViT(img_size=img_size, patch_size=8, dim=384, depth=4, num_heads=6, num_classes=num_classes)


#: name -> constructor(num_classes), the tests' and the benchmark's list.
MODELS = {
    "mobilenet_v3_large": lambda num_classes=10: MobileNetV3(num_classes),
    "shufflenet_v2_x1_0": lambda num_classes=10: ShuffleNetV2(num_classes=num_classes),
    "efficientnet_b0": lambda num_classes=10: EfficientNet(num_classes),
    "cifar_resnet18": cifar_resnet18,
    "cifar_resnet50": cifar_resnet50,
    "senet18_cifar": senet18_cifar,
    "vit_tiny_cifar": lambda num_classes=10: ViT(num_classes=num_classes),
}

__all__ = ["MODELS", "channel_shuffle"]
