"""DWConvBNAct: torchvision's depthwise ``Conv2dNormActivation`` as one fused op
(op: torchcv_ext/ops/dwconv_bn_act.py)."""
from __future__ import annotations

from typing import Callable, Optional, Type, Union

import torch
from torch import nn

from torchcv_ext import activations
from torchcv_ext.activations import fused_name
from torchcv_ext.nn import _fold
from torchcv_ext.nn.sync_batchnorm import syncs_batch_stats
from torchcv_ext.ops import _common
from torchcv_ext.ops.dwconv_bn_act import _pair, backend, dwconv_bn_act, dwconv_bn_act_train, same_padding

ActivationSpec = Union[str, Type[nn.Module], nn.Module, None]


def activation_name(activation: ActivationSpec) -> str:
    """Name of an activation given as a name, an nn.Module class or instance, or None (identity)."""
    if activation is None:
        return "identity"
    if isinstance(activation, str):
        return activations.parse(activation, "DWConvBNAct")
    name = fused_name(activation)
    if name is None:
        raise ValueError(f"DWConvBNAct: unsupported activation {activation!r}; supported: the modules "
                         f"of {', '.join(activations.NAMES)} (torchcv_ext.activations) or None")
    return name


def _make_act_module(name: str) -> Optional[nn.Module]:
    # torchvision builds its activations with inplace=True where supported; no parameters.
    return None if name == "identity" else activations.make_module(name, inplace=True)


class DWConvBNAct(nn.Sequential):
    """Depthwise ``Conv2d(C, C, k, stride, padding, dilation, groups=C, bias=False)`` +
    ``BatchNorm2d(C)`` + activation, computed by the fused ``dwconv_bn_act`` ops.

    Layout and state_dict are those of torchvision's
    ``Conv2dNormActivation(C, C, k, stride, groups=C, norm_layer=nn.BatchNorm2d, activation_layer=act)``:
    ``[0]`` the conv (``0.weight``), ``[1]`` the BatchNorm2d (``1.weight``, ``1.bias``,
    ``1.running_mean``, ``1.running_var``, ``1.num_batches_tracked``), ``[2]`` the activation module
    unless it is the identity. A torchvision state_dict loads unchanged.

    Args:
        channels: C (channel multiplier 1).
        kernel_size, stride, dilation: int or pair. Any kernel size; odd ones for "same".
        padding: int, pair, ``None`` or ``"same"`` (both mean ``(k - 1) // 2 * dilation``).
        activation: "relu", "relu6", "hardswish", "silu", "hardsigmoid", "sigmoid",
            "identity"/None, or the nn.Module class (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU,
            nn.Hardsigmoid, nn.Sigmoid, nn.Identity, None).
        eps, momentum: of the BatchNorm2d (``momentum=None``: cumulative moving average).
        norm_layer: optional BatchNorm2d factory like torchvision's (e.g.
            ``functools.partial(nn.BatchNorm2d, eps=1e-3, momentum=0.01)``); overrides eps/momentum.

    Eval mode folds BN into a per-channel scale/shift inside the kernel (one read of x, one write
    of y); the fold is computed once and reused until a BN tensor changes (in place or replaced),
    except when autograd needs the BN parameters. Train mode computes batch statistics in the conv
    pass, then normalizes + activates, and updates the running statistics exactly like
    ``nn.BatchNorm2d``; through the fused ops its backward never writes the conv output's gradient.
    """

    def __init__(self, channels: int, kernel_size: Union[int, tuple] = 3, stride: Union[int, tuple] = 1,
                 padding: Union[int, tuple, str, None] = None, dilation: Union[int, tuple] = 1,
                 activation: ActivationSpec = "relu", *, eps: float = 1e-5,
                 momentum: Optional[float] = 0.1,
                 norm_layer: Optional[Callable[..., nn.Module]] = None,
                 device=None, dtype=None) -> None:
        if channels < 1:
            raise ValueError(f"DWConvBNAct: channels must be >= 1, got {channels}")
        k = _pair(kernel_size, "kernel_size")
        _common.check_sizes("DWConvBNAct", kernel_size=k, stride=_pair(stride, "stride"),
                            dilation=_pair(dilation, "dilation"))
        if padding is None or padding == "same":
            padding = same_padding(k, dilation)
        elif isinstance(padding, str):
            raise ValueError(f"DWConvBNAct: padding must be an int, a pair, None or 'same', got {padding!r}")
        name = activation_name(activation)
        fk = dict(device=device, dtype=dtype)
        conv = nn.Conv2d(channels, channels, k, stride, padding, dilation, groups=channels, bias=False, **fk)
        if norm_layer is None:
            bn = nn.BatchNorm2d(channels, eps=eps, momentum=momentum, **fk)
        else:
            bn = norm_layer(channels)
            if fk["device"] is not None or fk["dtype"] is not None:
                bn = bn.to(**{k_: v for k_, v in fk.items() if v is not None})
        super().__init__()
        self._setup(conv, bn, _make_act_module(name), name)

    def _setup(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, act: Optional[nn.Module], name: str) -> None:
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"DWConvBNAct: expected an nn.Conv2d, got {type(conv).__name__}")
        c = conv.in_channels
        if conv.groups != c or conv.out_channels != c:
            raise ValueError(f"DWConvBNAct: the conv must be depthwise with channel multiplier 1 "
                             f"(in = out = groups), got in={conv.in_channels}, out={conv.out_channels}, "
                             f"groups={conv.groups}")
        if conv.padding_mode != "zeros":
            raise ValueError(f"DWConvBNAct: only zero padding is supported, got {conv.padding_mode!r}")
        if isinstance(conv.padding, str):  # "same" (odd kernels) / "valid" as explicit padding
            if conv.padding == "same" and all(k % 2 == 1 for k in conv.kernel_size):
                conv.padding = same_padding(conv.kernel_size, conv.dilation)
            elif conv.padding == "valid":
                conv.padding = (0, 0)
            else:
                raise ValueError(f"DWConvBNAct: unsupported conv padding {conv.padding!r} for kernel "
                                 f"{conv.kernel_size}")
        if not isinstance(bn, nn.BatchNorm2d):
            raise TypeError(f"DWConvBNAct: expected an nn.BatchNorm2d, got {type(bn).__name__}")
        if bn.num_features != c:
            raise ValueError(f"DWConvBNAct: BatchNorm2d has {bn.num_features} features, the conv {c} channels")
        self.add_module("0", conv)
        self.add_module("1", bn)
        if act is not None:
            self.add_module("2", act)
        self.activation = name

    @classmethod
    def from_modules(cls, conv: nn.Conv2d, bn: nn.BatchNorm2d,
                     act: ActivationSpec = None) -> "DWConvBNAct":
        """Wrap existing layers (e.g. the children of a torchvision ``Conv2dNormActivation``),
        sharing their parameters and buffers. ``act`` may be a module instance, a class, a name or
        None (identity). A conv bias, if any, is folded into the BN computation."""
        name = activation_name(act)
        self = cls.__new__(cls)
        nn.Sequential.__init__(self)
        if isinstance(act, nn.Module) and name != "identity":
            act_module = act
        else:
            act_module = _make_act_module(name)
        self._setup(conv, bn, act_module, name)
        return self

    @property
    def conv(self) -> nn.Conv2d:
        return self[0]

    @property
    def bn(self) -> nn.BatchNorm2d:
        return self[1]

    def extra_repr(self) -> str:
        return f"activation={self.activation!r} (fused)"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4 and x.shape[1] != self[0].in_channels:
            raise ValueError(f"DWConvBNAct: expected (N, {self[0].in_channels}, H, W) input, got shape "
                             f"{tuple(x.shape)}")
        return dwconv_bn_act_forward(self[0], self[1], self.activation, x)


def batch_norm_only(bn: nn.BatchNorm2d, y: torch.Tensor) -> torch.Tensor:
    """``bn(y)``; for a norm + activation module (timm's ``BatchNormAct2d``, an nn.BatchNorm2d
    subclass, or ``SyncBatchNormAct``, an nn.SyncBatchNorm subclass (timm's convert_sync_batchnorm),
    whose forward applies ``bn.act`` after normalizing) only its normalizing base class's forward --
    synced statistics included -- as the fused callers apply the activation themselves."""
    if hasattr(bn, "act"):
        for base in (nn.SyncBatchNorm, nn.BatchNorm2d):
            if isinstance(bn, base) and type(bn).forward is not base.forward:
                return base.forward(bn, y)
    return bn(y)


def dwconv_bn_act_forward(conv: nn.Conv2d, bn: nn.BatchNorm2d, activation: str,
                          x: torch.Tensor) -> torch.Tensor:
    """``act(bn(conv(x)))`` for a depthwise ``conv`` (channel multiplier 1) through the fused ops,
    following nn.BatchNorm2d's rules: eval mode folds BN into a per-channel scale/shift; training
    mode (or no running stats) uses batch statistics and updates the running statistics exactly
    like nn.BatchNorm2d. ``activation`` is an op activation name. DWConvBNAct.forward and
    FusedSequential (torchcv_ext/nn/conv_bn.py) both run this."""
    if x.dim() != 4:
        raise ValueError(f"DWConvBNAct: expected a 4-D input (N, C, H, W), got {x.dim()}-D")
    args = dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
                activation=activation)

    # nn.BatchNorm2d's rules: batch statistics in training mode or without running stats.
    use_batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
    path = backend(x, train=use_batch_stats)
    if path == "eager" or (use_batch_stats and syncs_batch_stats(bn)):
        # torch's own modules: CPU training outside the float32 kernels or CPU NCHW inference
        # without AVX2 (ops/dwconv_bn_act.py: backend), or a BN whose statistics span processes
        # (convert_sync_batchnorm; oneDNN conv, batch_norm and their backward), and BatchNorm2d
        # keeps its own running statistics.
        return activations.forward(activation, batch_norm_only(bn, conv(x)))
    if not use_batch_stats:
        if path == "onednn":
            y = _fold.onednn_eval(conv, bn, activation, x)
            if y is not None:
                return y
        scale, shift = _fold.eval_scale_shift(conv, bn)
        return dwconv_bn_act(x, conv.weight, scale, shift, **args)
    y, mean, var = dwconv_bn_act_train(x, conv.weight, bn.weight, bn.bias, bn.eps, **args)
    if bn.training and bn.track_running_stats and bn.running_mean is not None:
        with torch.no_grad():
            if bn.num_batches_tracked is not None:
                bn.num_batches_tracked.add_(1)
            if bn.momentum is None:  # cumulative moving average
                factor = 1.0 / float(bn.num_batches_tracked)
            else:
                factor = bn.momentum
            m = y.shape[0] * y.shape[2] * y.shape[3]
            batch_mean = mean if conv.bias is None else mean + conv.bias.to(mean.dtype)
            unbiased = var * (m / (m - 1))
            bn.running_mean.mul_(1.0 - factor).add_(batch_mean.to(bn.running_mean.dtype), alpha=factor)
            bn.running_var.mul_(1.0 - factor).add_(unbiased.to(bn.running_var.dtype), alpha=factor)
    return y


__all__ = ["DWConvBNAct", "activation_name", "batch_norm_only", "dwconv_bn_act_forward"]
