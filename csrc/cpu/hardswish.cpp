// CPU kernels of hardswish / hardsigmoid and their backwards (grad, x). Schemas:
// csrc/registration.cpp. Front end: csrc/include/torchcv_ext/hardswish_host.h. Autograd / fake:
// torchcv_ext/ops/hardswish.py.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "torchcv_ext/hardswish_host.h"

namespace torchcv_ext {
namespace {

constexpr int64_t kGrain = 32768;

template <Act kAct>
at::Tensor forward_cpu(const at::Tensor& x_in) {
  hsw::Unary u = hsw::prepare(kAct, x_in, c10::DeviceType::CPU);
  const int64_t n = u.x.numel();
  if (n == 0) return u.out;
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
