// Deliberately broken kernels that the CUDA emulator (cuda_emu.h) must catch, compiled through the
// same rewrite as csrc/cuda/*.cu (build.py): python_tests/cuda_emu/cases.py checks that each bug
// class is reported, so a passing emulator run means something. (Out-of-bounds accesses are left
// to AddressSanitizer, which aborts the process.)
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include "attention_ptx.cuh"

namespace {

namespace ptx = torchcv_ext::attn::ptx;

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

// Block 1 reads what block 0 writes in the same launch: no ordering between blocks on the GPU.
__global__ void cross_block_kernel(float* out) {
  const int t = threadIdx.x;
  if (blockIdx.x == 0) {
    out[t] = 5.0f;
  } else {
    out[32 + t] = out[t] + 1.0f;
  }
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

// ---- the PTX instructions of attention_ptx.cuh (ptx_emu.h) ----
__device__ uint32_t pack_half2(float lo, float hi) {
  __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&h);
}

// C = A B for A[r][k] = (r + 2k) % 5 - 2, B[k][n] = (3k + n) % 7 - 3 with the fragment layouts of
// the PTX ISA (attention_mma.cuh's header); out[8r + n] = C[r][n] for rows 0..7.
__global__ void mma_kernel(float* out) {
  const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
  auto a_at = [](int r, int k) { return static_cast<float>((r + 2 * k) % 5 - 2); };
  auto b_at = [](int k, int n) { return static_cast<float>((3 * k + n) % 7 - 3); };
  const uint32_t a[4] = {pack_half2(a_at(g, 2 * t), a_at(g, 2 * t + 1)),
                         pack_half2(a_at(g + 8, 2 * t), a_at(g + 8, 2 * t + 1)),
                         pack_half2(a_at(g, 2 * t + 8), a_at(g, 2 * t + 9)),
                         pack_half2(a_at(g + 8, 2 * t + 8), a_at(g + 8, 2 * t + 9))};
  float c[4] = {0.f, 0.f, 0.f, 0.f};
  ptx::mma_m16n8k16_f16(c, a, pack_half2(b_at(2 * t, g), b_at(2 * t + 1, g)),
                        pack_half2(b_at(2 * t + 8, g), b_at(2 * t + 9, g)));
  out[8 * g + 2 * t] = c[0];
  out[8 * g + 2 * t + 1] = c[1];
}

// Half the warp has returned before the (warp-wide) mma.
__global__ void mma_exited_lanes_kernel(float* out) {
  if (threadIdx.x >= 16) return;
  const uint32_t a[4] = {0, 0, 0, 0};
  float c[4] = {0.f, 0.f, 0.f, 0.f};
  ptx::mma_m16n8k16_f16(c, a, 0, 0);
  out[threadIdx.x] = c[0];
}

// A 16 x 16 half tile s[r][c] = 16r + c in dynamic shared memory (rows padded to 24 elements);
// ldmatrix.x4.trans with the lane addresses of attention_mma.cuh's ldsm_b_trans (k0 = n0 = 0).
// out[2 * lane + i] = the lower (i = 0) / upper half of register 0 (matrix 0 = rows 0..7,
// columns 0..7): s[2t][g] and s[2t + 1][g]. kMisaligned: lane 0's address is off by 2 bytes;
// ld = 16 (rows not padded): every other row in the same banks.
template <bool kMisaligned, int ld = 24>
__global__ void ldmatrix_kernel(float* out) {
  extern __shared__ __align__(16) unsigned char smem[];
  __half* s = reinterpret_cast<__half*>(smem);
  const int lane = threadIdx.x;
  for (int i = lane; i < 16 * ld; i += 32) s[i] = __float2half_rn(static_cast<float>(16 * (i / ld) + i % ld));
  __syncwarp();
  const __half* row = s + ((lane & 7) + ((lane >> 3) & 1) * 8) * ld + (lane >> 4) * 8 + (kMisaligned && lane == 0);
  uint32_t r[4];
  ptx::ldmatrix_x4_trans(r, row);
  __half2 h = *reinterpret_cast<__half2*>(&r[0]);
  out[2 * lane] = __half2float(h.x);
  out[2 * lane + 1] = __half2float(h.y);
}

// Thread t copies 16 bytes of `in` into shared memory with cp.async, then every thread reads its
// neighbour's copy after a barrier: with the wait (kWait) always the copied values; without it,
// what the neighbour's copy has or has not written yet.
template <bool kWait>
__global__ void cp_async_kernel(const float* in, float* out) {
  extern __shared__ __align__(16) unsigned char smem[];
  float* s = reinterpret_cast<float*>(smem);
  const int t = threadIdx.x;  // 16 threads x 4 floats
  ptx::cp_async_16(s + 4 * t, in + 4 * t, /*valid=*/t % 2 == 0);
  ptx::cp_async_commit();
  if (kWait) ptx::cp_async_wait_all();
  __syncthreads();
  for (int i = 0; i < 4; ++i) out[4 * t + i] = s[4 * ((t + 1) % 16) + i];
}

// Known access patterns for the traffic flavor (traffic.py checks their counts): 64 threads copy
// in[f(t)] to out[t], f(t) = t (coalesced), 2t (every other float: half of each sector wasted) or 0
// (a broadcast: one sector per request).
template <int kStride>
__global__ void copy_kernel(const float* in, float* out) {
  const int t = threadIdx.x;
  out[t] = in[kStride * t];
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
  } else if (which == "cross_block") {
    cross_block_kernel<<<2, 32, 0, stream>>>(o);
  } else if (which == "mma") {
    mma_kernel<<<1, 32, 0, stream>>>(o);
  } else if (which == "mma_exited_lanes") {
    mma_exited_lanes_kernel<<<1, 32, 0, stream>>>(o);
  } else if (which == "ldmatrix_trans") {
    ldmatrix_kernel<false><<<1, 32, 16 * 24 * 2, stream>>>(o);
  } else if (which == "ldmatrix_misaligned") {
    ldmatrix_kernel<true><<<1, 32, 16 * 24 * 2, stream>>>(o);
  } else if (which == "ldmatrix_bank_conflict") {
    ldmatrix_kernel<false, 16><<<1, 32, 16 * 24 * 2, stream>>>(o);
  } else if (which == "cp_async_wait" || which == "cp_async_no_wait") {
    const at::Tensor in = at::arange(64, out.options()) + 1;
    if (which == "cp_async_wait") {
      cp_async_kernel<true><<<1, 16, 64 * sizeof(float), stream>>>(in.data_ptr<float>(), o);
    } else {
      cp_async_kernel<false><<<1, 16, 64 * sizeof(float), stream>>>(in.data_ptr<float>(), o);
    }
  } else if (which == "copy_coalesced" || which == "copy_strided" || which == "copy_broadcast") {
    const at::Tensor in = at::arange(128, out.options());
    const float* i = in.data_ptr<float>();
    if (which == "copy_coalesced") {
      copy_kernel<1><<<1, 64, 0, stream>>>(i, o);
    } else if (which == "copy_strided") {
      copy_kernel<2><<<1, 64, 0, stream>>>(i, o);
    } else {
      copy_kernel<0><<<1, 64, 0, stream>>>(i, o);
    }
  } else {
    TORCH_CHECK(false, "emu_selftest: unknown case ", which);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(torchcv_ext_emu, m) { m.def("_emu_selftest(Tensor like, str which) -> Tensor"); }

TORCH_LIBRARY_IMPL(torchcv_ext, CUDA, m) { m.impl("_emu_selftest", &emu_selftest); }
