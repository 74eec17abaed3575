"""Tests of the attention op (torchcv_ext.ops.attention, torch.ops.torchcv_ext.attention /
_attention_backward) and torchcv_ext.nn.MultiheadSelfAttention.

Oracle: the explicit softmax(Q K^T * scale) V in float64 (ops/reference/attention.py). float32 and
float64 are held to the TOL table; float16 / bfloat16 to flash-attention's rule: the error of the
fused result is at most twice that of eager PyTorch in the same precision (outputs and dq, dk, dv).
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchcv_ext
from torchcv_ext.nn import MultiheadSelfAttention
from torchcv_ext.ops import attention
from torchcv_ext.ops.reference import attention as ref

from kernel_cases import ATTN_NONFINITE_SHAPES
from testing import (DEVICES, DTYPES, TOL, assert_close, assert_flash_rule, check_attention_nonfinite, eager_attention,
                     opcheck, requires_ext)

op = torch.ops.torchcv_ext.attention if torchcv_ext.extension_loaded() else None
HALF = [torch.float16, torch.bfloat16]

def _qkv(b, h, nq, nk, d, dtype, device, requires_grad=False):
    g = torch.Generator().manual_seed(1234 + nq * 7 + nk * 13 + d)
    ts = [torch.randn(b, h, n, d, generator=g, dtype=torch.float64) for n in (nq, nk, nk)]
    return [t.to(device=device, dtype=dtype).requires_grad_(requires_grad) for t in ts]


def _fwd_bwd(fn, q, k, v, go, scale):
    q, k, v = (t.detach().requires_grad_(True) for t in (q, k, v))
    out = fn(q, k, v, scale)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), go)
    return out.detach(), dq, dk, dv


# Vision lengths (odd, crossing the 64-row tiles) and head dims of the CUDA kernels.
SHAPES = [
    # (B, H, Nq, Nk, D)
    (2, 3, 1, 1, 32),
    (2, 2, 7, 7, 64),
    (1, 3, 49, 49, 32),
    (2, 2, 197, 197, 64),
    (1, 1, 130, 65, 128),
    (1, 2, 7, 200, 64),
    (1, 1, 1000, 1000, 32),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_backward_full_precision(device, dtype, shape):
    b, h, nq, nk, d = shape
    q, k, v = _qkv(b, h, nq, nk, d, dtype, device)
    go = torch.randn(b, h, nq, d, dtype=dtype, device=device)
    scale = 0.7 / math.sqrt(d)
    out, dq, dk, dv = _fwd_bwd(attention, q, k, v, go, scale)
    r = _fwd_bwd(lambda *a: ref.attention(*a)[0], q.double(), k.double(), v.double(), go.double(), scale)
    # Reductions over Nk (forward, dq) and Nq (dk, dv) terms: widen fp32 tolerance with sqrt(N).
    widen = math.sqrt(max(nq, nk) / 16) if dtype == torch.float32 else 1.0
    for got, want in zip((out, dq, dk, dv), r):
        assert got.dtype == dtype and got.shape == want.shape
        assert_close(got, want, dtype, scale=max(widen, 1.0))
    if torchcv_ext.extension_loaded():
        _, lse = op(q, k, v, scale)
        want = torch.logsumexp(q.double() @ k.double().transpose(-2, -1) * scale, -1)
        assert lse.dtype == ref.stat_dtype(dtype) and lse.shape == (b, h, nq)
        assert_close(lse, want, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("shape", SHAPES + [(2, 4, 1000, 1000, 64)], ids=lambda s: "x".join(map(str, s)))
def test_flash_attention_rule_half(device, dtype, shape):
    """fp16 / bf16: error vs the float64 reference at most 2x that of eager PyTorch in the same
    precision, for out, dq, dk and dv (flash-attention's test rule)."""
    b, h, nq, nk, d = shape
    if device == "cpu" and b * h * nq * nk > 1_000_000:
        pytest.skip("large half case: GPU only (keeps the CPU run short)")
    q, k, v = _qkv(b, h, nq, nk, d, dtype, device)
    go = torch.randn(b, h, nq, d, dtype=dtype, device=device)
    ours = _fwd_bwd(attention, q, k, v, go, None)
    eager = _fwd_bwd(eager_attention, q, k, v, go, None)
    exact = _fwd_bwd(eager_attention, q.double(), k.double(), v.double(), go.double(), None)
    for name, o, e, x in zip(("out", "dq", "dk", "dv"), ours, eager, exact):
        assert o.dtype == dtype
        assert torch.isfinite(o).all(), name
        assert_flash_rule(o, e, x, name)


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_float64(device):
    # Full Jacobian at a small size; a random projection (fast mode) across two query tiles and
    # two key tiles with partial tails. Any head dim on CPU.
    d = 6 if device == "cpu" else 32
    q, k, v = _qkv(2, 2, 3, 5, d, torch.float64, device, requires_grad=True)
    assert torch.autograd.gradcheck(attention, (q, k, v))
    q, k, v = _qkv(1, 1, 67, 70, d, torch.float64, device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, k, v: attention(q, k, v, 0.4), (q, k, v), fast_mode=True)


@requires_ext
@pytest.mark.parametrize("device", DEVICES)
def test_backward_op_vs_reference(device):
    """_attention_backward on its own: (dq, dk, dv) from a saved (out, lse)."""
    q, k, v = _qkv(2, 3, 33, 90, 32, torch.float32, device)
    go = torch.randn_like(q)
    out, lse = op(q, k, v, None)
    dq, dk, dv = torch.ops.torchcv_ext._attention_backward(go, q, k, v, out, lse, None)
    r = ref.attention_backward(go.double(), q.double(), k.double(), v.double(), out.double(),
                               lse.double(), None)
    for got, want in zip((dq, dk, dv), r):
        assert_close(got, want, torch.float32, scale=3)


@pytest.mark.parametrize("device", DEVICES)
def test_default_scale_matches_sdpa(device):
    q, k, v = _qkv(2, 4, 50, 50, 32, torch.float32, device)
    assert_close(attention(q, k, v), F.scaled_dot_product_attention(q.double(), k.double(), v.double()),
                 torch.float32, scale=2)
    assert_close(attention(q, k, v, 0.05),
                 F.scaled_dot_product_attention(q.double(), k.double(), v.double(), scale=0.05),
                 torch.float32, scale=2)


@pytest.mark.parametrize("device", DEVICES)
def test_strided_inputs(device):
    """Views straight out of a fused qkv projection (unit stride only along D), a last-dim
    non-contiguous view, and an expanded k/v: same result as contiguous inputs."""
    b, n, h, d = 2, 23, 2, 32
    qkv = torch.randn(b, n, 3, h, d, device=device, requires_grad=True)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    assert not q.is_contiguous()
    out = attention(q, k, v)
    expect = ref.attention(q.double(), k.double(), v.double())[0]
    assert_close(out, expect, torch.float32)
    if torchcv_ext.extension_loaded():
        # The op's output is (B, H, N, D) stored as (B, N, H, D): the head merge is a free view.
        assert out.transpose(1, 2).is_contiguous()
    out.sum().backward()
    assert qkv.grad is not None and torch.isfinite(qkv.grad).all()

    qt = torch.randn(b, h, d, n, device=device).transpose(-2, -1)  # stride(3) != 1
    kb = torch.randn(1, h, n, d, device=device).expand(b, h, n, d)  # stride(0) == 0
    assert_close(attention(qt, kb, kb), ref.attention(qt.double(), kb.double(), kb.double())[0],
                 torch.float32)


@requires_ext
@pytest.mark.parametrize("device", DEVICES)
def test_edge_shapes(device):
    # No keys: out = 0, lse = -inf (reference convention); empty batch; single query / key.
    q = torch.randn(1, 2, 3, 32, device=device)
    kv = torch.randn(1, 2, 0, 32, device=device)
    out, lse = op(q, kv, kv, None)
    assert (out == 0).all() and torch.isneginf(lse).all()
    r_out, r_lse = ref.attention(q, kv, kv)
    assert torch.equal(out, r_out) and torch.equal(lse, r_lse)
    e = torch.randn(0, 2, 5, 32, device=device)
    out, lse = op(e, e, e, None)
    assert out.shape == (0, 2, 5, 32) and lse.shape == (0, 2, 5)
    q, k, v = _qkv(3, 1, 1, 1, 32, torch.float32, device)
    assert_close(attention(q, k, v), v.double(), torch.float32)  # softmax of one score is 1


@requires_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck(device, dtype):
    q, k, v = _qkv(1, 2, 9, 70, 32, dtype, device, requires_grad=True)
    opcheck(torch.ops.torchcv_ext.attention.default,
                          (q, k, v, 0.3 if dtype == torch.float32 else None))
    out, lse = op(q.detach(), k.detach(), v.detach(), 0.3)
    go = torch.randn_like(out)
    opcheck(torch.ops.torchcv_ext._attention_backward.default,
                          (go, q.detach(), k.detach(), v.detach(), out, lse, 0.3))


@requires_ext
def test_torch_compile_module_fullgraph():
    torch._dynamo.reset()
    m = MultiheadSelfAttention(64, 2)
    x = torch.randn(2, 13, 64, requires_grad=True)
    cm = torch.compile(m, fullgraph=True, backend="inductor")
    y = cm(x)
    y.square().sum().backward()
    g = x.grad.clone()
    x.grad = None
    y_eager = m(x)
    y_eager.square().sum().backward()
    torch.testing.assert_close(y, y_eager, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(g, x.grad, atol=1e-5, rtol=1e-4)


@requires_ext
def test_autocast_cpu():
    q, k, v = _qkv(1, 2, 10, 10, 32, torch.float32, "cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attention(q, k, v)
    assert out.dtype == torch.bfloat16
    exp = ref.attention(q.double(), k.double(), v.double())[0]
    assert_close(out, exp, torch.bfloat16, scale=2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("grad", [False, True])  # with autograd the CPU may take eager's math
def test_bad_inputs(device, grad):
    q = torch.randn(1, 2, 5, 32, device=device, requires_grad=grad)
    with pytest.raises(RuntimeError, match="attention: q must be 4-D"):
        attention(q[0], q, q)
    with pytest.raises(RuntimeError, match="attention: k has dtype"):
        attention(q, q.double(), q)
    with pytest.raises(RuntimeError, match="attention: k and v must have the same seq_len"):
        attention(q, q, torch.randn(1, 2, 6, 32, device=device))
    with pytest.raises(RuntimeError, match="does not match q"):
        attention(q, torch.randn(1, 2, 5, 16, device=device), torch.randn(1, 2, 5, 16, device=device))
    with pytest.raises(RuntimeError, match="does not match q"):
        attention(q, torch.randn(1, 3, 5, 32, device=device), torch.randn(1, 3, 5, 32, device=device))
    with pytest.raises(RuntimeError, match="attention: head_dim must be positive"):
        attention(q[..., :0], q[..., :0], q[..., :0])
    qi = torch.ones(1, 2, 5, 32, dtype=torch.int32, device=device)
    with pytest.raises(RuntimeError, match="attention: q must be"):
        attention(qi, qi, qi)


@pytest.mark.cuda
@requires_ext
def test_other_head_dims_cuda():
    """The op raises for head dims the CUDA kernels lack; ops.attention and the modules fall back
    to SDPA for them (ViT-H/14: 80, dim 768 with 16 heads: 48)."""
    q = torch.randn(1, 2, 5, 48, device="cuda")
    for qi in (q, q[:0], q[:, :, :0]):  # empty batch / sequence: the same error, not an empty result
        with pytest.raises(RuntimeError, match="head_dim must be 32, 64 or 128 on CUDA"):
            torch.ops.torchcv_ext.attention(qi, qi, qi, None)
    out, lse = torch.ops.torchcv_ext.attention(q.double(), q.double(), q.double(), None)
    with pytest.raises(RuntimeError, match="_attention_backward: head_dim must be 32, 64 or 128 on CUDA"):
        torch.ops.torchcv_ext._attention_backward(out[:0].float(), q[:0], q[:0], q[:0], out[:0].float(),
                                                  lse[:0].float(), None)
    for d in (48, 80):
        q, k, v = (torch.randn(2, 3, 37, d, device="cuda", requires_grad=True) for _ in range(3))
        out = attention(q, k, v)
        torch.testing.assert_close(out, ref.attention(q, k, v)[0], atol=1e-5, rtol=1e-4)
        out.sum().backward()
        assert q.grad is not None and k.grad is not None and v.grad is not None
    m = MultiheadSelfAttention(96, 2).cuda()
    x = torch.randn(2, 9, 96, device="cuda")
    torch.testing.assert_close(m(x), copy.deepcopy(m).cpu()(x.cpu()).cuda(), atol=1e-5, rtol=1e-4)


@requires_ext
def test_bad_backward_args():
    q = torch.randn(1, 2, 5, 32)
    out, lse = op(q, q, q, None)
    with pytest.raises(RuntimeError, match="_attention_backward: lse must have shape"):
        torch.ops.torchcv_ext._attention_backward(out, q, q, q, out, lse[:, :, :3], None)
    with pytest.raises(RuntimeError, match="_attention_backward: grad_out must have shape"):
        torch.ops.torchcv_ext._attention_backward(out[:, :1], q, q, q, out, lse, None)


# ---- module ----
def _mha(dim, heads, **kw):
    torch.manual_seed(3)
    m = nn.MultiheadAttention(dim, heads, batch_first=True, **kw).double()
    with torch.no_grad():  # non-zero biases so the conversion of every tensor is exercised
        for p in m.parameters():
            p.normal_(0, 0.2)
    return m


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bias", [True, False])
def test_module_matches_nn_mha(device, bias):
    m = _mha(96, 3, bias=bias).to(device)
    a = MultiheadSelfAttention.from_modules(m)
    assert a.qkv.weight.dtype == torch.float64 and a.qkv.weight.device.type == device
    assert (a.qkv.bias is not None) == bias
    x = torch.randn(2, 17, 96, dtype=torch.float64, device=device)
    expect = m(x, x, x, need_weights=False)[0]
    torch.testing.assert_close(a(x), expect, atol=1e-10, rtol=1e-8)
    back = a.to_nn_mha()
    assert back.batch_first
    torch.testing.assert_close(back(x, x, x, need_weights=False)[0], expect, atol=1e-10, rtol=1e-8)


def test_module_state_dict_layout():
    a = MultiheadSelfAttention(64, 4)
    sd = a.state_dict()
    assert list(sd) == ["qkv.weight", "qkv.bias", "proj.weight", "proj.bias"]
    assert sd["qkv.weight"].shape == (192, 64) and sd["proj.weight"].shape == (64, 64)
    assert "qkv.bias" not in MultiheadSelfAttention(64, 4, qkv_bias=False).state_dict()
    # timm's Attention(dim, num_heads, qkv_bias=True) uses the same names and shapes.
    b = MultiheadSelfAttention(64, 4)
    b.load_state_dict(sd)
    x = torch.randn(2, 5, 64)
    torch.testing.assert_close(a(x), b(x))


def test_module_in_vit_block_and_grads():
    class Block(nn.Module):
        def __init__(self, dim, heads):
            super().__init__()
            self.norm1, self.attn = nn.LayerNorm(dim), MultiheadSelfAttention(dim, heads)
            self.norm2 = nn.LayerNorm(dim)
            self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

        def forward(self, x):
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))

    blk = Block(64, 2).double()
    x = torch.randn(2, 197, 64, dtype=torch.float64, requires_grad=True)
    y = blk(x)
    y.sum().backward()
    mha = blk.attn.to_nn_mha()
    xs = blk.norm1(x.detach())
    torch.testing.assert_close(blk.attn(xs), mha(xs, xs, xs, need_weights=False)[0], atol=1e-10, rtol=1e-8)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in blk.parameters())


def test_module_bad_args():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        MultiheadSelfAttention(10, 3)
    with pytest.raises(ValueError, match=r"expected input of shape \(B, N, 8\)"):
        MultiheadSelfAttention(8, 2)(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="batch_first=True"):
        MultiheadSelfAttention.from_modules(nn.MultiheadAttention(8, 2))
    with pytest.raises(ValueError, match="kdim and vdim"):
        MultiheadSelfAttention.from_modules(nn.MultiheadAttention(8, 2, kdim=4, vdim=4, batch_first=True))
    with pytest.raises(ValueError, match="add_bias_kv"):
        MultiheadSelfAttention.from_modules(nn.MultiheadAttention(8, 2, add_bias_kv=True, batch_first=True))
    with pytest.raises(ValueError, match="dropout"):
        MultiheadSelfAttention.from_modules(nn.MultiheadAttention(8, 2, dropout=0.1, batch_first=True))
    with pytest.raises(TypeError, match="nn.MultiheadAttention"):
        MultiheadSelfAttention.from_modules(nn.Linear(2, 2))


@requires_ext
@pytest.mark.parametrize("device", DEVICES)
def test_backward_deterministic(device):
    """No atomics: dq, dk, dv are bitwise reproducible."""
    q, k, v = _qkv(2, 2, 100, 130, 64, torch.float32, device)
    go = torch.randn_like(q)
    out, lse = op(q, k, v, None)
    a = torch.ops.torchcv_ext._attention_backward(go, q, k, v, out, lse, None)
    b = torch.ops.torchcv_ext._attention_backward(go, q, k, v, out, lse, None)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.cuda
@requires_ext
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("shape", [(2, 3, 97, 131, 32), (2, 3, 197, 197, 64), (1, 2, 33, 300, 128),
                                   (3, 2, 1, 7, 64)], ids=lambda s: "x".join(map(str, s)))
def test_cuda_atomic_dq_backward(dtype, shape):
    """atomic_dq (config.cuda_attention_dq = "atomic": dQ from the dK/dV pass with float32 atomics): dk and dv
    are the same bits as the separate-pass backward, dq agrees to rounding and passes the
    flash-attention rule; deterministic mode ignores the switch (bitwise reproducible)."""
    from torch.profiler import ProfilerActivity, profile

    def run_with_kernels(atomic_dq):  # the backward, and the names of the CUDA kernels it launched
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            grads = torch.ops.torchcv_ext._attention_backward(go, q, k, v, out, lse, None, atomic_dq)
            torch.cuda.synchronize()
        names = " ".join(e.name for e in prof.events())
        return grads, ("dq_convert_kernel" in names, "dq_mma_kernel" in names)

    b, h, nq, nk, d = shape
    q, k, v = _qkv(b, h, nq, nk, d, dtype, "cuda")
    go = torch.randn(b, h, nq, d, device="cuda", dtype=dtype)
    out, lse = op(q, k, v, None)
    sep, kernels = run_with_kernels(False)
    assert kernels == (False, True)  # the separate dQ pass
    (dq, dk, dv), kernels = run_with_kernels(True)
    assert kernels == (True, False)  # dQ from the dK/dV pass
    assert torch.equal(dk, sep[1]) and torch.equal(dv, sep[2])
    torch.testing.assert_close(dq, sep[0], **TOL[dtype])
    want = _fwd_bwd(lambda *a: ref.attention(*a)[0], q.double(), k.double(), v.double(), go.double(), None)[1]
    eager = _fwd_bwd(eager_attention, q, k, v, go, None)[1]
    assert_flash_rule(dq, eager, want, "dq")
    was = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        again, kernels = run_with_kernels(True)
    finally:
        torch.use_deterministic_algorithms(was[0], warn_only=was[1])
    assert kernels == (False, True)
    assert all(torch.equal(x, y) for x, y in zip(again, sep))


@pytest.mark.cuda
@requires_ext
@pytest.mark.parametrize("shape", [(1, 2, 4096, 4096, 64), (64, 12, 49, 49, 32), (8, 2, 577, 577, 128)],
                         ids=lambda s: "x".join(map(str, s)))
def test_cuda_long_and_many_heads(shape):
    test_flash_attention_rule_half("cuda", torch.bfloat16, shape)


@pytest.mark.cuda
@requires_ext
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_nonfinite_as_eager(dtype):
    """NaN and +-Inf in q, k or v give NaN / Inf where float64 eager softmax(q k^T * scale) @ v
    does (the CUDA kernels' rules, torchcv_ext/attention.h; the CUDA emulator runs the same cases).
    The CPU op is ATen's flash kernel and follows eager SDPA on the CPU instead, which gives finite
    rows for some NaN / Inf scores (test_bad_input.py)."""
    def run(q, k, v, go):
        q, k, v = (t.detach().requires_grad_(True) for t in (q, k, v))
        out = attention(q, k, v)
        return (out, *torch.autograd.grad(out, (q, k, v), go))
    for shape in ATTN_NONFINITE_SHAPES:
        check_attention_nonfinite(run, shape, dtype, "cuda")


@pytest.mark.cuda
@requires_ext
def test_cuda_misaligned_and_strided():
    """Inputs that are not 16-byte aligned (storage offset) take the copy path; strided qkv
    views take the direct path; both match the reference."""
    base = torch.randn(1 + 2 * 3 * 70 * 64, device="cuda", dtype=torch.float16)
    q = base[1:].view(2, 3, 70, 64)
    assert q.data_ptr() % 16 != 0
    out = attention(q, q, q)
    exp = ref.attention(q.double(), q.double(), q.double())[0]
    eager = eager_attention(q, q, q)
    assert_flash_rule(out, eager, exp, "out")
    qkv = torch.randn(2, 70, 3, 4, 64, device="cuda", dtype=torch.bfloat16)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    exp = ref.attention(q.double(), k.double(), v.double())[0]
    assert_flash_rule(attention(q, k, v), eager_attention(q, k, v), exp, "out")


@pytest.mark.cuda
@requires_ext
def test_cuda_autocast_module():
    m = MultiheadSelfAttention(128, 2).cuda()
    x = torch.randn(4, 50, 128, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = m(x)
    y.float().sum().backward()
    assert y.dtype == torch.bfloat16
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())


# ---- FusedMultiheadAttention: the nn.MultiheadAttention subclass convert() swaps in ----
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bias", [True, False])
def test_fused_nn_mha_subclass_matches_parent(device, bias):
    from torchcv_ext.nn import FusedMultiheadAttention
    m = _mha(96, 3, bias=bias).to(device)
    f = FusedMultiheadAttention.from_modules(m)
    assert f.in_proj_weight is m.in_proj_weight and list(f.state_dict()) == list(m.state_dict())
    x = torch.randn(2, 17, 96, dtype=torch.float64, device=device, requires_grad=True)
    calls = []
    orig = torchcv_ext.nn.attention.attention
    try:  # the fused call goes through the op (spy on it)
        torchcv_ext.nn.attention.attention = lambda *a: calls.append(1) or orig(*a)
        out, w = f(x, x, x, need_weights=False)
    finally:
        torchcv_ext.nn.attention.attention = orig
    assert calls and w is None
    expect = m(x, x, x, need_weights=False)[0]
    torch.testing.assert_close(out, expect, atol=1e-10, rtol=1e-8)
    g = torch.randn_like(out)
    params = [p for p in m.parameters()]
    ga = torch.autograd.grad(out, [x, *params], g)
    gb = torch.autograd.grad(expect, [x, *params], g)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-7)
    # Calls the fused op does not cover fall back to the parent: weights, masks, cross-attention.
    y = torch.randn(2, 5, 96, dtype=torch.float64, device=device)
    mask = torch.zeros(17, 17, dtype=torch.bool, device=device)
    mask[:, 0] = True
    for args, kw in [((x, x, x), {}), ((x, x, x), dict(need_weights=False, attn_mask=mask)),
                     ((x, y, y), dict(need_weights=False))]:
        got, want = f(*args, **kw), m(*args, **kw)
        torch.testing.assert_close(got[0], want[0], atol=1e-10, rtol=1e-8)


def test_convert_torchvision_vit_uses_fused_attention():
    import copy

    import torchvision.models as tvm
    torch.manual_seed(0)
    tv = tvm.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64,
                               mlp_dim=128, num_classes=10)
    conv = torchcv_ext.convert(copy.deepcopy(tv))
    assert conv._torchcv_ext_converted.get("FusedMultiheadAttention") == 2
    assert list(conv.state_dict()) == list(tv.state_dict())
    x = torch.randn(3, 3, 32, 32)
    tv.eval(), conv.eval()
    with torch.no_grad():
        torch.testing.assert_close(conv(x), tv(x), atol=1e-5, rtol=1e-4)
    tv.train(), conv.train()
    tv(x).sum().backward()
    conv(x).sum().backward()
    for (n, a), b in zip(conv.named_parameters(), tv.parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-4, rtol=1e-3, msg=lambda m: f"{n}: {m}")
    assert torchcv_ext.convert(conv)._torchcv_ext_converted == {}


@requires_ext
def test_config_chooses_the_dq_strategy(monkeypatch):
    """config.cuda_attention_dq reaches the backward op as its atomic_dq argument (the CUDA kernels
    act on it, the CPU kernel ignores it); a value other than "separate" / "atomic" is an error."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from torchcv_ext.ops import config

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.name() == "torchcv_ext::_attention_backward":
                seen.append(args[7] if len(args) > 7 else kwargs.get("atomic_dq", False))
            return func(*args, **(kwargs or {}))

    q, k, v = _qkv(1, 2, 9, 9, 16, torch.float32, "cpu", requires_grad=True)
    # The op (the public function trains short CPU float32 sequences with eager's math).
    attention = lambda *a: torch.ops.torchcv_ext.attention(*a)[0]  # noqa: E731
    for mode, flag in (("separate", False), ("atomic", True)):
        monkeypatch.setattr(config, "cuda_attention_dq", mode)
        seen = []
        out = attention(q, k, v)
        with Record():
            grads = torch.autograd.grad(out.sum(), (q, k, v))
        assert seen == [flag]
        expected = torch.autograd.grad(ref.attention(q, k, v)[0].sum(), (q, k, v))
        for g, e in zip(grads, expected):
            assert_close(g, e.double(), torch.float32, scale=4)
    monkeypatch.setattr(config, "cuda_attention_dq", "fast")
    with pytest.raises(ValueError, match="cuda_attention_dq"):
        torch.autograd.grad(attention(q, k, v).sum(), (q,))


@requires_ext
def test_cpu_float32_training_of_short_sequences_takes_eager_math():
    """ops.attention on the CPU in float32 with autograd: eager's math up to CPU_TRAIN_EAGER_MAX_N
    keys (faster there than a flash backward, which recomputes the probabilities), the op beyond
    and without autograd; the same values and gradients, the op's output layout either way."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from torchcv_ext.ops.attention import CPU_TRAIN_EAGER_MAX_N

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(func.name())
            return func(*args, **(kwargs or {}))

    for nk, grad, want_op in ((CPU_TRAIN_EAGER_MAX_N, True, False), (CPU_TRAIN_EAGER_MAX_N + 1, True, True),
                              (CPU_TRAIN_EAGER_MAX_N, False, True)):
        q, k, v = _qkv(1, 2, 5, nk, 16, torch.float32, "cpu", requires_grad=grad)
        seen = []
        with Record():
            out = attention(q, k, v)
        assert ("torchcv_ext::attention" in seen) == want_op, (nk, grad)
        assert out.transpose(1, 2).is_contiguous()
        want = ref.attention(q, k, v)[0]
        assert_close(out, want.double(), torch.float32)
        if grad:
            go = torch.randn_like(want)
            got = torch.autograd.grad(out, (q, k, v), go)
            for g, e in zip(got, torch.autograd.grad(want, (q, k, v), go)):
                assert_close(g, e.double(), torch.float32, scale=4)
