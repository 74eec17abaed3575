"""Reference depthwise conv + BatchNorm + activation (MobileNetV2/V3, EfficientNet).

The fused op family (torchcv_ext/ops/dwconv_bn_act.py) is built from these pieces:

    z          = depthwise_conv2d(x, weight)                    (C, 1, kh, kw) weight, groups = C
    y (eval)   = act(z * scale + shift)                         scale/shift = BN folded per channel
    mean, var  = per-channel batch mean / biased variance of z  (train)
    y (train)  = act((z - mean) * scale + shift), scale = gamma / sqrt(var + eps), shift = beta

Math is done in float32 (float64 for float64 inputs), results are rounded to the input dtype,
statistics are returned in the accumulation dtype. Written with plain PyTorch ops, differentiable
by autograd; any device.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from torchcv_ext import activations
from torchcv_ext.ops._common import memory_format_of

Pair = Sequence[int]


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype of the kernels: float64 for float64, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def out_size(size: int, k: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1


_FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_args(op: str, x: torch.Tensor, weight: torch.Tensor, stride: Pair, padding: Pair,
               dilation: Pair) -> Tuple[int, int]:
    """Validate the conv arguments like the C++ front end; returns the output (Ho, Wo)."""
    if x.dim() != 4:
        raise RuntimeError(f"{op}: x must be 4-D (N, C, H, W), got {x.dim()} dims of shape {tuple(x.shape)}")
    if x.dtype not in _FLOATS:
        raise RuntimeError(f"{op}: x must be float32, float16, bfloat16 or float64, got {x.dtype}")
    c = x.shape[1]
    if weight.dim() != 4 or weight.shape[0] != c or weight.shape[1] != 1:
        raise RuntimeError(f"{op}: weight must have shape (C, 1, kh, kw) with C = {c} (depthwise, "
                           f"channel multiplier 1), got {tuple(weight.shape)}")
    if weight.dtype not in _FLOATS:
        raise RuntimeError(f"{op}: weight must be a floating tensor, got {weight.dtype}")
    if weight.device != x.device:
        raise RuntimeError(f"{op}: weight is on {weight.device} but the input is on {x.device}")
    if len(stride) != 2 or len(padding) != 2 or len(dilation) != 2:
        raise RuntimeError(f"{op}: stride, padding and dilation must have 2 values each")
    if min(stride) < 1 or min(dilation) < 1 or min(padding) < 0:
        raise RuntimeError(f"{op}: need stride >= 1, dilation >= 1, padding >= 0, got stride={list(stride)}, "
                           f"padding={list(padding)}, dilation={list(dilation)}")
    ho = out_size(x.shape[2], weight.shape[2], stride[0], padding[0], dilation[0])
    wo = out_size(x.shape[3], weight.shape[3], stride[1], padding[1], dilation[1])
    if ho < 1 or wo < 1:
        raise RuntimeError(f"{op}: the output would be empty ({ho}x{wo}) for input {tuple(x.shape[2:])}, "
                           f"kernel {tuple(weight.shape[2:])}, padding {list(padding)}, "
                           f"dilation {list(dilation)}")
    return ho, wo


def check_channel_vector(op: str, name: str, t: torch.Tensor, x: torch.Tensor) -> None:
    if t.dim() != 1 or t.shape[0] != x.shape[1]:
        raise RuntimeError(f"{op}: {name} must have shape ({x.shape[1]},), got {tuple(t.shape)}")
    if t.dtype not in _FLOATS:
        raise RuntimeError(f"{op}: {name} must be a floating tensor, got {t.dtype}")
    if t.device != x.device:
        raise RuntimeError(f"{op}: {name} is on {t.device} but the input is on {x.device}")


def _conv(x: torch.Tensor, weight: torch.Tensor, stride, padding, dilation) -> torch.Tensor:
    """Depthwise conv in the accumulation dtype."""
    a = acc_dtype(x.dtype)
    return F.conv2d(x.to(a), weight.to(a), None, tuple(stride), tuple(padding), tuple(dilation),
                    groups=x.shape[1])


def _cv(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-channel vector as (1, C, 1, 1) in the accumulation dtype of ``like``."""
    return t.to(acc_dtype(like.dtype)).view(1, -1, 1, 1)


def dwconv_bn_act(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                  stride: Pair, padding: Pair, dilation: Pair, act: str) -> torch.Tensor:
    """Eval form: act(dwconv(x, weight) * scale + shift) (BN folded into scale/shift)."""
    op = "dwconv_bn_act"
    check_args(op, x, weight, stride, padding, dilation)
    check_channel_vector(op, "scale", scale, x)
    check_channel_vector(op, "shift", shift, x)
    activations.check(act)
    z = _conv(x, weight, stride, padding, dilation)
    y = activations.forward(act, z * _cv(scale, x) + _cv(shift, x))
    return y.to(x.dtype).contiguous(memory_format=memory_format_of(x))


def dwconv_bn_stats(x: torch.Tensor, weight: torch.Tensor, stride: Pair, padding: Pair,
                    dilation: Pair) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train form, first pass: z = dwconv(x, weight) (input dtype) and the per-channel batch mean
    and biased variance of z (accumulation dtype)."""
    check_args("dwconv_bn_stats", x, weight, stride, padding, dilation)
    z = _conv(x, weight, stride, padding, dilation)
    mean = z.mean(dim=(0, 2, 3))
    var = (z - mean.view(1, -1, 1, 1)).square().mean(dim=(0, 2, 3))
    return z.to(x.dtype).contiguous(memory_format=memory_format_of(x)), mean, var


def _centred(op: str, z: torch.Tensor, mean: Optional[torch.Tensor]) -> torch.Tensor:
    """z - mean per channel in the accumulation dtype (z itself when mean is None)."""
    za = z.to(acc_dtype(z.dtype))
    if mean is None:
        return za
    check_channel_vector(op, "mean", mean, z)
    return za - _cv(mean, z)


def scale_shift_act(z: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, act: str,
                    mean: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Train form, second pass: act((z - mean) * scale + shift) per channel (mean = 0 if None)."""
    op = "scale_shift_act"
    if z.dim() != 4:
        raise RuntimeError(f"{op}: z must be 4-D (N, C, H, W), got {z.dim()} dims")
    check_channel_vector(op, "scale", scale, z)
    check_channel_vector(op, "shift", shift, z)
    activations.check(act)
    y = activations.forward(act, _centred(op, z, mean) * _cv(scale, z) + _cv(shift, z))
    return y.to(z.dtype).contiguous(memory_format=memory_format_of(z))


# ---- backward references (explicit formulas, used as kernels where no C++ kernel exists) ----

def _grad_u(op: str, grad: torch.Tensor, z: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
            act: str, mean: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """(gu, zc): the gradient at u = zc * scale + shift of y = act(u), zc = z - mean (acc dtype)."""
    zc = _centred(op, z, mean)
    u = zc * _cv(scale, z) + _cv(shift, z)
    gu = grad.to(zc.dtype) * activations.derivative(act, u)
    return gu, zc


def scale_shift_act_backward(grad: torch.Tensor, z: torch.Tensor, scale: torch.Tensor,
                             shift: torch.Tensor, act: str, mean: Optional[torch.Tensor] = None,
                             grad_z: bool = True) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of scale_shift_act w.r.t. z (z's dtype; an empty tensor when ``grad_z`` is False),
    scale and shift (accumulation dtype); the gradient of mean is -grad_shift * scale."""
    gu, zc = _grad_u("_scale_shift_act_backward", grad, z, scale, shift, act, mean)
    g_scale = (gu * zc).sum(dim=(0, 2, 3))
    g_shift = gu.sum(dim=(0, 2, 3))
    if not grad_z:
        return z.new_empty(0), g_scale, g_shift
    gz = gu * _cv(scale, z)
    return gz.to(z.dtype).contiguous(memory_format=memory_format_of(z)), g_scale, g_shift


def dwconv_bn_stats_backward(grad_z: torch.Tensor, grad_mean: Optional[torch.Tensor],
                             grad_var: Optional[torch.Tensor], x: torch.Tensor, z: torch.Tensor,
                             mean: torch.Tensor, weight: torch.Tensor, stride: Pair, padding: Pair,
                             dilation: Pair, scale: Optional[torch.Tensor] = None,
                             shift: Optional[torch.Tensor] = None, act: str = "identity"
                             ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Gradients of dwconv_bn_stats w.r.t. x (x's dtype) and weight (accumulation dtype).

    The total gradient of z is grad_z + grad_mean / M + grad_var * 2 (z - mean) / M with
    M = N * Ho * Wo values per channel; then the depthwise conv backward. With ``scale`` (and
    ``shift``, ``act``), ``grad_z`` is the gradient of y = act((z - mean) * scale + shift) and z's
    own is taken from it (in the accumulation dtype) first."""
    a = acc_dtype(x.dtype)
    if (scale is None) != (shift is None):
        raise RuntimeError("_dwconv_bn_stats_backward: scale and shift must be given together")
    if scale is not None:
        gu, _ = _grad_u("_dwconv_bn_stats_backward", grad_z, z, scale, shift, act, mean)
        g = gu * _cv(scale, z)
    else:
        g = grad_z.to(a)
    m = z.shape[0] * z.shape[2] * z.shape[3]
    if grad_mean is not None:
        g = g + _cv(grad_mean, z) / m
    if grad_var is not None:
        g = g + _cv(grad_var, z) * 2.0 * (z.to(a) - _cv(mean, z)) / m
    xa, wa = x.to(a), weight.to(a)
    gx = torch.nn.grad.conv2d_input(xa.shape, wa, g, tuple(stride), tuple(padding), tuple(dilation),
                                    groups=x.shape[1])
    gw = torch.nn.grad.conv2d_weight(xa, wa.shape, g, tuple(stride), tuple(padding), tuple(dilation),
                                     groups=x.shape[1])
    return gx.to(x.dtype).contiguous(memory_format=memory_format_of(x)), gw


# ---- the whole layer, eager (test oracle for the module) ----

def dwconv_bn_act_train(x: torch.Tensor, weight: torch.Tensor, bn_weight: Optional[torch.Tensor],
                        bn_bias: Optional[torch.Tensor], eps: float, stride: Pair, padding: Pair,
                        dilation: Pair, act: str) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train-mode layer from the pieces above: returns (y, batch mean, biased batch variance)."""
    z, mean, var = dwconv_bn_stats(x, weight, stride, padding, dilation)
    scale, shift = batch_scale_shift(var, bn_weight, bn_bias, eps)
    return scale_shift_act(z, scale, shift, act, mean), mean, var


def batch_scale_shift(var: torch.Tensor, bn_weight: Optional[torch.Tensor],
                      bn_bias: Optional[torch.Tensor], eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (scale, shift) of train-mode BatchNorm in centred form,
    y = (z - batch_mean) * scale + shift: scale = gamma / sqrt(var + eps), shift = beta (0 without
    affine). Not folded into z * scale + (beta - mean * scale), which cancels catastrophically in
    float32 when |mean| >> std. Differentiable in var, bn_weight and bn_bias."""
    return scale_shift_from_invstd(torch.rsqrt(var + eps), bn_weight, bn_bias)


def scale_shift_from_invstd(invstd: torch.Tensor, bn_weight: Optional[torch.Tensor],
                            bn_bias: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """batch_scale_shift given invstd = 1 / sqrt(var + eps) (for a caller that needs invstd too)."""
    scale = invstd * bn_weight.to(invstd.dtype) if bn_weight is not None else invstd
    shift = bn_bias.to(invstd.dtype) if bn_bias is not None else torch.zeros_like(invstd)
    return scale, shift
