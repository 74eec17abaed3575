// Flash attention for float32 inputs: SIMT kernels (full fp32 math, no tensor cores, no TF32),
// same tiling, online softmax and lse-recompute backward as the tensor-core kernels
// (attention_mma.cuh) and the CPU kernel; the per-row bookkeeping is the shared code of
// csrc/include/torchcv_ext/attention.h. One thread owns one query row (forward, dQ) or one key
// row (dK / dV); tiles of the other operand are staged in shared memory and read as broadcasts.
// The thread's own rows are padded to D + 1 floats (conflict-free column access).
#include "attention_common.cuh"

namespace torchcv_ext::attn {
namespace {

constexpr int kThreads = 64;  // rows per CTA (one per thread)
constexpr int kTile = 32;     // rows of the streamed operand per shared-memory tile

// Stage rows [n0, n0 + ROWS) of an operand into dst[ROWS][ld] (zero past n).
template <int D, int ROWS>
__device__ __forceinline__ void stage(const Operand<const float>& op, int64_t b, int64_t h,
                                      int64_t n0, int64_t n, float* dst, int ld) {
  for (int i = threadIdx.x; i < ROWS * D; i += kThreads) {
    const int r = i / D, d = i % D;
    dst[r * ld + d] = n0 + r < n ? op.row(b, h, n0 + r)[d] : 0.f;
  }
}

template <int D>
__device__ __forceinline__ float dot_rows(const float* a, const float* b) {
  float s = 0.f;
#pragma unroll 8
  for (int d = 0; d < D; ++d) s += a[d] * b[d];
  return s;
}

template <int D>
constexpr int fwd_smem() { return (kThreads * (D + 1) + 2 * kTile * D) * 4; }

template <int D>
__global__ void __launch_bounds__(kThreads) fwd_f32_kernel(const FwdParams<float> p, int64_t n_qt,
                                                           float scale_log2) {
  extern __shared__ float smem[];
  float* sQ = smem;                     // [kThreads][D + 1]
  float* sK = sQ + kThreads * (D + 1);  // [kTile][D]
  float* sV = sK + kTile * D;           // [kTile][D]
  const int64_t bh = blockIdx.x / n_qt, qt = blockIdx.x % n_qt, b = bh / p.H, h = bh % p.H;
  const int64_t q0 = qt * kThreads;
  const int r = threadIdx.x;
  stage<D, kThreads>(p.q, b, h, q0, p.Nq, sQ, D + 1);
  const float* qr = sQ + r * (D + 1);

  float acc[D];
#pragma unroll
  for (int d = 0; d < D; ++d) acc[d] = 0.f;
  float m = neg_inf<float>(), l = 0.f;
  const int64_t n_kt = num_tiles(p.Nk, kTile);
  for (int64_t kt = 0; kt < n_kt; ++kt) {
    const int64_t k0 = kt * kTile;
    __syncthreads();
    stage<D, kTile>(p.k, b, h, k0, p.Nk, sK, D);
    stage<D, kTile>(p.v, b, h, k0, p.Nk, sV, D);
    __syncthreads();
    float x[kTile];
    float tmax = neg_inf<float>();
#pragma unroll
    for (int c = 0; c < kTile; ++c) {
      x[c] = masked_score(dot_rows<D>(qr, sK + c * D), scale_log2, k0 + c, p.Nk);
      tmax = fmax2(tmax, x[c]);
    }
    const float alpha = online_rescale(m, tmax);
    float sum = 0.f;
#pragma unroll
    for (int d = 0; d < D; ++d) acc[d] *= alpha;
#pragma unroll
    for (int c = 0; c < kTile; ++c) {
      const float w = softmax_weight(x[c], m);
      sum += w;
      const float* vr = sV + c * D;
#pragma unroll
      for (int d = 0; d < D; ++d) acc[d] += w * vr[d];
    }
    l = alpha * l + sum;
  }
  const int64_t row = q0 + r;
  if (row < p.Nq) {
    const float inv = inv_rowsum(l);
    float* o = p.o.row(b, h, row);
#pragma unroll
    for (int d = 0; d < D; ++d) o[d] = acc[d] * inv;
    p.lse[bh * p.Nq + row] = row_lse(m, l);
  }
}

template <int D>
constexpr int dkdv_smem() { return (2 * kThreads * (D + 1) + 2 * kTile * D + 2 * kTile) * 4; }

template <int D>
__global__ void __launch_bounds__(kThreads) dkdv_f32_kernel(const BwdParams<float> p, int64_t n_kt,
                                                            float scale_log2) {
  extern __shared__ float smem[];
  float* sK = smem;                      // [kThreads][D + 1]
  float* sV = sK + kThreads * (D + 1);   // [kThreads][D + 1]
  float* sQ = sV + kThreads * (D + 1);   // [kTile][D]
  float* sdO = sQ + kTile * D;           // [kTile][D]
  float* sLse = sdO + kTile * D;         // [kTile], lse * log2(e)
  float* sDelta = sLse + kTile;          // [kTile]
  const int64_t bh = blockIdx.x / n_kt, kt = blockIdx.x % n_kt, b = bh / p.H, h = bh % p.H;
  const int64_t k0 = kt * kThreads;
  const int c = threadIdx.x;
  stage<D, kThreads>(p.k, b, h, k0, p.Nk, sK, D + 1);
  stage<D, kThreads>(p.v, b, h, k0, p.Nk, sV, D + 1);
  const float* kr = sK + c * (D + 1);
  const float* vr = sV + c * (D + 1);
  const bool key_ok = k0 + c < p.Nk;

  float dk[D], dv[D];
#pragma unroll
  for (int d = 0; d < D; ++d) dk[d] = dv[d] = 0.f;
  const int64_t n_qt = num_tiles(p.Nq, kTile);
  for (int64_t qt = 0; qt < n_qt; ++qt) {
    const int64_t q0 = qt * kTile;
    __syncthreads();
    stage<D, kTile>(p.q, b, h, q0, p.Nq, sQ, D);
    stage<D, kTile>(p.dout, b, h, q0, p.Nq, sdO, D);
    for (int i = threadIdx.x; i < kTile; i += kThreads) {
      const bool ok = q0 + i < p.Nq;
      sLse[i] = ok ? lse_to_log2(p.lse[bh * p.Nq + q0 + i]) : INFINITY;
      sDelta[i] = ok ? p.delta[bh * p.Nq + q0 + i] : 0.f;
    }
    __syncthreads();
    const int rows = static_cast<int>(tile_rows(p.Nq, kTile, qt));
    for (int i = 0; i < rows; ++i) {
      const float* qi = sQ + i * D;
      const float* gi = sdO + i * D;
      const float pr =
          key_ok ? prob_from_lse(dot_rows<D>(kr, qi) * scale_log2, sLse[i]) : 0.f;
      const float ds = dsoftmax(pr, dot_rows<D>(gi, vr), sDelta[i]);
#pragma unroll
      for (int d = 0; d < D; ++d) {
        dv[d] += pr * gi[d];
        dk[d] += ds * qi[d];
      }
    }
  }
  if (key_ok) {
    const float scale = static_cast<float>(p.scale);
    float* dkr = p.dk.row(b, h, k0 + c);
    float* dvr = p.dv.row(b, h, k0 + c);
#pragma unroll
    for (int d = 0; d < D; ++d) {
      dkr[d] = dk[d] * scale;
      dvr[d] = dv[d];
    }
  }
}

template <int D>
constexpr int dq_smem() { return (2 * kThreads * (D + 1) + 2 * kTile * D) * 4; }

template <int D>
__global__ void __launch_bounds__(kThreads) dq_f32_kernel(const BwdParams<float> p, int64_t n_qt,
                                                          float scale_log2) {
  extern __shared__ float smem[];
  float* sQ = smem;                      // [kThreads][D + 1]
  float* sdO = sQ + kThreads * (D + 1);  // [kThreads][D + 1]
  float* sK = sdO + kThreads * (D + 1);  // [kTile][D]
  float* sV = sK + kTile * D;            // [kTile][D]
  const int64_t bh = blockIdx.x / n_qt, qt = blockIdx.x % n_qt, b = bh / p.H, h = bh % p.H;
  const int64_t q0 = qt * kThreads;
  const int r = threadIdx.x;
  const int64_t row = q0 + r;
  stage<D, kThreads>(p.q, b, h, q0, p.Nq, sQ, D + 1);
  stage<D, kThreads>(p.dout, b, h, q0, p.Nq, sdO, D + 1);
  const float* qr = sQ + r * (D + 1);
  const float* gr = sdO + r * (D + 1);
  const float lse2 = row < p.Nq ? lse_to_log2(p.lse[bh * p.Nq + row]) : INFINITY;
  const float delta = row < p.Nq ? p.delta[bh * p.Nq + row] : 0.f;

  float dq[D];
#pragma unroll
  for (int d = 0; d < D; ++d) dq[d] = 0.f;
  const int64_t n_kt = num_tiles(p.Nk, kTile);
  for (int64_t kt = 0; kt < n_kt; ++kt) {
    const int64_t k0 = kt * kTile;
    __syncthreads();
    stage<D, kTile>(p.k, b, h, k0, p.Nk, sK, D);
    stage<D, kTile>(p.v, b, h, k0, p.Nk, sV, D);
    __syncthreads();
    const int keys = static_cast<int>(tile_rows(p.Nk, kTile, kt));
    for (int c = 0; c < keys; ++c) {
      const float* kc = sK + c * D;
      const float pr =
          prob_from_lse(masked_score(dot_rows<D>(qr, kc), scale_log2, k0 + c, p.Nk), lse2);
      const float ds = dsoftmax(pr, dot_rows<D>(gr, sV + c * D), delta);
#pragma unroll
      for (int d = 0; d < D; ++d) dq[d] += ds * kc[d];
    }
  }
  if (row < p.Nq) {
    const float scale = static_cast<float>(p.scale);
    float* o = p.dq.row(b, h, row);
#pragma unroll
    for (int d = 0; d < D; ++d) o[d] = dq[d] * scale;
  }
}

template <int D>
void forward_f32(const FwdParams<float>& p, cudaStream_t stream) {
  const int64_t n_qt = num_tiles(p.Nq, kThreads);
  const unsigned grid = grid_of(p.B * p.H * n_qt, "attention");
  set_smem(fwd_f32_kernel<D>, fwd_smem<D>(), "attention");
  fwd_f32_kernel<D><<<grid, kThreads, fwd_smem<D>(), stream>>>(
      p, n_qt, static_cast<float>(p.scale * kLog2e));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <int D>
void backward_f32(const BwdParams<float>& p, cudaStream_t stream) {
  launch_delta(p, stream);
  const float scale_log2 = static_cast<float>(p.scale * kLog2e);
  const int64_t n_kt = num_tiles(p.Nk, kThreads);
  set_smem(dkdv_f32_kernel<D>, dkdv_smem<D>(), "_attention_backward");
  dkdv_f32_kernel<D><<<grid_of(p.B * p.H * n_kt, "_attention_backward"), kThreads, dkdv_smem<D>(),
                       stream>>>(p, n_kt, scale_log2);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int64_t n_qt = num_tiles(p.Nq, kThreads);
  set_smem(dq_f32_kernel<D>, dq_smem<D>(), "_attention_backward");
  dq_f32_kernel<D><<<grid_of(p.B * p.H * n_qt, "_attention_backward"), kThreads, dq_smem<D>(),
                     stream>>>(p, n_qt, scale_log2);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void launch_forward(const FwdParams<float>& p, cudaStream_t stream) {
  switch (p.D) {
    case 32: return forward_f32<32>(p, stream);
    case 64: return forward_f32<64>(p, stream);
    case 128: return forward_f32<128>(p, stream);
    default: TORCH_CHECK(false, "attention: head_dim must be 32, 64 or 128 on CUDA, got ", p.D);
  }
}

void launch_backward(const BwdParams<float>& p, cudaStream_t stream) {
  switch (p.D) {
    case 32: return backward_f32<32>(p, stream);
    case 64: return backward_f32<64>(p, stream);
    case 128: return backward_f32<128>(p, stream);
    default:
      TORCH_CHECK(false, "_attention_backward: head_dim must be 32, 64 or 128 on CUDA, got ", p.D);
  }
}

}  // namespace torchcv_ext::attn
