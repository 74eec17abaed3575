"""Test helpers shared by the op tests: devices, dtypes and the per-dtype tolerance table."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import torchcv_ext

#: Devices every op test runs on; CUDA cases carry the `cuda` marker (skipped without a GPU).
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]

#: Forward/backward tolerance vs the float64 reference, per dtype of the computation.
TOL = {
    torch.float64: dict(atol=1e-10, rtol=1e-8),
    torch.float32: dict(atol=1e-5, rtol=1e-4),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2),
}

requires_ext = pytest.mark.skipif(not torchcv_ext.extension_loaded(),
                                  reason="compiled extension not loaded")


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, scale: float = 1.0):
    """Compare ``actual`` with a (float64) ``expected`` under the tolerance of ``dtype``,
    optionally widened by ``scale`` for reductions over many terms."""
    tol = TOL[dtype]
    torch.testing.assert_close(actual.double().cpu(), expected.double().cpu(),
                               atol=tol["atol"] * scale, rtol=tol["rtol"] * scale)


def run_python(args, cwd) -> str:
    """Run ``python *args`` in ``cwd`` (not the repo root, whose source tree would shadow an
    installed package), importing the same torchcv_ext this test process imported; returns stdout."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(torchcv_ext.__file__)))
    env = dict(os.environ, PYTHONPATH=root)
    r = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=env,
                       timeout=300)
    assert r.returncode == 0, f"python {' '.join(args)} failed:\n{r.stderr[-3000:]}"
    return r.stdout
