"""Network building blocks on top of the fused modules, shared by every model family in
torchcv_ext.models (one definition each).

Module and parameter names follow torchvision wherever torchvision has the block (so its
``state_dict`` loads unchanged), and timm for the ViT block:

============================  ===================================================  ==========================
block                         used by                                              names as in
============================  ===================================================  ==========================
ConvBNAct / conv_bn_act       every CNN here (depthwise -> fused DWConvBNAct)       Conv2dNormActivation
conv_stack                    VGG (+ CIFAR), AlexNet, ZFNet, LeNet                  torchvision ``features``
InvertedResidual (= MBConv)   MobileNetV2 (``conv``), MobileNetV3 / EfficientNet     torchvision
                              (``block`` + SqueezeExcite + stochastic depth)
ShuffleV1Unit                 ShuffleNetV1 (group conv + fused channel shuffle)     --
ShuffleV2Block                ShuffleNetV2 (fused concat + shuffle [+ split])       torchvision InvertedResidual
BasicBlock / Bottleneck       ResNet, SE-ResNet (``se_reduction``), CIFAR SENet     torchvision
BasicConv2d / Inception       GoogLeNet                                             torchvision
ViTBlock                      ViT-Tiny/Small (fused MultiheadSelfAttention)         timm
============================  ===================================================  ==========================
"""
from __future__ import annotations

from functools import partial
from typing import Callable, List, Optional, Tuple, Union

import torch
from torch import nn

from torchcv_ext import activations
from torchcv_ext.nn.attention import MultiheadSelfAttention
from torchcv_ext.nn.conv_bn import FusedSequential, conv_bn_act_forward
from torchcv_ext.nn.dwconv_bn_act import DWConvBNAct
from torchcv_ext.nn.hardswish import Hardsigmoid, Hardswish
from torchcv_ext.nn.squeeze_excite import SqueezeExcite
from torchcv_ext.ops import _common
from torchcv_ext.ops.channel_shuffle import channel_shuffle, shuffle_cat, shuffle_cat_split

__all__ = [
    "make_divisible", "get_activation", "ConvBNAct", "conv_bn_act", "conv_stack", "StochasticDepth", "stochastic_depth",
    "InvertedResidual", "MBConv", "ShuffleV1Unit", "ShuffleV2Block", "BasicBlock", "Bottleneck",
    "SEBasicBlock", "SEBottleneck", "BasicConv2d", "Inception", "InceptionAux", "PatchEmbed", "Mlp",
    "ViTBlock",
]

ActLike = Union[None, str, Callable[..., nn.Module]]


def make_divisible(v: float, divisor: int = 8, min_value: Optional[int] = None) -> int:
    """Round a channel count to a multiple of ``divisor`` without going more than 10% below it
    (the rule of the MobileNet / EfficientNet papers, as torchvision applies it)."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def get_activation(act: ActLike) -> Optional[nn.Module]:
    """An activation module from a name (``"relu"``, ``"hardswish"``, ...), a module class or
    factory (``nn.ReLU``, ``partial(nn.SiLU, inplace=True)``); None / ``"identity"`` -> None."""
    if act is None:
        return None
    if isinstance(act, str):
        name = activations.parse(act, "get_activation")
        return None if name == "identity" else activations.make_module(name)
    if isinstance(act, nn.Module):
        return act
    return act()


class ConvBNAct(FusedSequential):
    """Conv2d (no bias) -> BatchNorm2d -> activation, as ``[0] [1] [2]`` (the state_dict layout of
    torchvision's ``Conv2dNormActivation``). ``activation=None`` leaves out ``[2]``. Eval mode folds
    BN into the conv and fuses the activation (see torchcv_ext/nn/conv_bn.py)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: Optional[int] = None, groups: int = 1, dilation: int = 1,
                 activation: ActLike = nn.ReLU, norm_layer: Callable[..., nn.Module] = nn.BatchNorm2d) -> None:
        if padding is None:
            padding = (kernel_size - 1) // 2 * dilation
        layers: List[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation=dilation,
                      groups=groups, bias=False),
            norm_layer(out_channels),
        ]
        act = get_activation(activation)
        if act is not None:
            layers.append(act)
        super().__init__(*layers)
        self.out_channels = out_channels


def conv_bn_act(in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                groups: int = 1, dilation: int = 1, activation: ActLike = nn.ReLU,
                norm_layer: Callable[..., nn.Module] = nn.BatchNorm2d) -> nn.Sequential:
    """ConvBNAct, or the fused ``DWConvBNAct`` when the conv is depthwise (groups == in == out);
    both have the same state_dict."""
    if groups == in_channels == out_channels and groups > 1:
        padding = (kernel_size - 1) // 2 * dilation
        conv = nn.Conv2d(in_channels, in_channels, kernel_size, stride, padding, dilation=dilation,
                         groups=in_channels, bias=False)
        act = get_activation(activation)
        # The fused block names its activation; our hard-swish / hard-sigmoid drop-ins are that too.
        if isinstance(act, Hardswish):
            act = "hardswish"
        elif isinstance(act, Hardsigmoid):
            act = "hardsigmoid"
        return DWConvBNAct.from_modules(conv, norm_layer(in_channels), act)
    return ConvBNAct(in_channels, out_channels, kernel_size, stride, groups=groups, dilation=dilation,
                     activation=activation, norm_layer=norm_layer)


#: A ``conv_stack`` entry: ``v`` (3x3 conv, padding 1, ``v`` channels), ``(v, kernel, stride, padding)``,
#: ``"M"`` (2x2 max-pool, stride 2) or ``("M", kernel, stride[, padding])``.
StackEntry = Union[int, str, Tuple[Union[int, str], ...]]


def conv_stack(cfg: List[StackEntry], batch_norm: bool = False, in_chans: int = 3,
               activation: ActLike = partial(nn.ReLU, inplace=True),
               pool: Callable[..., nn.Module] = nn.MaxPool2d) -> FusedSequential:
    """A plain conv -> [BN ->] activation stack with pooling (VGG, AlexNet, ZFNet, LeNet), flat as
    torchvision numbers it (``features.0``, ``features.1``, ...). Convs keep their bias, as in
    torchvision's VGG-BN; with ``batch_norm`` every conv + BN + activation runs fused in eval mode."""
    layers: List[nn.Module] = []
    c = in_chans
    for v in cfg:
        if v == "M" or (isinstance(v, tuple) and v[0] == "M"):
            layers.append(pool(2, 2) if v == "M" else pool(*v[1:]))
            continue
        out, k, stride, pad = (v, 3, 1, 1) if isinstance(v, int) else v
        layers.append(nn.Conv2d(c, out, k, stride, pad))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out))
        act = get_activation(activation)
        if act is not None:
            layers.append(act)
        c = out
    return FusedSequential(*layers)


def stochastic_depth(x: torch.Tensor, p: float, mode: str, training: bool = True) -> torch.Tensor:
    """Randomly drop whole residual branches (``mode="row"``: per sample, ``"batch"``: for the
    whole batch) with probability ``p`` and rescale the kept ones by ``1 / (1 - p)``. Same
    semantics and random-number use as ``torchvision.ops.stochastic_depth``."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"stochastic_depth: p must be in [0, 1], got {p}")
    if mode not in ("row", "batch"):
        raise ValueError(f"stochastic_depth: mode must be 'row' or 'batch', got {mode!r}")
    if not training or p == 0.0:
        return x
    keep = 1.0 - p
    size = [x.shape[0]] + [1] * (x.dim() - 1) if mode == "row" else [1] * x.dim()
    noise = torch.empty(size, dtype=x.dtype, device=x.device).bernoulli_(keep)
    if keep > 0.0:
        noise.div_(keep)
    return x * noise


class StochasticDepth(nn.Module):
    """Module form of :func:`stochastic_depth` (drop-in for ``torchvision.ops.StochasticDepth``)."""

    def __init__(self, p: float, mode: str = "row") -> None:
        super().__init__()
        self.p, self.mode = p, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return stochastic_depth(x, self.p, self.mode, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}, mode={self.mode}"


class InvertedResidual(nn.Module):
    """Inverted residual / MBConv: [1x1 expand ->] depthwise (fused DWConvBNAct) [-> SqueezeExcite]
    -> 1x1 linear projection, with a residual (and stochastic depth) when shapes allow.

    ``layout="block"`` (MobileNetV3, EfficientNet): ``block = [expand, dw, se, project]`` with the
    projection a ConvBNAct without activation; ``layout="conv"`` (MobileNetV2): ``conv = [expand,
    dw, Conv2d, BatchNorm2d]``. Both are torchvision's names.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expanded_channels: int,
                 kernel_size: int = 3, dilation: int = 1, activation: ActLike = nn.ReLU6,
                 squeeze_channels: Optional[int] = None, se_activation: ActLike = nn.ReLU,
                 se_scale_activation: ActLike = nn.Sigmoid, stochastic_depth_prob: float = 0.0,
                 norm_layer: Callable[..., nn.Module] = nn.BatchNorm2d, layout: str = "block") -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"InvertedResidual: stride must be 1 or 2, got {stride}")
        if layout not in ("block", "conv"):
            raise ValueError(f"InvertedResidual: layout must be 'block' or 'conv', got {layout!r}")
        self.stride = stride
        self.out_channels = out_channels
        self.use_res_connect = stride == 1 and in_channels == out_channels
        layers: List[nn.Module] = []
        if expanded_channels != in_channels:
            layers.append(ConvBNAct(in_channels, expanded_channels, 1, activation=activation, norm_layer=norm_layer))
        layers.append(conv_bn_act(expanded_channels, expanded_channels, kernel_size, stride,
                                  groups=expanded_channels, dilation=dilation, activation=activation,
                                  norm_layer=norm_layer))
        if squeeze_channels is not None:
            layers.append(SqueezeExcite(expanded_channels, squeeze_channels, activation=_factory(se_activation),
                                        scale_activation=_factory(se_scale_activation)))
        if layout == "conv":
            layers += [nn.Conv2d(expanded_channels, out_channels, 1, bias=False), norm_layer(out_channels)]
            self.conv = FusedSequential(*layers)
        else:
            layers.append(ConvBNAct(expanded_channels, out_channels, 1, activation=None, norm_layer=norm_layer))
            self.block = FusedSequential(*layers)
        self._layout = layout
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob, "row") if stochastic_depth_prob > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = self.conv if self._layout == "conv" else self.block
        if self.use_res_connect and not self.training:
            # Eval: the residual add rides on the projection conv (folded BN, one fused call).
            head = len(seq) - 2 if self._layout == "conv" else len(seq) - 1
            h = x
            for i in range(head):
                h = seq[i](h)
            conv, bn = (seq[head], seq[head + 1]) if self._layout == "conv" else (seq[head][0], seq[head][1])
            return conv_bn_act_forward(conv, bn, None, h, residual=x)
        out = seq(x)
        if self.use_res_connect:
            if self.stochastic_depth is not None:
                out = self.stochastic_depth(out)
            out = out + x
        return out


#: EfficientNet's name for the same block.
MBConv = InvertedResidual


def _factory(act: ActLike) -> Callable[[], nn.Module]:
    """A zero-argument module factory for SqueezeExcite's activation arguments."""
    if isinstance(act, str):
        name = activations.parse(act, "SqueezeExcite")
        return lambda: activations.make_module(name)
    return act


class ShuffleV1Unit(nn.Module):
    """ShuffleNetV1 unit: 1x1 group conv -> BN -> ReLU -> channel shuffle (fused op) -> 3x3
    depthwise + BN (fused DWConvBNAct) -> 1x1 group conv -> BN, added to the input (stride 1) or
    concatenated with its 3x3 average pool (stride 2), then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, groups: int,
                 first_group_conv: bool = True) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"ShuffleV1Unit: stride must be 1 or 2, got {stride}")
        self.stride, self.groups = stride, groups
        branch_out = out_channels - in_channels if stride == 2 else out_channels
        if branch_out <= 0 or (stride == 1 and in_channels != out_channels):
            raise ValueError(f"ShuffleV1Unit: bad channels {in_channels} -> {out_channels} at stride {stride}")
        mid = out_channels // 4
        g1 = groups if first_group_conv else 1
        if mid % groups or in_channels % g1 or branch_out % groups:
            raise ValueError(f"ShuffleV1Unit: channels ({in_channels}, {mid}, {branch_out}) not divisible "
                             f"by groups={groups}")
        self.shuffle_groups = g1
        self.conv1 = ConvBNAct(in_channels, mid, 1, groups=g1, activation=nn.ReLU)
        self.dwconv = conv_bn_act(mid, mid, 3, stride, groups=mid, activation=None)
        self.conv2 = ConvBNAct(mid, branch_out, 1, groups=groups, activation=None)
        self.shortcut = nn.AvgPool2d(3, 2, 1) if stride == 2 else None
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        if self.shuffle_groups > 1:
            out = channel_shuffle(out, self.shuffle_groups)
        out = self.conv2(self.dwconv(out))
        if self.shortcut is None:
            return self.relu(out + x)
        return self.relu(torch.cat([self.shortcut(x), out], 1))


TensorOrPair = Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]


class ShuffleV2Block(nn.Module):
    """ShuffleNetV2 unit with torchvision's layout (``branch1``, ``branch2``: flat Sequentials, so
    ``shufflenetv2.InvertedResidual`` state_dicts load unchanged).

    torchvision ends every unit with ``channel_shuffle(cat([a, b], 1), 2)`` and the next stride-1
    unit starts with ``chunk(2, 1)``. Here the tail is one fused op: ``shuffle_cat`` (one output
    tensor) or, when ``split_output`` is set (the next unit is a stride-1 unit of the same stage),
    ``shuffle_cat_split``, which returns the next unit's two halves directly. A unit accepts a
    tensor or such a pair, so a stage stays a plain ``nn.Sequential``.
    """

    def __init__(self, inp: int, oup: int, stride: int, split_output: bool = False) -> None:
        super().__init__()
        if not 1 <= stride <= 3:
            raise ValueError(f"ShuffleV2Block: stride must be in [1, 3], got {stride}")
        self.stride = stride
        self.split_output = split_output
        branch_features = oup // 2
        if stride == 1 and inp != branch_features << 1:
            raise ValueError(f"ShuffleV2Block: with stride 1, inp ({inp}) must equal oup ({oup})")
        if stride > 1:
            self.branch1 = FusedSequential(
                nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False), nn.BatchNorm2d(inp),
                nn.Conv2d(inp, branch_features, 1, bias=False), nn.BatchNorm2d(branch_features),
                nn.ReLU(inplace=True))
        else:
            self.branch1 = FusedSequential()
        self.branch2 = FusedSequential(
            nn.Conv2d(inp if stride > 1 else branch_features, branch_features, 1, bias=False),
            nn.BatchNorm2d(branch_features), nn.ReLU(inplace=True),
            nn.Conv2d(branch_features, branch_features, 3, stride, 1, groups=branch_features, bias=False),
            nn.BatchNorm2d(branch_features),
            nn.Conv2d(branch_features, branch_features, 1, bias=False), nn.BatchNorm2d(branch_features),
            nn.ReLU(inplace=True))

    @classmethod
    def from_modules(cls, m: nn.Module, split_output: bool = False) -> "ShuffleV2Block":
        """Wrap a ``torchvision.models.shufflenetv2.InvertedResidual``'s layers (weights shared)."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.stride, new.split_output = m.stride, split_output
        # Same children (shared weights, same state_dict keys) in fusing Sequentials.
        new.branch1, new.branch2 = FusedSequential(*m.branch1), FusedSequential(*m.branch2)
        return new

    def forward(self, x: TensorOrPair) -> TensorOrPair:
        if self.stride == 1:
            x1, x2 = x if isinstance(x, tuple) else x.chunk(2, dim=1)
            a, b = x1, self.branch2(x2)
        else:
            if isinstance(x, tuple):  # a split pair from a previous unit: make it whole again
                x = torch.cat(x, 1)
            a, b = self.branch1(x), self.branch2(x)
        return shuffle_cat_split(a, b) if self.split_output else shuffle_cat(a, b)

    def extra_repr(self) -> str:
        return f"stride={self.stride}, split_output={self.split_output}"


def _conv3x3(inp: int, out: int, stride: int = 1, groups: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(inp, out, 3, stride, dilation, groups=groups, bias=False, dilation=dilation)


class BasicBlock(nn.Module):
    """ResNet basic block (torchvision names); ``se_reduction`` adds a SqueezeExcite (``se``) on
    the residual branch before the addition (SE-ResNet)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None,
                 se_reduction: Optional[int] = None, norm_layer: Callable[..., nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self.se = SqueezeExcite(planes, max(1, planes // se_reduction)) if se_reduction else None
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = conv_bn_act_forward(self.conv1, self.bn1, self.relu, x)
        if self.se is None:  # relu(bn2(conv2(out)) + identity), one fused call in eval
            return conv_bn_act_forward(self.conv2, self.bn2, self.relu, out, residual=identity)
        out = self.se(conv_bn_act_forward(self.conv2, self.bn2, None, out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck (stride on the 3x3 conv; torchvision names); ``se_reduction`` adds a
    SqueezeExcite (``se``) before the addition (SE-ResNet)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None,
                 se_reduction: Optional[int] = None, norm_layer: Callable[..., nn.Module] = nn.BatchNorm2d,
                 groups: int = 1, base_width: int = 64) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = norm_layer(width)
        self.conv2 = _conv3x3(width, width, stride, groups)
        self.bn2 = norm_layer(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = norm_layer(out)
        self.relu = nn.ReLU(inplace=True)
        self.se = SqueezeExcite(out, max(1, out // se_reduction)) if se_reduction else None
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = conv_bn_act_forward(self.conv1, self.bn1, self.relu, x)
        out = conv_bn_act_forward(self.conv2, self.bn2, self.relu, out)
        if self.se is None:  # relu(bn3(conv3(out)) + identity), one fused call in eval
            return conv_bn_act_forward(self.conv3, self.bn3, self.relu, out, residual=identity)
        out = self.se(conv_bn_act_forward(self.conv3, self.bn3, None, out))
        return self.relu(out + identity)


class SEBasicBlock(BasicBlock):
    """BasicBlock with SqueezeExcite (reduction 16 by default)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None,
                 se_reduction: int = 16, norm_layer: Callable[..., nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__(inplanes, planes, stride, downsample, se_reduction, norm_layer)


class SEBottleneck(Bottleneck):
    """Bottleneck with SqueezeExcite (reduction 16 by default)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None,
                 se_reduction: int = 16, norm_layer: Callable[..., nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__(inplanes, planes, stride, downsample, se_reduction, norm_layer)


class BasicConv2d(nn.Module):
    """GoogLeNet's conv -> BN(eps=1e-3) -> ReLU with torchvision's names (``conv``, ``bn``)."""

    def __init__(self, in_channels: int, out_channels: int, **kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_bn_act_forward(self.conv, self.bn, "relu", x)


class Inception(nn.Module):
    """GoogLeNet inception block: 1x1 | 1x1->3x3 | 1x1->3x3 | maxpool->1x1, concatenated
    (torchvision's layout, including its 3x3 in the third branch)."""

    def __init__(self, in_channels: int, ch1x1: int, ch3x3red: int, ch3x3: int, ch5x5red: int, ch5x5: int,
                 pool_proj: int) -> None:
        super().__init__()
        self.branch1 = BasicConv2d(in_channels, ch1x1, kernel_size=1)
        self.branch2 = nn.Sequential(BasicConv2d(in_channels, ch3x3red, kernel_size=1),
                                     BasicConv2d(ch3x3red, ch3x3, kernel_size=3, padding=1))
        self.branch3 = nn.Sequential(BasicConv2d(in_channels, ch5x5red, kernel_size=1),
                                     BasicConv2d(ch5x5red, ch5x5, kernel_size=3, padding=1))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True),
                                     BasicConv2d(in_channels, pool_proj, kernel_size=1))
        self.out_channels = ch1x1 + ch3x3 + ch5x5 + pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class InceptionAux(nn.Module):
    """GoogLeNet auxiliary classifier (training only), torchvision's layout."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.7) -> None:
        super().__init__()
        self.conv = BasicConv2d(in_channels, 128, kernel_size=1)
        self.fc1 = nn.Linear(2048, 1024)
        self.fc2 = nn.Linear(1024, num_classes)
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.conv(nn.functional.adaptive_avg_pool2d(x, (4, 4))), 1)
        return self.fc2(self.dropout(torch.relu(self.fc1(x))))


class PatchEmbed(nn.Module):
    """Image -> (B, N, dim) patch tokens by a strided conv (timm names: ``proj``)."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768) -> None:
        super().__init__()
        _common.check_sizes("PatchEmbed", img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                            embed_dim=embed_dim)
        if img_size % patch_size:
            raise ValueError(f"PatchEmbed: img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.img_size, self.patch_size = img_size, patch_size
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"PatchEmbed: expected {self.img_size}x{self.img_size} images, got "
                             f"{tuple(x.shape[-2:])} (build the model with img_size=...)")
        return self.proj(x).flatten(2).transpose(1, 2)


class Mlp(nn.Module):
    """Transformer MLP: fc1 -> GELU -> dropout -> fc2 -> dropout (timm names)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class ViTBlock(nn.Module):
    """Pre-norm transformer encoder block with the fused MultiheadSelfAttention (timm names:
    norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2) and stochastic depth."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop: float = 0.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MultiheadSelfAttention(dim, num_heads, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        self.drop_path = StochasticDepth(drop_path, "row") if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))
