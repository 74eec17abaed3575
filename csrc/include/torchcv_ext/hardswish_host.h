// Memory-efficient hardswish / hardsigmoid: host front end shared by csrc/cpu/hardswish.cpp and
// csrc/cuda/hardswish.cu. The per-element math is act_forward / act_backward of activations.h;
// the backward ops take (grad, x), so autograd saves only x.
#pragma once
#include <ATen/ATen.h>

#include "torchcv_ext/activations.h"
#include "torchcv_ext/checks.h"

namespace torchcv_ext::hsw {

constexpr const char* op_name(Act a, bool backward) {
  if (a == Act::Hardswish) return backward ? "_hardswish_backward" : "hardswish";
  return backward ? "_hardsigmoid_backward" : "hardsigmoid";
}

// The dense input in the op's memory format, and an output like it.
struct Unary {
  at::Tensor x, out;
};

inline Unary prepare(Act a, const at::Tensor& x, c10::DeviceType device) {
  const char* op = op_name(a, false);
  check_device(op, x, device);
  check_float_dtype(op, "x", x);
  const at::MemoryFormat fmt = memory_format_of(x);
  Unary u;
  u.x = x.contiguous(fmt);
  u.out = at::empty(x.sizes(), x.options().memory_format(fmt));
  return u;
}

struct Binary {
  at::Tensor grad, x, out;
};

inline Binary prepare_backward(Act a, const at::Tensor& grad, const at::Tensor& x,
                               c10::DeviceType device) {
  const char* op = op_name(a, true);
  check_device(op, x, device);
  check_float_dtype(op, "x", x);
  check_same_device_dtype(op, "grad", x, grad);
  TORCH_CHECK(grad.sizes() == x.sizes(), op, ": grad has shape ", grad.sizes(), " but x has shape ",
              x.sizes());
  const at::MemoryFormat fmt = memory_format_of(x);
  Binary b;
  b.x = x.contiguous(fmt);
  b.grad = grad.contiguous(fmt);
  b.out = at::empty(x.sizes(), x.options().memory_format(fmt));
  return b;
}

}  // namespace torchcv_ext::hsw
