// CUDA kernels of the channel-shuffle family. Schemas: csrc/registration.cpp. Front end (checks,
// outputs, plan with 16-byte words where alignment allows):
// csrc/include/torchcv_ext/channel_shuffle_host.h. Autograd / fake: torchcv_ext/ops/channel_shuffle.py.
//
// A pure permutation: one read and one write of every element, in the destination's memory order
// (coalesced writes; NCHW reads are coalesced too, channels_last reads gather within a pixel).
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "index_width.cuh"
#include "torchcv_ext/channel_shuffle_host.h"

namespace torchcv_ext {
namespace {

constexpr int kThreads = 256;

// kSpatialInner: destination is NCHW-like (spatial index fastest); else channels fastest.
template <typename T, typename I, bool kSpatialInner>
__global__ void __launch_bounds__(kThreads) shuffle_kernel(const ShufflePlan<T> p) {
  const I C = static_cast<I>(p.C), S = static_cast<I>(p.S);
  const I total = static_cast<I>(p.N) * C * S;
  for (I i = static_cast<I>(blockIdx.x) * kThreads + threadIdx.x; i < total;
       i += static_cast<I>(gridDim.x) * kThreads) {
    I n, k, s;
    if constexpr (kSpatialInner) {
      s = i % S;
      const I r = i / S;
      k = r % C;
      n = r / C;
    } else {
      k = i % C;
      const I r = i / C;
      s = r % S;
      n = r / S;
    }
    p.copy(n, k, s);
  }
}

struct CudaRun {
  static constexpr c10::DeviceType kDevice = c10::DeviceType::CUDA;
  using Guard = c10::cuda::CUDAGuard;

  template <typename T>
  void operator()(const ShufflePlan<T>& p) const {
    const int64_t total = p.N * p.C * p.S;
    const int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, int64_t{1} << 20);
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    const bool inner = p.dst_st[0].ss == 1 && p.dst_st[1].ss == 1;
    // 32-bit index arithmetic when it cannot overflow (also for the grid-stride increment).
    const bool small = index_fits<int32_t>(total, blocks * kThreads);
    if (small && inner) {
      shuffle_kernel<T, int32_t, true><<<blocks, kThreads, 0, stream>>>(p);
    } else if (small) {
      shuffle_kernel<T, int32_t, false><<<blocks, kThreads, 0, stream>>>(p);
    } else if (inner) {
      shuffle_kernel<T, int64_t, true><<<blocks, kThreads, 0, stream>>>(p);
    } else {
      shuffle_kernel<T, int64_t, false><<<blocks, kThreads, 0, stream>>>(p);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(torchcv_ext, CUDA, m) { shuffle::register_kernels<CudaRun>(m); }

}  // namespace torchcv_ext
