"""Scaled dot-product attention, flash-style: softmax(q k^T * scale) v without the N x N matrix.

Schema: csrc/registration.cpp (``attention``, ``_attention_backward``). Kernels:
csrc/cpu/attention.cpp and csrc/cuda/attention*.cu, sharing the tiling / online-softmax
bookkeeping in csrc/include/torchcv_ext/attention.h. Reference: ops/reference/attention.py.
Module: torchcv_ext.nn.MultiheadSelfAttention. Tests: python_tests/test_attention.py.
Benchmark: benchmarks/bench_attention.py.

The op returns ``(out, lse)``: lse (float32, float64 for float64 inputs; (B, H, Nq)) is the row
log-sum-exp the backward recomputes the attention probabilities from. ``out`` (and the gradients dq, dk, dv) are
(B, H, N, D) tensors laid out as (B, N, H, D) in memory, like SDPA's flash backend, so
``out.transpose(1, 2).reshape(B, N, H * D)`` (the multi-head merge) is free.

Kernels: CUDA fp16/bf16 on tensor cores (mma.sync m16n8k16, sm_80+), fp32 SIMT, fp64 as explicit
ATen math; head dims 32, 64, 128 on CUDA (``config.cuda_attention_dq`` picks the fp16 / bf16
backward's dQ strategy). CPU, any head dim: ATen's CPU flash attention (vectorized, at SDPA's
speed) through the op.
Inputs need unit stride along D only (views of a fused qkv projection are used in place).
Not supported: attention masks, causal masking, dropout. Double backward differentiates the
reference backward (ops/_common.py: register_backward_autograd).
NaN and Inf: the CUDA kernels give NaN / Inf where eager ``softmax(q @ k^T * scale) @ v`` does (a
NaN score makes its row NaN); the CPU op gives what eager SDPA gives on the CPU (the same ATen
kernel), which for some NaN / Inf scores is a finite row.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from torchcv_ext.ops import _common
from torchcv_ext.ops.reference import attention as ref

__all__ = ["attention", "CUDA_HEAD_DIMS"]

# Head dims the CUDA kernels are instantiated for (csrc/cuda/attention.cu: check_head_dim).
CUDA_HEAD_DIMS = (32, 64, 128)

# CPU float32 with autograd up to this many keys: eager's math (softmax(q k^T * scale) v, saving
# the probabilities), not the flash op. A flash backward recomputes the probabilities (5 matmuls
# to eager's 4); at short sequences that costs more than the flash forward saves: a forward +
# backward at N=197 (ViT at 224 px) ran 0.92-0.96x eager, N=384 1.07x, N=577-1024 1.13-1.30x
# (2-vCPU AVX2 VM, benchmarks/results/2026-12-08-cpu-defaults-last-rows.md). The probabilities
# kept are B * H * N^2 floats: 256 KiB per image and head at N=256.
CPU_TRAIN_EAGER_MAX_N = 256


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              scale: Optional[float] = None) -> torch.Tensor:
    """``softmax(q @ k.transpose(-2, -1) * scale) @ v`` for q (B, H, Nq, D), k and v (B, H, Nk, D).

    Same result as ``F.scaled_dot_product_attention(q, k, v, scale=scale)`` (no mask, no
    dropout); ``scale`` defaults to ``1 / sqrt(D)``. float32, float16, bfloat16 and float64;
    differentiable in q, k and v. On CUDA the fused kernels support D in {32, 64, 128}; other
    head dims (e.g. 80 in ViT-H/14, 48 in dim 768 / 16 heads) run
    ``F.scaled_dot_product_attention`` instead, so modules and converted models work for any
    head dim (``torch.ops.torchcv_ext.attention`` itself raises for them). On the CPU in float32
    with autograd and at most :data:`CPU_TRAIN_EAGER_MAX_N` keys, eager's math (faster there).
    """
    if q.is_cuda and q.dtype != torch.float64 and q.shape[-1] not in CUDA_HEAD_DIMS:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    if _cpu_train_takes_eager(q, k, v):
        s = ref.default_scale(q.shape[-1], scale)
        # In the op's (B, N, H, D) storage, whose head merge the callers take as a free view.
        return _as_bnhd(torch.softmax((q @ k.transpose(-2, -1)) * s, dim=-1) @ v)
    if _common.op_available("attention"):
        return _common.OPS.attention(q, k, v, scale)[0]
    return ref.attention(q, k, v, scale)[0]


def _cpu_train_takes_eager(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """CPU float32 inputs of the op's shapes, at most CPU_TRAIN_EAGER_MAX_N keys, autograd
    recording, no graph capture. Inputs the op would refuse go to the op, for its error."""
    return (q.is_cpu and k.is_cpu and v.is_cpu and q.dtype == k.dtype == v.dtype == torch.float32
            and q.dim() == 4 and k.dim() == 4 and k.shape == v.shape and q.shape[:2] == k.shape[:2]
            and q.shape[3] == k.shape[3] > 0 and 0 < k.shape[2] <= CPU_TRAIN_EAGER_MAX_N
            and torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
            and not _common.capturing_graph())


# ----------------------------------------------------------------------------------------------
# The op declarations (registered only when the compiled extension defined the schemas).
# ----------------------------------------------------------------------------------------------
def _bnhd_empty(shape, like: torch.Tensor) -> torch.Tensor:
    """An empty (B, H, N, D) tensor stored as (B, N, H, D): the layout of out, dq, dk and dv
    (mirrors csrc/include/torchcv_ext/attention_host.h)."""
    b, h, n, d = shape
    return torch.empty((b, n, h, d), dtype=like.dtype, device=like.device).transpose(1, 2)


def _as_bnhd(t: torch.Tensor) -> torch.Tensor:
    """A (B, H, N, D) result copied into the kernels' (B, N, H, D) storage. Functional (no
    in-place copy into an empty tensor), so exporters can trace the references as decompositions."""
    return t.transpose(1, 2).contiguous().transpose(1, 2)


def _ref_forward(q, k, v, scale=None):
    out, lse = ref.attention(q, k, v, scale)
    return _as_bnhd(out), lse.contiguous()


def _ref_backward(grad_out, q, k, v, out, lse, scale=None, atomic_dq=False):
    dq, dk, dv = ref.attention_backward(grad_out, q, k, v, out, lse, scale)
    return _as_bnhd(dq), _as_bnhd(dk), _as_bnhd(dv)


def _differentiable_backward(grad_out, q, k, v, out, lse, scale=None, atomic_dq=False):
    """The backward op as a function of (grad_out, q, k, v) for its own derivative (double
    backward): ``out`` and ``lse`` are the forward's outputs for q, k and v, so they are recomputed
    from them -- lse's dependence on q and k is part of the second derivative although lse itself
    is a non-differentiable output of the forward."""
    out, lse = ref.attention(q, k, v, scale)
    return ref.attention_backward(grad_out, q, k, v, out, lse, scale)


def _fake(q, k, v, scale=None):
    torch._check(q.dim() == 4 and k.dim() == 4 and v.dim() == 4,
                 lambda: "attention: q, k and v must be 4-D (batch, heads, seq_len, head_dim)")
    torch._check(q.dtype == k.dtype == v.dtype, lambda: "attention: q, k, v dtypes differ")
    torch._check(k.shape[2] == v.shape[2], lambda: "attention: k and v seq_len differ")
    b, h, n, _ = q.shape
    return _bnhd_empty(q.shape, q), torch.empty((b, h, n), dtype=ref.stat_dtype(q.dtype), device=q.device)


def _fake_backward(grad_out, q, k, v, out, lse, scale=None, atomic_dq=False):
    return _bnhd_empty(q.shape, q), _bnhd_empty(k.shape, k), _bnhd_empty(v.shape, v)


# Autograd: the backward op recomputes P from the saved lse. lse is an auxiliary output and not
# differentiable.
def _setup(ctx, inputs, output):
    q, k, v, scale = inputs
    out, lse = output
    ctx.scale = scale
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.mark_non_differentiable(lse)


def _backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse = ctx.saved_tensors
    if grad_out is None:
        return None, None, None, None
    mode = _common.config.cuda_attention_dq
    if mode not in ("separate", "atomic"):
        raise ValueError(f"config.cuda_attention_dq must be 'separate' or 'atomic', got {mode!r}")
    dq, dk, dv = _common.OPS._attention_backward(grad_out, q, k, v, out, lse, ctx.scale,
                                                 mode == "atomic")
    return dq, dk, dv, None


SPECS = (
    # Autocast: run in the autocast dtype (fp16/bf16 on tensor cores), like SDPA does.
    _common.OpSpec("attention", reference=_ref_forward, fake=_fake, backward=_backward, setup_context=_setup,
                   autocast=_common.autocast_to((0, 1, 2))),
    _common.OpSpec("_attention_backward", reference=_ref_backward, fake=_fake_backward,
                   differentiable=_differentiable_backward),
)

if _common.op_available("attention"):
    _common.register(*SPECS)
