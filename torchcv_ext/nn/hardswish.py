"""nn.Hardswish / nn.Hardsigmoid drop-ins backed by the memory-efficient ops
(torchcv_ext/ops/activation.py: autograd saves only the input; on the CPU, eager's own kernel and
autograd, which save only the input too)."""
from __future__ import annotations

import torch
from torch import nn

from torchcv_ext import activations
from torchcv_ext.ops.activation import hardsigmoid, hardswish

__all__ = ["Hardswish", "Hardsigmoid"]


@activations.drop_in("hardswish")
class Hardswish(nn.Module):
    """Drop-in for ``torch.nn.Hardswish(inplace=False)``. ``inplace`` is accepted for
    compatibility; the result is always a new tensor (the op saves only its input for backward)."""

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return hardswish(x)


@activations.drop_in("hardsigmoid")
class Hardsigmoid(nn.Module):
    """Drop-in for ``torch.nn.Hardsigmoid(inplace=False)``; ``inplace`` is accepted and ignored."""

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return hardsigmoid(x)
