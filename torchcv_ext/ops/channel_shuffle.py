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
    if type(groups) is not int:
        (groups,) = _common.int_tuple("channel_shuffle", "groups", groups, 1)
    if x.is_contiguous() and _common.eager_cpu_inference(x):
        # NCHW: ATen's kernel, which the op's CPU kernel runs too (5-7% of a ShuffleNet-sized
        # shuffle is the op's layers). channels_last: the op's own kernel (csrc/cpu/channel_shuffle.cpp).
        # Bad sizes are left to ATen's own checks (no Python ones on this path: 3 us of a call);
        # its error is replaced by the op's, which names the problem the same way on every path.
        try:
            return torch.channel_shuffle(x, groups)
        except RuntimeError:
            pass
    if _common.op_available("channel_shuffle"):
        return _common.OPS.channel_shuffle(x, groups)
    return ref.channel_shuffle(x, groups)


def shuffle_cat(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``channel_shuffle(torch.cat([a, b], 1), 2)`` in one memory pass (ShuffleNetV2 block tail)."""
    if _common.op_available("shuffle_cat"):
        return _common.OPS.shuffle_cat(a, b)
    return ref.shuffle_cat(a, b)


def shuffle_cat_split(a: torch.Tensor, b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``shuffle_cat(a, b).chunk(2, dim=1)`` as two separate tensors in one memory pass: the
    tail of one ShuffleNetV2 block fused with the split at the head of the next."""
    if _common.op_available("shuffle_cat_split"):
        return _common.OPS.shuffle_cat_split(a, b)
    return ref.shuffle_cat_split(a, b)


# ----------------------------------------------------------------------------------------------
# The op declarations (registered only when the compiled extension defined the schemas).
# Every op is linear, so its backward is the inverse permutation and the backward of the backward
# is the forward permutation again (double backward works).
# ----------------------------------------------------------------------------------------------
def _empty(shape, like: torch.Tensor) -> torch.Tensor:
    return torch.empty(shape, dtype=like.dtype, device=like.device).contiguous(
        memory_format=_common.memory_format_of(like))


def _fake_shuffle(x, groups):
    torch._check(x.dim() >= 3, lambda: "channel_shuffle: x must have at least 3 dims")
    torch._check(groups >= 1, lambda: f"channel_shuffle: groups must be >= 1, got {groups}")
    torch._check(x.shape[1] % groups == 0,
                 lambda: "channel_shuffle: the number of channels must be divisible by groups")
    return _empty(x.shape, x)


def _fake_cat(a, b):
    torch._check(a.shape == b.shape, lambda: "shuffle_cat: a and b must have the same shape")
    return _empty((a.shape[0], 2 * a.shape[1], *a.shape[2:]), a)


def _fake_split(a, b):
    torch._check(a.shape == b.shape, lambda: "shuffle_cat_split: a and b must have the same shape")
    return _empty(a.shape, a), _empty(a.shape, a)


def _save_groups(ctx, inputs, output):
    ctx.groups = inputs[1]


def _no_context(ctx, inputs, output):
    pass


def _zeros_for_none(g_lo, g_hi):
    """An unused half has no gradient: zeros of the other's shape."""
    return (torch.zeros_like(g_hi) if g_lo is None else g_lo,
            torch.zeros_like(g_lo) if g_hi is None else g_hi)


def _split_ref(a, b):
    lo, hi = ref.shuffle_cat_split(a, b)
    return _common.fresh(lo, a), _common.fresh(hi, a)


def _cat_bwd_ref(g_lo, g_hi):
    ga, gb = ref.shuffle_cat_backward(g_lo, g_hi)
    return _common.fresh(ga, g_lo), _common.fresh(gb, g_lo)


def _cat_bwd(ctx, grad):
    c = grad.shape[1] // 2
    return _common.OPS._shuffle_cat_backward(grad.narrow(1, 0, c), grad.narrow(1, c, c))


SPECS = (
    _common.OpSpec("channel_shuffle", reference=lambda x, g: _common.fresh(ref.channel_shuffle(x, g), x),
                   fake=_fake_shuffle, setup_context=_save_groups,
                   backward=lambda ctx, grad: (
                       _common.OPS._channel_shuffle_backward(grad, ctx.groups), None)),
    _common.OpSpec("_channel_shuffle_backward",
                   reference=lambda x, g: _common.fresh(ref.channel_shuffle_backward(x, g), x),
                   fake=lambda grad, groups: _empty(grad.shape, grad), setup_context=_save_groups,
                   backward=lambda ctx, grad: (_common.OPS.channel_shuffle(grad, ctx.groups), None)),
    _common.OpSpec("shuffle_cat", reference=lambda a, b: _common.fresh(ref.shuffle_cat(a, b), a),
                   fake=_fake_cat, backward=_cat_bwd, setup_context=_no_context),
    _common.OpSpec("shuffle_cat_split", reference=_split_ref, fake=_fake_split, setup_context=_no_context,
                   backward=lambda ctx, g_lo, g_hi: _common.OPS._shuffle_cat_backward(
                       *_zeros_for_none(g_lo, g_hi))),
    _common.OpSpec("_shuffle_cat_backward", reference=_cat_bwd_ref,
                   fake=lambda g_lo, g_hi: (_empty(g_lo.shape, g_lo), _empty(g_lo.shape, g_lo)),
                   setup_context=_no_context,
                   backward=lambda ctx, gga, ggb: _common.OPS.shuffle_cat_split(
                       *_zeros_for_none(gga, ggb))),
)

if _common.op_available("channel_shuffle"):
    _common.register(*SPECS)
