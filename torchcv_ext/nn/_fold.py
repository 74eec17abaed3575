"""Eval-mode BatchNorm folding, shared by the fused modules (conv_bn.py, dwconv_bn_act.py): the one
cache kind of torchcv_ext.nn (:class:`ModuleCache`), the folded conv weight and bias
(:func:`fold_conv_bn`), the depthwise layer's per-channel scale / shift (:func:`eval_scale_shift`),
and the CPU float32 inference path that runs a folded conv with its activation and residual add as
one oneDNN call (:func:`onednn_eval`)."""
from __future__ import annotations

import weakref
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import nn

from torchcv_ext import activations
from torchcv_ext.ops import _common
from torchcv_ext.ops.dwconv_bn_act import fold_bn


class ModuleCache:
    """Values computed from a module's tensors (a BN fold, pre-packed weights), kept per module
    while those tensors are unchanged: :meth:`get` recomputes when any of them was replaced or
    modified in place (``Tensor._version``: optimizer steps, ``load_state_dict``, running-statistics
    updates; :class:`torchcv_ext.ops._common.TensorState`) or an ``extra`` value (eps, inference
    mode) differs. Weak keys: an entry dies with its module, and is never part of a state_dict or
    a pickled model. Inference tensors (no version counter) are computed every time."""

    def __init__(self) -> None:
        self._entries: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()

    def get(self, module: nn.Module, tensors, extra, compute: Callable[[], object]):
        tensors = tuple(tensors)
        if not _common.TensorState.cacheable(tensors):
            with torch.no_grad():
                return compute()
        hit = self._entries.get(module)
        if hit is None or not hit[0].matches(tensors, extra):
            with torch.no_grad():
                hit = (_common.TensorState(tensors, extra), compute())
            self._entries[module] = hit
        return hit[1]


# ---- Conv2d + BatchNorm2d: the folded weight and bias ---------------------------------------------
_FOLDS = ModuleCache()  # conv module -> Folded
_MAX_PACKED = 4  # packed weights kept per conv (one per input shape / layout seen)


class Folded:
    """A conv's BN-folded weight and bias, and its oneDNN-packed weights per input shape."""

    __slots__ = ("weight", "bias", "packed")

    def __init__(self, weight, bias):
        self.weight, self.bias = weight, bias
        self.packed: Dict[tuple, torch.Tensor] = {}


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> Tuple[torch.Tensor, torch.Tensor]:
    scale, shift = fold_bn(bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps, conv.bias)
    w = conv.weight * scale.to(conv.weight.dtype).view(-1, *([1] * (conv.weight.dim() - 1)))
    return w, shift.to(conv.weight.dtype)


def cached_fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> Folded:
    tensors = (conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var)
    extra = (bn.eps, torch.is_inference_mode_enabled())
    return _FOLDS.get(conv, tensors, extra, lambda: Folded(*_fold(conv, bn)))


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d, cache: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of one conv equal to eval-mode ``bn(conv(x))``. Differentiable with
    ``cache=False``; ``cache=True`` returns detached tensors kept until any input tensor changes."""
    if cache:
        f = cached_fold(conv, bn)
        return f.weight, f.bias
    return _fold(conv, bn)


# ---- depthwise conv + BatchNorm2d: the per-channel scale and shift of the fused op ----------------
# Folding is half a dozen tiny per-channel ops: on a GPU as many kernel launches per layer and
# call, next to the one of the fused layer.
_SCALE_SHIFT = ModuleCache()  # bn module -> (scale, shift)


def eval_scale_shift(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> Tuple[torch.Tensor, torch.Tensor]:
    """fold_bn of the layer's BN (and conv bias): differentiable when autograd needs the BN affine
    parameters (or the conv bias) or a graph is being captured (_common.capturing_graph), else cached."""
    tensors = (bn.weight, bn.bias, bn.running_mean, bn.running_var, conv.bias)
    fold = lambda: fold_bn(bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps, conv.bias)  # noqa: E731
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (bn.weight, bn.bias, conv.bias))
    if grad or _common.capturing_graph():
        return fold()
    return _SCALE_SHIFT.get(bn, tensors, (bn.eps, torch.is_inference_mode_enabled()), fold)


# ---- the CPU oneDNN path ------------------------------------------------------------------------
def _packed_weight(conv: nn.Conv2d, f: Folded, x: torch.Tensor) -> torch.Tensor:
    key = (tuple(x.shape), x.is_contiguous())
    wp = f.packed.get(key)
    if wp is None:
        if len(f.packed) >= _MAX_PACKED:
            f.packed.clear()
        wp = torch.ops.mkldnn._reorder_convolution_weight(
            f.weight, list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups,
            list(x.shape))
        f.packed[key] = wp
    return wp


_onednn_ok: Optional[bool] = None
_onednn_rejected: set = set()  # problem keys the oneDNN ops raised on (see onednn_eval)


def _onednn_available() -> bool:
    """Whether this torch build has the oneDNN fused conv ops, tried once on a tiny problem."""
    global _onednn_ok
    if _onednn_ok is None:
        try:
            x = torch.ones(1, 2, 3, 3)
            w = torch.ones(2, 2, 1, 1)
            wp = torch.ops.mkldnn._reorder_convolution_weight(w, [0, 0], [1, 1], [1, 1], 1, [1, 2, 3, 3])
            y = torch.ops.mkldnn._convolution_pointwise(x, wp, torch.ones(2), [0, 0], [1, 1], [1, 1], 1,
                                                        "relu", [], "")
            z = torch.ops.mkldnn._convolution_pointwise.binary(x, y, wp, None, [0, 0], [1, 1], [1, 1], 1,
                                                               "add", None, None, [], None)
            _onednn_ok = bool((y == 3).all()) and bool((z == 5).all())
        except Exception:  # noqa: BLE001  (no oneDNN, or the private ops changed)
            _onednn_ok = False
    return _onednn_ok


def needs_grad(conv: nn.Conv2d, bn: nn.BatchNorm2d, x: torch.Tensor,
                residual: Optional[torch.Tensor]) -> bool:
    return torch.is_grad_enabled() and (
        x.requires_grad or conv.weight.requires_grad or (residual is not None and residual.requires_grad)
        or any(p is not None and p.requires_grad for p in (conv.bias, bn.weight, bn.bias)))


def onednn_eval(conv: nn.Conv2d, bn: nn.BatchNorm2d, name: Optional[str], x: torch.Tensor,
                residual: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
    """Eval-mode ``act(bn(conv(x)) [+ residual])`` as one oneDNN call (BN folded, weight pre-packed
    per input shape, activation / residual add as post-ops), or None where that path does not apply:
    not CPU float32 4-D inference (autograd needed, autocast, a graph being captured), an activation
    oneDNN lacks, a layout other than NCHW / channels_last, oneDNN off
    (``config.cpu_onednn_conv_bn``, ``torch.backends.mkldnn``) or missing, or a problem this torch
    build's oneDNN rejected before. The caller runs its own path then."""
    if not (x.device.type == "cpu" and x.dtype == torch.float32 and conv.weight.dtype == torch.float32
            and x.dim() == 4 and name is not None and activations.get(name).onednn and _common.config.cpu_onednn_conv_bn
            and torch.backends.mkldnn.enabled and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str) and not torch.is_autocast_enabled("cpu")
            and not _common.capturing_graph() and not needs_grad(conv, bn, x, residual)
            and (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last))
            and (residual is None or (residual.dtype == torch.float32
                                      and residual.shape == out_shape(conv, x)))
            and _onednn_available()):
        return None
    f = cached_fold(conv, bn)
    key = (tuple(x.shape), x.stride(), tuple(f.weight.shape), tuple(conv.stride),
           tuple(conv.padding), tuple(conv.dilation), conv.groups, residual is not None)
    if key in _onednn_rejected:
        return None
    try:
        return _onednn_conv(conv, f, x, name, residual)
    except RuntimeError:
        # Some torch builds' oneDNN refuse shapes the others take (torch 2.11: the binary form
        # with a 1x1 output, "could not create a memory"). Such a problem takes the caller's path,
        # now and from then on.
        if len(_onednn_rejected) >= 1024:
            _onednn_rejected.clear()
        _onednn_rejected.add(key)
        return None


def out_shape(conv: nn.Conv2d, x: torch.Tensor) -> torch.Size:
    hw = [(x.shape[2 + i] + 2 * conv.padding[i] - conv.dilation[i] * (conv.kernel_size[i] - 1) - 1)
          // conv.stride[i] + 1 for i in range(2)]
    return torch.Size([x.shape[0], conv.out_channels, *hw])


def _onednn_conv(conv: nn.Conv2d, f: Folded, x: torch.Tensor, name: str,
                 residual: Optional[torch.Tensor]) -> torch.Tensor:
    attr, scalars, algorithm = activations.get(name).onednn
    wp = _packed_weight(conv, f, x)
    pad, stride, dil = list(conv.padding), list(conv.stride), list(conv.dilation)
    if residual is None:
        return torch.ops.mkldnn._convolution_pointwise(x, wp, f.bias, pad, stride, dil, conv.groups,
                                                       attr, scalars, algorithm)
    # The addend in the output's layout (channels_last iff x is).
    cl = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    residual = residual.contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
    # The binary form takes ReLU as a post-op after the add; other activations follow in place.
    unary = "relu" if name == "relu" else None
    y = torch.ops.mkldnn._convolution_pointwise.binary(
        x, residual, wp, f.bias, pad, stride, dil, conv.groups, "add", None, unary, [],
        None if unary is None else "")
    return y if name in ("identity", "relu") else activations.forward(name, y, inplace=True)
