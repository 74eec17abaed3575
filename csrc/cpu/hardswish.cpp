// CPU kernels of hardswish / hardsigmoid and their backwards (grad, x). Schemas:
// csrc/registration.cpp. Front end: csrc/include/torchcv_ext/hardswish_host.h. Autograd / fake:
// torchcv_ext/ops/hardswish.py.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "torchcv_ext/cpu_clones.h"
#include "torchcv_ext/hardswish_host.h"

namespace torchcv_ext {
namespace {

constexpr int64_t kGrain = 32768;

// float32, the hot case: vectorized loops per CPU (a plain loop compiles to SSE2 only).
TCV_CPU_CLONES void forward_f32(Act a, const float* x, float* y, int64_t n) {
  if (a == Act::Hardswish) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) y[i] = act_forward(Act::Hardswish, x[i]);
  } else {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) y[i] = act_forward(Act::Hardsigmoid, x[i]);
  }
}

TCV_CPU_CLONES void backward_f32(Act a, const float* g, const float* x, float* dx, int64_t n) {
  if (a == Act::Hardswish) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) dx[i] = g[i] * act_backward(Act::Hardswish, x[i]);
  } else {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) dx[i] = g[i] * act_backward(Act::Hardsigmoid, x[i]);
  }
}

template <Act kAct>
at::Tensor forward_cpu(const at::Tensor& x_in) {
  hsw::Unary u = hsw::prepare(kAct, x_in, c10::DeviceType::CPU);
  const int64_t n = u.x.numel();
  if (n == 0) return u.out;
  if (u.x.scalar_type() == at::kFloat) {
    const float* x = u.x.const_data_ptr<float>();
    float* y = u.out.mutable_data_ptr<float>();
    at::parallel_for(0, n, kGrain, [&](int64_t b, int64_t e) { forward_f32(kAct, x + b, y + b, e - b); });
    return u.out;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, u.x.scalar_type(), hsw::op_name(kAct, false), [&] {
    using A = at::opmath_type<scalar_t>;
    const scalar_t* x = u.x.const_data_ptr<scalar_t>();
    scalar_t* y = u.out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        y[i] = static_cast<scalar_t>(act_forward(kAct, static_cast<A>(x[i])));
      }
    });
  });
  return u.out;
}

template <Act kAct>
at::Tensor backward_cpu(const at::Tensor& grad, const at::Tensor& x_in) {
  hsw::Binary b = hsw::prepare_backward(kAct, grad, x_in, c10::DeviceType::CPU);
  const int64_t n = b.x.numel();
  if (n == 0) return b.out;
  if (b.x.scalar_type() == at::kFloat) {
    const float* x = b.x.const_data_ptr<float>();
    const float* g = b.grad.const_data_ptr<float>();
    float* dx = b.out.mutable_data_ptr<float>();
    at::parallel_for(0, n, kGrain, [&](int64_t s, int64_t e) { backward_f32(kAct, g + s, x + s, dx + s, e - s); });
    return b.out;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b.x.scalar_type(), hsw::op_name(kAct, true), [&] {
    using A = at::opmath_type<scalar_t>;
    const scalar_t* x = b.x.const_data_ptr<scalar_t>();
    const scalar_t* g = b.grad.const_data_ptr<scalar_t>();
    scalar_t* dx = b.out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        dx[i] = static_cast<scalar_t>(static_cast<A>(g[i]) * act_backward(kAct, static_cast<A>(x[i])));
      }
    });
  });
  return b.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(torchcv_ext, CPU, m) {
  m.impl("hardswish", &forward_cpu<Act::Hardswish>);
  m.impl("_hardswish_backward", &backward_cpu<Act::Hardswish>);
  m.impl("hardsigmoid", &forward_cpu<Act::Hardsigmoid>);
  m.impl("_hardsigmoid_backward", &backward_cpu<Act::Hardsigmoid>);
}

}  // namespace torchcv_ext
