// Deliberately broken kernels that the CUDA emulator (cuda_emu.h) must catch, compiled through the
// same rewrite as csrc/cuda/*.cu (build.py): python_tests/cuda_emu/cases.py checks that each bug
// class is reported, so a passing emulator run means something. (Out-of-bounds accesses are left
// to AddressSanitizer, which aborts the process.)
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

namespace {

// Each thread publishes its index in shared memory and reads its neighbour's: correct with the
// barrier, schedule-dependent without it.
template <bool kSync>
__global__ void neighbour_kernel(float* out) {
  __shared__ float sm[64];
  const int t = threadIdx.x;
  sm[t] = static_cast<float>(t);
  if (kSync) __syncthreads();
  out[t] = sm[(t + 1) % 64];
}

// Half a warp shuffles, the other half has returned: undefined with a full mask.
__global__ void exited_lanes_kernel(float* out) {
  const int t = threadIdx.x;
  if (t >= 16) return;
  out[t] = __shfl_xor_sync(0xffffffffu, static_cast<float>(t), 1);
}

// Half a warp waits at a shuffle, the other half at __syncthreads (a deadlock on the GPU) or at
// __syncwarp (undefined).
template <bool kSyncwarp>
__global__ void divergent_shuffle_kernel(float* out) {
  const int t = threadIdx.x;
  float v = static_cast<float>(t);
  if (t < 16) {
    v = __shfl_xor_sync(0xffffffffu, v, 1);
  } else if (kSyncwarp) {
    __syncwarp();
  } else {
    __syncthreads();
  }
  out[t] = v;
}

// Reads a static shared array before this block wrote it (the previous block did).
__global__ void static_smem_kernel(float* out) {
  __shared__ float sm[64];
  const int t = threadIdx.x;
  if (blockIdx.x == 1) out[t] = sm[t];
  sm[t] = 1.0f;
}

// Reads dynamic shared memory nobody wrote (two instances: one never gets the 64 KiB opt-in).
template <int kInstance>
__global__ void uninitialized_smem_kernel(float* out) {
  extern __shared__ float dyn[];
  out[threadIdx.x] = dyn[threadIdx.x];
}

__global__ void reduce_kernel(float* out) {
  float v = static_cast<float>(threadIdx.x);
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  if (threadIdx.x % 32 == 0) out[threadIdx.x / 32] = v;
}

at::Tensor emu_selftest(const at::Tensor& like, c10::string_view which_sv) {
  const std::string which(which_sv);
  at::Tensor out = at::zeros({64}, like.options().dtype(at::kFloat));
  float* o = out.mutable_data_ptr<float>();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (which == "sync") {
    neighbour_kernel<true><<<1, 64, 0, stream>>>(o);
  } else if (which == "race") {
    neighbour_kernel<false><<<1, 64, 0, stream>>>(o);
  } else if (which == "exited_lanes") {
    exited_lanes_kernel<<<1, 32, 0, stream>>>(o);
  } else if (which == "divergent_shuffle") {
    divergent_shuffle_kernel<false><<<1, 32, 0, stream>>>(o);
  } else if (which == "shuffle_vs_syncwarp") {
    divergent_shuffle_kernel<true><<<1, 32, 0, stream>>>(o);
  } else if (which == "static_smem_fresh") {
    static_smem_kernel<<<2, 64, 0, stream>>>(o);
  } else if (which == "uninitialized_smem") {
    uninitialized_smem_kernel<0><<<1, 64, 64 * sizeof(float), stream>>>(o);
  } else if (which == "reduce") {
    reduce_kernel<<<1, 64>>>(o);
  } else if (which == "empty_grid") {
    reduce_kernel<<<0, 64, 0, stream>>>(o);
  } else if (which == "big_block") {
    reduce_kernel<<<1, 2048, 0, stream>>>(o);
  } else if (which == "smem_no_optin") {
    uninitialized_smem_kernel<0><<<1, 64, 64 * 1024, stream>>>(o);
  } else if (which == "smem_optin") {
    cudaFuncSetAttribute(uninitialized_smem_kernel<1>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                         64 * 1024);
    uninitialized_smem_kernel<1><<<1, 64, 64 * 1024, stream>>>(o);
  } else {
    TORCH_CHECK(false, "emu_selftest: unknown case ", which);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(torchcv_ext_emu, m) { m.def("_emu_selftest(Tensor like, str which) -> Tensor"); }

TORCH_LIBRARY_IMPL(torchcv_ext, CUDA, m) { m.impl("_emu_selftest", &emu_selftest); }
