"""Hyperspectral scenes (Indian Pines, Pavia University, Salinas, ...): a cube (H, W, bands) and
a ground-truth map (H, W) of class ids, 0 = unlabelled, each a ``.mat`` (MATLAB v4-v7, read by
scipy.io.loadmat; the file's one 3-D / 2-D variable) or a ``.npy`` file, in one directory. The
map's file name contains ``gt`` (``Indian_pines_gt.mat``); the cube is the other file (where
several are present, the ``corrected`` one: ``Indian_pines_corrected.mat``).

HybridSN's pipeline (Roy et al., 2019): PCA of the spectra to K bands (whitened; fitted on every
pixel, as the paper does), zero padding of W // 2, the W x W patch around each labelled pixel,
labels shifted to 0..C-1 (0 is never a class), and a stratified split: ``--val-split`` of each
class is the test set (0.7 in the paper for Indian Pines). Patches are cut when read, so memory
stays at one padded K-band cube. Items are (K, W, W) float32 tensors, HybridSN's input."""
from __future__ import annotations

import os
import re
from typing import Optional, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from torchcv_ext.data._common import DataError, DataSets, LoadOptions

_GT = re.compile(r"(^|[^a-z])gt([^a-z]|$)|ground.?truth", re.IGNORECASE)
EXTENSIONS = (".mat", ".npy")


def find(root: str) -> Optional[Tuple[str, str]]:
    """(cube path, ground-truth path) in ``root``, or None."""
    if not os.path.isdir(root):
        return None
    files = sorted(f for f in os.listdir(root) if f.lower().endswith(EXTENSIONS))
    gts = [f for f in files if _GT.search(os.path.splitext(f)[0])]
    cubes = [f for f in files if f not in gts]
    if not gts or not cubes:
        return None
    if len(gts) > 1:
        raise DataError(f"{root}: several ground-truth maps ({', '.join(gts)}); keep one scene per directory")
    if len(cubes) > 1:
        corrected = [f for f in cubes if "corrected" in f.lower()]
        if len(corrected) != 1:
            raise DataError(f"{root}: several hyperspectral cubes ({', '.join(cubes)}) for {gts[0]}; "
                            "keep one per directory (or name the one to use *corrected*)")
        cubes = corrected
    return os.path.join(root, cubes[0]), os.path.join(root, gts[0])


def read_array(path: str, ndim: int) -> np.ndarray:
    """The ``ndim``-dimensional array of a ``.npy`` file or of a ``.mat`` file's one such variable."""
    if path.lower().endswith(".npy"):
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: cannot read it as .npy ({e})") from e
    else:
        try:
            from scipy.io import loadmat
        except ImportError as e:  # pragma: no cover - environment dependent
            raise DataError(f"{path}: reading .mat files needs scipy (pip install scipy)") from e
        try:
            mat = loadmat(path)
        except NotImplementedError as e:  # MATLAB v7.3 files are HDF5
            raise DataError(f"{path}: a MATLAB v7.3 (HDF5) file, which scipy cannot read: save it with "
                            "save(..., '-v7') or as .npy") from e
        except (OSError, ValueError, TypeError) as e:
            raise DataError(f"{path}: cannot read it as a .mat file ({e})") from e
        found = {k: v for k, v in mat.items() if not k.startswith("__") and isinstance(v, np.ndarray)}
        arrays = [v for v in found.values() if v.ndim == ndim]
        if len(arrays) != 1:
            raise DataError(f"{path}: expected one {ndim}-D variable, found "
                            f"{ {k: v.shape for k, v in found.items()} }")
        arr = arrays[0]
    if arr.ndim != ndim:
        raise DataError(f"{path}: expected a {ndim}-D array, got shape {arr.shape}")
    return arr


def pca(cube: np.ndarray, k: int) -> np.ndarray:
    """(H, W, bands) -> (H, W, k): scikit-learn's whitened PCA over the pixels' spectra."""
    try:
        from sklearn.decomposition import PCA
    except ImportError as e:  # pragma: no cover - environment dependent
        raise DataError("hyperspectral data needs scikit-learn for the PCA (pip install scikit-learn)") from e
    h, w, b = cube.shape
    if not 1 <= k <= b:
        raise DataError(f"--bands {k}: the cube has {b} bands; PCA needs 1 <= K <= {b}")
    flat = PCA(n_components=k, whiten=True, random_state=0).fit_transform(cube.reshape(-1, b).astype(np.float64))
    return flat.reshape(h, w, k).astype(np.float32)


class Patches(Dataset):
    """The ``size`` x ``size`` patches of a zero-padded (K, H + 2m, W + 2m) cube centred on
    ``pixels`` (row, col of the unpadded cube), with their labels."""

    def __init__(self, padded: torch.Tensor, pixels: torch.Tensor, labels: torch.Tensor, size: int) -> None:
        self.padded, self.pixels, self.labels, self.size = padded, pixels, labels, size

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        r, c = self.pixels[i].tolist()
        return self.padded[:, r:r + self.size, c:c + self.size], int(self.labels[i])


def load(found: Tuple[str, str], opts: LoadOptions) -> DataSets:
    cube_path, gt_path = found
    cube, gt = read_array(cube_path, 3), read_array(gt_path, 2)
    if cube.shape[:2] != gt.shape:
        raise DataError(f"{cube_path} is {cube.shape[0]} x {cube.shape[1]} pixels but {gt_path} is "
                        f"{gt.shape[0]} x {gt.shape[1]}")
    size = opts.img_size or 25
    reduced = pca(cube, opts.bands)
    m = size // 2
    padded = np.zeros((reduced.shape[0] + size - 1, reduced.shape[1] + size - 1, opts.bands), np.float32)
    padded[m:m + reduced.shape[0], m:m + reduced.shape[1]] = reduced
    padded = torch.from_numpy(np.ascontiguousarray(padded.transpose(2, 0, 1)))

    gt = gt.astype(np.int64)
    rows, cols = np.nonzero(gt > 0)
    ids = np.unique(gt[rows, cols])
    if len(ids) < 2:
        raise DataError(f"{gt_path}: needs at least two classes (ids > 0; 0 is unlabelled), found {ids.tolist()}")
    labels = np.searchsorted(ids, gt[rows, cols])  # 0..C-1
    index = np.arange(len(labels))
    if opts.limit is not None and opts.limit < len(index):
        index = np.random.default_rng(opts.seed).choice(index, opts.limit, replace=False)
    from sklearn.model_selection import train_test_split

    try:
        train_idx, val_idx = train_test_split(index, test_size=opts.val_split, random_state=opts.seed,
                                              stratify=labels[index])
    except ValueError as e:
        raise DataError(f"{gt_path}: cannot split the labelled pixels {opts.val_split:g} / "
                        f"{1 - opts.val_split:g} by class ({e})") from e
    pixels = torch.from_numpy(np.stack([rows, cols], 1))
    lab = torch.from_numpy(labels)
    ds = {name: Patches(padded, pixels[idx], lab[idx], size) for name, idx in (("train", train_idx), ("val", val_idx))}
    source = (f"hyperspectral cube {cube_path} ({cube.shape[0]} x {cube.shape[1]} x {cube.shape[2]} bands -> "
              f"PCA {opts.bands}, {size} x {size} patches, {len(labels)} labelled pixels; "
              f"{opts.val_split:g} of each class held out)")
    return DataSets(ds["train"], ds["val"], [str(i) for i in ids.tolist()], "hyperspectral", source,
                    opts.bands, size)
