"""scikit-learn's bundled 8x8 digits (1797 images; no files needed): the example's default data."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

from torchcv_ext.data._common import DataError, DataSets, LoadOptions, split_indices


def load(opts: LoadOptions) -> DataSets:
    """The digits upsampled to ``opts.img_size`` (default 32), normalized to [-1, 1] and repeated
    to 3 channels; a seeded ``opts.val_split`` held out."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - environment dependent
        raise DataError("the default data set (digits) needs scikit-learn: pip install scikit-learn") from e
    size = opts.img_size or 32
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    if opts.limit is not None:
        x, y = x[:opts.limit], y[:opts.limit]
    x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = ((x - 0.5) / 0.5).expand(-1, 3, -1, -1).contiguous()
    train_idx, val_idx = split_indices(len(y), opts.val_split, opts.seed)
    return DataSets(TensorDataset(x[train_idx], y[train_idx]), TensorDataset(x[val_idx], y[val_idx]),
                    [str(i) for i in range(10)], "digits", "scikit-learn digits", 3, size)
