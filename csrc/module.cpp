// The pybind11 module torchcv_ext._C: build information only. Tensor ops are reached through the
// dispatcher (torch.ops.torchcv_ext.*); importing this module runs their static registrations.
#include <pybind11/pybind11.h>

#include "torchcv_ext/build_info.h"

PYBIND11_MODULE(_C, m) {
  m.doc() = "torchcv_ext compiled extension (build info; ops are in torch.ops.torchcv_ext)";
  m.attr("__version__") = TORCHCV_EXT_VERSION;
  m.attr("torch_version") = TORCHCV_EXT_TORCH_VERSION;
#ifdef TORCHCV_EXT_WITH_CUDA
  m.attr("cuda_compiled") = true;
#else
  m.attr("cuda_compiled") = false;
#endif
  m.attr("cuda_arch_list") = TORCHCV_EXT_CUDA_ARCH_LIST;
  m.attr("nvcc_version") = TORCHCV_EXT_NVCC_VERSION;
}
