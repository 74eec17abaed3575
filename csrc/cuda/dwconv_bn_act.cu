// CUDA kernels of the dwconv_bn_act family. Schemas: csrc/registration.cpp. Front end (checks,
// layouts, outputs): csrc/include/torchcv_ext/dwconv_bn_act_host.h. Per-element math (the same
// functions the CPU kernels run): csrc/include/torchcv_ext/dwconv_bn_act.h. Autograd / fake /
// autocast: torchcv_ext/ops/dwconv_bn_act.py.
//
// Forward (eval epilogue act(z * scale + shift), or train: z + Welford partials), acc_t = float
// (double for float64), 64-bit index math throughout:
//   NCHW, K in {3,5,7}, stride 1/2, dilation 1, planes > 256 outputs: fwd_nchw_tile_kernel, one
//         block per 32x32 output tile; input tile + halo staged in shared memory, 4 output rows per
//         thread with register reuse of the window rows.
//   NCHW otherwise: fwd_nchw_kernel, "plane map": planes of <= 256 outputs packed several per
//         block, larger planes split in 256-output chunks, taps read through L1.
//   channels_last: 32 channel lanes x 8 pixel rows per block (coalesced across channels);
//         fwd_cl_blocked_kernel (K in {3,5,7}, stride 1/2) computes 4 adjacent outputs per thread
//         reusing each window row segment, fwd_cl_kernel covers every other geometry.
// Backward: ssa_bwd_* (elementwise + per-channel sums); grad_nchw_kernel / grad_cl_kernel /
//   grad_cl_k_kernel: the input gradient (transposed conv via tap_source) and the weight
//   gradient's per channel x tap partial sums in one pass over dz, z and x.
// Reductions: per-block partials (Welford for the batch statistics, plain sums for gradients)
// written to a [row][partial] buffer, merged by a second kernel in a fixed tree order. No atomics:
// results are deterministic run to run (torch.use_deterministic_algorithms).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "index_width.cuh"
#include "torchcv_ext/dwconv_bn_act_host.h"

namespace torchcv_ext {
namespace dwconv {
namespace {

template <typename T>
using acc_of = at::opmath_type<T>;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kLanes = 32;  // channels_last: channel lanes per block
constexpr int kRows = 8;    // channels_last: pixel rows per block

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// A 1-D grid of `blocks` blocks (gridDim.x is at most 2^31 - 1).
inline unsigned grid_1d(int64_t blocks, const char* op) {
  TORCH_CHECK(blocks <= int64_t{0x7fffffff}, op, ": problem too large for the CUDA kernels (",
              blocks, " blocks)");
  return static_cast<unsigned>(blocks);
}

// ---- NCHW plane map ---------------------------------------------------------------------------
struct PlaneMap {
  int64_t NC, HWo;
  int64_t ppb;     // planes per block (packed, HWo <= kThreads) or 1
  int64_t chunks;  // blocks per plane (chunked, HWo > kThreads) or 1
  int64_t blocks;
  bool packed;
};

inline PlaneMap plane_map(int64_t NC, int64_t HWo) {
  PlaneMap m;
  m.NC = NC;
  m.HWo = HWo;
  m.packed = HWo <= kThreads;
  m.ppb = m.packed ? kThreads / HWo : 1;
  m.chunks = m.packed ? 1 : ceil_div(HWo, kThreads);
  m.blocks = m.packed ? ceil_div(NC, m.ppb) : NC * m.chunks;
  return m;
}

// This thread's (plane, output index in the plane); false when it owns nothing.
__device__ __forceinline__ bool plane_slot(const PlaneMap& m, int64_t& plane, int64_t& pix) {
  const int64_t b = blockIdx.x, t = threadIdx.x;
  if (m.packed) {
    plane = b * m.ppb + t / m.HWo;
    pix = t % m.HWo;
    return t < m.ppb * m.HWo && plane < m.NC;
  }
  plane = b / m.chunks;
  pix = (b % m.chunks) * kThreads + t;
  return pix < m.HWo;
}

// Partial slot (column) of plane `plane` (n = plane / C) for this block: n * chunks + chunk.
__device__ __forceinline__ int64_t partial_col(const PlaneMap& m, int64_t n) {
  return m.packed ? n : n * m.chunks + static_cast<int64_t>(blockIdx.x) % m.chunks;
}

// ---- warp / block reductions (fixed order) --------------------------------------------------
template <typename acc_t>
__device__ __forceinline__ Welford<acc_t> shfl_down_w(const Welford<acc_t>& s, int off) {
  return Welford<acc_t>{__shfl_down_sync(0xffffffffu, s.n, off),
                        __shfl_down_sync(0xffffffffu, s.mean, off),
                        __shfl_down_sync(0xffffffffu, s.m2, off)};
}

// Merge over a block of kThreads (linear thread id tid, warps of 32 consecutive ids); the result
// is valid in thread 0.
template <typename acc_t>
__device__ Welford<acc_t> block_welford(Welford<acc_t> s, Welford<acc_t>* sm, int tid) {
  for (int off = 16; off > 0; off >>= 1) s = welford_merge(s, shfl_down_w(s, off));
  const int warp = tid / 32, lane = tid % 32;
  if (lane == 0) sm[warp] = s;
  __syncthreads();
  if (tid == 0) {
    s = sm[0];
    for (int i = 1; i < kWarps; ++i) s = welford_merge(s, sm[i]);
  }
  return s;
}

// Sum of two values over a 1-D block of kThreads; valid in thread 0.
template <typename acc_t>
__device__ void block_sum2(acc_t& a, acc_t& b, acc_t* sm) {
  for (int off = 16; off > 0; off >>= 1) {
    a += __shfl_down_sync(0xffffffffu, a, off);
    b += __shfl_down_sync(0xffffffffu, b, off);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    sm[warp] = a;
    sm[kWarps + warp] = b;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    a = sm[0];
    b = sm[kWarps];
    for (int i = 1; i < kWarps; ++i) {
      a += sm[i];
      b += sm[kWarps + i];
    }
  }
}

// ---- forward: conv + (eval) BN/act epilogue or (train) z + Welford partials ------------------
// part: [C][N * chunks] Welford partials (stats only).
template <typename T, bool kStats>
__global__ void __launch_bounds__(kThreads)
    fwd_nchw_kernel(const T* __restrict__ x, const acc_of<T>* __restrict__ w,
                    const acc_of<T>* __restrict__ sc, const acc_of<T>* __restrict__ sh,
                    T* __restrict__ y, const Geom g, const PlaneMap m, const Act act,
                    Welford<acc_of<T>>* __restrict__ part) {
  using acc_t = acc_of<T>;
  __shared__ acc_t vals[kThreads];
  __shared__ Welford<acc_t> wsm[kWarps];
  int64_t plane, pix;
  const bool valid = plane_slot(m, plane, pix);
  const int64_t kk = static_cast<int64_t>(g.kh) * g.kw;
  acc_t v = acc_t(0);
  if (valid) {
    const int64_t c = plane % g.C;
    v = conv_at<acc_t>(x + plane * g.H * g.W, g.W, 1, w + c * kk, 1, g, pix / g.Wo, pix % g.Wo);
    if constexpr (kStats) {
      y[plane * m.HWo + pix] = static_cast<T>(v);
    } else {
      y[plane * m.HWo + pix] = static_cast<T>(bn_act<acc_t>(act, v, sc[c], sh[c]));
    }
  }
  if constexpr (kStats) {
    const int64_t P = g.N * m.chunks;
    if (m.packed) {
      vals[threadIdx.x] = v;
      __syncthreads();
      if (m.ppb <= kWarps) {  // planes of 32..256 outputs: one warp per plane (warp-uniform branch)
        const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
        const int64_t p = static_cast<int64_t>(blockIdx.x) * m.ppb + warp;
        if (warp < m.ppb && p < m.NC) {
          Welford<acc_t> s = welford_init<acc_t>();
          for (int64_t i = lane; i < m.HWo; i += 32) welford_push(s, vals[warp * m.HWo + i]);
          for (int off = 16; off > 0; off >>= 1) s = welford_merge(s, shfl_down_w(s, off));
          if (lane == 0) part[(p % g.C) * P + partial_col(m, p / g.C)] = s;
        }
      } else {  // < 32 outputs per plane: one thread per plane
        const int64_t p = static_cast<int64_t>(blockIdx.x) * m.ppb + threadIdx.x;
        if (threadIdx.x < m.ppb && p < m.NC) {
          Welford<acc_t> s = welford_init<acc_t>();
          for (int64_t i = 0; i < m.HWo; ++i) welford_push(s, vals[threadIdx.x * m.HWo + i]);
          part[(p % g.C) * P + partial_col(m, p / g.C)] = s;
        }
      }
    } else {
      Welford<acc_t> s = welford_init<acc_t>();
      if (valid) welford_push(s, v);
      s = block_welford(s, wsm, static_cast<int>(threadIdx.x));
      if (threadIdx.x == 0) part[(plane % g.C) * P + partial_col(m, plane / g.C)] = s;
    }
  }
}

// NCHW fast path for the common MobileNet/EfficientNet geometry (square K in {3, 5, 7}, stride S in
// {1, 2}, dilation 1, planes of more than 256 outputs): one block per 32 x 32 output tile of one
// (n, c) plane. The block stages the input tile (+ halo) in shared memory with coalesced loads
// (one global read per element, zero padding materialized), then each thread computes a column of
// kRB = 4 consecutive output rows, reading every input row of its window once from shared memory
// and reusing it for all the outputs it feeds (((kRB - 1) * S + K) * K reads for kRB outputs
// instead of kRB * K * K). Lanes own consecutive output columns: conflict-free for S = 1 (2-way for
// S = 2) and coalesced stores. Partials (stats): [C][N * tiles].
constexpr int kTW = 32;          // tile width (threadIdx.x)
constexpr int kTY = 8;           // threadIdx.y
constexpr int kRB = 4;           // output rows per thread
constexpr int kTH = kTY * kRB;   // tile height

struct TileMap {
  int64_t tiles_h, tiles_w, tiles;
};

template <typename T, int K, int S, bool kStats>
__global__ void __launch_bounds__(kThreads)
    fwd_nchw_tile_kernel(const T* __restrict__ x, const acc_of<T>* __restrict__ w,
                         const acc_of<T>* __restrict__ sc, const acc_of<T>* __restrict__ sh,
                         T* __restrict__ y, const Geom g, const TileMap tm, const Act act,
                         Welford<acc_of<T>>* __restrict__ part) {
  using acc_t = acc_of<T>;
  constexpr int IH = (kTH - 1) * S + K;
  constexpr int IW = (kTW - 1) * S + K;
  __shared__ acc_t tile[IH][IW];
  __shared__ Welford<acc_t> wsm[kWarps];
  const int tid = threadIdx.y * kTW + threadIdx.x;
  const int64_t b = blockIdx.x;
  const int64_t plane = b / tm.tiles, t = b % tm.tiles;
  const int64_t oh0 = (t / tm.tiles_w) * kTH, ow0 = (t % tm.tiles_w) * kTW;
  const int64_t c = plane % g.C;
  const T* xp = x + plane * g.H * g.W;
  const int64_t ih0 = oh0 * S - g.ph, iw0 = ow0 * S - g.pw;
  for (int idx = tid; idx < IH * IW; idx += kThreads) {
    const int r = idx / IW, q = idx % IW;
    const int64_t ih = ih0 + r, iw = iw0 + q;
    tile[r][q] = (ih >= 0 && ih < g.H && iw >= 0 && iw < g.W) ? static_cast<acc_t>(xp[ih * g.W + iw])
                                                              : acc_t(0);
  }
  acc_t wr[K * K];
#pragma unroll
  for (int i = 0; i < K * K; ++i) wr[i] = w[c * K * K + i];
  __syncthreads();

  acc_t acc[kRB];
#pragma unroll
  for (int v = 0; v < kRB; ++v) acc[v] = acc_t(0);
  const int r0 = threadIdx.y * kRB * S;  // first tile row of this thread's window
  const int q0 = threadIdx.x * S;        // first tile column
#pragma unroll
  for (int rl = 0; rl < (kRB - 1) * S + K; ++rl) {
    acc_t vals[K];
#pragma unroll
    for (int j = 0; j < K; ++j) vals[j] = tile[r0 + rl][q0 + j];
#pragma unroll
    for (int v = 0; v < kRB; ++v) {
      const int i = rl - v * S;  // tap row feeding output row v (compile-time after unrolling)
      if (i >= 0 && i < K) {
#pragma unroll
        for (int j = 0; j < K; ++j) acc[v] += wr[i * K + j] * vals[j];
      }
    }
  }

  const int64_t ow = ow0 + threadIdx.x;
  T* yp = y + plane * g.Ho * g.Wo;
  Welford<acc_t> st = welford_init<acc_t>();
  acc_t s = acc_t(1), bsh = acc_t(0);
  if constexpr (!kStats) {
    s = sc[c];
    bsh = sh[c];
  }
#pragma unroll
  for (int v = 0; v < kRB; ++v) {
    const int64_t oh = oh0 + threadIdx.y * kRB + v;
    if (oh < g.Ho && ow < g.Wo) {
      if constexpr (kStats) {
        yp[oh * g.Wo + ow] = static_cast<T>(acc[v]);
        welford_push(st, acc[v]);
      } else {
        yp[oh * g.Wo + ow] = static_cast<T>(bn_act<acc_t>(act, acc[v], s, bsh));
      }
    }
  }
  if constexpr (kStats) {
    // warp = threadIdx.y, lane = threadIdx.x (blockDim.x == 32): block_welford's layout.
    st = block_welford(st, wsm, tid);
    if (tid == 0) part[c * (g.N * tm.tiles) + (plane / g.C) * tm.tiles + t] = st;
  }
}

// channels_last: x (N, H, W, C), wt (kh*kw, C); block (kLanes, kRows) covers kLanes channels and
// kRows * R pixels (chunk blockIdx.y). part: [C][chunks].
template <typename T, bool kStats>
__global__ void __launch_bounds__(kThreads)
    fwd_cl_kernel(const T* __restrict__ x, const acc_of<T>* __restrict__ wt,
                  const acc_of<T>* __restrict__ sc, const acc_of<T>* __restrict__ sh,
                  T* __restrict__ y, const Geom g, const int64_t R, const Act act,
                  Welford<acc_of<T>>* __restrict__ part) {
  using acc_t = acc_of<T>;
  __shared__ Welford<acc_t> sm[kRows][kLanes];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kLanes + threadIdx.x;
  const int64_t HWo = g.Ho * g.Wo, P = g.N * HWo;
  const int64_t q0 = static_cast<int64_t>(blockIdx.y) * kRows * R;
  Welford<acc_t> s = welford_init<acc_t>();
  if (c < g.C) {
    acc_t scale = acc_t(1), shift = acc_t(0);
    if constexpr (!kStats) {
      scale = sc[c];
      shift = sh[c];
    }
    for (int64_t r = 0; r < R; ++r) {
      const int64_t q = q0 + r * kRows + threadIdx.y;
      if (q >= P) break;
      const int64_t n = q / HWo, pix = q % HWo;
      const acc_t v = conv_at<acc_t>(x + n * g.H * g.W * g.C + c, g.W * g.C, g.C, wt + c, g.C, g,
                                     pix / g.Wo, pix % g.Wo);
      if constexpr (kStats) {
        y[q * g.C + c] = static_cast<T>(v);
        welford_push(s, v);
      } else {
        y[q * g.C + c] = static_cast<T>(bn_act<acc_t>(act, v, scale, shift));
      }
    }
  }
  if constexpr (kStats) {
    sm[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && c < g.C) {
      for (int i = 1; i < kRows; ++i) s = welford_merge(s, sm[i][threadIdx.x]);
      part[c * gridDim.y + blockIdx.y] = s;
    }
  }
}

// channels_last fast path (square K in {3, 5, 7}, stride S in {1, 2}, dilation 1): like
// fwd_cl_kernel, but every thread computes kVW = 4 horizontally adjacent outputs (n, oh, ow0..+3)
// of its channel, loading each input row segment of the window once ((kVW - 1) * S + K values per
// tap row) and reusing it for all four: ~K*(3S+K)/4 loads per output instead of K*K. Loads and
// stores stay coalesced across the channel lanes. The unit of work is a group of kVW outputs;
// block (kLanes, kRows) walks R groups per thread. part: [C][chunks].
constexpr int kVW = 4;

template <typename T, int K, int S, bool kStats>
__global__ void __launch_bounds__(kThreads)
    fwd_cl_blocked_kernel(const T* __restrict__ x, const acc_of<T>* __restrict__ wt,
                          const acc_of<T>* __restrict__ sc, const acc_of<T>* __restrict__ sh,
                          T* __restrict__ y, const Geom g, const int64_t R, const Act act,
                          Welford<acc_of<T>>* __restrict__ part) {
  using acc_t = acc_of<T>;
  constexpr int SEG = (kVW - 1) * S + K;
  __shared__ Welford<acc_t> sm[kRows][kLanes];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kLanes + threadIdx.x;
  const int64_t Wg = (g.Wo + kVW - 1) / kVW;         // groups per output row
  const int64_t G = g.N * g.Ho * Wg;                 // groups in total
  const int64_t q0 = static_cast<int64_t>(blockIdx.y) * kRows * R;
  Welford<acc_t> st = welford_init<acc_t>();
  if (c < g.C) {
    acc_t wr[K * K];
#pragma unroll
    for (int i = 0; i < K * K; ++i) wr[i] = wt[static_cast<int64_t>(i) * g.C + c];
    acc_t s = acc_t(1), b = acc_t(0);
    if constexpr (!kStats) {
      s = sc[c];
      b = sh[c];
    }
    for (int64_t r = 0; r < R; ++r) {
      const int64_t q = q0 + r * kRows + threadIdx.y;
      if (q >= G) break;
      const int64_t owg = q % Wg, t = q / Wg, oh = t % g.Ho, n = t / g.Ho;
      const int64_t ow0 = owg * kVW;
      const T* xn = x + n * g.H * g.W * g.C + c;
      const int64_t iw0 = ow0 * S - g.pw;
      acc_t acc[kVW];
#pragma unroll
      for (int v = 0; v < kVW; ++v) acc[v] = acc_t(0);
#pragma unroll
      for (int i = 0; i < K; ++i) {
        const int64_t ih = oh * S - g.ph + i;
        if (ih < 0 || ih >= g.H) continue;
        const T* xr = xn + ih * g.W * g.C;
        acc_t seg[SEG];
#pragma unroll
        for (int e = 0; e < SEG; ++e) {
          const int64_t iw = iw0 + e;
          seg[e] = (iw >= 0 && iw < g.W) ? static_cast<acc_t>(xr[iw * g.C]) : acc_t(0);
        }
#pragma unroll
        for (int v = 0; v < kVW; ++v) {
#pragma unroll
          for (int j = 0; j < K; ++j) acc[v] += wr[i * K + j] * seg[v * S + j];
        }
      }
      T* yr = y + ((n * g.Ho + oh) * g.Wo) * g.C + c;
#pragma unroll
      for (int v = 0; v < kVW; ++v) {
        const int64_t ow = ow0 + v;
        if (ow < g.Wo) {
          if constexpr (kStats) {
            yr[ow * g.C] = static_cast<T>(acc[v]);
            welford_push(st, acc[v]);
          } else {
            yr[ow * g.C] = static_cast<T>(bn_act<acc_t>(act, acc[v], s, b));
          }
        }
      }
    }
  }
  if constexpr (kStats) {
    sm[threadIdx.y][threadIdx.x] = st;
    __syncthreads();
    if (threadIdx.y == 0 && c < g.C) {
      for (int i = 1; i < kRows; ++i) st = welford_merge(st, sm[i][threadIdx.x]);
      part[c * gridDim.y + blockIdx.y] = st;
    }
  }
}

// One block per row r: merges part[r][0, P) in a fixed tree order -> mean[r], biased var[r].
template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    welford_finalize_kernel(const Welford<acc_t>* __restrict__ part, int64_t P,
                            acc_t* __restrict__ mean, acc_t* __restrict__ var) {
  __shared__ Welford<acc_t> sm[kThreads];
  const int64_t r = blockIdx.x;
  Welford<acc_t> s = welford_init<acc_t>();
  for (int64_t i = threadIdx.x; i < P; i += kThreads) s = welford_merge(s, part[r * P + i]);
  sm[threadIdx.x] = s;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) sm[threadIdx.x] = welford_merge(sm[threadIdx.x], sm[threadIdx.x + stride]);
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    mean[r] = sm[0].mean;
    var[r] = welford_var(sm[0]);
  }
}

// One block per row r: out[r] = sum of part[r][0, P) in a fixed tree order.
template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    sum_finalize_kernel(const acc_t* __restrict__ part, int64_t P, acc_t* __restrict__ out) {
  __shared__ acc_t sm[kThreads];
  const int64_t r = blockIdx.x;
  acc_t s = acc_t(0);
  for (int64_t i = threadIdx.x; i < P; i += kThreads) s += part[r * P + i];
  sm[threadIdx.x] = s;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) sm[threadIdx.x] += sm[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[r] = sm[0];
}

// ---- y = act((z - mean) * scale + shift) ------------------------------------------------------
// I: index type, uint32_t when every index (and the grid-stride step) fits, else int64_t; the
// channel of element i needs a division, much cheaper in 32 bits.
template <typename T, typename I>
__global__ void __launch_bounds__(kThreads)
    ssa_kernel(const T* __restrict__ z, const acc_of<T>* __restrict__ mu,
               const acc_of<T>* __restrict__ sc, const acc_of<T>* __restrict__ sh, T* __restrict__ y,
               const I numel, const I C, const I HW, const bool cl, const Act act) {
  using acc_t = acc_of<T>;
  const I step = static_cast<I>(gridDim.x) * kThreads;
  for (I i = static_cast<I>(blockIdx.x) * kThreads + threadIdx.x; i < numel; i += step) {
    const I c = cl ? i % C : (i / HW) % C;
    y[i] = static_cast<T>(bn_act<acc_t>(act, static_cast<acc_t>(z[i]) - mu[c], sc[c], sh[c]));
  }
}

// ---- backward of y = act((z - mean) * scale + shift) -----------------------------------------
// gz = gu * scale with gu = grad * act'(u); partials part[0][c][col] = sum gu (-> grad shift),
// part[1][c][col] = sum gu * (z - mean) (-> grad scale).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    ssa_bwd_nchw_kernel(const T* __restrict__ grad, const T* __restrict__ z,
                        const acc_of<T>* __restrict__ mu, const acc_of<T>* __restrict__ sc,
                        const acc_of<T>* __restrict__ sh, T* __restrict__ gz, const int64_t C,
                        const PlaneMap m, const Act act, acc_of<T>* __restrict__ part) {
  using acc_t = acc_of<T>;
  __shared__ acc_t va[kThreads], vb[kThreads];
  int64_t plane, pix;
  const bool valid = plane_slot(m, plane, pix);
  acc_t a = acc_t(0), b = acc_t(0);
  if (valid) {
    const int64_t c = plane % C, i = plane * m.HWo + pix;
    const acc_t zv = static_cast<acc_t>(z[i]) - mu[c];
    const acc_t gu = bn_act_grad_u<acc_t>(act, static_cast<acc_t>(grad[i]), zv, sc[c], sh[c]);
    if (gz) gz[i] = static_cast<T>(gu * sc[c]);  // null: sums only
    a = gu;
    b = gu * zv;
  }
  const int64_t N = m.NC / C, P = N * m.chunks;
  if (m.packed) {
    va[threadIdx.x] = a;
    vb[threadIdx.x] = b;
    __syncthreads();
    // One warp per plane for planes of 32..256 outputs, else one thread per plane (as forward).
    const bool per_warp = m.ppb <= kWarps;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int slot = per_warp ? warp : static_cast<int>(threadIdx.x);
    const int64_t p = static_cast<int64_t>(blockIdx.x) * m.ppb + slot;
    if (slot < m.ppb && p < m.NC) {  // warp-uniform when per_warp
      acc_t sa = acc_t(0), sb = acc_t(0);
      const int64_t i0 = per_warp ? lane : 0, step = per_warp ? 32 : 1;
      for (int64_t i = i0; i < m.HWo; i += step) {
        sa += va[slot * m.HWo + i];
        sb += vb[slot * m.HWo + i];
      }
      if (per_warp) {
        for (int off = 16; off > 0; off >>= 1) {
          sa += __shfl_down_sync(0xffffffffu, sa, off);
          sb += __shfl_down_sync(0xffffffffu, sb, off);
        }
      }
      if (!per_warp || lane == 0) {
        const int64_t col = partial_col(m, p / C);
        part[(p % C) * P + col] = sa;
        part[(C + p % C) * P + col] = sb;
      }
    }
  } else {
    block_sum2(a, b, va);
    if (threadIdx.x == 0) {
      const int64_t col = partial_col(m, plane / C);
      part[(plane % C) * P + col] = a;
      part[(C + plane % C) * P + col] = b;
    }
  }
}

// channels_last version: block (kLanes, kRows), part [2][C][chunks].
template <typename T>
__global__ void __launch_bounds__(kThreads)
    ssa_bwd_cl_kernel(const T* __restrict__ grad, const T* __restrict__ z,
                      const acc_of<T>* __restrict__ mu, const acc_of<T>* __restrict__ sc,
                      const acc_of<T>* __restrict__ sh, T* __restrict__ gz, const int64_t C,
                      const int64_t P, const int64_t R, const Act act, acc_of<T>* __restrict__ part) {
  using acc_t = acc_of<T>;
  __shared__ acc_t sa[kRows][kLanes], sb[kRows][kLanes];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kLanes + threadIdx.x;
  const int64_t q0 = static_cast<int64_t>(blockIdx.y) * kRows * R;
  acc_t a = acc_t(0), b = acc_t(0);
  if (c < C) {
    const acc_t m = mu[c], s = sc[c], t = sh[c];
    for (int64_t r = 0; r < R; ++r) {
      const int64_t q = q0 + r * kRows + threadIdx.y;
      if (q >= P) break;
      const int64_t i = q * C + c;
      const acc_t zv = static_cast<acc_t>(z[i]) - m;
      const acc_t gu = bn_act_grad_u<acc_t>(act, static_cast<acc_t>(grad[i]), zv, s, t);
      if (gz) gz[i] = static_cast<T>(gu * s);  // null: sums only
      a += gu;
      b += gu * zv;
    }
  }
  sa[threadIdx.y][threadIdx.x] = a;
  sb[threadIdx.y][threadIdx.x] = b;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    for (int i = 1; i < kRows; ++i) {
      a += sa[i][threadIdx.x];
      b += sb[i][threadIdx.x];
    }
    part[c * gridDim.y + blockIdx.y] = a;
    part[(C + c) * gridDim.y + blockIdx.y] = b;
  }
}

// ---- backward of (z, mean, var) = dwconv_bn_stats(x, w) -------------------------------------
// Total gradient of z: stats_grad(gz, z, mean, a, b) (a = dmean / M, b = 2 dvar / M), where gz is
// z's own gradient, or (ssc != null, the train op's backward) computed from the gradient of
// y = act((z - mean) * ssc + ssh): ssa_grad_z, so that gz is never written.
template <typename T>
struct DzLoader {
  using acc_t = acc_of<T>;
  const T* gz;
  const T* z;
  Strides4 zs;
  const acc_t* mean;
  const acc_t* a;
  const acc_t* b;
  bool use_b;
  const acc_t* ssc;
  const acc_t* ssh;
  Act act;
  __device__ __forceinline__ acc_t operator()(int64_t n, int64_t c, int64_t oh, int64_t ow) const {
    const int64_t i = n * zs.n + c * zs.c + oh * zs.h + ow * zs.w;
    const acc_t zv = use_b || ssc ? static_cast<acc_t>(z[i]) : acc_t(0);
    acc_t g = static_cast<acc_t>(gz[i]);
    if (ssc) g = ssa_grad_z<acc_t>(act, g, zv - mean[c], ssc[c], ssh[c]);
    return stats_grad<acc_t>(g, zv, mean[c], a[c], b[c], use_b);
  }
};

// dx and dw in one kernel, so that dz (and z) are read once for both (the transposed conv's halo
// and the taps' x come from L1/L2). Each output position o owns the input positions
// [own_lo(o), own_hi(o)) along each dim: the s inputs its window starts at, the last output also
// the rest of the input (and an output past the input's end, possible with padding > k - 1, none).
// The owned ranges partition the input, so a block summing dw over a set of outputs writes dx of
// exactly the inputs those outputs own, and every dx is written once.
__device__ __forceinline__ int64_t own_lo(int64_t o, int s, int64_t in) {
  return o * s < in ? o * s : in;
}
__device__ __forceinline__ int64_t own_hi(int64_t o, int s, int64_t out, int64_t in) {
  return o == out - 1 ? in : own_lo(o + 1, s, in);
}

// dx of the inputs owned by output (n, oh, ow) of channel c. w: the channel's first tap, tap t at
// w[t * ws].
template <typename T>
__device__ __forceinline__ void owned_input_grads(const DzLoader<T>& dz, const acc_of<T>* w, int64_t ws,
                                                  T* __restrict__ gx, const Strides4& gxs, const Geom& g,
                                                  int64_t n, int64_t c, int64_t oh, int64_t ow) {
  using acc_t = acc_of<T>;
  auto dzp = [&](int64_t a, int64_t b) { return dz(n, c, a, b); };
  T* gp = gx + n * gxs.n + c * gxs.c;
  const int64_t h1 = own_hi(oh, g.sh, g.Ho, g.H), w0 = own_lo(ow, g.sw, g.W), w1 = own_hi(ow, g.sw, g.Wo, g.W);
  for (int64_t ih = own_lo(oh, g.sh, g.H); ih < h1; ++ih) {
    for (int64_t iw = w0; iw < w1; ++iw) {
      gp[ih * gxs.h + iw * gxs.w] = static_cast<T>(input_grad_at<acc_t>(dzp, w, ws, g, ih, iw));
    }
  }
}

// (n, h, w) of a flattened index (n * Hn + h) * Wn + w, advanced by `step` (any size):
// divisions only when a row wraps.
__device__ __forceinline__ void advance_nhw(int64_t& n, int64_t& h, int64_t& w, int64_t step,
                                            int64_t Hn, int64_t Wn) {
  w += step;
  if (w >= Wn) {
    h += w / Wn;
    w %= Wn;
    if (h >= Hn) {
      n += h / Hn;
      h %= Hn;
    }
  }
}

// channels_last kernels: dx of the inputs owned by this thread's output pixels (flattened
// (n, oh, ow) indices q0 + r * kRows + threadIdx.y, r < R) of channel c; wt: (kk, C).
template <typename T>
__device__ __forceinline__ void cl_owned_input_grads(const DzLoader<T>& dz, const acc_of<T>* wt,
                                                     T* __restrict__ gx, const Strides4& gxs,
                                                     const Geom& g, int64_t c, int64_t q0, int64_t R) {
  const int64_t HWo = g.Ho * g.Wo, P = g.N * HWo;
  for (int64_t r = 0; r < R; ++r) {
    const int64_t q = q0 + r * kRows + threadIdx.y;
    if (q >= P) break;
    const int64_t n = q / HWo, pix = q % HWo;
    owned_input_grads(dz, wt + c, g.C, gx, gxs, g, n, c, pix / g.Wo, pix % g.Wo);
  }
}

// NCHW: block (channel c, chunk of `rows` output rows of the flattened (n, oh) rows, group
// blockIdx.y of up to kThreads taps). dw: thread (tap, lane) sums its tap over the chunk's outputs
// lane, lane + L, ...; lanes are then summed in order; part [C * kk][chunks]. dx (tap group 0):
// the input rows the chunk's output rows own, contiguous in the (n, ih) rows of the plane, the
// block's threads along them (coalesced). Kernels of more than kThreads taps (k > 15) use several
// tap groups. Launch bounds (kThreads, 2), here and on grad_cl_kernel: with the BN / activation
// backward applied to dz in the loads (DzLoader), ptxas otherwise caps them at 64 registers and
// spills (100-250 B, .ci/ptxas_check.py); 72-84 with them, two blocks per SM.
template <typename T>
__global__ void __launch_bounds__(kThreads, 2)
    grad_nchw_kernel(const DzLoader<T> dz, const T* __restrict__ x, const acc_of<T>* __restrict__ w,
                     T* __restrict__ gx, const Geom g, const int64_t rows, const int64_t chunks,
                     acc_of<T>* __restrict__ part) {
  using acc_t = acc_of<T>;
  __shared__ acc_t red[kThreads];
  const int64_t kk = static_cast<int64_t>(g.kh) * g.kw;
  const int64_t TG = kk < kThreads ? kk : kThreads;  // taps per group
  const int64_t L = kThreads / TG;
  const int64_t c = static_cast<int64_t>(blockIdx.x) / chunks, chunk = blockIdx.x % chunks;
  const int64_t lt = threadIdx.x / L, lane = threadIdx.x % L;  // lt: tap within the group
  const int64_t tap = static_cast<int64_t>(blockIdx.y) * TG + lt;
  const int64_t HWo = g.Ho * g.Wo, HW = g.H * g.W;
  const int64_t r0 = chunk * rows, r1 = (chunk + 1) * rows < g.N * g.Ho ? (chunk + 1) * rows : g.N * g.Ho;
  const Strides4 xs{g.C * HW, HW, g.W, 1};
  acc_t acc = acc_t(0);
  if (lt < TG && tap < kk) {
    const int i = static_cast<int>(tap / g.kw), j = static_cast<int>(tap % g.kw);
    const int64_t qend = r1 * g.Wo;
    int64_t q = r0 * g.Wo + lane;
    // (n, oh, ow) of q, advanced by L (advance_nhw).
    int64_t n = q / HWo, oh = (q % HWo) / g.Wo, ow = q % g.Wo;
    for (; q < qend; q += L) {
      const acc_t xv = tap_input<acc_t>(x + n * xs.n + c * xs.c, xs.h, xs.w, g, oh, ow, i, j);
      acc += dz(n, c, oh, ow) * xv;
      advance_nhw(n, oh, ow, L, g.Ho, g.Wo);
    }
  }
  red[threadIdx.x] = acc;
  __syncthreads();
  if (lane == 0 && lt < TG && tap < kk) {
    acc_t s = acc_t(0);
    for (int64_t l = 0; l < L; ++l) s += red[lt * L + l];
    part[(c * kk + tap) * chunks + chunk] = s;
  }
  if (blockIdx.y != 0) return;
  // Owned input rows [in_row(r0), in_row(r1)) of the flattened (n, ih) rows.
  auto in_row = [&](int64_t r) { return (r / g.Ho) * g.H + own_lo(r % g.Ho, g.sh, g.H); };
  const int64_t e1 = in_row(r1) * g.W;
  int64_t e = in_row(r0) * g.W + threadIdx.x;
  int64_t n = e / HW, ih = (e % HW) / g.W, iw = e % g.W;
  const acc_t* wc = w + c * kk;
  for (; e < e1; e += kThreads) {
    auto dzp = [&](int64_t a, int64_t b) { return dz(n, c, a, b); };
    gx[n * xs.n + c * xs.c + ih * g.W + iw] = static_cast<T>(input_grad_at<acc_t>(dzp, wc, 1, g, ih, iw));
    advance_nhw(n, ih, iw, kThreads, g.H, g.W);
  }
}

// channels_last: block (kLanes channels, kRows pixel rows), each thread walking R output pixels
// of its channel (coalesced across the lanes); taps are looped outside the pixels (the pixels' dz
// and x come from L1 after the first tap), rows summed in order, part [C * kk][chunks]; then dx
// of the inputs each of the thread's outputs owns. wt: (kk, C), the lanes' weights contiguous.
template <typename T>
__global__ void __launch_bounds__(kThreads, 2)
    grad_cl_kernel(const DzLoader<T> dz, const T* __restrict__ x, const Strides4 xs,
                   const acc_of<T>* __restrict__ wt, T* __restrict__ gx, const Strides4 gxs,
                   const Geom g, const int64_t R, acc_of<T>* __restrict__ part) {
  using acc_t = acc_of<T>;
  __shared__ acc_t red[kRows][kLanes];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kLanes + threadIdx.x;
  const int64_t HWo = g.Ho * g.Wo, P = g.N * HWo;
  const int64_t kk = static_cast<int64_t>(g.kh) * g.kw;
  const int64_t q0 = static_cast<int64_t>(blockIdx.y) * kRows * R;
  for (int64_t tap = 0; tap < kk; ++tap) {
    const int i = static_cast<int>(tap / g.kw), j = static_cast<int>(tap % g.kw);
    acc_t acc = acc_t(0);
    if (c < g.C) {
      for (int64_t r = 0; r < R; ++r) {
        const int64_t q = q0 + r * kRows + threadIdx.y;
        if (q >= P) break;
        const int64_t n = q / HWo, pix = q % HWo, oh = pix / g.Wo, ow = pix % g.Wo;
        acc += dz(n, c, oh, ow) * tap_input<acc_t>(x + n * xs.n + c * xs.c, xs.h, xs.w, g, oh, ow, i, j);
      }
    }
    red[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && c < g.C) {
      for (int rr = 1; rr < kRows; ++rr) acc += red[rr][threadIdx.x];
      part[(c * kk + tap) * gridDim.y + blockIdx.y] = acc;
    }
    __syncthreads();  // red is reused by the next tap
  }
  if (c < g.C) cl_owned_input_grads(dz, wt, gx, gxs, g, c, q0, R);
}

// grad_cl_kernel for a KH x KW kernel known at compile time (3x3, 5x5, 7x7): pixels are walked
// once, each pixel's (n, oh, ow) decomposition (64-bit divisions) and dz (the BN backward of gz,
// z) computed once and applied to all KH * KW taps, held in registers. Same summation order per
// tap as grad_cl_kernel (pixels in order, then rows in order): the same bits. Launch bounds
// (kThreads, 1): with the transposed conv in the same kernel, ptxas otherwise caps the registers
// at 64-128 and spills the accumulators (100-800 B, .ci/ptxas_check.py); with them it takes what
// the KK sums need (80 / 92 / 142 for 3x3 / 5x5 / 7x7 in float32).
template <typename T, int KH, int KW>
__global__ void __launch_bounds__(kThreads, 1)
    grad_cl_k_kernel(const DzLoader<T> dz, const T* __restrict__ x, const Strides4 xs,
                     const acc_of<T>* __restrict__ wt, T* __restrict__ gx, const Strides4 gxs,
                     const Geom g, const int64_t R, acc_of<T>* __restrict__ part) {
  using acc_t = acc_of<T>;
  constexpr int KK = KH * KW;
  __shared__ acc_t red[kRows][kLanes];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kLanes + threadIdx.x;
  const int64_t HWo = g.Ho * g.Wo, P = g.N * HWo;
  const int64_t q0 = static_cast<int64_t>(blockIdx.y) * kRows * R;
  acc_t acc[KK];
#pragma unroll
  for (int t = 0; t < KK; ++t) acc[t] = acc_t(0);
  if (c < g.C) {
    for (int64_t r = 0; r < R; ++r) {
      const int64_t q = q0 + r * kRows + threadIdx.y;
      if (q >= P) break;
      const int64_t n = q / HWo, pix = q % HWo, oh = pix / g.Wo, ow = pix % g.Wo;
      const acc_t d = dz(n, c, oh, ow);
      const T* xp = x + n * xs.n + c * xs.c;
#pragma unroll
      for (int i = 0; i < KH; ++i) {
#pragma unroll
        for (int j = 0; j < KW; ++j) acc[i * KW + j] += d * tap_input<acc_t>(xp, xs.h, xs.w, g, oh, ow, i, j);
      }
    }
  }
#pragma unroll
  for (int t = 0; t < KK; ++t) {
    red[threadIdx.y][threadIdx.x] = acc[t];
    __syncthreads();
    if (threadIdx.y == 0 && c < g.C) {
      acc_t s = acc[t];
      for (int rr = 1; rr < kRows; ++rr) s += red[rr][threadIdx.x];
      part[(c * KK + t) * gridDim.y + blockIdx.y] = s;
    }
    __syncthreads();  // red is reused by the next tap
  }
  // dx after the sums (not in the same pixel loop: the KK accumulators would stay live across
  // the transposed conv and spill); the pixels' dz were just read, from L1/L2.
  if (c < g.C) cl_owned_input_grads(dz, wt, gx, gxs, g, c, q0, R);
}

// ---- launch helpers -------------------------------------------------------------------------
inline int64_t cl_rows_per_thread(int64_t P, int64_t C) {
  // Pixels per thread of the channels_last reductions (blocks of kLanes channels x kRows pixel
  // rows, R pixels per row; chunk = blockIdx.y): at least 8, and enough that the grid has about
  // 2048 blocks, two waves of 8 resident 256-thread blocks on a 132-SM H100. Every block
  // writes a partial result per channel (per channel and tap in grad_cl_k_kernel: C * kk *
  // chunks floats, read again by sum_finalize_kernel), so chunks beyond what fills the GPU only
  // add traffic: with R = 8, a 120-channel 28 x 28 5 x 5 layer at batch 128 wrote (and then read)
  // partial weight gradients a quarter the size of the dz, z and x reads they sum. At most 2048
  // pixels per thread (its float Welford / sum stays short on a huge plane), unless the grid's
  // 65535 chunks need more.
  int64_t target_blocks = 2048;
#ifdef TORCHCV_CUDA_EMU  // python_tests/cuda_emu: TORCHCV_EMU_CL_BLOCKS=n, R > 8 at test sizes
  target_blocks = ::emu::env_int("TORCHCV_EMU_CL_BLOCKS", target_blocks);
#endif
  const int64_t chunks = std::max<int64_t>(1, target_blocks / ceil_div(C, int64_t{kLanes}));
  const int64_t r = std::min<int64_t>(std::max<int64_t>(8, ceil_div(P, kRows * chunks)), 2048);
  return std::max(r, ceil_div(P, kRows * int64_t{65535}));
}

// Pixels per thread of the channels_last gradient kernels, which write kk partial sums per
// channel and block (not 1 or 2 as the other reductions): with cl_rows_per_thread's grid of
// ~2048 blocks those partials, written and read again by sum_finalize_kernel, came to 9-26% of
// the kernel's dy, z, x and dx bytes on MobileNetV3-Large's depthwise layers at batch 128 in
// bf16 (the 960-channel 7 x 7 one the most). Up to 4 * kk pixels per thread (partials ~3%), as
// long as the grid keeps about 2 blocks per SM (264 on an H100); small batches are unchanged.
inline int64_t cl_grad_rows_per_thread(int64_t P, int64_t C, int64_t kk) {
  const int64_t r = cl_rows_per_thread(P, C);
  const int64_t min_chunks = std::max<int64_t>(1, 264 / ceil_div(C, int64_t{kLanes}));
  const int64_t r_cap = ceil_div(P, kRows * min_chunks);
  return std::max(r, std::min(4 * kk, r_cap));
}

// Output rows per block of grad_nchw_kernel: fewer rows (more blocks) toward ~2048 blocks, as
// cl_rows_per_thread, but at least 512 outputs per block (each block writes kk partial weight
// gradients, read again by sum_finalize_kernel) and at most 4096.
inline int64_t nchw_grad_rows(const Geom& g) {
  const int64_t lo = ceil_div(512, g.Wo), hi = std::max<int64_t>(1, 4096 / g.Wo);
  const int64_t rows = ceil_div(g.N * g.Ho, ceil_div(2048, g.C));
  return std::max(std::min(rows, hi), std::min(lo, hi));
}

// Runs the tile kernel when the geometry is one it is instantiated for; false otherwise.
template <typename T>
bool launch_tile(const at::Tensor& x, const at::Tensor& w, const acc_of<T>* sc, const acc_of<T>* sh,
                 const Geom& g, Act act, at::Tensor& y, bool stats, at::Tensor& part, int64_t& P) {
  using acc_t = acc_of<T>;
  if constexpr (std::is_same_v<T, double>) {
    return false;
  } else {
    const int K = g.kh, S = g.sh;
    if (g.kw != K || g.sw != S || g.dh != 1 || g.dw != 1 || g.Ho * g.Wo <= kThreads) return false;
    if (!((K == 3 || K == 5 || K == 7) && (S == 1 || S == 2))) return false;
    TileMap tm;
    tm.tiles_h = ceil_div(g.Ho, kTH);
    tm.tiles_w = ceil_div(g.Wo, kTW);
    tm.tiles = tm.tiles_h * tm.tiles_w;
    const unsigned blocks = grid_1d(g.N * g.C * tm.tiles, "dwconv_bn_act");
    P = g.N * tm.tiles;
    Welford<acc_t>* pp = nullptr;
    if (stats) {
      part = at::empty({g.C * P * static_cast<int64_t>(sizeof(Welford<acc_t>))},
                       x.options().dtype(at::kByte));
      pp = reinterpret_cast<Welford<acc_t>*>(part.data_ptr());
    }
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    const dim3 block(kTW, kTY);
    const T* xd = x.const_data_ptr<T>();
    const acc_t* wd = w.const_data_ptr<acc_t>();
    T* yd = y.mutable_data_ptr<T>();
#define TCV_TILE_CASE(KK, SS)                                                                     \
  if (K == KK && S == SS) {                                                                       \
    if (stats) {                                                                                  \
      fwd_nchw_tile_kernel<T, KK, SS, true><<<blocks, block, 0, stream>>>(xd, wd, sc, sh, yd, g,  \
                                                                         tm, act, pp);            \
    } else {                                                                                      \
      fwd_nchw_tile_kernel<T, KK, SS, false><<<blocks, block, 0, stream>>>(xd, wd, sc, sh, yd, g, \
                                                                          tm, act, pp);           \
    }                                                                                             \
    C10_CUDA_KERNEL_LAUNCH_CHECK();                                                               \
    return true;                                                                                  \
  }
    TCV_TILE_CASE(3, 1)
    TCV_TILE_CASE(3, 2)
    TCV_TILE_CASE(5, 1)
    TCV_TILE_CASE(5, 2)
    TCV_TILE_CASE(7, 1)
    TCV_TILE_CASE(7, 2)
#undef TCV_TILE_CASE
    return false;
  }
}

template <typename T>
void launch_forward(const at::Tensor& x, const at::Tensor& w, const at::Tensor* scale,
                    const at::Tensor* shift, const Geom& g, Act act, at::Tensor& y,
                    at::Tensor* mean, at::Tensor* var) {
  using acc_t = acc_of<T>;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const bool stats = mean != nullptr;
  const acc_t* sc = scale ? scale->const_data_ptr<acc_t>() : nullptr;
  const acc_t* sh = shift ? shift->const_data_ptr<acc_t>() : nullptr;
  const bool cl = !(x.is_contiguous() && y.is_contiguous());
  const auto popt = x.options().dtype(at::kByte);
  at::Tensor part;
  int64_t P;
  if (cl) {
    const at::Tensor wt = w.t().contiguous();
    const bool blocked = !std::is_same_v<T, double> && g.kh == g.kw && g.sh == g.sw &&
                         g.dh == 1 && g.dw == 1 && (g.kh == 3 || g.kh == 5 || g.kh == 7) &&
                         (g.sh == 1 || g.sh == 2);
    // work items: output pixels, or groups of kVW adjacent pixels for the blocked kernel
    const int64_t Pix = blocked ? g.N * g.Ho * ceil_div(g.Wo, kVW) : g.N * g.Ho * g.Wo;
    const int64_t R = cl_rows_per_thread(Pix, g.C);
    const dim3 grid(static_cast<unsigned>(ceil_div(g.C, kLanes)),
                    static_cast<unsigned>(ceil_div(Pix, kRows * R)));
    const dim3 block(kLanes, kRows);
    P = grid.y;
    Welford<acc_t>* pp = nullptr;
    if (stats) {
      part = at::empty({g.C * P * static_cast<int64_t>(sizeof(Welford<acc_t>))}, popt);
      pp = reinterpret_cast<Welford<acc_t>*>(part.data_ptr());
    }
    if (blocked) {
      if constexpr (!std::is_same_v<T, double>) {
        const T* xd = x.const_data_ptr<T>();
        const acc_t* wd = wt.const_data_ptr<acc_t>();
        T* yd = y.mutable_data_ptr<T>();
#define TCV_CL_CASE(KK, SS)                                                                    \
  if (g.kh == KK && g.sh == SS) {                                                              \
    if (stats) {                                                                               \
      fwd_cl_blocked_kernel<T, KK, SS, true><<<grid, block, 0, stream>>>(xd, wd, sc, sh, yd, g, \
                                                                         R, act, pp);          \
    } else {                                                                                   \
      fwd_cl_blocked_kernel<T, KK, SS, false><<<grid, block, 0, stream>>>(xd, wd, sc, sh, yd,   \
                                                                          g, R, act, pp);      \
    }                                                                                          \
  }
        TCV_CL_CASE(3, 1)
        TCV_CL_CASE(3, 2)
        TCV_CL_CASE(5, 1)
        TCV_CL_CASE(5, 2)
        TCV_CL_CASE(7, 1)
        TCV_CL_CASE(7, 2)
#undef TCV_CL_CASE
      }
    } else if (stats) {
      fwd_cl_kernel<T, true><<<grid, block, 0, stream>>>(x.const_data_ptr<T>(), wt.const_data_ptr<acc_t>(),
                                                         sc, sh, y.mutable_data_ptr<T>(), g, R, act, pp);
    } else {
      fwd_cl_kernel<T, false><<<grid, block, 0, stream>>>(x.const_data_ptr<T>(), wt.const_data_ptr<acc_t>(),
                                                          sc, sh, y.mutable_data_ptr<T>(), g, R, act, pp);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else if (launch_tile<T>(x, w, sc, sh, g, act, y, stats, part, P)) {
    // done: the shared-memory tile kernel ran
  } else {
    const PlaneMap m = plane_map(g.N * g.C, g.Ho * g.Wo);
    const unsigned blocks = grid_1d(m.blocks, "dwconv_bn_act");
    P = g.N * m.chunks;
    Welford<acc_t>* pp = nullptr;
    if (stats) {
      part = at::empty({g.C * P * static_cast<int64_t>(sizeof(Welford<acc_t>))}, popt);
      pp = reinterpret_cast<Welford<acc_t>*>(part.data_ptr());
      fwd_nchw_kernel<T, true><<<blocks, kThreads, 0, stream>>>(
          x.const_data_ptr<T>(), w.const_data_ptr<acc_t>(), sc, sh, y.mutable_data_ptr<T>(), g, m, act, pp);
    } else {
      fwd_nchw_kernel<T, false><<<blocks, kThreads, 0, stream>>>(
          x.const_data_ptr<T>(), w.const_data_ptr<acc_t>(), sc, sh, y.mutable_data_ptr<T>(), g, m, act, pp);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  if (stats) {
    welford_finalize_kernel<acc_t><<<grid_1d(g.C, "dwconv_bn_stats"), kThreads, 0, stream>>>(
        reinterpret_cast<const Welford<acc_t>*>(part.const_data_ptr()), P,
        mean->mutable_data_ptr<acc_t>(), var->mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

inline int64_t grid_for(int64_t numel) {
  return std::max<int64_t>(1, std::min<int64_t>(ceil_div(numel, kThreads), int64_t{1} << 20));
}

// 32-bit indices are safe when every index and the last grid-stride increment stay below 2^32.
inline bool fits_u32(int64_t numel, int64_t blocks) { return index_fits<uint32_t>(numel, blocks * kThreads); }

#define TCV_DW_DISPATCH(T, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, T, NAME, __VA_ARGS__)

struct CudaBackend {
  static constexpr c10::DeviceType kDevice = c10::DeviceType::CUDA;
  using Guard = c10::cuda::CUDAGuard;

  static void eval(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale,
                   const at::Tensor& shift, const Geom& g, Act act, at::Tensor& y) {
    TCV_DW_DISPATCH(x.scalar_type(), "dwconv_bn_act", [&] {
      launch_forward<scalar_t>(x, w, &scale, &shift, g, act, y, nullptr, nullptr);
    });
  }

  static void stats(const at::Tensor& x, const at::Tensor& w, const Geom& g, at::Tensor& z,
                    at::Tensor& mean, at::Tensor& var) {
    TCV_DW_DISPATCH(x.scalar_type(), "dwconv_bn_stats", [&] {
      launch_forward<scalar_t>(x, w, nullptr, nullptr, g, Act::Identity, z, &mean, &var);
    });
  }

  static void ssa(const at::Tensor& z, const at::Tensor& mean, const at::Tensor& scale,
                  const at::Tensor& shift, Act act, at::Tensor& y) {
    const int64_t numel = z.numel();
    const bool cl = !(z.is_contiguous() && y.is_contiguous());
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    TCV_DW_DISPATCH(z.scalar_type(), "scale_shift_act", [&] {
      using acc_t = acc_of<scalar_t>;
      const int64_t blocks = grid_for(numel);
      if (fits_u32(numel, blocks)) {
        ssa_kernel<scalar_t, uint32_t><<<blocks, kThreads, 0, stream>>>(
            z.const_data_ptr<scalar_t>(), mean.const_data_ptr<acc_t>(), scale.const_data_ptr<acc_t>(),
            shift.const_data_ptr<acc_t>(), y.mutable_data_ptr<scalar_t>(), static_cast<uint32_t>(numel),
            static_cast<uint32_t>(z.size(1)), static_cast<uint32_t>(z.size(2) * z.size(3)), cl, act);
      } else {
        ssa_kernel<scalar_t, int64_t><<<blocks, kThreads, 0, stream>>>(
            z.const_data_ptr<scalar_t>(), mean.const_data_ptr<acc_t>(), scale.const_data_ptr<acc_t>(),
            shift.const_data_ptr<acc_t>(), y.mutable_data_ptr<scalar_t>(), numel, z.size(1),
            z.size(2) * z.size(3), cl, act);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }

  static void ssa_backward(const at::Tensor& grad, const at::Tensor& z, const at::Tensor& mean,
                           const at::Tensor& scale, const at::Tensor& shift, Act act, at::Tensor& gz,
                           at::Tensor& gsc, at::Tensor& gsh) {
    const int64_t N = z.size(0), C = z.size(1), HW = z.size(2) * z.size(3);
    const bool cl = !(z.is_contiguous() && grad.is_contiguous() && (!gz.defined() || gz.is_contiguous()));
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    TCV_DW_DISPATCH(z.scalar_type(), "_scale_shift_act_backward", [&] {
      using acc_t = acc_of<scalar_t>;
      scalar_t* gzd = gz.defined() ? gz.mutable_data_ptr<scalar_t>() : nullptr;  // null: sums only
      at::Tensor part;
      int64_t P;
      if (cl) {
        const int64_t Pix = N * HW;
        const int64_t R = cl_rows_per_thread(Pix, C);
        const dim3 grid(static_cast<unsigned>(ceil_div(C, kLanes)),
                        static_cast<unsigned>(ceil_div(Pix, kRows * R)));
        P = grid.y;
        part = at::empty({2 * C * P}, scale.options());
        ssa_bwd_cl_kernel<scalar_t><<<grid, dim3(kLanes, kRows), 0, stream>>>(
            grad.const_data_ptr<scalar_t>(), z.const_data_ptr<scalar_t>(), mean.const_data_ptr<acc_t>(),
            scale.const_data_ptr<acc_t>(), shift.const_data_ptr<acc_t>(), gzd,
            C, Pix, R, act, part.mutable_data_ptr<acc_t>());
      } else {
        const PlaneMap m = plane_map(N * C, HW);
        const unsigned blocks = grid_1d(m.blocks, "_scale_shift_act_backward");
        P = N * m.chunks;
        part = at::empty({2 * C * P}, scale.options());
        ssa_bwd_nchw_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
            grad.const_data_ptr<scalar_t>(), z.const_data_ptr<scalar_t>(), mean.const_data_ptr<acc_t>(),
            scale.const_data_ptr<acc_t>(), shift.const_data_ptr<acc_t>(), gzd,
            C, m, act, part.mutable_data_ptr<acc_t>());
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      at::Tensor sums = at::empty({2 * C}, scale.options());
      const unsigned rows = grid_1d(2 * C, "_scale_shift_act_backward");
      sum_finalize_kernel<acc_t><<<rows, kThreads, 0, stream>>>(part.const_data_ptr<acc_t>(), P,
                                                                  sums.mutable_data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      gsh.copy_(sums.narrow(0, 0, C));
      gsc.copy_(sums.narrow(0, C, C));
    });
  }

  static void stats_backward(const at::Tensor& gz, const at::Tensor& a, const at::Tensor& b, bool use_b,
                             const at::Tensor& x, const at::Tensor& z, const at::Tensor& mean,
                             const at::Tensor& w, const Geom& g, const SsaGrad& ssa, at::Tensor& gx,
                             at::Tensor& gw) {
    const int64_t kk = static_cast<int64_t>(g.kh) * g.kw;
    // DzLoader reads gz with z's strides: they must agree on every dim of size > 1 (a size-1 dim
    // may carry any stride, e.g. channels_last z with a 1 x 1 output next to an NCHW-strided gz).
    for (int64_t d = 0; d < z.dim(); ++d) {
      TORCH_CHECK(z.size(d) == 1 || gz.stride(d) == z.stride(d),
                  "_dwconv_bn_stats_backward: internal layout mismatch");
    }
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    const bool cl = !(x.is_contiguous() && gx.is_contiguous());
    TCV_DW_DISPATCH(x.scalar_type(), "_dwconv_bn_stats_backward", [&] {
      using acc_t = acc_of<scalar_t>;
      DzLoader<scalar_t> dz{gz.const_data_ptr<scalar_t>(), z.const_data_ptr<scalar_t>(), strides_of(z),
                            mean.const_data_ptr<acc_t>(), a.const_data_ptr<acc_t>(),
                            b.const_data_ptr<acc_t>(), use_b,
                            ssa.scale.defined() ? ssa.scale.const_data_ptr<acc_t>() : nullptr,
                            ssa.scale.defined() ? ssa.shift.const_data_ptr<acc_t>() : nullptr, ssa.act};
      const scalar_t* xd = x.const_data_ptr<scalar_t>();
      scalar_t* gxd = gx.mutable_data_ptr<scalar_t>();
      int64_t chunks;
      at::Tensor part;
      if (cl) {
        const at::Tensor wt = w.reshape({g.C, kk}).t().contiguous();  // (kk, C), see grad_cl_kernel
        const acc_t* wd = wt.const_data_ptr<acc_t>();
        const int64_t Pix = g.N * g.Ho * g.Wo;
        const int64_t R = cl_grad_rows_per_thread(Pix, g.C, kk);
        const dim3 grid(static_cast<unsigned>(ceil_div(g.C, kLanes)),
                        static_cast<unsigned>(ceil_div(Pix, kRows * R)));
        chunks = grid.y;
        part = at::empty({g.C * kk * chunks}, w.options());
        const dim3 block(kLanes, kRows);
        acc_t* pd = part.mutable_data_ptr<acc_t>();
        const Strides4 xs = strides_of(x), gxs = strides_of(gx);
        if (g.kh == 3 && g.kw == 3) {
          grad_cl_k_kernel<scalar_t, 3, 3><<<grid, block, 0, stream>>>(dz, xd, xs, wd, gxd, gxs, g, R, pd);
        } else if (g.kh == 5 && g.kw == 5) {
          grad_cl_k_kernel<scalar_t, 5, 5><<<grid, block, 0, stream>>>(dz, xd, xs, wd, gxd, gxs, g, R, pd);
        } else if (g.kh == 7 && g.kw == 7) {
          grad_cl_k_kernel<scalar_t, 7, 7><<<grid, block, 0, stream>>>(dz, xd, xs, wd, gxd, gxs, g, R, pd);
        } else {
          grad_cl_kernel<scalar_t><<<grid, block, 0, stream>>>(dz, xd, xs, wd, gxd, gxs, g, R, pd);
        }
      } else {
        const int64_t rows = nchw_grad_rows(g);
        chunks = ceil_div(g.N * g.Ho, rows);
        part = at::empty({g.C * kk * chunks}, w.options());
        const dim3 grid(grid_1d(g.C * chunks, "_dwconv_bn_stats_backward"),
                        static_cast<unsigned>(ceil_div(kk, int64_t{kThreads})));
        grad_nchw_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
            dz, xd, w.const_data_ptr<acc_t>(), gxd, g, rows, chunks, part.mutable_data_ptr<acc_t>());
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      const unsigned rows = grid_1d(g.C * kk, "_dwconv_bn_stats_backward");
      sum_finalize_kernel<acc_t><<<rows, kThreads, 0, stream>>>(part.const_data_ptr<acc_t>(), chunks,
                                                                    gw.mutable_data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
};

}  // namespace
}  // namespace dwconv

TORCH_LIBRARY_IMPL(torchcv_ext, CUDA, m) { dwconv::register_kernels<dwconv::CudaBackend>(m); }

}  // namespace torchcv_ext
