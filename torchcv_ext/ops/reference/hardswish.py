"""Reference hardswish / hardsigmoid and their derivatives (PyTorch's conventions at the kinks)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _check(x: torch.Tensor, op: str) -> None:
    if not x.is_floating_point():
        raise RuntimeError(f"{op}: x must be a floating-point tensor, got {x.dtype}")


def hardswish(x: torch.Tensor) -> torch.Tensor:
    """x * relu6(x + 3) / 6."""
    _check(x, "hardswish")
    return F.hardswish(x)


def hardsigmoid(x: torch.Tensor) -> torch.Tensor:
    """relu6(x + 3) / 6."""
    _check(x, "hardsigmoid")
    return F.hardsigmoid(x)


def _check_pair(grad: torch.Tensor, x: torch.Tensor, op: str) -> None:
    _check(x, op)
    if grad.shape != x.shape or grad.dtype != x.dtype or grad.device != x.device:
        raise RuntimeError(f"{op}: grad ({tuple(grad.shape)}, {grad.dtype}, {grad.device}) must match "
                           f"x ({tuple(x.shape)}, {x.dtype}, {x.device})")


def hardswish_backward(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """grad * hardswish'(x): 0 up to -3, (2x + 3) / 6 on (-3, 3), 1 from 3 (PyTorch's values at the kinks)."""
    _check_pair(grad, x, "_hardswish_backward")
    d = torch.where(x <= -3, torch.zeros_like(x), torch.where(x < 3, (2 * x + 3) / 6, torch.ones_like(x)))
    return grad * d


def hardsigmoid_backward(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """grad * hardsigmoid'(x): 1/6 on (-3, 3), 0 elsewhere."""
    _check_pair(grad, x, "_hardsigmoid_backward")
    return torch.where((x > -3) & (x < 3), grad / 6, torch.zeros_like(grad))
