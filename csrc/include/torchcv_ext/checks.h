// Input checks shared by every kernel (CPU and CUDA). Each failure is a TORCH_CHECK with a message
// naming the op and the argument, so bad input raises a Python RuntimeError, never crashes.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace torchcv_ext {

// The memory format an op computes in and returns: channels_last for a 4-D tensor laid out
// channels-last (channels_last-contiguous but not NCHW-contiguous, or a channel-slice of such a
// tensor: unit channel stride), NCHW-contiguous otherwise. The Python fake kernels
// (torchcv_ext/ops/_common.py: memory_format_of) follow the same rule.
inline at::MemoryFormat memory_format_of(const at::Tensor& x) {
  if (x.dim() == 4 && !x.is_contiguous() &&
      (x.is_contiguous(at::MemoryFormat::ChannelsLast) || (x.stride(1) == 1 && x.stride(3) != 1))) {
    return at::MemoryFormat::ChannelsLast;
  }
  return at::MemoryFormat::Contiguous;
}

inline void check_float_dtype(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kHalf ||
                  t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kDouble,
              op, ": ", name, " must be float32, float16, bfloat16 or float64, got ", t.scalar_type());
}

inline void check_same_device_dtype(const char* op, const char* name, const at::Tensor& ref,
                                    const at::Tensor& t) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(),
              " but the input is on ", ref.device());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(),
              " but the input has dtype ", ref.scalar_type());
}

inline void check_device(const char* op, const at::Tensor& t, c10::DeviceType type) {
  TORCH_CHECK(t.device().type() == type, op, ": expected a ", c10::DeviceTypeName(type),
              " tensor, got one on ", t.device());
}

}  // namespace torchcv_ext
