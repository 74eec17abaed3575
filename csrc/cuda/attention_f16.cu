// Tensor-core flash attention kernels (attention_mma.cuh) instantiated for __half: one
// translation unit per dtype keeps compile time and memory per nvcc job bounded.
#include "attention_mma.cuh"

namespace torchcv_ext::attn {

void launch_forward(const FwdParams<__half>& p, cudaStream_t stream) {
  launch_forward_mma<__half>(p, stream);
}

void launch_backward(const BwdParams<__half>& p, cudaStream_t stream) {
  launch_backward_mma<__half>(p, stream);
}

}  // namespace torchcv_ext::attn
