#!/usr/bin/env bash
# Build and test torchcv_ext against another torch (default 2.11.0, the torch of the lent GPU
# machines that benchmarks/gpu_suite.sh builds against), so that an API newer than that torch
# fails here, in CI, and not in a GPU session's only build.
#
#   bash .ci/compat_torch.sh [TORCH_VERSION]     # after `bash .ci/run` installed the tools
#
# A venv that sees this interpreter's packages (the CUDA 13 pip libraries and headers, pytest,
# timm, ...) and holds only its own torch and torchvision; its own build dir; the CUDA sources
# are compiled (TORCHCV_EXT_CUDA=ON, TORCH_CUDA_ARCH_LIST as set, 9.0 in CI) and ptxas's
# register / spill report checked (.ci/ptxas_check.py): CI's one CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
ver="${1:-2.11.0}"
case "$ver" in
  2.11.0) tv=0.26.0 ;;
  *) echo "compat_torch.sh: no torchvision version known for torch $ver" >&2; exit 2 ;;
esac
venv="${TMPDIR:-/tmp}/torchcv-compat-torch-$ver"
python -m venv --system-site-packages "$venv"
py="$venv/bin/python"
"$py" -m pip install -q --no-deps "torch==$ver" "torchvision==$tv"
"$py" -m pip install -q "scikit-build-core>=0.10" "pybind11>=2.12" "cmake>=3.26" ninja
ptxas_log="$PWD/build/ptxas-compat-torch-$ver"
TORCHCV_EXT_CUDA=ON TORCHCV_EXT_PTXAS_LOG="$ptxas_log" "$py" -m pip install -q --no-build-isolation --no-deps \
  --force-reinstall -C build-dir="build/compat-torch-$ver" .
# ptxas's per-kernel registers and spills of this (CUDA) build against the budgets.
"$py" .ci/ptxas_check.py "$ptxas_log" --out "$ptxas_log/report.md"
repo="$PWD"
cd "${TMPDIR:-/tmp}"
"$py" -m torchcv_ext.info
# The emulated CUDA kernels (test_cuda_emulated.py) and the `slow` set ran in the main test run;
# not again here (API differences between torch versions show in the default set).
TORCHCV_EXT_REQUIRE_EXT=1 TORCHCV_EXT_SKIP_CUDA_EMU=1 "$py" -P -m pytest "$repo/python_tests" -q \
  -p no:cacheprovider -n "$(nproc)" -m "not slow"
