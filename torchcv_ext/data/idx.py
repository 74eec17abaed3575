"""MNIST / Fashion-MNIST idx files (train-images-idx3-ubyte, train-labels-idx1-ubyte,
t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte), each gzipped (``.gz``) or not, in the directory
given or in torchvision's ``raw/``, ``MNIST/raw/`` or ``FashionMNIST/raw/`` below it.

torchvision's MNIST reads only torchvision's own layout, unzipped; the idx format itself is
small (LeCun's definition, http://yann.lecun.com/exdb/mnist/): two zero bytes, a type code,
the number of dimensions, each dimension as a big-endian uint32, then the data."""
from __future__ import annotations

import gzip
import os
import struct
from typing import Dict, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from torchcv_ext.data._common import (FASHION_MNIST_STATS, MNIST_STATS, DataError, DataSets, LoadOptions,
                                      first_file, limit)

FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
         "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}
SUBDIRS = ("", "raw", os.path.join("MNIST", "raw"), os.path.join("FashionMNIST", "raw"))
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str) -> np.ndarray:
    """The array stored in an idx file (``.gz``: gzipped)."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read it ({e})") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise DataError(f"{path}: not an idx file (expected the magic bytes 00 00 <type> <ndim>, "
                        f"got {data[:4].hex(' ')})")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_DTYPES[data[2]])
    if len(data) - header != int(np.prod(dims)) * dtype.itemsize:
        raise DataError(f"{path}: the header says {dims} values of {dtype}, the file holds "
                        f"{len(data) - header} bytes after it (truncated?)")
    return np.frombuffer(data, dtype, offset=header).reshape(dims)


class IdxImages(Dataset):
    """Grey images (N, H, W) uint8 and their labels; items are (transform(PIL image), label)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform=None) -> None:
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"idx: expected images (N, H, W) and labels (N,), got {images.shape} and {labels.shape}")
        self.images, self.labels, self.transform = images, torch.as_tensor(labels.astype(np.int64)), transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        from PIL import Image

        img = Image.fromarray(self.images[i])
        return (self.transform(img) if self.transform else img), int(self.labels[i])


def find(root: str) -> Optional[Dict[str, str]]:
    """Paths of the four idx files under ``root``, or None when any is missing."""
    paths = {k: first_file(root, [name, name + ".gz"], SUBDIRS) for k, name in FILES.items()}
    return paths if all(paths.values()) else None


def is_fashion(root: str, paths: Dict[str, str]) -> bool:
    """Fashion-MNIST and MNIST have the same file names: the directory's name or the folder below
    it that holds them (``FashionMNIST/raw``) tells them apart."""
    where = os.path.join(os.path.basename(os.path.abspath(root)), os.path.relpath(paths["train_images"], root))
    return "fashion" in where.lower()


def load(name: str, paths: Dict[str, str], opts: LoadOptions) -> DataSets:
    fashion = name == "fashion-mnist"
    train_x, train_y = read_idx(paths["train_images"]), read_idx(paths["train_labels"])
    test_x, test_y = read_idx(paths["test_images"]), read_idx(paths["test_labels"])
    size, (train_tf, val_tf) = opts.transforms(FASHION_MNIST_STATS if fashion else MNIST_STATS, 1,
                                               train_x.shape[-1] if train_x.ndim == 3 else None)
    train, val = IdxImages(train_x, train_y, train_tf), IdxImages(test_x, test_y, val_tf)
    classes = FASHION_CLASSES if fashion else [str(i) for i in range(10)]
    n_cls = int(max(train.labels.max(), val.labels.max())) + 1
    if n_cls > len(classes):
        classes = [str(i) for i in range(n_cls)]
    gz = " (gzipped)" if paths["train_images"].endswith(".gz") else ""
    title = "Fashion-MNIST" if fashion else "MNIST"
    return DataSets(limit(train, opts.limit), limit(val, opts.limit), classes, name,
                    f"{title} idx files{gz} in {os.path.dirname(paths['train_images'])}", 1, size)
