"""Vision Transformer Tiny / Small (patch 16) with timm's module names (patch_embed.proj,
cls_token, pos_embed, blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}, norm, head).
Attention is the fused ``torchcv_ext.nn.MultiheadSelfAttention``."""
from __future__ import annotations

import torch
from torch import nn

from torchcv_ext.models._base import ClassifierModel
from torchcv_ext.models._registry import register_model
from torchcv_ext.nn.blocks import PatchEmbed, ViTBlock

__all__ = ["VisionTransformer"]


class _ViTFeatures(nn.Module):
    """Backbone view of a ViT (patch embedding, tokens, blocks, final norm): shares the model's
    modules and parameters without registering itself on the model; returns the class token."""

    def __init__(self, vit: "VisionTransformer") -> None:
        super().__init__()
        self.patch_embed, self.blocks, self.norm = vit.patch_embed, vit.blocks, vit.norm
        self.cls_token, self.pos_embed = vit.cls_token, vit.pos_embed
        self.pos_drop = vit.pos_drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _forward_tokens(self, x)[:, 0]


def _forward_tokens(m, x: torch.Tensor) -> torch.Tensor:
    x = m.patch_embed(x)
    x = torch.cat([m.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
    x = m.pos_drop(x + m.pos_embed)
    return m.norm(m.blocks(x))


class VisionTransformer(ClassifierModel):
    head_name = "head"

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, num_classes: int = 1000,
                 embed_dim: int = 192, depth: int = 12, num_heads: int = 3, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop_rate: float = 0.0, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = [drop_path_rate * i / max(1, depth - 1) for i in range(depth)]
        self.blocks = nn.Sequential(*[ViTBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, dpr[i])
                                      for i in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def features(self) -> nn.Module:
        return _ViTFeatures(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N + 1, dim) normalised tokens, class token first."""
        return _forward_tokens(self, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x)[:, 0])


@register_model
def vit_tiny_patch16(num_classes: int = 1000, img_size: int = 224, **kwargs) -> VisionTransformer:
    """ViT-Tiny/16 (dim 192, 12 blocks, 3 heads); ``img_size`` must be a multiple of 16."""
    return VisionTransformer(img_size, 16, num_classes=num_classes, embed_dim=192, depth=12, num_heads=3, **kwargs)


@register_model
def vit_small_patch16(num_classes: int = 1000, img_size: int = 224, **kwargs) -> VisionTransformer:
    """ViT-Small/16 (dim 384, 12 blocks, 6 heads); ``img_size`` must be a multiple of 16."""
    return VisionTransformer(img_size, 16, num_classes=num_classes, embed_dim=384, depth=12, num_heads=6, **kwargs)
