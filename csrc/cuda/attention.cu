// CUDA entry points of the attention op: checks, outputs and dtype dispatch (front end shared with
// the CPU kernel: csrc/include/torchcv_ext/attention_host.h). The kernels live in torch-free
// translation units: attention_f16.cu / attention_bf16.cu (tensor cores, attention_mma.cuh) and
// attention_f32.cu (SIMT). Schemas: csrc/registration.cpp. Autograd / fake / autocast:
// torchcv_ext/ops/attention.py.
//
// float64 on CUDA (what gradcheck uses) runs the explicit math with ATen ops; it is not a
// performance path.
#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/exp.h>
#include <ATen/ops/logsumexp.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/softmax.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include "attention_launch.h"
#include "torchcv_ext/attention_host.h"

namespace torchcv_ext::attn {

namespace {

// The fp16 / bf16 backward computes dQ in its dK/dV pass with float32 atomics (one pass fewer,
// FlashAttention-2 style) when the op is asked to (atomic_dq: config.cuda_attention_dq = "atomic")
// and deterministic algorithms are off; otherwise in a separate deterministic pass (the default
// until measured faster on a GPU: benchmarks/bench_attention.py times both).
bool use_atomic_dq(const at::Tensor& q, bool requested) {
  if (q.scalar_type() != at::kHalf && q.scalar_type() != at::kBFloat16) return false;
  return requested && !at::globalContext().deterministicAlgorithms();
}

template <typename T>
void run_backward(const BwdSetup& s, bool atomic_dq, cudaStream_t stream) {
  BwdParams<T> p = bwd_params<T>(s);
  at::Tensor dq_acc;  // float32 [B * H][Nq][D], zeroed; freed stream-ordered after the kernels
  if (use_atomic_dq(s.q, atomic_dq)) {
    dq_acc = at::zeros({s.q.size(0) * s.q.size(1) * s.q.size(2) * s.q.size(3)},
                       s.q.options().dtype(at::kFloat));
    p.dq_acc = dq_acc.data_ptr<float>();
  }
  launch_backward(p, stream);
}

void check_head_dim(const char* op, const at::Tensor& q) {
  const int64_t d = q.size(3);
  TORCH_CHECK(q.scalar_type() == at::kDouble || d == 32 || d == 64 || d == 128, op,
              ": head_dim must be 32, 64 or 128 on CUDA, got ", d);
}

std::tuple<at::Tensor, at::Tensor> attention_cuda(const at::Tensor& q, const at::Tensor& k,
                                                  const at::Tensor& v, std::optional<double> scale) {
  check_device("attention", q, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(q.device());
  FwdSetup s = forward_setup("attention", q, k, v, scale, /*align=*/16);
  check_head_dim("attention", s.q);  // before the empty-shape early return: same error for every shape
  if (empty_forward(s)) return {s.out, s.lse};
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  switch (s.q.scalar_type()) {
    case at::kFloat: launch_forward(fwd_params<float>(s), stream); break;
    case at::kHalf: launch_forward(fwd_params<__half>(s), stream); break;
    case at::kBFloat16: launch_forward(fwd_params<__nv_bfloat16>(s), stream); break;
    default: {  // float64: explicit math
      const at::Tensor scores = at::matmul(s.q, s.k.transpose(-2, -1)) * s.scale;
      s.lse.copy_(at::logsumexp(scores, -1));
      s.out.copy_(at::matmul(at::softmax(scores, -1), s.v));
    }
  }
  return {s.out, s.lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward_cuda(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, std::optional<double> scale, bool atomic_dq) {
  check_device("_attention_backward", q, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(q.device());
  BwdSetup s = backward_setup("_attention_backward", dout, q, k, v, out, lse, scale, /*align=*/16);
  check_head_dim("_attention_backward", s.q);  // before the empty-shape early return: same error for every shape
  if (empty_backward(s)) return {s.dq, s.dk, s.dv};
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  switch (s.q.scalar_type()) {
    case at::kFloat: launch_backward(bwd_params<float>(s), stream); break;
    case at::kHalf: run_backward<__half>(s, atomic_dq, stream); break;
    case at::kBFloat16: run_backward<__nv_bfloat16>(s, atomic_dq, stream); break;
    default: {  // float64: explicit math, recomputing P from lse like the kernels
      const at::Tensor p =
          at::exp(at::matmul(s.q, s.k.transpose(-2, -1)) * s.scale - s.lse.unsqueeze(-1));
      s.dv.copy_(at::matmul(p.transpose(-2, -1), s.dout));
      const at::Tensor dp = at::matmul(s.dout, s.v.transpose(-2, -1));
      const at::Tensor delta = (s.dout * s.out).sum(-1, /*keepdim=*/true);
      const at::Tensor ds = p * (dp - delta);
      s.dq.copy_(at::matmul(ds, s.k) * s.scale);
      s.dk.copy_(at::matmul(ds.transpose(-2, -1), s.q) * s.scale);
    }
  }
  return {s.dq, s.dk, s.dv};
}

}  // namespace

TORCH_LIBRARY_IMPL(torchcv_ext, CUDA, m) {
  m.impl("attention", &attention_cuda);
  m.impl("_attention_backward", &attention_backward_cuda);
}

}  // namespace torchcv_ext::attn
