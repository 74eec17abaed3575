// Device helpers shared by the attention CUDA kernels (attention_mma.cuh: fp16/bf16 tensor cores,
// attention_f32.cu: fp32 SIMT). No torch headers: these translation units compile quickly.
// Bookkeeping (tiles, online softmax, lse, dS): csrc/include/torchcv_ext/attention.h.
#pragma once
#include <c10/cuda/CUDAException.h>
#include <c10/util/Exception.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <limits>
#include <mutex>
#include <set>
#include <tuple>

#include "attention_launch.h"
#include "torchcv_ext/attention.h"

namespace torchcv_ext::attn {

template <typename T>
__device__ __forceinline__ float to_float(T x) {
  return static_cast<float>(x);
}
template <>
__device__ __forceinline__ float to_float<__half>(__half x) {
  return __half2float(x);
}
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 x) {
  return __bfloat162float(x);
}

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// Backward preprocess: delta[bh * Nq + n] = sum_d dO[b, h, n, d] * O[b, h, n, d] (fp32), one warp
// per row.
template <typename T>
__global__ void __launch_bounds__(256) delta_kernel(const BwdParams<T> p) {
  const int64_t rows = p.B * p.H * p.Nq;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * 8 + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;  // whole warp exits together
  const int64_t bh = row / p.Nq, n = row % p.Nq, b = bh / p.H, h = bh % p.H;
  const T* go = p.dout.row(b, h, n);
  const T* o = p.o.row(b, h, n);
  float s = 0.f;
  for (int64_t d = lane; d < p.D; d += 32) s += to_float(go[d]) * to_float(o[d]);
  for (int off = 16; off > 0; off /= 2) s += __shfl_xor_sync(0xffffffffu, s, off);
  if (lane == 0) p.delta[row] = s;
}

template <typename T>
void launch_delta(const BwdParams<T>& p, cudaStream_t stream) {
  const int64_t rows = p.B * p.H * p.Nq;
  const int64_t blocks = (rows + 7) / 8;
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "_attention_backward: too many rows (",
              rows, ")");
  delta_kernel<T><<<static_cast<unsigned>(blocks), 256, 0, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Grid of `items` CTAs (one per (batch * head, tile)) as a 1-D grid.
inline unsigned grid_of(int64_t items, const char* op) {
  TORCH_CHECK(items <= std::numeric_limits<int32_t>::max(), op, ": too many tiles (", items, ")");
  return static_cast<unsigned>(items);
}

// Opt in to `bytes` of dynamic shared memory for `kernel` (needed above 48 KiB), with a clear
// error on a device that has less (the largest need is about 100 KB, fp32 dK/dV at D = 128).
// Done once per (kernel, device): the attribute query and set are runtime calls that would
// otherwise add microseconds to every launch (up to 3 kernels per backward).
template <typename Kernel>
void set_smem(Kernel kernel, int bytes, const char* op) {
  int dev = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  const auto key = std::make_tuple(reinterpret_cast<const void*>(kernel), dev, bytes);
  static std::mutex mu;
  static std::set<std::tuple<const void*, int, int>> done;
  {
    const std::lock_guard<std::mutex> lock(mu);
    if (done.count(key) != 0) return;
  }
  int max_bytes = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&max_bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  TORCH_CHECK(bytes <= max_bytes, op, ": this head dim needs ", bytes,
              " bytes of shared memory per block, the device allows ", max_bytes);
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  const std::lock_guard<std::mutex> lock(mu);
  done.insert(key);
}

}  // namespace torchcv_ext::attn
