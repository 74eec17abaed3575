"""Channel shuffle (ShuffleNet V1/V2) and ShuffleNetV2's fused concat + shuffle (+ split).

Schema: csrc/registration.cpp. Kernels: csrc/cpu/channel_shuffle.cpp, csrc/cuda/channel_shuffle.cu
(index math: csrc/include/torchcv_ext/channel_shuffle.h). Reference: ops/reference/channel_shuffle.py.
Module: torchcv_ext.nn.ChannelShuffle. Tests: python_tests/test_channel_shuffle.py.
Benchmark: benchmarks/bench_channel_shuffle.py.

Every op here is a permutation of elements, so the kernels move raw words and work for any dtype;
backward is the inverse permutation (an op of its own) and double backward is the forward again.
"""
from __future__ import annotations

from typing import Tuple

import torch

from torchcv_ext.ops import _common
from torchcv_ext.ops.reference import channel_shuffle as ref

__all__ = ["channel_shuffle", "shuffle_cat", "shuffle_cat_split"]


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Shuffle the channels of ``x`` (N, C, *) in ``groups`` groups, like
    ``torch.nn.functional.channel_shuffle``: output channel ``i * groups + j`` is input channel
    ``j * (C // groups) + i``. NCHW and channels_last; the result keeps the input's layout."""
    (groups,) = _common.int_tuple("channel_shuffle", "groups", groups, 1)
    if _common.op_available("channel_shuffle"):
        return torch.ops.torchcv_ext.channel_shuffle(x, groups)
    return ref.channel_shuffle(x, groups)


def shuffle_cat(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``channel_shuffle(torch.cat([a, b], 1), 2)`` in one memory pass (ShuffleNetV2 block tail)."""
    if _common.op_available("shuffle_cat"):
        return torch.ops.torchcv_ext.shuffle_cat(a, b)
    return ref.shuffle_cat(a, b)


def shuffle_cat_split(a: torch.Tensor, b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``shuffle_cat(a, b).chunk(2, dim=1)`` as two separate tensors in one memory pass: the
    tail of one ShuffleNetV2 block fused with the split at the head of the next."""
    if _common.op_available("shuffle_cat_split"):
        return torch.ops.torchcv_ext.shuffle_cat_split(a, b)
    return ref.shuffle_cat_split(a, b)


# ----------------------------------------------------------------------------------------------
# Dispatcher registrations (only when the compiled extension defined the schemas).
# ----------------------------------------------------------------------------------------------
def _empty(shape, like: torch.Tensor) -> torch.Tensor:
    return torch.empty(shape, dtype=like.dtype, device=like.device).contiguous(
        memory_format=_common.memory_format_of(like))


def _register() -> None:
    lib = "torchcv_ext::"

    # Reference kernels where no compiled kernel exists (e.g. CUDA when built without nvcc).
    _common.register_reference_kernels(
        "channel_shuffle", lambda x, g: _common.fresh(ref.channel_shuffle(x, g), x))
    _common.register_reference_kernels(
        "_channel_shuffle_backward", lambda x, g: _common.fresh(ref.channel_shuffle_backward(x, g), x))
    _common.register_reference_kernels(
        "shuffle_cat", lambda a, b: _common.fresh(ref.shuffle_cat(a, b), a))

    def _split_ref(a, b):
        lo, hi = ref.shuffle_cat_split(a, b)
        return _common.fresh(lo, a), _common.fresh(hi, a)

    def _split_bwd_ref(g_lo, g_hi):
        ga, gb = ref.shuffle_cat_backward(g_lo, g_hi)
        return _common.fresh(ga, g_lo), _common.fresh(gb, g_lo)

    _common.register_reference_kernels("shuffle_cat_split", _split_ref)
    _common.register_reference_kernels("_shuffle_cat_backward", _split_bwd_ref)

    # Fake (meta) kernels: shapes, dtypes and strides of the outputs, for torch.compile.
    @_common.register_fake("channel_shuffle")
    def _(x, groups):
        torch._check(x.dim() >= 3, lambda: "channel_shuffle: x must have at least 3 dims")
        torch._check(groups >= 1, lambda: f"channel_shuffle: groups must be >= 1, got {groups}")
        torch._check(x.shape[1] % groups == 0,
                     lambda: "channel_shuffle: the number of channels must be divisible by groups")
        return _empty(x.shape, x)

    @_common.register_fake("_channel_shuffle_backward")
    def _(grad, groups):
        return _empty(grad.shape, grad)

    @_common.register_fake("shuffle_cat")
    def _(a, b):
        torch._check(a.shape == b.shape, lambda: "shuffle_cat: a and b must have the same shape")
        return _empty((a.shape[0], 2 * a.shape[1], *a.shape[2:]), a)

    @_common.register_fake("shuffle_cat_split")
    def _(a, b):
        torch._check(a.shape == b.shape, lambda: "shuffle_cat_split: a and b must have the same shape")
        return _empty(a.shape, a), _empty(a.shape, a)

    @_common.register_fake("_shuffle_cat_backward")
    def _(g_lo, g_hi):
        return _empty(g_lo.shape, g_lo), _empty(g_lo.shape, g_lo)

    # Autograd. Every op is linear, so its backward is the inverse permutation and the backward
    # of the backward is the forward permutation again (double backward works).
    def _save_groups(ctx, inputs, output):
        ctx.groups = inputs[1]

    def _channel_shuffle_bwd(ctx, grad):
        return torch.ops.torchcv_ext._channel_shuffle_backward(grad, ctx.groups), None

    def _channel_shuffle_bwd_bwd(ctx, grad):
        return torch.ops.torchcv_ext.channel_shuffle(grad, ctx.groups), None

    torch.library.register_autograd(lib + "channel_shuffle", _channel_shuffle_bwd,
                                    setup_context=_save_groups)
    torch.library.register_autograd(lib + "_channel_shuffle_backward", _channel_shuffle_bwd_bwd,
                                    setup_context=_save_groups)

    def _no_context(ctx, inputs, output):
        pass

    def _shuffle_cat_bwd(ctx, grad):
        c = grad.shape[1] // 2
        return torch.ops.torchcv_ext._shuffle_cat_backward(grad.narrow(1, 0, c), grad.narrow(1, c, c))

    def _split_bwd(ctx, g_lo, g_hi):
        # An unused half has no gradient.
        g_lo = torch.zeros_like(g_hi) if g_lo is None else g_lo
        g_hi = torch.zeros_like(g_lo) if g_hi is None else g_hi
        return torch.ops.torchcv_ext._shuffle_cat_backward(g_lo, g_hi)

    def _split_bwd_bwd(ctx, gga, ggb):
        gga = torch.zeros_like(ggb) if gga is None else gga
        ggb = torch.zeros_like(gga) if ggb is None else ggb
        return torch.ops.torchcv_ext.shuffle_cat_split(gga, ggb)

    torch.library.register_autograd(lib + "shuffle_cat", _shuffle_cat_bwd, setup_context=_no_context)
    torch.library.register_autograd(lib + "shuffle_cat_split", _split_bwd, setup_context=_no_context)
    torch.library.register_autograd(lib + "_shuffle_cat_backward", _split_bwd_bwd,
                                    setup_context=_no_context)


if _common.op_available("channel_shuffle"):
    _register()
