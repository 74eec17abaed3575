"""Fused squeeze-and-excitation: y = x * gate(W2 act(W1 mean_hw(x) + b1) + b2).

Schema: csrc/registration.cpp (squeeze-and-excitation section). Kernels: csrc/cpu/squeeze_excite.cpp,
csrc/cuda/squeeze_excite.cu (shared math: csrc/include/torchcv_ext/squeeze_excite.h). Reference:
ops/reference/squeeze_excite.py. Module: torchcv_ext.nn.SqueezeExcite. Tests:
python_tests/test_squeeze_excite.py. Benchmark: benchmarks/bench_squeeze_excite.py.

The op reads x twice (pool, then scale) and writes y once; its backward
``_squeeze_excite_backward`` recomputes the pooled vector and the tiny MLP from x (nothing but the
inputs is saved), reads grad twice and x once, and returns the gradients of x and all four
parameters.
"""
from __future__ import annotations

from typing import Tuple

import torch

from torchcv_ext.ops import _common
from torchcv_ext.ops.reference import squeeze_excite as ref

__all__ = ["squeeze_excite"]

_OP = "squeeze_excite"


def _as_matrix(w: torch.Tensor, name: str) -> torch.Tensor:
    """Accept a 1x1 conv weight (O, I, 1, 1) as the (O, I) matrix it is."""
    if w.dim() == 4:
        if w.shape[2:] != (1, 1):
            raise ValueError(f"squeeze_excite: {name} must be (O, I) or a 1x1 conv weight "
                             f"(O, I, 1, 1), got shape {tuple(w.shape)}")
        return w.flatten(1)
    return w


def _have_op() -> bool:
    return _common.ops_available() and hasattr(torch.ops.torchcv_ext, _OP)


def squeeze_excite(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
                   b2: torch.Tensor, act: str = "relu", gate: str = "sigmoid") -> torch.Tensor:
    """Squeeze-and-excitation of ``x`` (N, C, *spatial) in one fused op.

    ``w1`` (S, C) / ``b1`` (S,) and ``w2`` (C, S) / ``b2`` (C,) are the two 1x1 convolutions (their
    4-D conv weights are accepted too); ``act`` is the hidden activation and ``gate`` the scale
    activation, by name ("relu", "silu", ... / "sigmoid", "hardsigmoid"; see
    ``torchcv_ext.ops._common.ACTIVATIONS``). Same result as torchvision's
    ``SqueezeExcitation``; NCHW and channels_last (the output keeps the layout).
    """
    w1 = _as_matrix(w1, "w1")
    w2 = _as_matrix(w2, "w2")
    if _have_op():
        return torch.ops.torchcv_ext.squeeze_excite(x, w1, b1, w2, b2, act, gate)
    return ref.squeeze_excite(x, w1, b1, w2, b2, act, gate)
