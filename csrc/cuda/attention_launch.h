// The attention CUDA launchers, one overload per storage type, defined in attention_f32.cu,
// attention_f16.cu and attention_bf16.cu and called by attention.cu. Each checks the head dim,
// launches the kernels on `stream` and checks the launches.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "torchcv_ext/attention.h"

namespace torchcv_ext::attn {

void launch_forward(const FwdParams<float>& p, cudaStream_t stream);
void launch_forward(const FwdParams<__half>& p, cudaStream_t stream);
void launch_forward(const FwdParams<__nv_bfloat16>& p, cudaStream_t stream);
void launch_backward(const BwdParams<float>& p, cudaStream_t stream);
void launch_backward(const BwdParams<__half>& p, cudaStream_t stream);
void launch_backward(const BwdParams<__nv_bfloat16>& p, cudaStream_t stream);

}  // namespace torchcv_ext::attn
