"""Reference channel shuffle (ShuffleNet): view (N, g, C/g, *) -> transpose -> flatten."""
from __future__ import annotations

from typing import Tuple

import torch


def _check(x: torch.Tensor, groups: int, op: str = "channel_shuffle") -> None:
    if x.dim() < 3:
        raise RuntimeError(f"{op}: x must have at least 3 dims (N, C, *spatial), got {x.dim()} dims "
                           f"of shape {tuple(x.shape)}")
    if groups < 1:
        raise RuntimeError(f"{op}: groups must be >= 1, got {groups}")
    if x.shape[1] % groups != 0:
        raise RuntimeError(f"{op}: the number of channels ({x.shape[1]}) must be divisible by "
                           f"groups ({groups})")


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    _check(x, groups)
    n, c = x.shape[:2]
    rest = x.shape[2:]
    return x.reshape(n, groups, c // groups, *rest).transpose(1, 2).reshape(n, c, *rest)


def channel_shuffle_backward(grad: torch.Tensor, groups: int) -> torch.Tensor:
    """The inverse permutation: a shuffle with C/groups groups."""
    _check(grad, groups, "_channel_shuffle_backward")
    return channel_shuffle(grad, grad.shape[1] // groups)


def _check_pair(a: torch.Tensor, b: torch.Tensor, op: str) -> None:
    if a.dim() < 3:
        raise RuntimeError(f"{op}: a must have at least 3 dims (N, C, *spatial), got {a.dim()} dims")
    if a.shape != b.shape:
        raise RuntimeError(f"{op}: a and b must have the same shape, got {tuple(a.shape)} and "
                           f"{tuple(b.shape)}")
    if a.dtype != b.dtype or a.device != b.device:
        raise RuntimeError(f"{op}: a and b must share dtype and device, got {a.dtype}/{a.device} "
                           f"and {b.dtype}/{b.device}")


def shuffle_cat(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """ShuffleNetV2's block tail: channel_shuffle(cat([a, b], 1), 2)."""
    _check_pair(a, b, "shuffle_cat")
    return channel_shuffle(torch.cat([a, b], 1), 2)


def shuffle_cat_split(a: torch.Tensor, b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """shuffle_cat followed by the next ShuffleNetV2 block's chunk(2, dim=1)."""
    _check_pair(a, b, "shuffle_cat_split")
    lo, hi = shuffle_cat(a, b).chunk(2, dim=1)
    return lo, hi


def shuffle_cat_backward(grad_lo: torch.Tensor, grad_hi: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Gradients of (a, b) from those of the two output halves: grad_a[i] = G[2i], grad_b[i] = G[2i+1]."""
    _check_pair(grad_lo, grad_hi, "_shuffle_cat_backward")
    g = torch.cat([grad_lo, grad_hi], 1)
    return g[:, 0::2], g[:, 1::2]
