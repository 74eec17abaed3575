// CPU kernels of the elementwise `activation(x, act)` op and its backward (grad, x, act). Schemas:
// csrc/registration.cpp. Front end: csrc/include/torchcv_ext/activation_host.h; math:
// act_forward / act_backward (csrc/include/torchcv_ext/activations.h). Autograd / fake:
// torchcv_ext/ops/activation.py.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/gelu_backward.h>
#include <ATen/ops/hardsigmoid.h>
#include <ATen/ops/hardsigmoid_backward.h>
#include <ATen/ops/hardswish.h>
#include <ATen/ops/hardswish_backward.h>
#include <ATen/ops/hardtanh.h>
#include <ATen/ops/hardtanh_backward.h>
#include <ATen/ops/relu.h>
#include <ATen/ops/silu.h>
#include <ATen/ops/silu_backward.h>
#include <ATen/ops/sigmoid.h>
#include <ATen/ops/threshold_backward.h>
#include <torch/library.h>

#include "act_f32.h"
#include "torchcv_ext/activation_host.h"
#include "torchcv_ext/cpu_clones.h"

namespace torchcv_ext {
namespace {

constexpr int64_t kGrain = 32768;

// float32, the hot case: one vectorized loop per activation and CPU (a plain loop compiles to
// SSE2 only), in act_f32.h's vectorizable forms.
TCV_CPU_CLONES void forward_f32(Act act, const float* x, float* y, int64_t n) {
  TCV_ACT_CASES(_Pragma("omp simd") for (int64_t i = 0; i < n; ++i) y[i] = cpu::act_f32<kA>(x[i]))
}

TCV_CPU_CLONES void backward_f32(Act act, const float* g, const float* x, float* dx, int64_t n) {
  TCV_ACT_CASES(_Pragma("omp simd") for (int64_t i = 0; i < n; ++i) dx[i] = g[i] * cpu::act_grad_f32<kA>(x[i]))
}

// ATen's own CPU kernel of the same function where ATen has one in terms of x, written into the
// op's output: the same formulas (PyTorch's values at the kinks), and ATen's vectorized loops ran
// these memory-bound passes 5-15% faster than forward_f32 / backward_f32 (AVX2 AMD EPYC, float32,
// 64 Ki-1.5 Mi elements, one thread; benchmarks/results/2026-12-07-cpu-eager-caller.md). On the
// CPU this op exists for its autograd (saves x only; hardsigmoid's double backward) and for graph
// capture, not for a faster loop; eager CPU calls of the public functions skip it for eager's own
// function (torchcv_ext/ops/activation.py). false: ours below (identity; sigmoid's backward, which ATen
// computes from the output; float64, where ATen's hardsigmoid backward multiplies by a float 1/6
// and is off by 3e-8 relative; an activation added to activations.h without a case here).
bool aten_forward(Act act, const at::Tensor& x, at::Tensor& out) {
  if (x.scalar_type() == at::kDouble) return false;
  switch (act) {
    case Act::ReLU: at::relu_out(out, x); return true;
    case Act::ReLU6: at::hardtanh_out(out, x, 0, 6); return true;
    case Act::Hardswish: at::hardswish_out(out, x); return true;
    case Act::Hardsigmoid: at::hardsigmoid_out(out, x); return true;
    case Act::SiLU: at::silu_out(out, x); return true;
    case Act::Sigmoid: at::sigmoid_out(out, x); return true;
    case Act::GELU: at::gelu_out(out, x, "none"); return true;
    case Act::GELUTanh: at::gelu_out(out, x, "tanh"); return true;
    default: return false;
  }
}

bool aten_backward(Act act, const at::Tensor& grad, const at::Tensor& x, at::Tensor& out) {
  if (x.scalar_type() == at::kDouble) return false;
  switch (act) {
    case Act::ReLU: at::threshold_backward_out(out, grad, x, 0); return true;
    case Act::ReLU6: at::hardtanh_backward_out(out, grad, x, 0, 6); return true;
    case Act::Hardswish: at::hardswish_backward_out(out, grad, x); return true;
    case Act::Hardsigmoid: at::hardsigmoid_backward_out(out, grad, x); return true;
    case Act::SiLU: at::silu_backward_out(out, grad, x); return true;
    case Act::GELU: at::gelu_backward_out(out, grad, x, "none"); return true;
    case Act::GELUTanh: at::gelu_backward_out(out, grad, x, "tanh"); return true;
    default: return false;
  }
}

at::Tensor forward_cpu(const at::Tensor& x_in, c10::string_view act_name) {
  elementwise::Unary u = elementwise::prepare(x_in, std::string(act_name), c10::DeviceType::CPU);
  const Act act = u.act;
  const int64_t n = u.x.numel();
  if (n == 0 || aten_forward(act, u.x, u.out)) return u.out;
  if (u.x.scalar_type() == at::kFloat) {
    const float* x = u.x.const_data_ptr<float>();
    float* y = u.out.mutable_data_ptr<float>();
    at::parallel_for(0, n, kGrain, [&](int64_t b, int64_t e) { forward_f32(act, x + b, y + b, e - b); });
    return u.out;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, u.x.scalar_type(), "activation", [&] {
    using A = at::opmath_type<scalar_t>;
    const scalar_t* x = u.x.const_data_ptr<scalar_t>();
    scalar_t* y = u.out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      TCV_ACT_CASES(for (int64_t i = begin; i < end; ++i) {
        y[i] = static_cast<scalar_t>(act_forward(kA, static_cast<A>(x[i])));
      })
    });
  });
  return u.out;
}

at::Tensor backward_cpu(const at::Tensor& grad, const at::Tensor& x_in, c10::string_view act_name) {
  elementwise::Binary b =
      elementwise::prepare_backward(grad, x_in, std::string(act_name), c10::DeviceType::CPU);
  const Act act = b.act;
  const int64_t n = b.x.numel();
  if (n == 0 || aten_backward(act, b.grad, b.x, b.out)) return b.out;
  if (b.x.scalar_type() == at::kFloat) {
    const float* x = b.x.const_data_ptr<float>();
    const float* g = b.grad.const_data_ptr<float>();
    float* dx = b.out.mutable_data_ptr<float>();
    at::parallel_for(0, n, kGrain, [&](int64_t s, int64_t e) { backward_f32(act, g + s, x + s, dx + s, e - s); });
    return b.out;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b.x.scalar_type(), "_activation_backward", [&] {
    using A = at::opmath_type<scalar_t>;
    const scalar_t* x = b.x.const_data_ptr<scalar_t>();
    const scalar_t* g = b.grad.const_data_ptr<scalar_t>();
    scalar_t* dx = b.out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      TCV_ACT_CASES(for (int64_t i = begin; i < end; ++i) {
        dx[i] = static_cast<scalar_t>(static_cast<A>(g[i]) * act_backward(kA, static_cast<A>(x[i])));
      })
    });
  });
  return b.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(torchcv_ext, CPU, m) {
  m.impl("activation", &forward_cpu);
  m.impl("_activation_backward", &backward_cpu);
}

}  // namespace torchcv_ext
