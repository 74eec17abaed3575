"""HybridSN (Roy et al., 2019) for hyperspectral patch classification: three 3-D convs over
(bands, H, W), the spectral axis folded into channels, one 2-D conv, then an MLP head.

Input: (B, 1, bands, S, S) or (B, bands, S, S) patches (e.g. 30 PCA bands, S = 25). Read as an
image, a patch has one channel per band, so ``in_chans`` (``create_model("hybridsn", in_chans=K)``)
is the number of bands, another name for ``in_bands``."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from torchcv_ext.models._base import ClassifierModel, init_weights_
from torchcv_ext.models._registry import register_model

__all__ = ["HybridSN"]


class _FoldSpectral(nn.Module):
    """(B, C, D, H, W) -> (B, C * D, H, W)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, d, h, w = x.shape
        return x.reshape(b, c * d, h, w)


class HybridSN(ClassifierModel):
    def __init__(self, num_classes: int = 16, in_bands: Optional[int] = None, patch_size: int = 25,
                 dropout: float = 0.4, in_chans: Optional[int] = None) -> None:
        super().__init__()
        if in_bands is not None and in_chans is not None and in_bands != in_chans:
            raise ValueError(f"HybridSN: in_chans is the number of spectral bands (in_bands); got in_bands={in_bands} "
                             f"and in_chans={in_chans}")
        in_bands = in_bands if in_bands is not None else in_chans if in_chans is not None else 30
        if in_bands < 13 or patch_size < 9:
            raise ValueError(f"HybridSN: needs in_bands >= 13 and patch_size >= 9, got {in_bands}, {patch_size}")
        self.in_bands, self.patch_size = in_bands, patch_size
        d = in_bands - 6 - 4 - 2
        s = patch_size - 8
        self.features = nn.Sequential(
            nn.Conv3d(1, 8, (7, 3, 3)), nn.BatchNorm3d(8), nn.ReLU(inplace=True),
            nn.Conv3d(8, 16, (5, 3, 3)), nn.BatchNorm3d(16), nn.ReLU(inplace=True),
            nn.Conv3d(16, 32, (3, 3, 3)), nn.BatchNorm3d(32), nn.ReLU(inplace=True),
            _FoldSpectral(),
            nn.Conv2d(32 * d, 64, 3), nn.BatchNorm2d(64), nn.ReLU(inplace=True))
        self.classifier = nn.Sequential(
            nn.Linear(64 * s * s, 256), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(256, 128), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(128, num_classes))
        init_weights_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = tuple(x.shape)
        if x.dim() == 4:
            x = x.unsqueeze(1)
        if x.dim() != 5 or x.shape[1] != 1 or x.shape[2] != self.in_bands or \
                x.shape[3] != self.patch_size or x.shape[4] != self.patch_size:
            raise ValueError(f"HybridSN: expected (B, 1, {self.in_bands}, {self.patch_size}, {self.patch_size}) "
                             f"or (B, {self.in_bands}, {self.patch_size}, {self.patch_size}), got {shape}")
        return self.classifier(torch.flatten(self.features(x), 1))


@register_model
def hybridsn(num_classes: int = 16, **kwargs) -> HybridSN:
    """HybridSN; ``in_bands`` (default 30; ``in_chans`` is the same) and ``patch_size`` (default 25)
    set the input size."""
    return HybridSN(num_classes, **kwargs)
