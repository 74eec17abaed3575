"""Build the CUDA-emulator library: csrc/cuda/{dwconv_bn_act,squeeze_excite,channel_shuffle,
hardswish}.cu (and the emulator's own broken-kernel checks, emu_selftest.cu) rewritten for
python_tests/cuda_emu/cuda_emu.h and compiled as C++ with g++ and AddressSanitizer, registered as
the CPU kernels of a separate op namespace, ``torchcv_ext_emu`` (same schemas as ``torchcv_ext``,
from csrc/registration.cpp). The ops then run the CUDA host and kernel code on CPU tensors:
``torch.ops.torchcv_ext_emu.dwconv_bn_act(x_cpu, ...)``.

The library needs the ASan runtime loaded first (and libstdc++ with it, or ASan aborts on the first
C++ exception): run the process with
``LD_PRELOAD="$(g++ -print-file-name=libasan.so) $(g++ -print-file-name=libstdc++.so.6)"
ASAN_OPTIONS=detect_leaks=0``, as python_tests/test_cuda_emulated.py does for cases.py.

    python python_tests/cuda_emu/build.py   # with that LD_PRELOAD: build (cached under
                                            # build/cuda_emu/torch-<version>) and load
"""
from __future__ import annotations

import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
KERNEL_FILES = ["dwconv_bn_act.cu", "squeeze_excite.cu", "channel_shuffle.cu", "hardswish.cu"]
def _build_dir() -> str:
    import torch

    return os.path.join(REPO, "build", "cuda_emu", f"torch-{torch.__version__.split('+')[0]}")


BUILD_DIR = _build_dir()
NAMESPACE = "torchcv_ext_emu"

# kernel<<<grid, block[, smem[, stream]]>>>(  ->  emu::Launch::make("kernel", grid, ...)(kernel,
# The kernel expression: a (qualified) name with optional template arguments (one nesting level).
_LAUNCH = re.compile(r"([A-Za-z_][\w:]*(?:<[^<>;]*(?:<[^<>;]*>[^<>;]*)*>)?)\s*<<<(.*?)>>>\s*\(\s*(\)?)",
                     re.S)
# A static shared array declaration: `__shared__ T a[N][M], b[N];` (names before their brackets).
_SHARED = re.compile(r"__shared__\s+([^;{}]*?)\s+(\w+\s*(?:\[[^\]]*\])+(?:\s*,\s*\w+\s*(?:\[[^\]]*\])+)*)\s*;")
_DYN_SHARED = re.compile(r"extern\s+__shared__\s+(?:__align__\(\d+\)\s+)?([\w\s]+?)\s+(\w+)\s*\[\s*\]\s*;")


def rewrite_cu(src: str) -> str:
    """CUDA source -> C++ for cuda_emu.h."""
    def launch(m):
        kernel, cfg, close = m.group(1), " ".join(m.group(2).split()), m.group(3)
        head = f'emu::Launch::make("{kernel}", {cfg})({kernel}'
        return head + (")" if close else ", ")

    out = _LAUNCH.sub(launch, src)
    if "<<<" in out:
        raise RuntimeError("cuda_emu: a kernel launch was not rewritten")
    out = _DYN_SHARED.sub(lambda m: f"{m.group(1)}* {m.group(2)} = "
                                    f"static_cast<{m.group(1)}*>(emu::dynamic_smem());", out)

    def shared(m):  # static shared arrays: NaN-filled again for every block (cuda_emu.h)
        names = re.findall(r"(\w+)\s*\[", m.group(2))
        fills = " ".join(f"::emu::fresh_shared(&{n}, sizeof({n}));" for n in names)
        return f"{m.group(0)} {fills}"

    out = _SHARED.sub(shared, out)
    # CUDA headers -> the emulator (the ATen / c10 CUDA headers need the CUDA runtime).
    out = re.sub(r'#include\s*<(?:c10/cuda|ATen/cuda)/[^>]+>', '#include "cuda_emu.h"', out)
    out = out.replace("TORCH_LIBRARY_IMPL(torchcv_ext, CUDA, m)", f"TORCH_LIBRARY_IMPL({NAMESPACE}, CPU, m)")
    out = out.replace("c10::DeviceType::CUDA", "c10::DeviceType::CPU")
    if f"TORCH_LIBRARY_IMPL({NAMESPACE}, CPU, m)" not in out:
        raise RuntimeError("cuda_emu: no TORCH_LIBRARY_IMPL(torchcv_ext, CUDA, m) found")
    return '#include "cuda_emu.h"\n' + out


def _write_if_changed(path: str, text: str) -> None:
    if os.path.exists(path):
        with open(path) as f:
            if f.read() == text:
                return
    with open(path, "w") as f:
        f.write(text)


def sources() -> list:
    os.makedirs(BUILD_DIR, exist_ok=True)
    srcs = []
    cu_files = [os.path.join(REPO, "csrc", "cuda", name) for name in KERNEL_FILES]
    for path_cu in cu_files + [os.path.join(HERE, "emu_selftest.cu")]:
        name = os.path.basename(path_cu)
        with open(path_cu) as f:
            text = rewrite_cu(f.read())
        path = os.path.join(BUILD_DIR, name.replace(".cu", "_emu.cpp"))
        _write_if_changed(path, text)
        srcs.append(path)
    with open(os.path.join(REPO, "csrc", "registration.cpp")) as f:
        reg = f.read().replace("TORCH_LIBRARY(torchcv_ext, m)", f"TORCH_LIBRARY({NAMESPACE}, m)")
    path = os.path.join(BUILD_DIR, "registration_emu.cpp")
    _write_if_changed(path, reg)
    srcs.append(path)
    srcs.append(os.path.join(REPO, "csrc", "activations.cpp"))
    return srcs


def build(verbose: bool = False) -> str:
    """Compile (ninja, incremental) and return the shared library's path."""
    from torch.utils import cpp_extension

    # -fcf-protection=none: the fiber switch returns across stacks, which a CET shadow stack
    # would reject.
    flags = ["-O1", "-g", "-std=c++20", "-fsanitize=address", "-fno-omit-frame-pointer",
             "-fcf-protection=none", "-w"]
    cpp_extension.load(
        name="torchcv_ext_emu", sources=sources(), build_directory=BUILD_DIR,
        extra_include_paths=[HERE, os.path.join(REPO, "csrc", "include")],
        extra_cflags=flags, extra_ldflags=["-fsanitize=address"], is_python_module=False,
        is_standalone=False, verbose=verbose)
    return os.path.join(BUILD_DIR, "torchcv_ext_emu.so")


if __name__ == "__main__":
    print(build(verbose="-v" in sys.argv))
