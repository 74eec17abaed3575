"""``torchcv_ext.convert(model)``: swap a model's layers for the fused modules and ops, in place,
keeping the weights (and so the outputs). First torchvision's classes, by class:

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

Then every other model -- hand-written, timm, ... -- by structure, not class name
(torchcv_ext/_convert_fx.py): each block's forward is traced with torch.fx and rewritten to call
the fused ops for conv + BN [+ act] [+ residual add] (timm's ``BatchNormAct2d`` included),
squeeze-and-excitation, channel shuffle and self-attention, as written in the forward. A block that
does not trace keeps its forward; its submodules are still converted.

Parameter and buffer names do not change, so ``state_dict()`` before and after are identical
and the original checkpoints still load (``strict=True``).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, List, Optional, Set, Tuple, Union

from torch import nn

from torchcv_ext import _convert_fx
from torchcv_ext.nn import ChannelShuffle, FusedMultiheadAttention
from torchcv_ext import activations
from torchcv_ext.nn.blocks import (BasicBlock, BasicConv2d, Bottleneck, DWConvBNAct, Hardsigmoid, Hardswish,
                                   ShuffleV2Block, SqueezeExcite)
from torchcv_ext.nn.conv_bn import FusedSequential

__all__ = ["convert", "ConvertSummary"]


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
            and type(bn) is nn.BatchNorm2d and (act is None or activations.fused_name(act) is not None))


def _convert_module(m: nn.Module, types, counts: Callable[[str], None]) -> Optional[nn.Module]:
    cna_type, se_type, shuffle_type, blocks = types
    if _is_depthwise_cna(m, cna_type):
        counts("DWConvBNAct")
        return DWConvBNAct.from_modules(m[0], m[1], m[2] if len(m) == 3 else None)
    if ((cna_type is not None and type(m) is cna_type) or type(m) is nn.Sequential) and _has_conv_bn_pair(m):
        counts("FusedSequential")
        new = FusedSequential(OrderedDict(m._modules))  # same names and children
        if hasattr(m, "out_channels"):
            new.out_channels = m.out_channels
        return new
    if type(m) in blocks:
        cls, attrs = blocks[type(m)]
        counts(cls.__name__)
        return _rebuild_block(m, cls, attrs)
    if se_type is not None and isinstance(m, se_type):
        counts("SqueezeExcite")
        return SqueezeExcite.from_modules(m)
    if shuffle_type is not None and type(m) is shuffle_type:
        counts("ShuffleV2Block")
        return ShuffleV2Block.from_modules(m)
    if type(m) is nn.MultiheadAttention:
        counts("FusedMultiheadAttention")
        return FusedMultiheadAttention.from_modules(m)
    if type(m) is nn.ChannelShuffle:
        counts("ChannelShuffle")
        return ChannelShuffle(m.groups)
    if type(m) is nn.Hardswish:
        counts("Hardswish")
        return Hardswish()
    if type(m) is nn.Hardsigmoid:
        counts("Hardsigmoid")
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


class ConvertSummary(dict):
    """What ``convert`` did: a dict of counts per replaced module class / fused pattern (e.g.
    ``{"DWConvBNAct": 11, "conv_bn_act": 20, "squeeze_excite": 8}``), plus ``fused``: one
    ``(module path, what)`` per replacement, and ``left``: ``(module path, reason)`` for what it
    found but did not fuse (a BatchNorm2d not after a conv, a block that does not trace, ...).
    ``str()`` is the report ``verbose=True`` prints."""

    def __init__(self) -> None:
        super().__init__()
        self.fused: List[Tuple[str, str]] = []
        self.left: List[Tuple[str, str]] = []

    def add(self, what: str, path: str) -> None:
        self[what] = self.get(what, 0) + 1
        self.fused.append((path or "(model)", what))

    def leave(self, path: str, reason: str) -> None:
        self.left.append((path or "(model)", reason))

    def __str__(self) -> str:
        lines = ["torchcv_ext.convert: " + (", ".join(f"{v} x {k}" for k, v in sorted(self.items()))
                                           or "nothing to convert")]
        if self.left:
            lines.append(f"  left unfused ({len(self.left)}):")
            lines += [f"    {p}: {r}" for p, r in self.left]
        return "\n".join(lines)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _structural_pass(model: nn.Module, summary: ConvertSummary) -> None:
    """Trace and rewrite every block torch.fx can trace (see _convert_fx), outermost first; a
    Sequential inlined into its parent's rewritten forward is not rewritten on its own."""
    inlined: Set[str] = set()

    def visit(m: nn.Module, path: str) -> None:
        inlined.update(_join(path, p) for p in getattr(type(m), _convert_fx.INLINED, ()))  # converted before
        if path not in inlined and _convert_fx.traceable_target(m):
            def report(what: str, sub: str, path=path) -> None:
                if what in _PATTERNS:
                    summary.add(what, _join(path, sub))
                else:
                    summary.leave(_join(path, sub), what)
            try:
                inlined.update(_join(path, p) for p in _convert_fx.rewrite_module(m, report))
            except Exception as e:  # noqa: BLE001  (never raise: the module-structure pass stands)
                msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
                summary.leave(path, f"{type(m).__name__}.forward not traced ({type(e).__name__}: {msg}); "
                                    "its submodules are converted on their own")
        for name, child in m.named_children():
            visit(child, _join(path, name))

    visit(model, "")


_PATTERNS = {"conv_bn_act", "dwconv_bn_act", "conv_bn_add_act", "squeeze_excite", "channel_shuffle",
             "shuffle_cat", "attention"}


def _report_unfused_bn(model: nn.Module, summary: ConvertSummary) -> None:
    """Every BatchNorm not fused by either pass nor already explained."""
    covered = {p for p, _ in summary.fused} | {p for p, _ in summary.left}
    for path, m in model.named_modules():
        fused = getattr(type(m), _convert_fx.FOUND, ())
        covered.update(_join(path, sub) for _, sub in fused)
    ours: List[str] = []
    for path, m in model.named_modules():
        if type(m).__module__.startswith("torchcv_ext"):
            ours.append(path + ".")
            continue
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and path not in covered \
                and not any(path.startswith(p) for p in ours):
            summary.leave(path, "not reached: no traced forward runs a conv right before it")


def convert(model: nn.Module, verbose: bool = False, return_summary: bool = False
            ) -> Union[nn.Module, Tuple[nn.Module, ConvertSummary]]:
    """Swap, in place, the layers of ``model`` that have a fused torchcv_ext counterpart, keeping
    their weights: torchvision's classes by class (module docstring), then every other block by
    its structure (torch.fx). Returns ``model`` -- or ``(model, summary)`` with
    ``return_summary=True``; the :class:`ConvertSummary` is also ``model._torchcv_ext_converted``
    and is printed with ``verbose=True``.

    The converted model computes the same function (same outputs in eval mode, same gradients
    and BatchNorm running statistics in train mode) and has the same ``state_dict``. Converting
    twice is a no-op. It raises only for an argument that is not a model (not an nn.Module, or a
    single layer it would replace); whatever cannot be converted is left as it was and reported
    in the summary.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert: expected an nn.Module, got {type(model).__name__}")
    types = _torchvision_types()
    summary = ConvertSummary()
    root = _convert_module(model, types, lambda what: None)
    if root is not None:
        raise ValueError(f"convert: the model itself is a single {type(model).__name__} layer; convert the "
                         "model that contains it (conversion replaces submodules in place)")

    def visit(parent: nn.Module, path: str) -> None:
        for name, child in list(parent.named_children()):
            if isinstance(child, DWConvBNAct):
                continue  # already fused (e.g. a second convert)
            here = _join(path, name)
            new = _convert_module(child, types, lambda what: summary.add(what, here))
            if new is not None:
                new.train(child.training)
                setattr(parent, name, new)
                if isinstance(new, DWConvBNAct):
                    continue  # one fused op: its activation is a name, [2] only mirrors it
                child = new
            visit(child, here)

    visit(model, "")
    _fuse_shuffle_splits(model)
    _structural_pass(model, summary)
    _report_unfused_bn(model, summary)
    if verbose:
        print(summary)
    model._torchcv_ext_converted = summary
    return (model, summary) if return_summary else model
