"""Multi-head self-attention with fused qkv projection (op: torchcv_ext/ops/attention.py).

State-dict layout (fixed): ``qkv.weight`` (3*dim, dim), ``qkv.bias`` (3*dim,) if qkv_bias,
``proj.weight`` (dim, dim), ``proj.bias`` (dim,): timm's ``Attention`` naming, so timm ViT
attention weights load 1:1. Conversions to and from ``nn.MultiheadAttention(batch_first=True)``
are exact: ``from_modules`` / ``to_nn_mha``.
"""
from __future__ import annotations

import torch
from torch import nn

from torchcv_ext.ops import _common
from torchcv_ext.ops.attention import attention


class MultiheadSelfAttention(nn.Module):
    """Self-attention over (B, N, dim) batch-first tokens, backed by the fused flash-style op.

    ``forward(x)`` equals ``nn.MultiheadAttention(dim, num_heads, batch_first=True)(x, x, x,
    need_weights=False)[0]`` for converted weights (no masks, no dropout).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        _common.check_sizes("MultiheadSelfAttention", dim=dim, num_heads=num_heads)
        if dim % num_heads != 0:
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
    def from_modules(cls, m: nn.MultiheadAttention) -> "MultiheadSelfAttention":
        """Build from an ``nn.MultiheadAttention(batch_first=True)`` with equal q/k/v dims, no
        bias_k/bias_v, no add_zero_attn and no dropout; weights are copied (same device, dtype)."""
        if not isinstance(m, nn.MultiheadAttention):
            raise TypeError(f"MultiheadSelfAttention.from_modules: expected nn.MultiheadAttention, got {type(m).__name__}")
        if not m.batch_first:
            raise ValueError("MultiheadSelfAttention.from_modules: the nn.MultiheadAttention must be batch_first=True "
                             "(MultiheadSelfAttention takes (B, N, dim) input)")
        if not m._qkv_same_embed_dim:
            raise ValueError("MultiheadSelfAttention.from_modules: kdim and vdim must equal embed_dim (fused qkv projection)")
        if m.bias_k is not None or m.bias_v is not None or m.add_zero_attn:
            raise ValueError("MultiheadSelfAttention.from_modules: add_bias_kv and add_zero_attn are not supported")
        if m.dropout != 0.0:
            raise ValueError(f"MultiheadSelfAttention.from_modules: attention dropout ({m.dropout}) is not supported")
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


class FusedMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` whose self-attention calls run the fused op: a drop-in subclass
    (same constructor, parameters, state_dict and call signature) that ``torchcv_ext.convert``
    swaps in, e.g. into torchvision's VisionTransformer.

    The fused path is taken for ``batch_first=True`` self-attention (``query is key is value``)
    with ``need_weights=False``, no masks, ``is_causal=False``, equal q/k/v dims, no bias_k/bias_v
    or zero attention and no active dropout; every other call runs ``nn.MultiheadAttention``'s
    own forward unchanged. Returns ``(output, None)`` like the parent with ``need_weights=False``.
    """

    @classmethod
    def from_modules(cls, m: nn.MultiheadAttention) -> "FusedMultiheadAttention":
        """Wrap ``m``'s own parameters (shared, not copied) in the fused subclass."""
        if not isinstance(m, nn.MultiheadAttention):
            raise TypeError(f"FusedMultiheadAttention.from_modules: expected nn.MultiheadAttention, "
                            f"got {type(m).__name__}")
        new = cls.__new__(cls)
        new.__dict__.update(m.__dict__)
        for k in ("_parameters", "_buffers", "_modules"):
            new.__dict__[k] = type(m.__dict__[k])(m.__dict__[k])
        return new

    def _fusable(self, query, key, value, key_padding_mask, need_weights, attn_mask, is_causal) -> bool:
        return (query is key and key is value and self.batch_first and query.dim() == 3
                and query.shape[-1] == self.embed_dim  # else the parent's clear size error
                and not need_weights and key_padding_mask is None and attn_mask is None and not is_causal
                and self._qkv_same_embed_dim and self.bias_k is None and self.bias_v is None
                and not self.add_zero_attn and (self.dropout == 0.0 or not self.training))

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if not self._fusable(query, key, value, key_padding_mask, need_weights, attn_mask, is_causal):
            return super().forward(query, key, value, key_padding_mask=key_padding_mask,
                                   need_weights=need_weights, attn_mask=attn_mask,
                                   average_attn_weights=average_attn_weights, is_causal=is_causal)
        b, n, c = query.shape
        h = self.num_heads
        qkv = nn.functional.linear(query, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.reshape(b, n, 3, h, c // h).permute(2, 0, 3, 1, 4).unbind(0)
        out = attention(q, k, v, (c // h) ** -0.5)
        out = nn.functional.linear(out.transpose(1, 2).reshape(b, n, c), self.out_proj.weight,
                                   self.out_proj.bias)
        return out, None
