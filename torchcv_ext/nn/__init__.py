"""Drop-in nn.Modules built on the fused ops (names of the torchvision layers they replace)."""
from torchcv_ext.nn.channel_shuffle import ChannelShuffle
from torchcv_ext.nn.squeeze_excite import SqueezeExcite
from torchcv_ext.nn.hardswish import Hardsigmoid, Hardswish

__all__ = ["ChannelShuffle", "SqueezeExcite", "Hardswish", "Hardsigmoid"]
