"""The CI's register / spill check of the CUDA kernels (.ci/ptxas_check.py, fed by
cmake/ptxas_log.sh) on synthetic ptxas reports: it parses ptxas -v output and fails on a spill over
budget or on a missing report."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, ".ci", "ptxas_check.py")
pytestmark = pytest.mark.skipif(not os.path.exists(SCRIPT), reason="needs the source tree (.ci/)")

MMA = "_ZN11torchcv_ext4attn15dkdv_mma_kernelI13__nv_bfloat16Li128ELb0EEEvNS0_9BwdParamsIT_EElf"
OTHER = "_ZN11torchcv_ext12_GLOBAL__N_111elementwiseIfLi4ELNS_3ActE3EEEvPKT_S5_PS3_l"


def _entry(name, regs, stores, loads):
    return (f"ptxas info    : Compiling entry function '{name}' for 'sm_90'\n"
            f"ptxas info    : Function properties for {name}\n"
            f"    8 bytes stack frame, {stores} bytes spill stores, {loads} bytes spill loads\n"
            f"ptxas info    : Used {regs} registers, used 1 barriers\n")


def _check(tmp_path, *entries):
    d = tmp_path / "ptxas"
    d.mkdir(exist_ok=True)
    (d / "x.cu.o.log").write_text("ptxas info    : 0 bytes gmem\n" + "".join(entries))
    out = tmp_path / "report.md"
    r = subprocess.run([sys.executable, SCRIPT, str(d), "--out", str(out)], capture_output=True, text=True)
    return r, (out.read_text() if out.exists() else "")


def test_within_budget(tmp_path):
    r, report = _check(tmp_path, _entry(MMA, 236, 0, 0), _entry(OTHER, 32, 4, 12))
    assert r.returncode == 0, r.stderr
    assert "2 kernels" in r.stdout and "1 spill, 0 over budget" in r.stdout
    assert "| 236 |" in report and "| 4 | 12 |" in report


def test_tensor_core_kernel_may_not_spill(tmp_path):
    r, report = _check(tmp_path, _entry(MMA, 255, 8, 8))
    assert r.returncode == 1 and "OVER BUDGET" in r.stderr and "dkdv_mma_kernel" in r.stderr
    assert "**over**" in report


def test_default_budget(tmp_path):
    assert _check(tmp_path, _entry(OTHER, 64, 100, 100))[0].returncode == 1


def test_no_report_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    r = subprocess.run([sys.executable, SCRIPT, str(tmp_path / "empty")], capture_output=True, text=True)
    assert r.returncode == 1 and "no ptxas reports" in r.stderr
