"""``python -m torchcv_ext.info``: versions, what was compiled, and the backend each op uses.

Never initializes CUDA unless ``--cuda`` is given (then it also reports the visible GPUs and
whether the compiled arch list covers them).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys

import torch

import torchcv_ext
from torchcv_ext import _loader
from torchcv_ext.ops import _common


def _covers(arch: str, cc: str) -> bool:
    """Does one TORCH_CUDA_ARCH_LIST entry (8.0, 9.0a, 8.6+PTX) run on compute capability cc?"""
    base = arch.split("+")[0].rstrip("af")
    if base == cc:
        return True
    # PTX is JIT-compiled by the driver for any newer GPU.
    return arch.endswith("+PTX") and tuple(map(int, base.split("."))) <= tuple(map(int, cc.split(".")))


def collect(query_cuda: bool = False) -> dict:
    info = {
        "torchcv_ext": torchcv_ext.__version__,
        "location": torchcv_ext.__file__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "extension_loaded": torchcv_ext.extension_loaded(),
        "cuda_kernels_compiled": torchcv_ext.cuda_kernels_compiled(),
        "load_error": _loader.LOAD_ERROR,
        "build": _loader.BUILD_INFO,
        "backends": {op: dict(b) for op, b in sorted(_common.BACKENDS.items()) if not op.startswith("_")},
    }
    if not torchcv_ext.extension_loaded():
        info["backends"] = "all ops: pure-PyTorch reference (extension not loaded)"
    if query_cuda:
        gpus = []
        if torch.cuda.is_available():
            archs = (_loader.BUILD_INFO or {}).get("cuda_arch_list", "")
            for i in range(torch.cuda.device_count()):
                major, minor = torch.cuda.get_device_capability(i)
                cc = f"{major}.{minor}"
                covered = any(_covers(a, cc) for a in archs.split())
                gpus.append({"index": i, "name": torch.cuda.get_device_name(i), "capability": cc,
                             "covered_by_build": covered})
        info["gpus"] = gpus
    return info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m torchcv_ext.info", description=__doc__)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--cuda", action="store_true", help="also query the visible GPUs")
    args = p.parse_args(argv)
    info = collect(args.cuda)
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    b = info["build"] or {}
    print(f"torchcv_ext {info['torchcv_ext']}  ({info['location']})")
    print(f"python {info['python']}, torch {info['torch']} (CUDA {info['torch_cuda']}), {info['platform']}")
    print(f"C++ ops loaded:        {info['extension_loaded']}")
    print(f"CUDA kernels compiled: {info['cuda_kernels_compiled']}")
    if b:
        print(f"built against torch {b.get('torch_version')}, nvcc {b.get('nvcc_version') or '-'}, "
              f"arch list '{b.get('cuda_arch_list') or '-'}', {b.get('cxx_compiler')}, {b.get('build_type')}")
        print(f"built from git commit  {b.get('git_commit') or 'unknown'}")
    if info["load_error"]:
        print(f"note: {info['load_error']}")
    print("backend per op:")
    if isinstance(info["backends"], str):
        print(f"  {info['backends']}")
    else:
        for op, keys in info["backends"].items():
            print(f"  {op:<22} " + ", ".join(f"{k}: {v}" for k, v in keys.items()))
    for g in info.get("gpus", []):
        print(f"GPU {g['index']}: {g['name']} (sm {g['capability']}), covered by build: {g['covered_by_build']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
