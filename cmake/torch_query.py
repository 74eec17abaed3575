"""Print what CMake needs to know about the torch the *user* runs, as `KEY=VALUE` lines.

Run by cmake/TorchPython.cmake with pip's build-isolation variables removed, so that it sees the
user's site-packages (and therefore the user's torch), not pip's temporary build environment.
"""
import os
import sys

try:
    import torch
except Exception as e:  # noqa: BLE001 - report anything as "not found"
    print(f"ERROR=cannot import torch with {sys.executable}: {e}")
    sys.exit(0)

torch_dir = os.path.dirname(torch.__file__)
print(f"TORCH_VERSION={torch.__version__}")
print(f"TORCH_ROOT={torch_dir}")
print(f"TORCH_CMAKE_PREFIX={torch.utils.cmake_prefix_path}")
print(f"TORCH_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}")
print(f"TORCH_CUDA_VERSION={torch.version.cuda or ''}")
print(f"TORCH_HIP={int(bool(getattr(torch.version, 'hip', None)))}")
print(f"PYTHON={sys.executable}")

# CUDA headers/libraries shipped as pip packages next to torch (nvidia/cu13/{include,lib} for
# CUDA 13 wheels; nvidia/<lib>/{include,lib} for older layouts). A minimal system toolkit
# (nvcc + cudart only) lacks cublas/cusparse/... headers that ATen's CUDA headers include.
site = os.path.dirname(torch_dir)
nv = os.path.join(site, "nvidia")
incs = []
if os.path.isdir(nv):
    for name in sorted(os.listdir(nv)):
        inc = os.path.join(nv, name, "include")
        if os.path.isdir(inc):
            incs.append(inc)
print("NVIDIA_PIP_INCLUDE_DIRS=" + ";".join(incs))
try:
    import pybind11

    print(f"PYBIND11_CMAKEDIR={pybind11.get_cmake_dir()}")
except Exception:  # noqa: BLE001
    pass
