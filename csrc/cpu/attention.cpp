// CPU kernels of the attention op: ATen's CPU flash attention
// (at::_scaled_dot_product_flash_attention_for_cpu and its backward; vectorized, GEMM-blocked), run
// through the op so that the op, its autograd, fake kernel and export are the same on every device.
// Its lse has the op's meaning (natural-log row log-sum-exp of the scaled scores); out and the
// gradients are returned in the op's (B, N, H, D) layout. (The CUDA kernels' tiled algorithm is
// checked on the CPU by the CUDA emulator, python_tests/cuda_emu, on the real kernels.)
// Schemas: csrc/registration.cpp. Autograd / fake / autocast: torchcv_ext/ops/attention.py.
#include <ATen/ops/_scaled_dot_product_flash_attention_for_cpu.h>
#include <ATen/ops/_scaled_dot_product_flash_attention_for_cpu_backward.h>
#include <torch/library.h>

#include "torchcv_ext/attention_host.h"

namespace torchcv_ext::attn {
namespace {

// `dst` (allocated in the op's layout) unless `src` already has its strides.
at::Tensor in_layout(const at::Tensor& src, at::Tensor& dst) {
  if (src.strides() == dst.strides()) return src;
  dst.copy_(src);
  return dst;
}

std::tuple<at::Tensor, at::Tensor> attention_cpu(const at::Tensor& q, const at::Tensor& k,
                                                 const at::Tensor& v, std::optional<double> scale) {
  check_device("attention", q, c10::DeviceType::CPU);
  FwdSetup s = forward_setup("attention", q, k, v, scale, /*align=*/0);
  if (empty_forward(s)) return {s.out, s.lse};
  auto [o, l] = at::_scaled_dot_product_flash_attention_for_cpu(s.q, s.k, s.v, 0.0, false, {}, s.scale);
  s.lse.copy_(l);  // ATen's is stored (B, N, H)
  return {in_layout(o, s.out), s.lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward_cpu(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, std::optional<double> scale, bool /*atomic_dq: CUDA only*/) {
  check_device("_attention_backward", q, c10::DeviceType::CPU);
  BwdSetup s = backward_setup("_attention_backward", dout, q, k, v, out, lse, scale, /*align=*/0);
  if (empty_backward(s)) return {s.dq, s.dk, s.dv};
  auto [dq, dk, dv] = at::_scaled_dot_product_flash_attention_for_cpu_backward(
      s.dout, s.q, s.k, s.v, s.out, s.lse, 0.0, false, {}, s.scale);
  return {in_layout(dq, s.dq), in_layout(dk, s.dk), in_layout(dv, s.dv)};
}

}  // namespace

TORCH_LIBRARY_IMPL(torchcv_ext, CPU, m) {
  m.impl("attention", &attention_cpu);
  m.impl("_attention_backward", &attention_backward_cpu);
}

}  // namespace torchcv_ext::attn
