"""INTERIM pure-PyTorch stand-ins for the fused modules being written on other branches
(DWConvBNAct, SqueezeExcite, Hardswish/Hardsigmoid, MultiheadSelfAttention), following their
published interface contracts. Removed once those modules are merged."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_ACTS = {"relu": nn.ReLU, "relu6": nn.ReLU6, "hardswish": nn.Hardswish, "silu": nn.SiLU,
         "hardsigmoid": nn.Hardsigmoid, "sigmoid": nn.Sigmoid}


def _act(a):
    if a is None or a == "identity":
        return None
    if isinstance(a, str):
        return _ACTS[a]()
    return a() if isinstance(a, type) else a


class DWConvBNAct(nn.Sequential):
    def __init__(self, channels, kernel_size, stride=1, padding=None, dilation=1, activation="relu"):
        if padding is None:
            padding = (kernel_size - 1) // 2 * dilation
        layers = [nn.Conv2d(channels, channels, kernel_size, stride, padding, dilation, groups=channels,
                            bias=False), nn.BatchNorm2d(channels)]
        a = _act(activation)
        if a is not None:
            layers.append(a)
        super().__init__(*layers)

    @classmethod
    def from_modules(cls, conv, bn, act=None):
        m = cls.__new__(cls)
        layers = [conv, bn] + ([act] if act is not None and not isinstance(act, nn.Identity) else [])
        nn.Sequential.__init__(m, *layers)
        return m


class SqueezeExcite(nn.Module):
    def __init__(self, input_channels, squeeze_channels, activation=nn.ReLU, scale_activation=nn.Sigmoid):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(input_channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, input_channels, 1)
        self.activation = activation()
        self.scale_activation = scale_activation()

    def forward(self, x):
        s = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return x * s

    @classmethod
    def from_torchvision(cls, m):
        new = cls(m.fc1.in_channels, m.fc1.out_channels, type(m.activation), type(m.scale_activation))
        new.fc1, new.fc2 = m.fc1, m.fc2
        return new


class Hardswish(nn.Hardswish):
    pass


class Hardsigmoid(nn.Hardsigmoid):
    pass


class MultiheadSelfAttention(nn.Module):
    def __init__(self, dim, num_heads, qkv_bias=True):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v)
        return self.proj(o.transpose(1, 2).reshape(b, n, d))
