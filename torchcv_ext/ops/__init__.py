"""Functional API of the fused ops. Each op lives in torchcv_ext/ops/<op>.py (public function,
autograd, fake kernel, reference registration); its reference in torchcv_ext/ops/reference/<op>.py.

Every function works with or without the compiled extension: without it, the pure-PyTorch
reference runs (``python -m torchcv_ext.info`` says which backend each op uses)."""
from torchcv_ext.ops._common import BACKENDS, config, ops_available
from torchcv_ext.ops.attention import attention
from torchcv_ext.ops.channel_shuffle import channel_shuffle, shuffle_cat, shuffle_cat_split
from torchcv_ext.ops.dwconv_bn_act import dwconv_bn_act, dwconv_bn_act_train, fold_bn
from torchcv_ext.ops.activation import activation, hardsigmoid, hardswish
from torchcv_ext.ops.squeeze_excite import squeeze_excite

__all__ = [
    "BACKENDS",
    "config",
    "ops_available",
    "activation",
    "attention",
    "channel_shuffle",
    "shuffle_cat",
    "shuffle_cat_split",
    "dwconv_bn_act",
    "dwconv_bn_act_train",
    "fold_bn",
    "hardsigmoid",
    "hardswish",
    "squeeze_excite",
]
