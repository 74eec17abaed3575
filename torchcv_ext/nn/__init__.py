"""Drop-in nn.Modules built on the fused ops (names of the torchvision layers they replace)."""
from torchcv_ext.nn.channel_shuffle import ChannelShuffle

__all__ = ["ChannelShuffle"]
