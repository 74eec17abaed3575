"""Reference of the elementwise ``activation`` op and its backward (PyTorch's conventions at the
kinks): the eager functions and explicit derivatives of torchcv_ext.activations."""
from __future__ import annotations

import torch

from torchcv_ext import activations


def _check(x: torch.Tensor, op: str) -> None:
    if not x.is_floating_point():
        raise RuntimeError(f"{op}: x must be a floating-point tensor, got {x.dtype}")


def activation(x: torch.Tensor, act: str) -> torch.Tensor:
    """act(x), e.g. hardswish: x * relu6(x + 3) / 6."""
    _check(x, "activation")
    return activations.forward(act, x)


def activation_backward(grad: torch.Tensor, x: torch.Tensor, act: str) -> torch.Tensor:
    """grad * act'(x) (hardswish': 0 up to -3, (2x + 3) / 6 on (-3, 3), 1 from 3)."""
    _check(x, "_activation_backward")
    if grad.shape != x.shape or grad.dtype != x.dtype or grad.device != x.device:
        raise RuntimeError(f"_activation_backward: grad ({tuple(grad.shape)}, {grad.dtype}, {grad.device}) "
                           f"must match x ({tuple(x.shape)}, {x.dtype}, {x.device})")
    return grad * activations.derivative(act, x)

