// The elementwise `activation(x, act)` op and its backward `_activation_backward(grad, x, act)`:
// host front end shared by csrc/cpu/activation.cpp and csrc/cuda/activation.cu. The per-element
// math is act_forward / act_backward of activations.h; the backward takes (grad, x), so autograd
// saves only x.
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include "torchcv_ext/activations.h"
#include "torchcv_ext/checks.h"

namespace torchcv_ext::elementwise {

// The dense input in the op's memory format, and an output like it.
struct Unary {
  at::Tensor x, out;
  Act act;
};

inline Unary prepare(const at::Tensor& x, const std::string& act, c10::DeviceType device) {
  const char* op = "activation";
  check_device(op, x, device);
  check_float_dtype(op, "x", x);
  const at::MemoryFormat fmt = memory_format_of(x);
  Unary u;
  u.act = parse_act(act);
  u.x = x.contiguous(fmt);
  u.out = at::empty(x.sizes(), x.options().memory_format(fmt));
  return u;
}

struct Binary {
  at::Tensor grad, x, out;
  Act act;
};

inline Binary prepare_backward(const at::Tensor& grad, const at::Tensor& x, const std::string& act,
                               c10::DeviceType device) {
  const char* op = "_activation_backward";
  check_device(op, x, device);
  check_float_dtype(op, "x", x);
  check_same_device_dtype(op, "grad", x, grad);
  TORCH_CHECK(grad.sizes() == x.sizes(), op, ": grad has shape ", grad.sizes(), " but x has shape ",
              x.sizes());
  const at::MemoryFormat fmt = memory_format_of(x);
  Binary b;
  b.act = parse_act(act);
  b.x = x.contiguous(fmt);
  b.grad = grad.contiguous(fmt);
  b.out = at::empty(x.sizes(), x.options().memory_format(fmt));
  return b;
}

}  // namespace torchcv_ext::elementwise
