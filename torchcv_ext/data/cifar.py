"""CIFAR-10 / CIFAR-100 in their python pickle layout (``cifar-10-batches-py``: data_batch_1..5,
test_batch, batches.meta; ``cifar-100-python``: train, test, meta with the fine labels), read by
torchvision's CIFAR10 / CIFAR100 with ``download=False``.

torchvision checks each file's MD5 against the original archive; here only the files'
presence is checked (a copy re-pickled by another tool, or the small files the tests write,
read the same), and the pickles themselves are what torchvision reads."""
from __future__ import annotations

import os
from typing import Optional

from torchcv_ext.data._common import (CIFAR10_STATS, CIFAR100_STATS, DataSets, LoadOptions, limit)


_READERS = {"CIFAR10Files": "CIFAR10", "CIFAR100Files": "CIFAR100"}


def __getattr__(name: str):
    """``CIFAR10Files`` / ``CIFAR100Files``: torchvision's CIFAR10 / CIFAR100 reading
    ``root/<folder>`` with the files' presence checked instead of their MD5 sums. Built on first
    use (torchvision is imported only then) as attributes of this module, so that DataLoader
    workers can unpickle them."""
    if name not in _READERS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from torchvision import datasets

    base = getattr(datasets, _READERS[name])

    def __init__(self, root: str, folder: str, **kwargs) -> None:
        self.base_folder = folder
        base.__init__(self, root, **kwargs)

    cls = type(name, (base,), {
        "__init__": __init__, "__module__": __name__, "__qualname__": name,
        "train_list": [[f, None] for f, _ in base.train_list],
        "test_list": [[f, None] for f, _ in base.test_list],
        "meta": {**base.meta, "md5": None},
    })
    globals()[name] = cls
    return cls


#: format -> (its folder name in torchvision's layout, its files)
LAYOUT = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]),
    "cifar100": ("cifar-100-python", ["train", "test", "meta"]),
}


def find(root: str, name: str) -> Optional[str]:
    """The directory holding the ``name`` (cifar10 / cifar100) files: ``root`` itself or its
    ``cifar-10-batches-py`` / ``cifar-100-python`` sub-folder."""
    folder, files = LAYOUT[name]
    for d in (root, os.path.join(root, folder)):
        if all(os.path.isfile(os.path.join(d, f)) for f in files):
            return d
    return None


def load(name: str, found: str, opts: LoadOptions) -> DataSets:
    cls = __getattr__("CIFAR10Files" if name == "cifar10" else "CIFAR100Files")
    folder, parent = os.path.basename(os.path.normpath(found)), os.path.dirname(os.path.normpath(found))
    size, (train_tf, val_tf) = opts.transforms(CIFAR10_STATS if name == "cifar10" else CIFAR100_STATS, 3, 32)
    train = cls(parent, folder, train=True, transform=train_tf)
    val = cls(parent, folder, train=False, transform=val_tf)
    title = "CIFAR-10" if name == "cifar10" else "CIFAR-100"
    return DataSets(limit(train, opts.limit), limit(val, opts.limit), list(train.classes), name,
                    f"{title} python batches in {found}", 3, size)
