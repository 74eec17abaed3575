"""Build the CUDA-emulator library: every csrc/cuda/*.cu file and the headers they include (and the
emulator's own broken-kernel checks, emu_selftest.cu) rewritten for tools/cuda_emu/cuda_emu.h
(attention_ptx.cuh's PTX instructions: ptx_emu.h) and compiled as C++ with g++ and AddressSanitizer,
registered as the CPU kernels of a separate op namespace, ``torchcv_ext_emu`` (same schemas as
``torchcv_ext``, from csrc/registration.cpp). The ops then run the CUDA host and kernel code on
CPU tensors: ``torch.ops.torchcv_ext_emu.dwconv_bn_act(x_cpu, ...)``. A second build, the "traffic"
flavor (FLAVORS, traffic.h), counts the kernels' global-memory traffic instead (traffic.py).

The library needs the ASan runtime loaded first (and libstdc++ with it, or ASan aborts on the first
C++ exception): run the process with
``LD_PRELOAD="$(g++ -print-file-name=libasan.so) $(g++ -print-file-name=libstdc++.so.6)"
ASAN_OPTIONS=detect_leaks=0``, as python_tests/test_cuda_emulated.py does for cases.py.

    python tools/cuda_emu/build.py   # with that LD_PRELOAD: build (cached under
                                            # build/cuda_emu/torch-<version>) and load
    python tools/cuda_emu/build.py --traffic   # the traffic flavor (no LD_PRELOAD)
"""
from __future__ import annotations

import contextlib
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
CUDA_DIR = os.path.join(REPO, "csrc", "cuda")
KERNEL_FILES = sorted(f for f in os.listdir(CUDA_DIR) if f.endswith(".cu"))
# Local headers of the .cu files: rewritten next to them (build dir), except the PTX wrappers,
# which the emulator replaces.
HEADER_FILES = sorted(f for f in os.listdir(CUDA_DIR)
                      if f.endswith((".cuh", ".h")) and f != "attention_ptx.cuh")


def _build_dir(flavor: str = "asan") -> str:
    import torch

    suffix = "" if flavor == "asan" else f"-{flavor}"
    return os.path.join(REPO, "build", "cuda_emu", f"torch-{torch.__version__.split('+')[0]}{suffix}")


BUILD_DIR = _build_dir()
NAMESPACE = "torchcv_ext_emu"

# The two builds: "asan" (AddressSanitizer; cases.py) and "traffic" (every load and store calls
# traffic.cpp's recorder, through GCC's kernel-address sanitizer in outline form; traffic.py). A
# process loads one of them: both define the same op namespace. -g1: line tables only, which is
# all ASan's reports need (file:line of every frame); full -g took twice the compile time.
# `uninstrumented`: sources of the flavor compiled on their own, without its sanitizer flags (with
# its -D defines), and linked in: the traffic recorder, whose hash maps' own loads and stores
# called the hooks too when it was built with the kernels (half of the traffic check's time).
FLAVORS = {
    "asan": dict(cflags=["-g1", "-fsanitize=address"], ldflags=["-fsanitize=address"], uninstrumented=[]),
    "traffic": dict(cflags=["-fsanitize=kernel-address", "--param=asan-instrumentation-with-call-threshold=0",
                            "--param=asan-stack=0", "--param=asan-globals=0", "-DTORCHCV_EMU_TRAFFIC"],
                    ldflags=[], uninstrumented=[os.path.join(HERE, "traffic.cpp")]),
}

# kernel<<<grid, block[, smem[, stream]]>>>(  ->  emu::Launch::make("kernel", grid, ...)(kernel,
# The kernel expression: a (qualified) name with optional template arguments (one nesting level).
_LAUNCH = re.compile(r"([A-Za-z_][\w:]*(?:<[^<>;]*(?:<[^<>;]*>[^<>;]*)*>)?)\s*<<<(.*?)>>>\s*\(\s*(\)?)",
                     re.S)
# A static shared array declaration: `__shared__ T a[N][M], b[N];` (names before their brackets).
_SHARED = re.compile(r"__shared__\s+([^;{}]*?)\s+(\w+\s*(?:\[[^\]]*\])+(?:\s*,\s*\w+\s*(?:\[[^\]]*\])+)*)\s*;")
_DYN_SHARED = re.compile(r"extern\s+__shared__\s+(?:__align__\(\d+\)\s+)?([\w\s]+?)\s+(\w+)\s*\[\s*\]\s*;")


def rewrite_cu(src: str, path: str) -> str:
    """CUDA source -> C++ for cuda_emu.h. Line numbers are kept (and `#line` names `path`), so
    compiler errors and AddressSanitizer reports point at the original source."""
    def launch(m):
        kernel, cfg, close = m.group(1), " ".join(m.group(2).split()), m.group(3)
        head = f'emu::Launch::make("{kernel}", {cfg})({kernel}'
        return head + (")" if close else ", ") + "\n" * m.group(0).count("\n")

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
    out = re.sub(r'#include\s*<(?:(?:c10/cuda|ATen/cuda)/[^>]+|cuda_runtime\.h|cuda_fp16\.h|cuda_bf16\.h)>',
                 '#include "cuda_emu.h"', out)
    out = out.replace('#include "attention_ptx.cuh"', '#include "ptx_emu.h"')
    out = out.replace("TORCH_LIBRARY_IMPL(torchcv_ext, CUDA, m)", f"TORCH_LIBRARY_IMPL({NAMESPACE}, CPU, m)")
    out = out.replace("c10::DeviceType::CUDA", "c10::DeviceType::CPU")
    if re.search(r"TORCH_LIBRARY_IMPL\((?!" + NAMESPACE + r", CPU, m\))", out):
        raise RuntimeError("cuda_emu: a TORCH_LIBRARY_IMPL other than (torchcv_ext, CUDA, m)")
    if re.search(r"\basm\s*(?:volatile\s*)?\(", out):
        raise RuntimeError("cuda_emu: inline PTX outside attention_ptx.cuh")
    return f'#include "cuda_emu.h"\n#line 1 "{path}"\n' + out


def _write_if_changed(path: str, text: str) -> None:
    if os.path.exists(path):
        with open(path) as f:
            if f.read() == text:
                return
    with open(path, "w") as f:
        f.write(text)


def sources(build_dir: str = BUILD_DIR) -> list:
    os.makedirs(build_dir, exist_ok=True)
    for name in HEADER_FILES:
        with open(os.path.join(CUDA_DIR, name)) as f:
            _write_if_changed(os.path.join(build_dir, name), rewrite_cu(f.read(), f.name))
    srcs = []
    cu_files = [os.path.join(CUDA_DIR, name) for name in KERNEL_FILES]
    for path_cu in cu_files + [os.path.join(HERE, "emu_selftest.cu")]:
        name = os.path.basename(path_cu)
        with open(path_cu) as f:
            text = rewrite_cu(f.read(), path_cu)
        path = os.path.join(build_dir, name.replace(".cu", "_emu.cpp"))
        _write_if_changed(path, text)
        srcs.append(path)
    with open(os.path.join(REPO, "csrc", "registration.cpp")) as f:
        reg = f.read().replace("TORCH_LIBRARY(torchcv_ext, m)", f"TORCH_LIBRARY({NAMESPACE}, m)")
    path = os.path.join(build_dir, "registration_emu.cpp")
    _write_if_changed(path, reg)
    srcs.append(path)
    srcs.append(os.path.join(REPO, "csrc", "activations.cpp"))
    return srcs


def build(verbose: bool = False, flavor: str = "asan") -> str:
    """Compile (ninja, incremental) and load the library of `flavor` (FLAVORS); returns its path."""
    from torch.utils import cpp_extension

    fl = FLAVORS[flavor]
    build_dir = _build_dir(flavor)
    name = "torchcv_ext_emu" if flavor == "asan" else f"torchcv_ext_emu_{flavor}"
    # -fcf-protection=none: the fiber switch returns across stacks, which a CET shadow stack
    # would reject.
    flags = ["-O1", "-std=c++20", "-fno-omit-frame-pointer", "-fcf-protection=none", "-w"] + fl["cflags"]
    includes = [HERE, os.path.join(REPO, "csrc", "include")]
    defines = [f for f in fl["cflags"] if f.startswith("-D")]
    ldflags = fl["ldflags"] + [_compile_uninstrumented(src, build_dir, name, includes,
                                                       ["-O2", "-std=c++20", "-w"] + defines, verbose)
                               for src in fl["uninstrumented"]]
    cpp_extension.load(
        name=name, sources=sources(build_dir), build_directory=build_dir,
        extra_include_paths=includes,
        extra_cflags=flags, extra_ldflags=ldflags, is_python_module=False,
        is_standalone=False, verbose=verbose)
    return os.path.join(build_dir, f"{name}.so")


def _compile_uninstrumented(src: str, build_dir: str, name: str, includes: list, flags: list,
                            verbose: bool) -> str:
    """build_dir/<src>.o compiled with the include paths and defines cpp_extension.load gives the
    sources (its _write_ninja_file_to_build_library) and `flags`; again when a file it read
    changed (its depfile), then without the library, so that it is linked again. Returns the
    object's path."""
    import shlex
    import subprocess
    import sysconfig

    from torch.utils import cpp_extension

    obj = os.path.join(build_dir, os.path.basename(src) + ".o")
    dep = obj + ".d"
    if os.path.exists(obj) and os.path.exists(dep):
        with open(dep) as f:
            deps = shlex.split(f.read().split(":", 1)[1].replace("\\\n", " "))
        if all(os.path.exists(d) and os.path.getmtime(d) <= os.path.getmtime(obj) for d in deps):
            return obj
    system = cpp_extension.include_paths("cpu") + [sysconfig.get_path("include", scheme="posix_prefix")]
    cmd = ([cpp_extension.get_cxx_compiler(), "-MMD", "-MF", dep, f"-DTORCH_EXTENSION_NAME={name}",
            "-DTORCH_API_INCLUDE_EXTENSION_H", "-fPIC"] + [f"-I{p}" for p in includes]
           + [a for p in system for a in ("-isystem", p)] + flags + ["-c", src, "-o", obj])
    if verbose:
        print(" ".join(cmd))
    os.makedirs(build_dir, exist_ok=True)
    subprocess.run(cmd, check=True)
    # ninja relinks the library when a source's object changes, not an object given as a flag.
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(build_dir, f"{name}.so"))
    return obj


if __name__ == "__main__":
    print(build(verbose="-v" in sys.argv, flavor="traffic" if "--traffic" in sys.argv else "asan"))
