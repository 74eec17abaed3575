// Host-side front end of squeeze_excite, shared by the CPU and CUDA backends: argument checks,
// the layout the kernels compute in, activation parsing.
#pragma once
#include <ATen/core/Tensor.h>

#include <string>

#include "torchcv_ext/checks.h"
#include "torchcv_ext/squeeze_excite.h"

namespace torchcv_ext::se {

// Inputs in the layout the kernels compute in: x dense NCHW-like (spatial dims flattened, HW fastest)
// or dense channels_last (C fastest); weights and biases contiguous.
struct Problem {
  at::Tensor x, w1, b1, w2, b2;
  int64_t N, C, S, HW;
  bool channels_last;
  at::MemoryFormat fmt;
  Act act, gate;
};

inline Problem prepare(const char* op, const at::Tensor& x, const at::Tensor& w1,
                       const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2,
                       const std::string& act, const std::string& gate, c10::DeviceType device) {
  check_device(op, x, device);
  TORCH_CHECK(x.dim() >= 3, op, ": x must have at least 3 dims (N, C, *spatial), got ", x.dim(),
              " dims of shape ", x.sizes());
  check_float_dtype(op, "x", x);
  const int64_t C = x.size(1);
  TORCH_CHECK(w1.dim() == 2 && w1.size(1) == C, op, ": w1 must have shape (S, C) = (S, ", C,
              "), got ", w1.sizes());
  const int64_t S = w1.size(0);
  TORCH_CHECK(w2.dim() == 2 && w2.size(0) == C && w2.size(1) == S, op,
              ": w2 must have shape (C, S) = (", C, ", ", S, "), got ", w2.sizes());
  TORCH_CHECK(b1.dim() == 1 && b1.size(0) == S, op, ": b1 must have shape (S,) = (", S, ",), got ",
              b1.sizes());
  TORCH_CHECK(b2.dim() == 1 && b2.size(0) == C, op, ": b2 must have shape (C,) = (", C, ",), got ",
              b2.sizes());
  check_same_device_dtype(op, "w1", x, w1);
  check_same_device_dtype(op, "b1", x, b1);
  check_same_device_dtype(op, "w2", x, w2);
  check_same_device_dtype(op, "b2", x, b2);
  Problem p;
  p.fmt = memory_format_of(x);
  p.channels_last = p.fmt == at::MemoryFormat::ChannelsLast;
  p.x = x.contiguous(p.fmt);
  p.w1 = w1.contiguous();
  p.b1 = b1.contiguous();
  p.w2 = w2.contiguous();
  p.b2 = b2.contiguous();
  p.N = x.size(0);
  p.C = C;
  p.S = S;
  p.HW = 1;
  for (int64_t d = 2; d < x.dim(); ++d) p.HW *= x.size(d);
  p.act = parse_act(act);
  p.gate = parse_act(gate);
  return p;
}

// grad in the layout of the prepared x (same shape required).
inline at::Tensor prepare_grad(const char* op, const at::Tensor& grad, const Problem& p) {
  TORCH_CHECK(grad.sizes() == p.x.sizes(), op, ": grad has shape ", grad.sizes(),
              " but x has shape ", p.x.sizes());
  check_same_device_dtype(op, "grad", p.x, grad);
  return grad.contiguous(p.fmt);
}

}  // namespace torchcv_ext::se
