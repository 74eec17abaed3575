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
    its input). Gradients through the fold are exact. The fold, its cache and the oneDNN path are
    in torchcv_ext/nn/_fold.py (shared with the depthwise layer).
    Memory: the cache holds one folded (and per input shape, one packed) copy of each weight.

* ``FusedSequential``: an ``nn.Sequential`` (same children, same state_dict keys) whose forward
  runs each ``Conv2d, BatchNorm2d[, activation]`` run of children through
  ``conv_bn_act_forward``; ``ConvBNAct`` (torchvision's ``Conv2dNormActivation`` layout) is one.

Numerics: eval outputs equal the eager modules' up to float rounding (the fold reassociates
``(w * x) * s`` as ``(w * s) * x``); training mode is unchanged.
"""
from __future__ import annotations

from typing import List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from torchcv_ext import activations
from torchcv_ext.activations import fused_name
from torchcv_ext.nn import _fold
from torchcv_ext.nn._fold import fold_conv_bn
from torchcv_ext.nn.dwconv_bn_act import batch_norm_only, dwconv_bn_act_forward
from torchcv_ext.nn.sync_batchnorm import SyncBatchNorm2d
from torchcv_ext.ops import _common

__all__ = ["conv_bn_act_forward", "fold_conv_bn", "FusedSequential"]

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
    return activations.forward(name, y, inplace=True)


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

    if _fold.needs_grad(conv, bn, x, residual) or _common.capturing_graph():
        w, b = fold_conv_bn(conv, bn)  # differentiable; a captured graph holds the math on the parameters
    else:
        y = _fold.onednn_eval(conv, bn, name, x, residual)
        if y is not None:
            return y
        w, b = fold_conv_bn(conv, bn, cache=True)
    y = F.conv2d(x, w, b, conv.stride, conv.padding, conv.dilation, conv.groups)
    return _apply_act(name, module, y, residual)


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
