// Tensor-core flash attention kernels (attention_mma.cuh) instantiated for __nv_bfloat16: one
// translation unit per dtype keeps compile time and memory per nvcc job bounded.
#include "attention_mma.cuh"

namespace torchcv_ext::attn {

void launch_forward(const FwdParams<__nv_bfloat16>& p, cudaStream_t stream) {
  launch_forward_mma<__nv_bfloat16>(p, stream);
}

void launch_backward(const BwdParams<__nv_bfloat16>& p, cudaStream_t stream) {
  launch_backward_mma<__nv_bfloat16>(p, stream);
}

}  // namespace torchcv_ext::attn
