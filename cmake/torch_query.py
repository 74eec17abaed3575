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
# Torch's own site-packages first, then every other sys.path entry: a venv made with
# --system-site-packages (or a user site) can hold torch in one place and the nvidia packages in
# another. The first copy of each nvidia/<name>/include wins.
site = os.path.dirname(torch_dir)
incs, seen = [], set()
for root in [site] + [p for p in sys.path if p and os.path.abspath(p) != os.path.abspath(site)]:
    nv = os.path.join(root, "nvidia")
    if not os.path.isdir(nv):
        continue
    for name in sorted(os.listdir(nv)):
        inc = os.path.join(nv, name, "include")
        if name not in seen and os.path.isdir(inc):
            seen.add(name)
            incs.append(inc)
print("NVIDIA_PIP_INCLUDE_DIRS=" + ";".join(incs))
try:
    import pybind11

    print(f"PYBIND11_CMAKEDIR={pybind11.get_cmake_dir()}")
except Exception:  # noqa: BLE001
    pass
