"""The CUDA kernels of every op (dwconv_bn_act, squeeze_excite, channel_shuffle, hardswish,
attention), run on the CPU by the CUDA emulator (tools/cuda_emu/: cuda_emu.h, build.py, cases.py; its README says what it checks), so that every test
run executes the CUDA code paths, not only a GPU session. The cases run in a subprocess because the
emulator library is built with AddressSanitizer, whose runtime must be preloaded; ASan's reports
(out-of-bounds accesses) land in the failure message. Takes a few minutes: g++ builds the library
(cached under build/cuda_emu), then about 150 cases.

The second test counts the kernels' global-memory traffic in the emulator (cuda_emu/traffic.py, a
second build without ASan) and checks it against the budgets there: DRAM bytes against each op's
floor, and the coalescing of the warps' loads and stores.
"""
from __future__ import annotations

import glob
import os
import platform
import shutil
import subprocess
import sys

import pytest

import torchcv_ext

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def _runtime(name: str) -> str:
    if shutil.which("g++") is None:
        return ""
    out = subprocess.run(["g++", f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    return out if os.path.isabs(out) and os.path.exists(out) else ""


ASAN, LIBSTDCXX = _runtime("libasan.so"), _runtime("libstdc++.so.6")


@pytest.mark.skipif(not (ASAN and LIBSTDCXX and sys.platform.startswith("linux")
                         and platform.machine() == "x86_64"),
                    reason="needs x86-64 Linux, g++ and its AddressSanitizer runtime")
@pytest.mark.skipif(os.environ.get("TORCHCV_EXT_SKIP_CUDA_EMU") == "1",
                    reason="TORCHCV_EXT_SKIP_CUDA_EMU=1 (e.g. CI's second, older-torch test run)")
def test_cuda_kernels_in_emulator(tmp_path):
    # libstdc++ preloaded too: otherwise ASan cannot intercept __cxa_throw and aborts on the first
    # C++ exception (every TORCH_CHECK). The subprocess imports the torchcv_ext this process
    # imported (installed or source tree), from a directory outside the repo.
    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(torchcv_ext.__file__)))
    env = dict(os.environ, LD_PRELOAD=f"{ASAN} {LIBSTDCXX}",
               ASAN_OPTIONS=f"detect_leaks=0:log_path={tmp_path}/asan",
               PYTHONPATH=os.pathsep.join(filter(None, [pkg_root, os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "pytest", os.path.join(REPO, "tools", "cuda_emu", "cases.py"), "-q", "-s",
           "-p", "no:cacheprovider", "-p", "no:xdist", "-W", "ignore::UserWarning"]
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=2400)
    reports = "".join(open(p).read() for p in sorted(glob.glob(f"{tmp_path}/asan*")))
    assert r.returncode == 0, (f"emulated CUDA cases failed (rc {r.returncode}):\n{r.stdout[-8000:]}\n"
                               f"{r.stderr[-4000:]}\n{reports[-8000:]}")
    assert " passed" in r.stdout and "failed" not in r.stdout, r.stdout[-3000:]


@pytest.mark.skipif(not (shutil.which("g++") and sys.platform.startswith("linux") and platform.machine() == "x86_64"),
                    reason="needs x86-64 Linux and g++")
@pytest.mark.skipif(os.environ.get("TORCHCV_EXT_SKIP_CUDA_EMU") == "1",
                    reason="TORCHCV_EXT_SKIP_CUDA_EMU=1 (e.g. CI's second, older-torch test run)")
def test_cuda_kernels_memory_traffic(tmp_path):
    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(torchcv_ext.__file__)))
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [pkg_root, os.environ.get("PYTHONPATH")]))
    cmd = [sys.executable, os.path.join(REPO, "tools", "cuda_emu", "traffic.py"), "--quick", "--check", "--out", str(tmp_path)]
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, f"traffic check failed (rc {r.returncode}):\n{r.stdout[-6000:]}\n{r.stderr[-3000:]}"
    assert os.path.exists(tmp_path / "traffic.json")
