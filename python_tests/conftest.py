"""Shared pytest setup: the `cuda` marker skips cleanly without a GPU; the header says which
torchcv_ext (installed or source tree) and which backends are under test."""
import os

import pytest
import torch

import torchcv_ext

# Eager references on the GPU must be true float32: cuDNN convolutions default to TF32 (a 10-bit
# mantissa), which alone exceeds the float32 tolerances of the conv / conv+BN parity tests.
torch.backends.cudnn.allow_tf32 = False


def pytest_report_header(config):
    from torchcv_ext import _loader

    lines = [
        f"torchcv_ext {torchcv_ext.__version__} from {os.path.dirname(torchcv_ext.__file__)}",
        f"extension loaded: {torchcv_ext.extension_loaded()}, CUDA kernels compiled: "
        f"{torchcv_ext.cuda_kernels_compiled()}, torch {torch.__version__}",
    ]
    if _loader.LOAD_ERROR:
        lines.append(f"extension: {_loader.LOAD_ERROR}")
    return lines


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
