"""Drop-in nn.Modules built on the fused ops (names of the torchvision layers they replace)."""
from torchcv_ext.nn.channel_shuffle import ChannelShuffle

__all__ = ["ChannelShuffle"]
from torchcv_ext.nn.blocks import *  # noqa: F401,F403  (network blocks: InvertedResidual, ShuffleV2Block, ...)
