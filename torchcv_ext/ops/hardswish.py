"""Memory-efficient hardswish / hardsigmoid: elementwise kernels whose autograd saves only the
input x (the backward recomputes the derivative from x).

Schemas: csrc/registration.cpp (squeeze-and-excitation section). Kernels: csrc/cpu/hardswish.cpp,
csrc/cuda/hardswish.cu (math: csrc/include/torchcv_ext/activations.h). Reference:
ops/reference/hardswish.py. Modules: torchcv_ext.nn.Hardswish / Hardsigmoid. Tests:
python_tests/test_hardswish.py.
"""
from __future__ import annotations

import torch

from torchcv_ext.ops import _common
from torchcv_ext.ops.reference import hardswish as ref

__all__ = ["hardswish", "hardsigmoid"]


def _have_op(name: str) -> bool:
    return _common.ops_available() and hasattr(torch.ops.torchcv_ext, name)


def hardswish(x: torch.Tensor) -> torch.Tensor:
    """``torch.nn.functional.hardswish``: x * relu6(x + 3) / 6. Any float dtype and layout."""
    if _have_op("hardswish"):
        return torch.ops.torchcv_ext.hardswish(x)
    return ref.hardswish(x)


def hardsigmoid(x: torch.Tensor) -> torch.Tensor:
    """``torch.nn.functional.hardsigmoid``: relu6(x + 3) / 6. Any float dtype and layout."""
    if _have_op("hardsigmoid"):
        return torch.ops.torchcv_ext.hardsigmoid(x)
    return ref.hardsigmoid(x)
