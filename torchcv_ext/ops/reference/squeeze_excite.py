"""Reference squeeze-and-excitation (Hu et al., 2018), written like torchvision's
``SqueezeExcitation``: y = x * gate(fc2(act(fc1(mean_hw(x))))), with fc1/fc2 as dense layers.

``squeeze_excite_backward`` is the same math differentiated by hand (it is the kernel used where
no compiled backward exists, and the tests check it against autograd of ``squeeze_excite``).
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F

from torchcv_ext import activations


def _check(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
           act: str, gate: str, op: str = "squeeze_excite") -> None:
    if x.dim() < 3:
        raise RuntimeError(f"{op}: x must have at least 3 dims (N, C, *spatial), got {x.dim()} dims "
                           f"of shape {tuple(x.shape)}")
    c = x.shape[1]
    if w1.dim() != 2 or w1.shape[1] != c:
        raise RuntimeError(f"{op}: w1 must have shape (S, C) = (S, {c}), got {tuple(w1.shape)}")
    s = w1.shape[0]
    if w2.dim() != 2 or tuple(w2.shape) != (c, s):
        raise RuntimeError(f"{op}: w2 must have shape (C, S) = ({c}, {s}), got {tuple(w2.shape)}")
    if b1.dim() != 1 or b1.shape[0] != s:
        raise RuntimeError(f"{op}: b1 must have shape (S,) = ({s},), got {tuple(b1.shape)}")
    if b2.dim() != 1 or b2.shape[0] != c:
        raise RuntimeError(f"{op}: b2 must have shape (C,) = ({c},), got {tuple(b2.shape)}")
    for name, t in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2)):
        if t.device != x.device:
            raise RuntimeError(f"{op}: {name} is on {t.device} but the input is on {x.device}")
        if t.dtype != x.dtype:
            raise RuntimeError(f"{op}: {name} has dtype {t.dtype} but the input has dtype {x.dtype}")
    if not x.is_floating_point():
        raise RuntimeError(f"{op}: x must be a floating-point tensor, got {x.dtype}")
    activations.check(act)
    activations.check(gate)


def _spatial(x: torch.Tensor) -> Tuple[int, ...]:
    return tuple(range(2, x.dim()))


def _expand(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(N, C) -> (N, C, 1, ..., 1) broadcastable against x."""
    return v.reshape(v.shape + (1,) * (x.dim() - 2))


def squeeze_excite(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
                   b2: torch.Tensor, act: str = "relu", gate: str = "sigmoid") -> torch.Tensor:
    """x: (N, C, *spatial); w1: (S, C); b1: (S,); w2: (C, S); b2: (C,)."""
    _check(x, w1, b1, w2, b2, act, gate)
    pooled = x.mean(dim=_spatial(x))                                   # (N, C)
    hidden = activations.forward(act, F.linear(pooled, w1, b1))           # (N, S)
    scale = activations.forward(gate, F.linear(hidden, w2, b2))           # (N, C)
    return x * _expand(scale, x)


def squeeze_excite_backward(grad: torch.Tensor, x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor,
                            w2: torch.Tensor, b2: torch.Tensor, act: str, gate: str
                            ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dw1, db1, dw2, db2) of ``squeeze_excite`` for the output gradient ``grad``. The pooled
    vector and the tiny MLP are recomputed from x (nothing but the inputs is saved)."""
    _check(x, w1, b1, w2, b2, act, gate, op="_squeeze_excite_backward")
    if grad.shape != x.shape:
        raise RuntimeError(f"_squeeze_excite_backward: grad has shape {tuple(grad.shape)} but x has "
                           f"shape {tuple(x.shape)}")
    dims = _spatial(x)
    hw = math.prod(x.shape[2:])
    pooled = x.mean(dim=dims)
    h = F.linear(pooled, w1, b1)
    a = activations.forward(act, h)
    z = F.linear(a, w2, b2)
    g = activations.forward(gate, z)
    dg = (grad * x).sum(dim=dims)                                      # dL/dgate, (N, C)
    dz = dg * activations.derivative(gate, z)
    db2 = dz.sum(0)
    dw2 = dz.t() @ a
    dh = (dz @ w2) * activations.derivative(act, h)
    db1 = dh.sum(0)
    dw1 = dh.t() @ pooled
    dpooled = dh @ w1
    dx = grad * _expand(g, x) + _expand(dpooled / hw, x)
    return dx, dw1, db1, dw2, db2
