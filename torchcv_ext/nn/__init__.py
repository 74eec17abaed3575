"""Drop-in nn.Modules built on the fused ops (names of the torchvision layers they replace)."""
from torchcv_ext.nn.channel_shuffle import ChannelShuffle
from torchcv_ext.nn.attention import MultiheadSelfAttention

__all__ = ["ChannelShuffle", "MultiheadSelfAttention"]
