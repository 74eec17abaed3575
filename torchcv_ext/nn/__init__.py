"""Drop-in nn.Modules built on the fused ops (names of the torchvision layers they replace)."""
from torchcv_ext.nn.attention import FusedMultiheadAttention, MultiheadSelfAttention
from torchcv_ext.nn.channel_shuffle import ChannelShuffle
from torchcv_ext.nn.conv_bn import FusedSequential, conv_bn_act_forward, fold_conv_bn
from torchcv_ext.nn.dwconv_bn_act import DWConvBNAct
from torchcv_ext.nn.hardswish import Hardsigmoid, Hardswish
from torchcv_ext.nn.squeeze_excite import SqueezeExcite
from torchcv_ext.nn.sync_batchnorm import SyncBatchNorm1d, SyncBatchNorm2d, SyncBatchNorm3d, convert_sync_batchnorm
from torchcv_ext.nn.blocks import *  # noqa: F401,F403,E402  (network blocks: InvertedResidual, ShuffleV2Block, ...)

__all__ = [
    "ChannelShuffle",
    "DWConvBNAct",
    "FusedMultiheadAttention",
    "FusedSequential",
    "Hardsigmoid",
    "Hardswish",
    "MultiheadSelfAttention",
    "SqueezeExcite",
    "SyncBatchNorm1d",
    "SyncBatchNorm2d",
    "SyncBatchNorm3d",
    "convert_sync_batchnorm",
    "conv_bn_act_forward",
    "fold_conv_bn",
]
