"""Multi-head self-attention with fused qkv projection (op: torchcv_ext/ops/attention.py).

State-dict layout (fixed): ``qkv.weight`` (3*dim, dim), ``qkv.bias`` (3*dim,) if qkv_bias,
``proj.weight`` (dim, dim), ``proj.bias`` (dim,): timm's ``Attention`` naming, so timm ViT
attention weights load 1:1. Conversions to and from ``nn.MultiheadAttention(batch_first=True)``
are exact: ``from_nn_mha`` / ``to_nn_mha``.
"""
from __future__ import annotations

import torch
from torch import nn

from torchcv_ext.ops.attention import attention


class MultiheadSelfAttention(nn.Module):
    """Self-attention over (B, N, dim) batch-first tokens, backed by the fused flash-style op.

    ``forward(x)`` equals ``nn.MultiheadAttention(dim, num_heads, batch_first=True)(x, x, x,
    need_weights=False)[0]`` for converted weights (no masks, no dropout).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if num_heads < 1 or dim % num_heads != 0:
            raise ValueError(f"MultiheadSelfAttention: dim ({dim}) must be divisible by num_heads "
                             f"({num_heads})")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"MultiheadSelfAttention: expected input of shape (B, N, {self.dim}), "
                             f"got {tuple(x.shape)}")
        b, n, c = x.shape
        # (B, N, 3, H, D) -> 3 x (B, H, N, D) views with unit last-dim stride (no copies).
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = attention(q, k, v, self.scale)          # (B, H, N, D), stored as (B, N, H, D)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))

    # ---- conversions with nn.MultiheadAttention ----
    @classmethod
    def from_nn_mha(cls, m: nn.MultiheadAttention) -> "MultiheadSelfAttention":
        """Build from an ``nn.MultiheadAttention(batch_first=True)`` with equal q/k/v dims, no
        bias_k/bias_v, no add_zero_attn and no dropout; weights are copied (same device, dtype)."""
        if not isinstance(m, nn.MultiheadAttention):
            raise TypeError(f"from_nn_mha: expected nn.MultiheadAttention, got {type(m).__name__}")
        if not m.batch_first:
            raise ValueError("from_nn_mha: the nn.MultiheadAttention must be batch_first=True "
                             "(MultiheadSelfAttention takes (B, N, dim) input)")
        if not m._qkv_same_embed_dim:
            raise ValueError("from_nn_mha: kdim and vdim must equal embed_dim (fused qkv projection)")
        if m.bias_k is not None or m.bias_v is not None or m.add_zero_attn:
            raise ValueError("from_nn_mha: add_bias_kv and add_zero_attn are not supported")
        if m.dropout != 0.0:
            raise ValueError(f"from_nn_mha: attention dropout ({m.dropout}) is not supported")
        w = m.in_proj_weight
        out = cls(m.embed_dim, m.num_heads, qkv_bias=m.in_proj_bias is not None)
        out = out.to(device=w.device, dtype=w.dtype)
        with torch.no_grad():
            out.qkv.weight.copy_(w)
            if m.in_proj_bias is not None:
                out.qkv.bias.copy_(m.in_proj_bias)
            out.proj.weight.copy_(m.out_proj.weight)
            if m.out_proj.bias is not None:
                out.proj.bias.copy_(m.out_proj.bias)
            else:
                out.proj.bias.zero_()
        return out

    def to_nn_mha(self) -> nn.MultiheadAttention:
        """An equivalent ``nn.MultiheadAttention(dim, num_heads, batch_first=True)`` (with
        ``bias=True``; a missing qkv bias becomes zeros) on the same device and dtype."""
        w = self.qkv.weight
        m = nn.MultiheadAttention(self.dim, self.num_heads, bias=True, batch_first=True,
                                  device=w.device, dtype=w.dtype)
        with torch.no_grad():
            m.in_proj_weight.copy_(w)
            if self.qkv.bias is not None:
                m.in_proj_bias.copy_(self.qkv.bias)
            else:
                m.in_proj_bias.zero_()
            m.out_proj.weight.copy_(self.proj.weight)
            m.out_proj.bias.copy_(self.proj.bias)
        return m

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, qkv_bias={self.qkv.bias is not None}"
