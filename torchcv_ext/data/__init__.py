"""Readers for the on-disk data-set formats the training example takes. Nothing is downloaded:
users bring the files.

    fmt = detect_format("/data/cifar-10-batches-py")          # -> "cifar10"
    ds = load_datasets(fmt, "/data/cifar-10-batches-py", LoadOptions(augment="crop-flip"))
    ds.train, ds.val, ds.classes, ds.channels, ds.img_size

| format | on disk |
| --- | --- |
| ``cifar10`` / ``cifar100`` | the python pickle batches (``cifar-10-batches-py``, ``cifar-100-python``) |
| ``mnist`` / ``fashion-mnist`` | the four idx files, gzipped or not |
| ``imagefolder`` | ``train/`` + ``val/``, ``valid/``, ``validation/`` or ``test/`` of class folders, or one folder of class folders |
| ``hyperspectral`` | a ``.mat`` / ``.npy`` cube (H, W, bands) and a ``*gt*`` map (H, W), HybridSN's pipeline |
| ``digits`` | scikit-learn's bundled 8x8 digits (no directory) |
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional

from torchcv_ext.data import cifar, digits, hyperspectral, idx, imagefolder
from torchcv_ext.data._common import DataError, DataSets, LoadOptions, listing
from torchcv_ext.data.transforms import AUGMENTATIONS, image_transforms

__all__ = ["FORMATS", "DataError", "DataSets", "LoadOptions", "detect_format", "load_datasets",
           "image_transforms", "AUGMENTATIONS"]


@dataclass(frozen=True)
class Format:
    name: str
    title: str
    expect: str                                     #: what a directory of this format holds
    find: Callable[[str], Optional[object]]         #: root -> what load takes, or None
    load: Callable[[object, LoadOptions], DataSets]


FORMATS: Dict[str, Format] = {f.name: f for f in (
    Format("cifar10", "CIFAR-10 python batches",
           "data_batch_1..data_batch_5, test_batch and batches.meta, in the directory or its cifar-10-batches-py/",
           lambda root: cifar.find(root, "cifar10"), lambda found, o: cifar.load("cifar10", found, o)),
    Format("cifar100", "CIFAR-100 python batches",
           "train, test and meta, in the directory or its cifar-100-python/",
           lambda root: cifar.find(root, "cifar100"), lambda found, o: cifar.load("cifar100", found, o)),
    Format("mnist", "MNIST idx files",
           "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte "
           "(each optionally .gz), in the directory or its raw/, MNIST/raw/ or FashionMNIST/raw/",
           idx.find, lambda found, o: idx.load("mnist", found, o)),
    Format("fashion-mnist", "Fashion-MNIST idx files", "the same four idx files as MNIST",
           idx.find, lambda found, o: idx.load("fashion-mnist", found, o)),
    Format("hyperspectral", "hyperspectral cube and ground truth",
           "a cube (H, W, bands) and a ground-truth map (H, W) whose file name contains 'gt', as .mat or .npy files",
           hyperspectral.find, hyperspectral.load),
    Format("imagefolder", "image folder",
           "class sub-folders of images, or train/ plus val/, valid/, validation/ or test/ of class sub-folders",
           imagefolder.find, imagefolder.load),
    Format("digits", "scikit-learn digits", "no directory (scikit-learn's bundled digits)",
           lambda root: "digits", lambda found, o: digits.load(o)),
)}

#: the order formats are tried in by detect_format (the most specific first)
_DETECT_ORDER = ("cifar10", "cifar100", "mnist", "hyperspectral", "imagefolder")


def detect_format(root: Optional[str]) -> str:
    """The name of the format of directory ``root`` (``digits`` when ``root`` is None); a
    directory that fits none raises :class:`DataError` naming what each format expects."""
    if root is None:
        return "digits"
    import os

    if not os.path.isdir(root):
        raise DataError(f"--data {root}: not a directory")
    for name in _DETECT_ORDER:
        found = FORMATS[name].find(root)
        if found is not None:
            return "fashion-mnist" if name == "mnist" and idx.is_fashion(root, found) else name
    expected = "; ".join(f"{FORMATS[n].title}: {FORMATS[n].expect}" for n in _DETECT_ORDER)
    raise DataError(f"--data {root}: no known data-set layout. Looked for -- {expected}. "
                    f"Found: {listing(root)}. --dataset NAME names the format "
                    f"({', '.join(FORMATS)}) and says what is missing.")


def load_datasets(name: str, root: Optional[str], opts: LoadOptions) -> DataSets:
    """Read ``root`` as format ``name`` (from :func:`detect_format`, or forced by the user)."""
    if name not in FORMATS:
        raise DataError(f"unknown data-set format {name!r}; one of {', '.join(FORMATS)}")
    fmt = FORMATS[name]
    if name != "digits":
        if root is None:
            raise DataError(f"--dataset {name} needs --data DIR (the directory holding the files)")
        found = fmt.find(root)
        if found is None:
            raise DataError(f"--dataset {name}: {root} does not hold {fmt.title}: expected {fmt.expect}. "
                            f"Found: {listing(root)}")
    else:
        found = None
    return fmt.load(found, opts)
