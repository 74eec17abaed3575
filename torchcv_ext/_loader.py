"""Load the compiled extension ``torchcv_ext._C`` after torch, once, and say why when it can't be.

Importing ``_C`` runs the static ``TORCH_LIBRARY`` registrations that put every op schema and the
C++/CUDA kernels into ``torch.ops.torchcv_ext``. Before touching the shared library we compare the
torch version it was compiled against (``_build_info.json``, written by CMake) with the torch that
is imported, so a mismatch gives a clear message instead of an undefined-symbol crash.

Without the extension every op still works through its pure-PyTorch reference. Set
``TORCHCV_EXT_REQUIRE_EXT=1`` to make a missing or unloadable extension an ImportError (CI does).
"""
from __future__ import annotations

import json
import os
import warnings
from typing import Optional

import torch

_HERE = os.path.dirname(os.path.abspath(__file__))

#: Contents of _build_info.json (None when the package was not built).
BUILD_INFO: Optional[dict] = None
#: Why the extension is not in use (None when it is loaded).
LOAD_ERROR: Optional[str] = None
#: The loaded pybind11 module, or None.
_C = None


def _major_minor(version: str) -> tuple:
    return tuple(version.split("+")[0].split(".")[:2])


def _cuda_tag(version: str) -> str:
    return version.split("+")[1] if "+" in version else ""


def version_mismatch(built: str, running: str) -> Optional[str]:
    """The message for an extension built against torch ``built`` imported under ``running``
    (None when compatible: same major.minor and the same CUDA/CPU variant)."""
    if _major_minor(built) == _major_minor(running) and _cuda_tag(built) == _cuda_tag(running):
        return None
    return (
        f"torchcv_ext was compiled against torch {built}, but torch {running} is imported. "
        "The C++/CUDA ops are disabled (pure-PyTorch reference in use). Rebuild against this "
        "torch: pip install --no-deps --force-reinstall --no-cache-dir ."
    )


def _load() -> None:
    global BUILD_INFO, LOAD_ERROR, _C
    info_path = os.path.join(_HERE, "_build_info.json")
    if not os.path.exists(info_path):
        LOAD_ERROR = (
            "the compiled extension torchcv_ext._C is not built; ops run their pure-PyTorch "
            "reference. Build it with `pip install .` from the source tree."
        )
        return
    with open(info_path) as f:
        BUILD_INFO = json.load(f)
    built, running = BUILD_INFO["torch_version"], torch.__version__
    mismatch = version_mismatch(built, running)
    if mismatch:
        LOAD_ERROR = mismatch
        warnings.warn(LOAD_ERROR, RuntimeWarning, stacklevel=3)
        return
    try:
        from torchcv_ext import _C as module  # noqa: PLC0415 - registers the ops
    except ImportError as e:
        LOAD_ERROR = (
            f"torchcv_ext._C failed to load ({e}). It was built against torch {built}; "
            f"torch {running} is imported. Rebuild: pip install --no-deps --force-reinstall "
            "--no-cache-dir ."
        )
        warnings.warn(LOAD_ERROR, RuntimeWarning, stacklevel=3)
        return
    _C = module


_load()
if LOAD_ERROR is not None and os.environ.get("TORCHCV_EXT_REQUIRE_EXT", "") not in ("", "0"):
    raise ImportError(f"TORCHCV_EXT_REQUIRE_EXT is set but {LOAD_ERROR}")


def extension_loaded() -> bool:
    """True when the compiled C++ (and possibly CUDA) kernels are registered."""
    return _C is not None


def cuda_kernels_compiled() -> bool:
    """True when the extension was built with its CUDA kernels (no GPU needed to say so)."""
    return _C is not None and bool(_C.cuda_compiled)
