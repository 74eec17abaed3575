// CUDA kernels of the elementwise `activation(x, act)` op and its backward (grad, x, act).
// Schemas: csrc/registration.cpp. Front end: csrc/include/torchcv_ext/activation_host.h; math:
// act_forward / act_backward (csrc/include/torchcv_ext/activations.h), one kernel per activation.
// Autograd / fake: torchcv_ext/ops/activation.py.
//
// Dense inputs (in the op's memory format) are processed as a flat array: 16-byte vectors when
// every pointer is 16-byte aligned, then a scalar tail; grid-stride loops with 64-bit indices.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#include "torchcv_ext/activation_host.h"

namespace torchcv_ext {
namespace {

constexpr int kThreads = 256;

template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

// out[i] = act(x[i]) (grad == nullptr) or grad[i] * act'(x[i]); vectors of V elements for
// i < nvec * V, scalars after.
template <typename T, int V, Act kAct>
__global__ void __launch_bounds__(kThreads)
act_kernel(const T* __restrict__ x, const T* __restrict__ grad, T* __restrict__ out, int64_t n) {
  using A = at::opmath_type<T>;
  const int64_t nvec = n / V;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  for (int64_t j = first; j < nvec; j += stride) {
    const Pack<T, V> a = reinterpret_cast<const Pack<T, V>*>(x)[j];
    Pack<T, V> b;
    if (grad) {
      const Pack<T, V> g = reinterpret_cast<const Pack<T, V>*>(grad)[j];
#pragma unroll
      for (int e = 0; e < V; ++e) {
        b.v[e] = static_cast<T>(static_cast<A>(g.v[e]) * act_backward(kAct, static_cast<A>(a.v[e])));
      }
    } else {
#pragma unroll
      for (int e = 0; e < V; ++e) b.v[e] = static_cast<T>(act_forward(kAct, static_cast<A>(a.v[e])));
    }
    reinterpret_cast<Pack<T, V>*>(out)[j] = b;
  }
  for (int64_t i = nvec * V + first; i < n; i += stride) {
    const A v = static_cast<A>(x[i]);
    out[i] = static_cast<T>(grad ? static_cast<A>(grad[i]) * act_backward(kAct, v) : act_forward(kAct, v));
  }
}

bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

template <Act kAct>
void launch_act(const at::Tensor& x, const at::Tensor* grad, at::Tensor& out) {
  const int64_t n = x.numel();
  if (n == 0) return;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t max_blocks = int64_t{at::cuda::getCurrentDeviceProperties()->multiProcessorCount} * 32;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "activation_cuda", [&] {
    using T = scalar_t;
    constexpr int VW = 16 / sizeof(T);
    const T* px = x.const_data_ptr<T>();
    const T* pg = grad ? grad->const_data_ptr<T>() : nullptr;
    T* po = out.mutable_data_ptr<T>();
    const bool vec = aligned16(px) && aligned16(po) && (pg == nullptr || aligned16(pg));
    const int64_t work = vec ? (n + VW - 1) / VW : n;
    const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>((work + kThreads - 1) / kThreads, max_blocks));
    if (vec) {
      act_kernel<T, VW, kAct><<<blocks, kThreads, 0, stream>>>(px, pg, po, n);
    } else {
      act_kernel<T, 1, kAct><<<blocks, kThreads, 0, stream>>>(px, pg, po, n);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void launch(Act act, const at::Tensor& x, const at::Tensor* grad, at::Tensor& out) {
  TCV_ACT_CASES(launch_act<kA>(x, grad, out))
}

at::Tensor forward_cuda(const at::Tensor& x_in, c10::string_view act) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  elementwise::Unary u = elementwise::prepare(x_in, std::string(act), c10::DeviceType::CUDA);
  launch(u.act, u.x, nullptr, u.out);
  return u.out;
}

at::Tensor backward_cuda(const at::Tensor& grad, const at::Tensor& x_in, c10::string_view act) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  elementwise::Binary b =
      elementwise::prepare_backward(grad, x_in, std::string(act), c10::DeviceType::CUDA);
  launch(b.act, b.x, &b.grad, b.out);
  return b.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(torchcv_ext, CUDA, m) {
  m.impl("activation", &forward_cuda);
  m.impl("_activation_backward", &backward_cuda);
}

}  // namespace torchcv_ext
