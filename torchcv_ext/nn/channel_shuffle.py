"""nn.ChannelShuffle drop-in (op: torchcv_ext/ops/channel_shuffle.py)."""
from __future__ import annotations

import torch
from torch import nn

from torchcv_ext.ops.channel_shuffle import channel_shuffle


class ChannelShuffle(nn.Module):
    """Drop-in for ``torch.nn.ChannelShuffle(groups)`` backed by the fused kernel."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        if groups < 1:
            raise ValueError(f"ChannelShuffle: groups must be >= 1, got {groups}")
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(x, self.groups)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"
