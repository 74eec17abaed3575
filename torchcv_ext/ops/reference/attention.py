"""Reference scaled dot-product attention: the explicit softmax(Q K^T * scale) V.

q: (B, H, Nq, D), k and v: (B, H, Nk, D). Returns ``(out, lse)`` with out (B, H, Nq, D) in the
input dtype and lse = logsumexp(Q K^T * scale, -1) in float32 (float64 for float64 inputs), (B, H, Nq): the two tensors the
fused kernels produce (lse is what the flash-style backward recomputes the attention from).
Written for clarity: it materializes the Nq x Nk matrix. Differentiable by autograd, any dtype.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, op: str = "attention") -> None:
    """The argument rules shared by the reference, the fake kernels and (in C++) the kernels."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise RuntimeError(f"{op}: {name} must be 4-D (batch, heads, seq_len, head_dim), got "
                               f"{t.dim()} dims of shape {tuple(t.shape)}")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise RuntimeError(f"{op}: {name} has dtype {t.dtype} but q has dtype {q.dtype}")
        if t.device != q.device:
            raise RuntimeError(f"{op}: {name} is on {t.device} but q is on {q.device}")
    if not q.is_floating_point():
        raise RuntimeError(f"{op}: q must be a floating-point tensor, got {q.dtype}")
    b, h, _, d = q.shape
    for name, t in (("k", k), ("v", v)):
        if t.shape[0] != b or t.shape[1] != h or t.shape[3] != d:
            raise RuntimeError(f"{op}: {name} of shape {tuple(t.shape)} does not match q of shape "
                               f"{tuple(q.shape)} in batch, heads or head_dim")
    if k.shape[2] != v.shape[2]:
        raise RuntimeError(f"{op}: k and v must have the same seq_len, got {k.shape[2]} and "
                           f"{v.shape[2]}")
    if d == 0:
        raise RuntimeError(f"{op}: head_dim must be positive, got shape {tuple(q.shape)}")


def stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of lse: float32, float64 for float64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def default_scale(head_dim: int, scale: Optional[float]) -> float:
    return 1.0 / math.sqrt(head_dim) if scale is None else float(scale)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              scale: Optional[float] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """softmax(q @ k^T * scale) @ v and the row log-sum-exp of q @ k^T * scale.

    Computed in float32 for half inputs (float64 stays float64); out is cast back to q's dtype.
    ``scale`` defaults to 1/sqrt(head_dim). With k/v of length 0 the output is 0 and lse is -inf.
    """
    check_inputs(q, k, v)
    s = default_scale(q.shape[-1], scale)
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    scores = torch.matmul(q.to(acc), k.to(acc).transpose(-2, -1)) * s
    lse = torch.logsumexp(scores, dim=-1)
    if k.shape[2] == 0:
        out = torch.zeros(q.shape, dtype=acc, device=q.device)
    else:
        p = torch.softmax(scores, dim=-1)
        out = torch.matmul(p, v.to(acc))
    return out.to(q.dtype), lse.to(stat_dtype(q.dtype))


def attention_backward(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       out: torch.Tensor, lse: torch.Tensor, scale: Optional[float] = None
                       ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) of attention, written the way the flash backward computes them: recompute
    P = exp(S - lse), then dV = P^T dO, dP = dO V^T, D = rowsum(dO * O), dS = P * (dP - D),
    dQ = dS K * scale, dK = dS^T Q * scale."""
    check_inputs(q, k, v, "_attention_backward")
    s = default_scale(q.shape[-1], scale)
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    qa, ka, va = q.to(acc), k.to(acc), v.to(acc)
    go, oa = grad_out.to(acc), out.to(acc)
    scores = torch.matmul(qa, ka.transpose(-2, -1)) * s
    p = torch.exp(scores - lse.to(acc).unsqueeze(-1))
    dv = torch.matmul(p.transpose(-2, -1), go)
    dp = torch.matmul(go, va.transpose(-2, -1))
    delta = (go * oa).sum(-1, keepdim=True)
    ds = p * (dp - delta)
    dq = torch.matmul(ds, ka) * s
    dk = torch.matmul(ds.transpose(-2, -1), qa) * s
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)
