"""Shared pytest setup: the `cuda` marker skips cleanly without a GPU; the header says which
torchcv_ext (installed or source tree) and which backends are under test."""
import os

import pytest
import torch

import torchcv_ext

# Eager references on the GPU must be true float32: cuDNN convolutions default to TF32 (a 10-bit
# mantissa), which alone exceeds the float32 tolerances of the conv / conv+BN parity tests.
torch.backends.cudnn.allow_tf32 = False

# Under pytest-xdist (one worker per core) each worker computes on one thread: two workers with
# torch's default of one thread per core would run 2x as many OpenMP threads as cores, and
# oversubscribed OpenMP barriers spin and wait for each other (the whole suite on the 2-core CI
# machine: 30.6 min with torch's default threads, 12.8 min with one thread per worker).
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


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
