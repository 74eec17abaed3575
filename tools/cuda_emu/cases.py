"""The CUDA kernels of every op (dwconv_bn_act, squeeze_excite, channel_shuffle, hardswish,
attention) executed by the CPU emulator (cuda_emu.h and ptx_emu.h, built by build.py) on CPU
tensors, host launch code included: every launch path (NCHW tile / packed / chunked planes,
channels_last blocked / generic, vector / scalar / head / tail, split reductions, shared-memory
opt-in, deterministic and cuBLAS-style parameter gradients, the tensor-core attention kernels per
dtype and head dim with both dQ strategies, the fp32 SIMT attention kernels, empty inputs) vs the
float64 references, each run under two schedules (threads and blocks in forward, then reverse
order) that must give the same bits (a missing __syncthreads or cp.async wait, a race, or a block
reading another block's output changes them), with AddressSanitizer watching every global and
shared-memory access.

Not collected by the main test run (the library needs ASan preloaded):
python_tests/test_cuda_emulated.py runs this file in a subprocess, or by hand (tools/cuda_emu/README.md):

    LD_PRELOAD=$(g++ -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0 \\
        python -m pytest tools/cuda_emu/cases.py -q
"""
from __future__ import annotations

import contextlib
import os
import re
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
# testing.py and kernel_cases.py (the case matrix)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "python_tests"))

import build  # noqa: E402
from kernel_cases import (ATTN_IDS, ATTN_NONFINITE_SHAPES, ATTN_SHAPES, CL, DW_CASES, DW_IDS, ACTIVATION_CASES, NCHW,  # noqa: E402
                          SE_CASES, SE_IDS, SHUFFLE_CASES, misaligned)
from kernel_cases import attn_inputs as _attn_inputs  # noqa: E402
from kernel_cases import dw_inputs as _dw_inputs  # noqa: E402
from kernel_cases import se_inputs as _se_inputs  # noqa: E402
from testing import TOL, assert_flash_rule, check_attention_nonfinite, eager_attention  # noqa: E402

from torchcv_ext.ops.reference import attention as ref_attn  # noqa: E402
from torchcv_ext.ops.reference import channel_shuffle as ref_cs  # noqa: E402
from torchcv_ext.ops.reference import dwconv_bn_act as ref_dw  # noqa: E402
from torchcv_ext import activations  # noqa: E402
from torchcv_ext.ops.reference import activation as ref_act  # noqa: E402
from torchcv_ext.ops.reference import squeeze_excite as ref_se  # noqa: E402

LAUNCH_LOG = os.path.join(build.BUILD_DIR, f"launched-{os.getpid()}.txt")
os.environ["TORCHCV_EMU_LOG"] = LAUNCH_LOG  # read by every launch (coverage, last test)
build.build()
EMU = torch.ops.torchcv_ext_emu
F64 = torch.float64


def _flat(out):
    return list(out) if isinstance(out, (tuple, list)) else [out]


@contextlib.contextmanager
def env(name: str, value: str):
    """Environment variable `name` = `value` inside the block (the emulator and the ops read them
    at every call), its previous state restored after."""
    prev = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if prev is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = prev


# The two schedules (TORCHCV_EMU_ORDER): threads and blocks in forward, then in reverse order.
ORDERS = ("forward", "reverse")


def run2(fn):
    """fn() under the forward and the reverse schedule (thread and block order); the results must be
    bit-identical (every kernel here reduces in a fixed order). Returns the first."""
    results = []
    for order in ORDERS:
        with env("TORCHCV_EMU_ORDER", order):
            results.append(_flat(fn()))
    for a, b in zip(*results):
        if isinstance(a, torch.Tensor):
            assert a.shape == b.shape and a.stride() == b.stride()
            assert torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8)), \
                "results differ between thread schedules (race, missing __syncthreads, or a block " \
                "reading another block's output)"
    return results[0]


def d(t):
    return t.double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t


def close(actual, expected, dtype, scale=4.0):
    """The per-dtype tolerance (testing.TOL) widened by `scale`, the absolute part also by the
    magnitude of the expected values (sums of many terms)."""
    mag = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    tol = TOL[dtype]
    torch.testing.assert_close(actual.double(), expected.double(), atol=tol["atol"] * scale * mag,
                               rtol=tol["rtol"] * scale)


# ---- the emulator itself: each bug class of emu_selftest.cu is reported ------------------------

def test_emulator_catches_broken_kernels():
    def st(which):
        return EMU._emu_selftest(torch.empty(0), which)
    assert torch.equal(run2(lambda: st("sync"))[0], (torch.arange(64) + 1).remainder(64).float())
    with pytest.raises(AssertionError, match="differ between thread schedules"):
        run2(lambda: st("race"))
    with pytest.raises(AssertionError, match="differ between thread schedules"):
        run2(lambda: st("cross_block"))
    with pytest.raises(RuntimeError, match="exited lane"):
        st("exited_lanes")
    with pytest.raises(RuntimeError, match="deadlock"):
        st("divergent_shuffle")
    assert st("uninitialized_smem").isnan().all()
    assert st("reduce")[:2].tolist() == [sum(range(32)), sum(range(32, 64))]
    with pytest.raises(RuntimeError, match="empty grid"):
        st("empty_grid")
    with pytest.raises(RuntimeError, match="out of range"):
        st("big_block")
    with pytest.raises(RuntimeError, match="different warp operations"):
        st("shuffle_vs_syncwarp")
    assert st("static_smem_fresh").isnan().all()
    with pytest.raises(RuntimeError, match="cudaFuncSetAttribute"):
        st("smem_no_optin")
    assert st("smem_optin").isnan().all()


def test_emulator_ptx_instructions():
    """ptx_emu.h: mma.sync and ldmatrix.trans give the PTX ISA's results, and misuse is reported."""
    def st(which):
        return EMU._emu_selftest(torch.empty(0), which)
    r, k, n = torch.arange(16), torch.arange(16), torch.arange(8)
    a = ((r[:, None] + 2 * k[None, :]) % 5 - 2).float()
    b = ((3 * k[:, None] + n[None, :]) % 7 - 3).float()
    assert torch.equal(run2(lambda: st("mma"))[0], (a @ b)[:8].flatten())
    with pytest.raises(RuntimeError, match="exited lane"):
        st("mma_exited_lanes")
    lane = torch.arange(32)
    g, t = lane // 4, lane % 4
    expected = torch.stack([16 * (2 * t) + g, 16 * (2 * t + 1) + g], 1).flatten().float()
    assert torch.equal(run2(lambda: st("ldmatrix_trans"))[0], expected)
    with pytest.raises(RuntimeError, match="not 16-byte aligned"):
        st("ldmatrix_misaligned")
    with pytest.raises(RuntimeError, match="bank conflict"):
        st("ldmatrix_bank_conflict")
    # cp.async: even threads copy, odd ones zero-fill; every thread reads its neighbour's 4 floats.
    src = (torch.arange(64) + 1).float().view(16, 4)
    src[1::2] = 0
    assert torch.equal(run2(lambda: st("cp_async_wait"))[0], src.roll(-1, 0).flatten())
    with pytest.raises(AssertionError, match="differ between thread schedules"):
        run2(lambda: st("cp_async_no_wait"))


# ---- depthwise conv + BN + activation (cases: python_tests/kernel_cases.py) ----------------------
@pytest.mark.parametrize("case", DW_CASES, ids=DW_IDS)
@pytest.mark.parametrize("act", ["silu", "hardswish"])
def test_dwconv_forward_ops(case, act):
    x, w, conv = _dw_inputs(case, torch.float32)
    c = x.shape[1]
    sc, sh = torch.rand(c) + 0.5, torch.randn(c)
    y = run2(lambda: EMU.dwconv_bn_act(x, w, sc, sh, *conv, act))[0]
    assert y.is_contiguous(memory_format=case[8])
    close(y, ref_dw.dwconv_bn_act(d(x), d(w), d(sc), d(sh), *conv, act), torch.float32)
    z, mean, var = run2(lambda: EMU.dwconv_bn_stats(x, w, *conv))
    z_ref, mean_ref, var_ref = ref_dw.dwconv_bn_stats(d(x), d(w), *conv)
    close(z, z_ref, torch.float32)
    close(mean, mean_ref, torch.float32)
    close(var, var_ref, torch.float32)
    y2 = run2(lambda: EMU.scale_shift_act(z, sc, sh, act, mean))[0]
    close(y2, ref_dw.scale_shift_act(d(z), d(sc), d(sh), act, d(mean)), torch.float32)


@pytest.mark.parametrize("case", DW_CASES, ids=DW_IDS)
def test_dwconv_backward_ops(case):
    x, w, conv = _dw_inputs(case, torch.float32, seed=1)
    c = x.shape[1]
    z, mean, _ = EMU.dwconv_bn_stats(x, w, *conv)
    sc, sh = torch.rand(c) + 0.5, torch.randn(c)
    g = torch.randn(z.shape).contiguous(memory_format=case[8])
    act = "hardswish"
    for mu in (mean, None):
        gz, gs, gb = run2(lambda: EMU._scale_shift_act_backward(g, z, sc, sh, act, mu))
        e = ref_dw.scale_shift_act_backward(d(g), d(z), d(sc), d(sh), act, d(mu))
        for a, b in zip((gz, gs, gb), e):
            close(a, b, torch.float32)
    # sums only (the train op's backward): no gz written
    gz0, gs, gb = run2(lambda: EMU._scale_shift_act_backward(g, z, sc, sh, act, mean, False))
    e = ref_dw.scale_shift_act_backward(d(g), d(z), d(sc), d(sh), act, d(mean))
    assert gz0.numel() == 0
    close(gs, e[1], torch.float32)
    close(gb, e[2], torch.float32)
    gm, gv = torch.randn(c), torch.randn(c)
    for gmi, gvi in ((gm, gv), (None, None), (gm, None)):
        gx, gw = run2(lambda: EMU._dwconv_bn_stats_backward(g, gmi, gvi, x, z, mean, w, *conv))
        e = ref_dw.dwconv_bn_stats_backward(d(g), d(gmi), d(gvi), d(x), d(z), d(mean), d(w), *conv)
        assert gx.is_contiguous(memory_format=case[8])
        close(gx, e[0], torch.float32)
        close(gw.view_as(e[1]), e[1], torch.float32)
    # g is the gradient of y = act((z - mean) * sc + sh): z's applied inside the conv backward
    # (the train op's backward; the eval op's: no statistics gradients, centre 0)
    zero = torch.zeros(c)
    for gmi, gvi, mu in ((gm, gv, mean), (None, None, zero)):
        gx, gw = run2(lambda: EMU._dwconv_bn_stats_backward(g, gmi, gvi, x, z, mu, w, *conv, sc, sh, act))
        e = ref_dw.dwconv_bn_stats_backward(d(g), d(gmi), d(gvi), d(x), d(z), d(mu), d(w), *conv,
                                            d(sc), d(sh), act)
        close(gx, e[0], torch.float32)
        close(gw.view_as(e[1]), e[1], torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("case", [DW_CASES[0], DW_CASES[3], DW_CASES[6], DW_CASES[8], DW_CASES[11]],
                         ids=[DW_IDS[i] for i in (0, 3, 6, 8, 11)])
def test_dwconv_dtypes(case, dtype):
    x, w, conv = _dw_inputs(case, dtype, seed=2)
    c = x.shape[1]
    sc, sh = torch.rand(c) + 0.5, torch.randn(c)
    if dtype == F64:
        sc, sh = sc.double(), sh.double()
    y = run2(lambda: EMU.dwconv_bn_act(x, w, sc, sh, *conv, "relu6"))[0]
    assert y.dtype == dtype
    close(y, ref_dw.dwconv_bn_act(d(x), d(w), d(sc), d(sh), *conv, "relu6"), dtype)
    z, mean, var = run2(lambda: EMU.dwconv_bn_stats(x, w, *conv))
    z_ref, mean_ref, var_ref = ref_dw.dwconv_bn_stats(d(x), d(w), *conv)
    close(z, z_ref, dtype)
    close(mean, mean_ref, dtype)
    close(var, var_ref, dtype)
    g = torch.randn(z.shape).to(dtype).contiguous(memory_format=case[8])
    gx, gw = run2(lambda: EMU._dwconv_bn_stats_backward(g, mean, var, x, z, mean, w, *conv))
    e = ref_dw.dwconv_bn_stats_backward(d(g), d(mean), d(var), d(x), d(z), d(mean), d(w), *conv)
    close(gx, e[0], dtype, scale=8.0)
    close(gw.view_as(e[1]), e[1], dtype, scale=8.0)


@pytest.mark.parametrize("case", [DW_CASES[1], DW_CASES[9]], ids=[DW_IDS[1], DW_IDS[9]])
def test_dwconv_train_op(case):
    """dwconv_bn_act_train (stats, BatchNorm scale from the batch variance, scale_shift_act) on the
    CUDA host code, against the reference layer."""
    x, w, conv = _dw_inputs(case, torch.float32, seed=6)
    c = x.shape[1]
    gamma, beta = torch.rand(c) + 0.5, torch.randn(c)
    for gm, bt in ((gamma, beta), (None, None)):
        y, mean, var, z = run2(lambda: EMU.dwconv_bn_act_train(x, w, gm, bt, 1e-3, *conv, "silu"))
        e = ref_dw.dwconv_bn_act_train(d(x), d(w), d(gm), d(bt), 1e-3, *conv, "silu")
        assert y.is_contiguous(memory_format=case[8]) and z.is_contiguous(memory_format=case[8])
        for a, b in zip((y, mean, var), e):
            close(a, b, torch.float32)
        close(z, ref_dw.dwconv_bn_stats(d(x), d(w), *conv)[0], torch.float32)


def test_dwconv_empty_batch():
    """N = 0: no kernel launch with an empty grid, statistics NaN like the CPU op."""
    x = torch.randn(0, 4, 9, 9)
    w = torch.randn(4, 1, 3, 3)
    conv = ([1, 1], [1, 1], [1, 1])
    assert EMU.dwconv_bn_act(x, w, torch.ones(4), torch.zeros(4), *conv, "relu").shape == (0, 4, 9, 9)
    z, mean, var = EMU.dwconv_bn_stats(x, w, *conv)
    assert z.shape == (0, 4, 9, 9) and mean.isnan().all() and var.isnan().all()
    gx, gw = EMU._dwconv_bn_stats_backward(z, None, None, x, z, mean, w, *conv)
    assert gx.shape == x.shape and (gw == 0).all()
    gz, gs, gb = EMU._scale_shift_act_backward(z, z, torch.ones(4), torch.zeros(4), "relu")
    assert gz.shape == z.shape and (gs == 0).all() and (gb == 0).all()


# ---- squeeze-and-excitation ------------------------------------------------------------------
@contextlib.contextmanager
def deterministic(on: bool):
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(on)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev)


@pytest.mark.parametrize("case", SE_CASES, ids=SE_IDS)
@pytest.mark.parametrize("act,gate", [("relu", "hardsigmoid"), ("silu", "sigmoid")])
def test_squeeze_excite(case, act, gate):
    args = _se_inputs(case, torch.float32)
    y = run2(lambda: EMU.squeeze_excite(*args, act, gate))[0]
    close(y, ref_se.squeeze_excite(*map(d, args), act, gate), torch.float32)
    g = torch.randn(y.shape).contiguous(memory_format=CL if case[4] is CL and y.dim() == 4 else NCHW)
    expected = ref_se.squeeze_excite_backward(d(g), *map(d, args), act, gate)
    for det in (True, False):
        with deterministic(det):
            grads = run2(lambda: EMU._squeeze_excite_backward(g, *args, act, gate))
        for a, b in zip(grads, expected):
            close(a, b, torch.float32, scale=8.0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("case", [SE_CASES[1], SE_CASES[2], SE_CASES[3], SE_CASES[4]],
                         ids=[SE_IDS[i] for i in (1, 2, 3, 4)])
def test_squeeze_excite_dtypes(case, dtype):
    args = _se_inputs(case, dtype, seed=3)
    y = run2(lambda: EMU.squeeze_excite(*args, "hardswish", "hardsigmoid"))[0]
    assert y.dtype == dtype
    close(y, ref_se.squeeze_excite(*map(d, args), "hardswish", "hardsigmoid"), dtype)
    g = torch.randn(y.shape).to(dtype).contiguous(memory_format=CL if case[4] is CL else NCHW)
    with deterministic(True):
        grads = run2(lambda: EMU._squeeze_excite_backward(g, *args, "hardswish", "hardsigmoid"))
    expected = ref_se.squeeze_excite_backward(d(g), *map(d, args), "hardswish", "hardsigmoid")
    for a, b in zip(grads, expected):
        close(a, b, dtype, scale=16.0)


def test_squeeze_excite_empty_batch():
    args = _se_inputs((0, 8, 2, (5, 5), NCHW, False), torch.float32)
    assert EMU.squeeze_excite(*args, "relu", "sigmoid").shape == (0, 8, 5, 5)
    grads = EMU._squeeze_excite_backward(torch.empty(0, 8, 5, 5), *args, "relu", "sigmoid")
    assert grads[0].shape == (0, 8, 5, 5) and all((t == 0).all() for t in grads[1:])


# ---- channel shuffle ------------------------------------------------------------------------------

@pytest.mark.parametrize("shape,groups,layout", SHUFFLE_CASES)
def test_channel_shuffle(shape, groups, layout):
    x = torch.randn(shape)
    if x.dim() == 4:
        x = x.contiguous(memory_format=layout)
    y = run2(lambda: EMU.channel_shuffle(x, groups))[0]
    assert torch.equal(y, ref_cs.channel_shuffle(x, groups))
    assert torch.equal(run2(lambda: EMU._channel_shuffle_backward(y, groups))[0],
                       ref_cs.channel_shuffle_backward(y, groups))


@pytest.mark.parametrize("layout", [NCHW, CL])
def test_shuffle_cat(layout):
    a = torch.randn(2, 6, 5, 3).contiguous(memory_format=layout)
    b = torch.randn(2, 6, 5, 3).contiguous(memory_format=layout)
    assert torch.equal(run2(lambda: EMU.shuffle_cat(a, b))[0], ref_cs.shuffle_cat(a, b))
    for u, v in zip(run2(lambda: EMU.shuffle_cat_split(a, b)), ref_cs.shuffle_cat_split(a, b)):
        assert torch.equal(u, v)
    for u, v in zip(run2(lambda: EMU._shuffle_cat_backward(a, b)), ref_cs.shuffle_cat_backward(a, b)):
        assert torch.equal(u, v)


# ---- elementwise activation --------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("n,mis", ACTIVATION_CASES)
def test_activation(dtype, n, mis):
    x = (torch.randn(n) * 4).to(dtype)
    g = torch.randn(n).to(dtype)
    if mis:
        x, g = misaligned(x), misaligned(g)
    for act in activations.NAMES:
        close(run2(lambda: EMU.activation(x, act))[0], ref_act.activation(d(x), act), dtype)
        close(run2(lambda: EMU._activation_backward(g, x, act))[0],
              ref_act.activation_backward(d(g), d(x), act), dtype)


# ---- 64-bit index variants (csrc/cuda/index_width.cuh), forced at small sizes -------------------

def index64():
    return env("TORCHCV_EMU_INDEX64", "1")


@pytest.mark.parametrize("case", [DW_CASES[1], DW_CASES[9]], ids=[DW_IDS[1], DW_IDS[9]])
def test_dwconv_index64(case):
    """scale_shift_act with int64 indices (NCHW and channels_last), and the train backward after it
    (the gradient kernels index in 64 bits throughout)."""
    x, w, conv = _dw_inputs(case, torch.float32, seed=4)
    c = x.shape[1]
    sc, sh = torch.rand(c) + 0.5, torch.randn(c)
    with index64():
        z, mean, var = EMU.dwconv_bn_stats(x, w, *conv)
        y = run2(lambda: EMU.scale_shift_act(z, sc, sh, "silu", mean))[0]
        g = torch.randn(z.shape).contiguous(memory_format=case[8])
        gx, _ = run2(lambda: EMU._dwconv_bn_stats_backward(g, mean, var, x, z, mean, w, *conv))
    close(y, ref_dw.scale_shift_act(d(z), d(sc), d(sh), "silu", d(mean)), torch.float32)
    e = ref_dw.dwconv_bn_stats_backward(d(g), d(mean), d(var), d(x), d(z), d(mean), d(w), *conv)
    close(gx, e[0], torch.float32)


@pytest.mark.parametrize("case", [DW_CASES[8], DW_CASES[14]], ids=[DW_IDS[8], DW_IDS[14]])
def test_dwconv_cl_long_rows(case):
    """The channels_last reductions (batch statistics, scale_shift_act backward, weight gradient)
    with more than 8 pixels per thread and a partial last chunk: the grid sized for a 4-block
    target (TORCHCV_EMU_CL_BLOCKS, csrc/cuda/dwconv_bn_act.cu's cl_rows_per_thread)."""
    x, w, conv = _dw_inputs(case, torch.float32, seed=5)
    c = x.shape[1]
    sc, sh = torch.rand(c) + 0.5, torch.randn(c)
    with env("TORCHCV_EMU_CL_BLOCKS", "4"):
        z, mean, var = run2(lambda: EMU.dwconv_bn_stats(x, w, *conv))
        g = torch.randn(z.shape).contiguous(memory_format=CL)
        gz, gs, gb = run2(lambda: EMU._scale_shift_act_backward(g, z, sc, sh, "relu", mean))
        gx, gw = run2(lambda: EMU._dwconv_bn_stats_backward(g, mean, var, x, z, mean, w, *conv))
    for a, b in zip((z, mean, var), ref_dw.dwconv_bn_stats(d(x), d(w), *conv)):
        close(a, b, torch.float32)
    for a, b in zip((gz, gs, gb), ref_dw.scale_shift_act_backward(d(g), d(z), d(sc), d(sh), "relu", d(mean))):
        close(a, b, torch.float32)
    e = ref_dw.dwconv_bn_stats_backward(d(g), d(mean), d(var), d(x), d(z), d(mean), d(w), *conv)
    close(gx, e[0], torch.float32)
    close(gw, e[1], torch.float32)


@pytest.mark.parametrize("layout", [NCHW, CL])
def test_channel_shuffle_index64(layout):
    x = torch.randn(2, 12, 5, 7).contiguous(memory_format=layout)
    with index64():
        y = run2(lambda: EMU.channel_shuffle(x, 3))[0]
        gx = run2(lambda: EMU._channel_shuffle_backward(y, 3))[0]
    assert torch.equal(y, ref_cs.channel_shuffle(x, 3))
    assert torch.equal(gx, ref_cs.channel_shuffle_backward(y, 3))


# ---- attention ------------------------------------------------------------------------------------
HALF = [torch.float16, torch.bfloat16]


def _attn_expected(q, k, v, go, scale):
    """float64 (out, lse, dq, dk, dv)."""
    q, k, v = (t.double().requires_grad_(True) for t in (q, k, v))
    out, lse = ref_attn.attention(q, k, v, scale)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), go.double())
    return out.detach(), lse, dq, dk, dv


def _attn_eager(q, k, v, go, scale):
    """(out, dq, dk, dv) of plain matmul-softmax in the inputs' precision: the flash-attention
    rule's error baseline."""
    q, k, v = (t.detach().requires_grad_(True) for t in (q, k, v))
    out = eager_attention(q, k, v, scale)
    return (out.detach(), *torch.autograd.grad(out, (q, k, v), go))


def _attn_check(got, q, k, v, go, scale):
    """got = (out, lse, dq, dk, dv) vs float64: float32 by TOL (widened with the reduction
    length), float16 / bfloat16 by flash-attention's rule (at most 2x eager's error)."""
    exact = _attn_expected(q, k, v, go, scale)
    dtype = q.dtype
    close(got[1], exact[1], torch.float32)  # lse: float32 for every input dtype
    if dtype == torch.float32:
        widen = (max(q.shape[2], k.shape[2]) / 16) ** 0.5
        for a, b in zip((got[0], *got[2:]), (exact[0], *exact[2:])):
            close(a, b, dtype, scale=max(widen, 1.0) * 4)
        return
    eager = _attn_eager(q, k, v, go, scale)
    for name, a, e, x in zip(("out", "dq", "dk", "dv"), (got[0], *got[2:]), eager, (exact[0], *exact[2:])):
        assert a.dtype == dtype and a.shape == x.shape
        assert_flash_rule(a, e, x, name)


def _attn_run(q, k, v, go, scale):
    out, lse = run2(lambda: EMU.attention(q, k, v, scale))
    grads = run2(lambda: EMU._attention_backward(go, q, k, v, out, lse, scale))
    return out, lse, *grads


@pytest.mark.parametrize("shape", ATTN_SHAPES, ids=ATTN_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, *HALF])
def test_attention(shape, dtype):
    """Forward and backward (the separate, deterministic dQ pass for fp16 / bf16)."""
    q, k, v, go = _attn_inputs(shape, dtype, layout="bnhd" if shape[2] == 70 else "bhnd")
    scale = 0.3 if shape[2] == 130 else None
    got = _attn_run(q, k, v, go, scale)
    assert got[0].transpose(1, 2).is_contiguous()  # (B, N, H, D) storage
    _attn_check(got, q, k, v, go, scale)


@pytest.mark.parametrize("shape", ATTN_SHAPES[1:], ids=ATTN_IDS[1:])
@pytest.mark.parametrize("dtype", HALF)
def test_attention_atomic_dq(shape, dtype):
    """The dK/dV pass that also produces dQ with float32 atomics, then dq_convert_kernel; off in
    deterministic mode (the same bits as the separate pass). dQ's atomic sums depend on the block
    order (reversed in the reverse schedule), so each schedule's result is checked on its own."""
    q, k, v, go = _attn_inputs(shape, dtype, seed=1)
    out, lse = EMU.attention(q, k, v, None)
    separate = EMU._attention_backward(go, q, k, v, out, lse, None)
    for order in ORDERS:
        # atomic_dq=True: the fp16 / bf16 backward's dQ from atomics in the dK/dV pass
        # (csrc/cuda/attention.cu: use_atomic_dq); deterministic mode ignores it.
        with env("TORCHCV_EMU_ORDER", order):
            grads = EMU._attention_backward(go, q, k, v, out, lse, None, True)
            with deterministic(True):
                det = EMU._attention_backward(go, q, k, v, out, lse, None, True)
        _attn_check((out, lse, *grads), q, k, v, go, None)
        for a, b in zip(det, separate):
            assert torch.equal(a, b)
        assert torch.equal(grads[1], separate[1]) and torch.equal(grads[2], separate[2])  # dk, dv


def test_attention_misaligned_and_edge_inputs():
    # Rows not 16-byte aligned: the host code copies them (rows_ready) before the 16-byte copies.
    q, k, v, go = _attn_inputs((1, 2, 9, 11, 32), torch.float16, seed=2)
    q, k, v, go = (misaligned(t) for t in (q, k, v, go))
    assert q.data_ptr() % 16 != 0
    _attn_check(_attn_run(q, k, v, go, None), q, k, v, go, None)
    # Empty batch / no queries / no keys: no launch (an empty grid is an error in the emulator).
    for dtype in (torch.float32, torch.bfloat16):
        e = torch.randn(0, 2, 5, 64).to(dtype)
        out, lse = EMU.attention(e, e, e, None)
        assert out.shape == (0, 2, 5, 64) and lse.shape == (0, 2, 5)
        q = torch.randn(1, 2, 3, 64).to(dtype)
        kv = torch.randn(1, 2, 0, 64).to(dtype)
        out, lse = EMU.attention(q, kv, kv, None)
        assert (out == 0).all() and torch.isneginf(lse).all()
        grads = EMU._attention_backward(q, q, kv, kv, out, lse, None)
        assert all((t == 0).all() for t in grads) and grads[1].shape == kv.shape
    with pytest.raises(RuntimeError, match="head_dim must be 32, 64 or 128 on CUDA"):
        EMU.attention(*(torch.randn(1, 1, 4, 48).half() for _ in range(3)), None)


@pytest.mark.parametrize("dtype", [torch.float32, *HALF])
def test_attention_nonfinite_as_eager(dtype):
    """NaN and +-Inf in q, k or v: out, dq, dk and dv are NaN / Inf exactly where float64 eager
    softmax(q k^T * scale) @ v and its autograd are (the rules in torchcv_ext/attention.h), with
    one key tile and masked keys after it, and with two key tiles."""
    def run(q, k, v, go):
        out, lse = EMU.attention(q, k, v, None)
        return (out, *EMU._attention_backward(go, q, k, v, out, lse, None))
    for shape in ATTN_NONFINITE_SHAPES:
        check_attention_nonfinite(run, shape, dtype)


# ---- coverage: every kernel of the emulated .cu files was launched by the cases above -----------

def test_every_kernel_and_launch_site_reached():
    """Runs last (file order): every __global__ function of the emulated files, and every launch
    site (as spelled in the source), ran in the cases above."""
    defined, sites = set(), set()
    for name in build.KERNEL_FILES + build.HEADER_FILES:
        with open(os.path.join(build.CUDA_DIR, name)) as f:
            src = f.read()
        defined |= set(re.findall(r"__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?(\w+)", src))
        sites |= {m.group(1) for m in build._LAUNCH.finditer(src)}
    assert len(defined) >= 20 and len(sites) >= 30, (defined, sites)
    with open(LAUNCH_LOG) as f:
        launched = {line.strip() for line in f if line.strip()}
    os.remove(LAUNCH_LOG)
    kernels = {site.split("<")[0] for site in launched}
    assert not defined - kernels, f"kernels no case launches: {sorted(defined - kernels)}"
    missing = sites - launched
    assert not missing, f"launch sites no case reaches: {sorted(missing)}"
