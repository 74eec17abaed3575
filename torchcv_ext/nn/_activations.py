"""Activation specs shared by the fused modules: the op's activation names
(torchcv_ext/ops/_common.py ACTIVATIONS, csrc/include/torchcv_ext/activations.h) and the
nn.Module classes they stand for."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from torchcv_ext.nn.hardswish import Hardsigmoid, Hardswish
from torchcv_ext.ops import _common

#: op activation name -> the torch.nn module class it computes.
MODULES = {
    "identity": nn.Identity,
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "hardswish": nn.Hardswish,
    "silu": nn.SiLU,
    "hardsigmoid": nn.Hardsigmoid,
    "sigmoid": nn.Sigmoid,
}
assert set(MODULES) == set(_common.ACTIVATIONS)

# Exact module types the fused ops can compute (a user subclass may change the math: not fused).
_NAMES = {cls: name for name, cls in MODULES.items()}
_NAMES[Hardswish] = "hardswish"
_NAMES[Hardsigmoid] = "hardsigmoid"


def parse_name(name: str, owner: str) -> str:
    """Validate an activation given by name ("none" means identity); case-insensitive."""
    key = name.lower()
    key = "identity" if key == "none" else key
    if key not in MODULES:
        raise ValueError(f"{owner}: unknown activation {name!r}; expected one of "
                         f"{', '.join(MODULES)} or an nn.Module class")
    return key


def fused_name(module_or_cls) -> Optional[str]:
    """The op's name for an activation module (or class), None when the fused op cannot compute it."""
    cls = module_or_cls if isinstance(module_or_cls, type) else type(module_or_cls)
    return _NAMES.get(cls)


def apply(name: str, y: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """The eager computation of the op activation ``name`` on ``y`` (in place if asked; only
    when autograd does not need ``y``)."""
    if name == "identity":
        return y
    if name == "sigmoid":
        return y.sigmoid_() if inplace else y.sigmoid()
    fn = _FUNCTIONS.get(name)
    if fn is None:
        raise ValueError(f"unknown activation {name!r}; expected one of {', '.join(MODULES)}")
    return fn(y, inplace=inplace)


_FUNCTIONS = {"relu": F.relu, "relu6": F.relu6, "hardswish": F.hardswish, "silu": F.silu,
              "hardsigmoid": F.hardsigmoid}


# The same activations as called in a forward (what torch.fx records): torch.nn.functional and
# torch functions, and Tensor methods (in-place forms included). convert() reads them here.
_CALLS = {fn: name for name, fn in _FUNCTIONS.items()}
_CALLS.update({torch.relu: "relu", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", torch.relu_: "relu"})
_METHODS = {m: name for name in MODULES for m in (name, name + "_") if hasattr(torch.Tensor, m)}


def call_name(op: str, target) -> Optional[str]:
    """The op's name for an activation *call*: ``op`` is a torch.fx node kind ("call_function" with
    a function target such as ``F.relu``, "call_method" with a Tensor method name such as
    ``"sigmoid"``); None when it is not one of the activations the fused ops compute."""
    if op == "call_function":
        return _CALLS.get(target)
    if op == "call_method":
        return _METHODS.get(target)
    return None
