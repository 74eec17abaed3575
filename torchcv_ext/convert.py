"""``torchcv_ext.convert(model)``: swap a torchvision model's layers for the fused modules, in
place, keeping the weights (and so the outputs).

============================================================  =====================================
torchvision layer                                             replaced by
============================================================  =====================================
``ops.Conv2dNormActivation`` with a depthwise conv + BN        ``torchcv_ext.nn.DWConvBNAct``
other ``ops.Conv2dNormActivation``, and every plain            ``torchcv_ext.nn.FusedSequential`` (same
``nn.Sequential`` holding a ``Conv2d, BatchNorm2d`` pair        children; conv + BN [+ act] fused in eval)
``models.resnet.BasicBlock`` / ``Bottleneck``                 ``torchcv_ext.nn.BasicBlock`` / ``Bottleneck``
``models.googlenet.BasicConv2d``                              ``torchcv_ext.nn.BasicConv2d``
``nn.MultiheadAttention`` (e.g. in ``models.VisionTransformer``) ``torchcv_ext.nn.FusedMultiheadAttention``
                                                              (subclass; fused self-attention calls)
``ops.SqueezeExcitation``                                     ``torchcv_ext.nn.SqueezeExcite``
``nn.Hardswish`` / ``nn.Hardsigmoid``                          ``torchcv_ext.nn.Hardswish`` / ``Hardsigmoid``
``nn.ChannelShuffle``                                         ``torchcv_ext.nn.ChannelShuffle``
``models.shufflenetv2.InvertedResidual``                       ``torchcv_ext.nn.ShuffleV2Block`` (fused
                                                              cat + shuffle [+ next unit's split])
============================================================  =====================================

Parameter and buffer names do not change, so ``state_dict()`` before and after are identical
and torchvision checkpoints still load.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Optional

from torch import nn

from torchcv_ext.nn import ChannelShuffle, FusedMultiheadAttention
from torchcv_ext.nn.blocks import (BasicBlock, BasicConv2d, Bottleneck, DWConvBNAct, Hardsigmoid, Hardswish,
                                   ShuffleV2Block, SqueezeExcite)
from torchcv_ext.nn.conv_bn import FusedSequential

__all__ = ["convert"]

#: Activations the fused depthwise block takes over (module types, exact).
_DW_ACTS = (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU, nn.Hardsigmoid, nn.Sigmoid, nn.Identity)


def _torchvision_types():
    try:
        from torchvision.models.googlenet import BasicConv2d as TVBasicConv2d
        from torchvision.models.resnet import BasicBlock as TVBasicBlock, Bottleneck as TVBottleneck
        from torchvision.models.shufflenetv2 import InvertedResidual as TVShuffleUnit
        from torchvision.ops import Conv2dNormActivation, SqueezeExcitation
    except ImportError:  # torchvision absent: only the plain nn layers can be converted
        return None, None, None, {}
    # torchvision block type -> (our block type, the attributes its forward uses)
    blocks = {
        TVBasicBlock: (BasicBlock, ("conv1", "bn1", "relu", "conv2", "bn2", "downsample", "stride")),
        TVBottleneck: (Bottleneck, ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "relu", "downsample",
                                         "stride")),
        TVBasicConv2d: (BasicConv2d, ("conv", "bn")),
    }
    return Conv2dNormActivation, SqueezeExcitation, TVShuffleUnit, blocks


def _has_conv_bn_pair(seq: nn.Sequential) -> bool:
    kids = list(seq)
    return any(type(a) is nn.Conv2d and type(b) is nn.BatchNorm2d for a, b in zip(kids, kids[1:]))


def _rebuild_block(m: nn.Module, cls, attrs) -> nn.Module:
    """Our block class around ``m``'s own submodules (same names: same state_dict)."""
    new = cls.__new__(cls)
    nn.Module.__init__(new)
    for a in attrs:
        setattr(new, a, getattr(m, a))
    if "se" not in attrs and cls is not BasicConv2d:
        new.se = None
    return new


def _is_depthwise_cna(m: nn.Module, cna_type) -> bool:
    if cna_type is None or not isinstance(m, cna_type) or len(m) not in (2, 3):
        return False
    conv, bn = m[0], m[1]
    act = m[2] if len(m) == 3 else None
    return (type(conv) is nn.Conv2d and conv.bias is None and conv.groups == conv.in_channels == conv.out_channels
            and conv.groups > 1 and conv.padding_mode == "zeros" and isinstance(conv.padding, tuple)
            and type(bn) is nn.BatchNorm2d and (act is None or isinstance(act, _DW_ACTS)))


def _convert_module(m: nn.Module, types, counts: Dict[str, int]) -> Optional[nn.Module]:
    cna_type, se_type, shuffle_type, blocks = types
    if _is_depthwise_cna(m, cna_type):
        counts["DWConvBNAct"] = counts.get("DWConvBNAct", 0) + 1
        return DWConvBNAct.from_modules(m[0], m[1], m[2] if len(m) == 3 else None)
    if ((cna_type is not None and type(m) is cna_type) or type(m) is nn.Sequential) and _has_conv_bn_pair(m):
        counts["FusedSequential"] = counts.get("FusedSequential", 0) + 1
        new = FusedSequential(OrderedDict(m._modules))  # same names and children
        if hasattr(m, "out_channels"):
            new.out_channels = m.out_channels
        return new
    if type(m) in blocks:
        cls, attrs = blocks[type(m)]
        counts[cls.__name__] = counts.get(cls.__name__, 0) + 1
        return _rebuild_block(m, cls, attrs)
    if se_type is not None and isinstance(m, se_type):
        counts["SqueezeExcite"] = counts.get("SqueezeExcite", 0) + 1
        return SqueezeExcite.from_torchvision(m)
    if shuffle_type is not None and type(m) is shuffle_type:
        counts["ShuffleV2Block"] = counts.get("ShuffleV2Block", 0) + 1
        return ShuffleV2Block.from_torchvision(m)
    if type(m) is nn.MultiheadAttention:
        counts["FusedMultiheadAttention"] = counts.get("FusedMultiheadAttention", 0) + 1
        return FusedMultiheadAttention.from_nn_mha(m)
    if type(m) is nn.ChannelShuffle:
        counts["ChannelShuffle"] = counts.get("ChannelShuffle", 0) + 1
        return ChannelShuffle(m.groups)
    if type(m) is nn.Hardswish:
        counts["Hardswish"] = counts.get("Hardswish", 0) + 1
        return Hardswish()
    if type(m) is nn.Hardsigmoid:
        counts["Hardsigmoid"] = counts.get("Hardsigmoid", 0) + 1
        return Hardsigmoid()
    return None


def _fuse_shuffle_splits(model: nn.Module) -> None:
    """In every Sequential of ShuffleV2Blocks, let each unit followed by a stride-1 unit hand
    over its output already split (shuffle_cat_split)."""
    for seq in model.modules():
        if isinstance(seq, nn.Sequential) and len(seq) > 1 and all(isinstance(u, ShuffleV2Block) for u in seq):
            units = list(seq)
            for unit, nxt in zip(units, units[1:] + [None]):
                unit.split_output = nxt is not None and nxt.stride == 1


def convert(model: nn.Module, verbose: bool = False) -> nn.Module:
    """Replace, in place, the torchvision layers of ``model`` that have a fused torchcv_ext
    counterpart (see the module docstring), keeping their weights; returns ``model``.

    The converted model computes the same function (same outputs in eval mode, same gradients in
    train mode) and has the same ``state_dict`` keys. Converting twice is a no-op.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert: expected an nn.Module, got {type(model).__name__}")
    types = _torchvision_types()
    counts: Dict[str, int] = {}
    root = _convert_module(model, types, counts)
    if root is not None:
        raise ValueError(f"convert: the model itself is a single {type(model).__name__} layer; convert the "
                         "model that contains it (conversion replaces submodules in place)")

    def visit(parent: nn.Module) -> None:
        for name, child in list(parent.named_children()):
            if isinstance(child, DWConvBNAct):
                continue  # already fused (e.g. a second convert)
            new = _convert_module(child, types, counts)
            if new is not None:
                new.train(child.training)
                setattr(parent, name, new)
                if isinstance(new, DWConvBNAct):
                    continue  # one fused op: its activation is a name, [2] only mirrors it
                child = new
            visit(child)

    visit(model)
    _fuse_shuffle_splits(model)
    if verbose:
        print("torchcv_ext.convert: " + (", ".join(f"{v} x {k}" for k, v in sorted(counts.items())) or "nothing to convert"))
    model._torchcv_ext_converted = counts
    return model
