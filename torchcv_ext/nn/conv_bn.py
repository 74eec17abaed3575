"""Conv2d + BatchNorm2d (+ activation) (+ residual add) as one step, for every conv of the
networks in torchcv_ext.models -- the dense and grouped ones that no custom kernel of ours
covers, and the depthwise ones, which go to the fused ``dwconv_bn_act`` ops.

* ``conv_bn_act_forward(conv, bn, act, x, residual=None)`` computes
  ``act(bn(conv(x)) [+ residual])`` with the modules' own parameters and buffers:

  - depthwise conv (channel multiplier 1, no residual): the fused DWConvBNAct ops, train and eval
    (``dwconv_bn_act_forward``);
  - training mode (batch statistics): the eager modules, bit-for-bit nn.Conv2d -> nn.BatchNorm2d;
  - eval mode: BN is folded into the conv's weight and bias (one pass less over the activations),
    the fold cached until any of the tensors it came from changes (``Tensor._version``: optimizer
    steps, ``load_state_dict``). On the CPU, in float32 and when no gradient is needed
    (inference), conv + bias + residual add + activation are *one* oneDNN call with the weight
    pre-packed once per input shape -- ``torch.ops.mkldnn._reorder_convolution_weight`` and
    ``_convolution_pointwise``, the kernels torch.compile's CPU backend (freezing) lowers this
    pattern to; checked once at first use, ``torchcv_ext.ops.config.cpu_onednn_conv_bn = False``
    turns it off, as does ``torch.backends.mkldnn.flags(enabled=False)``. Otherwise
    ``F.conv2d`` with the folded bias, then the activation (in place when autograd does not need
    its input). Gradients through the fold are exact.
    Memory: the cache holds one folded (and per input shape, one packed) copy of each weight.

* ``FusedSequential``: an ``nn.Sequential`` (same children, same state_dict keys) whose forward
  runs each ``Conv2d, BatchNorm2d[, activation]`` run of children through
  ``conv_bn_act_forward``; ``ConvBNAct`` (torchvision's ``Conv2dNormActivation`` layout) is one.

Numerics: eval outputs equal the eager modules' up to float rounding (the fold reassociates
``(w * x) * s`` as ``(w * s) * x``); training mode is unchanged.
"""
from __future__ import annotations

import weakref
from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from torchcv_ext.nn import _activations as activations
from torchcv_ext.nn._activations import fused_name
from torchcv_ext.nn.dwconv_bn_act import batch_norm_only, dwconv_bn_act_forward
from torchcv_ext.nn.sync_batchnorm import SyncBatchNorm2d
from torchcv_ext.ops import _common
from torchcv_ext.ops.dwconv_bn_act import fold_bn

__all__ = ["conv_bn_act_forward", "fold_conv_bn", "FusedSequential"]

# Op activation name -> (oneDNN post-op name, its scalars).
_ONEDNN_ACT = {
    "identity": ("none", []), "relu": ("relu", []), "relu6": ("hardtanh", [0.0, 6.0]),
    "hardswish": ("hardswish", []), "silu": ("swish", []), "sigmoid": ("sigmoid", []),
    "hardsigmoid": ("hardsigmoid", []),
}

# conv module -> _Folded. Weak keys: the cache dies with the model and is never part of a
# state_dict or a pickled model.
_FOLD_CACHE: "weakref.WeakKeyDictionary[nn.Conv2d, _Folded]" = weakref.WeakKeyDictionary()
_MAX_PACKED = 4  # packed weights kept per conv (one per input shape / layout seen)


class _Folded:
    __slots__ = ("state", "weight", "bias", "packed")

    def __init__(self, state: _common.TensorState, weight, bias):
        self.state, self.weight, self.bias = state, weight, bias
        self.packed: Dict[tuple, torch.Tensor] = {}


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> Tuple[torch.Tensor, torch.Tensor]:
    scale, shift = fold_bn(bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps, conv.bias)
    w = conv.weight * scale.to(conv.weight.dtype).view(-1, *([1] * (conv.weight.dim() - 1)))
    return w, shift.to(conv.weight.dtype)


def _cached_fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> _Folded:
    tensors = (conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var)
    extra = (bn.eps, torch.is_inference_mode_enabled())
    cacheable = _common.TensorState.cacheable(tensors)
    hit = _FOLD_CACHE.get(conv) if cacheable else None
    if hit is None or not hit.state.matches(tensors, extra):
        with torch.no_grad():
            w, b = _fold(conv, bn)
        hit = _Folded(_common.TensorState(tensors, extra) if cacheable else None, w, b)
        if cacheable:
            _FOLD_CACHE[conv] = hit
    return hit


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d, cache: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of one conv equal to eval-mode ``bn(conv(x))``. Differentiable with
    ``cache=False``; ``cache=True`` returns detached tensors kept until any input tensor changes."""
    if cache:
        f = _cached_fold(conv, bn)
        return f.weight, f.bias
    return _fold(conv, bn)


def _packed_weight(conv: nn.Conv2d, f: _Folded, x: torch.Tensor) -> torch.Tensor:
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


def _activation(act: Union[str, nn.Module, None]) -> Tuple[Optional[str], Optional[nn.Module]]:
    """(op name or None when not one of ours, the module to call otherwise)."""
    if act is None:
        return "identity", None
    if isinstance(act, str):
        return act, None
    if isinstance(act, nn.Identity):
        return "identity", None
    return fused_name(act), act


def _is_depthwise(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> bool:
    c = conv.in_channels
    return (c > 1 and conv.groups == c and conv.out_channels == c and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str) and bn.num_features == c)


def _apply_act(name: Optional[str], module: Optional[nn.Module], y: torch.Tensor,
               residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """act(y + residual) on a fresh tensor y that autograd does not keep (the output of
    BatchNorm or conv2d, whose backwards use their inputs): the add and the activation run in
    place, as in torchvision's blocks -- two activation-sized allocations fewer per layer."""
    if residual is not None:
        y = y.add_(residual) if residual.shape == y.shape else y + residual
    if name is None:  # an activation the fused paths do not know: the module itself
        return module(y)
    return activations.apply(name, y, inplace=True)


def conv_bn_act_forward(conv: nn.Conv2d, bn: nn.BatchNorm2d, act: Union[str, nn.Module, None],
                        x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``act(bn(conv(x)) + residual)`` (residual optional) with the modules' parameters and
    buffers and nn.BatchNorm2d's train/eval rules; see the module docstring for the paths."""
    name, module = _activation(act)
    if residual is None and name is not None and _is_depthwise(conv, bn) and x.dim() == 4:
        return dwconv_bn_act_forward(conv, bn, name, x)
    use_batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
    if use_batch_stats or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return _apply_act(name, module, batch_norm_only(bn, conv(x)), residual)

    needs_grad = _needs_grad(conv, bn, x, residual)
    if needs_grad or _common.capturing_graph():
        w, b = _fold(conv, bn)  # differentiable; a captured graph holds the math on the parameters
    else:
        y = onednn_eval(conv, bn, name, x, residual)
        if y is not None:
            return y
        f = _cached_fold(conv, bn)
        w, b = f.weight, f.bias
    y = F.conv2d(x, w, b, conv.stride, conv.padding, conv.dilation, conv.groups)
    return _apply_act(name, module, y, residual)


def _needs_grad(conv: nn.Conv2d, bn: nn.BatchNorm2d, x: torch.Tensor,
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
            and x.dim() == 4 and name in _ONEDNN_ACT and _common.config.cpu_onednn_conv_bn
            and torch.backends.mkldnn.enabled and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str) and not torch.is_autocast_enabled("cpu")
            and not _common.capturing_graph() and not _needs_grad(conv, bn, x, residual)
            and (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last))
            and (residual is None or (residual.dtype == torch.float32
                                      and residual.shape == _out_shape(conv, x)))
            and _onednn_available()):
        return None
    f = _cached_fold(conv, bn)
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


def _out_shape(conv: nn.Conv2d, x: torch.Tensor) -> torch.Size:
    hw = [(x.shape[2 + i] + 2 * conv.padding[i] - conv.dilation[i] * (conv.kernel_size[i] - 1) - 1)
          // conv.stride[i] + 1 for i in range(2)]
    return torch.Size([x.shape[0], conv.out_channels, *hw])


def _onednn_conv(conv: nn.Conv2d, f: _Folded, x: torch.Tensor, name: str,
                 residual: Optional[torch.Tensor]) -> torch.Tensor:
    attr, scalars = _ONEDNN_ACT[name]
    wp = _packed_weight(conv, f, x)
    pad, stride, dil = list(conv.padding), list(conv.stride), list(conv.dilation)
    if residual is None:
        return torch.ops.mkldnn._convolution_pointwise(x, wp, f.bias, pad, stride, dil, conv.groups,
                                                       attr, scalars, "")
    # The addend in the output's layout (channels_last iff x is).
    cl = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    residual = residual.contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
    # The binary form takes ReLU as a post-op after the add; other activations follow in place.
    unary = "relu" if name == "relu" else None
    y = torch.ops.mkldnn._convolution_pointwise.binary(
        x, residual, wp, f.bias, pad, stride, dil, conv.groups, "add", None, unary, [],
        None if unary is None else "")
    return y if name in ("identity", "relu") else _apply_act(name, None, y)


# The BatchNorm classes whose forward conv_bn_act_forward reproduces (train: calls it; eval: folds it).
_BN2D = (nn.BatchNorm2d, SyncBatchNorm2d)


def _plan(children: List[nn.Module]) -> List[Tuple[int, int]]:
    """Runs of children as (start, length): 3 = conv, bn, activation; 2 = conv, bn; 1 = other."""
    plan, i = [], 0
    while i < len(children):
        m = children[i]
        if (type(m) is nn.Conv2d and i + 1 < len(children) and type(children[i + 1]) in _BN2D
                and children[i + 1].num_features == m.out_channels):
            if i + 2 < len(children) and _activation(children[i + 2])[0] is not None \
                    and not isinstance(children[i + 2], nn.Identity):
                plan.append((i, 3))
                i += 3
            else:
                plan.append((i, 2))
                i += 2
        else:
            plan.append((i, 1))
            i += 1
    return plan


class FusedSequential(nn.Sequential):
    """``nn.Sequential`` that runs every ``Conv2d, BatchNorm2d[, activation]`` run of its children
    through :func:`conv_bn_act_forward` (fused in eval mode; depthwise runs through the fused
    DWConvBNAct ops). Children, indices and state_dict are those of the plain Sequential."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        children = list(self._modules.values())
        ids = tuple(id(m) for m in children)
        cached = self.__dict__.get("_fused_plan")
        if cached is None or cached[0] != ids:
            cached = (ids, _plan(children))
            self.__dict__["_fused_plan"] = cached
        for start, n in cached[1]:
            if n == 1:
                x = children[start](x)
            else:
                x = conv_bn_act_forward(children[start], children[start + 1],
                                        children[start + 2] if n == 3 else None, x)
        return x
