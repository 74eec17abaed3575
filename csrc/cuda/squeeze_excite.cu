// CUDA kernels of squeeze_excite and its backward. Schemas: csrc/registration.cpp. Math and front
// end: csrc/include/torchcv_ext/squeeze_excite.h, squeeze_excite_host.h. Autograd / fake / autocast:
// torchcv_ext/ops/squeeze_excite.py.
//
// Forward (3 launches; x read twice, y written once):
//   1. sums_*      per-(n, c) partial sums of x over spatial chunks -> ws (splits, N*C), in A
//   2. mlp_kernel  one block per sample: pooled mean (summing the chunks in order), fc1, act,
//                  fc2, gate -> g (N, C)
//   3. apply_*     y = x * g[n, c], 16-byte vector loads/stores where aligned
// Backward (4 launches; x read once, dy twice, dx written once):
//   1. sums_* (dual)  partial sums of x and of dy * x
//   2. mlp_kernel     also dz = dg * gate'(z), dh = (w2^T dz) * act'(h), shift = (w1^T dh) / HW
//   3. parameters     dw1 = sum_n dh p^T, db1 = sum_n dh, dw2 = sum_n dz a^T, db2 = sum_n dz:
//                     at::mm (cuBLAS) on the workspaces, or the fixed-order param_grads kernel
//                     when torch.use_deterministic_algorithms(True) is set
//   4. apply_*        dx = dy * g + shift
// Every reduction of our kernels has a fixed order (no atomics): results are deterministic.
//
// NCHW: one warp per (plane, spatial chunk); chunks are multiples of 16 elements so every chunk
// starts with the same 16-byte misalignment as its plane; a scalar head reaches alignment, the
// body uses 16-byte vectors, a scalar tail finishes. channels_last: threads across channels
// (16-byte vectors of channels when C allows), rows of threads across pixels, per-block partial
// sums combined in shared memory in a fixed order.
//
// Known limit: the MLP runs one block per sample, so every block streams both weight matrices
// (2 x C x S elements, 4 x in the backward) from L2. For MobileNetV3-sized SE blocks (S = C / 4)
// that can rival the two passes over x; a tiled kernel sharing weight tiles across samples would
// remove it. Measure with benchmarks/bench_squeeze_excite.py --device cuda.
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <tuple>

#include "torchcv_ext/squeeze_excite_host.h"

namespace torchcv_ext {
namespace {

using se::Problem;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kChunkAlign = 16;  // elements; keeps chunk starts' 16-byte misalignment

template <typename T>
struct VecWidth {
  static constexpr int value = 16 / sizeof(T);
};

template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Elements before p reaches 16-byte alignment.
template <typename T>
__device__ __forceinline__ int64_t head_elems(const T* p) {
  const auto mis = reinterpret_cast<std::uintptr_t>(p) % 16;
  return mis == 0 ? 0 : static_cast<int64_t>((16 - mis) / sizeof(T));
}

template <typename T>
__device__ __forceinline__ bool same_misalignment(const T* a, const T* b) {
  return reinterpret_cast<std::uintptr_t>(a) % 16 == reinterpret_cast<std::uintptr_t>(b) % 16;
}

// ---- 1. partial sums ----------------------------------------------------------------------------

// NCHW. Item i = (k, plane): warp sums x[plane, k*chunk : (k+1)*chunk) (and dy * x when kDual)
// and writes ws_x[k * planes + plane].
template <typename T, typename A, bool kDual>
__global__ void __launch_bounds__(kThreads)
sums_nchw(const T* __restrict__ x, const T* __restrict__ dy, A* __restrict__ ws_x,
          A* __restrict__ ws_xy, int64_t planes, int64_t HW, int64_t chunk, int64_t splits) {
  constexpr int V = VecWidth<T>::value;
  const int lane = threadIdx.x % 32;
  const int64_t items = planes * splits;
  const int64_t warp_stride = static_cast<int64_t>(gridDim.x) * kWarps;
  for (int64_t item = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32; item < items;
       item += warp_stride) {
    const int64_t k = item / planes, plane = item % planes;
    const int64_t start = k * chunk;
    const int64_t len = min(HW - start, chunk);
    const T* px = x + plane * HW + start;
    const T* pd = kDual ? dy + plane * HW + start : nullptr;
    const bool vec = !kDual || same_misalignment(px, pd);
    const int64_t head = vec ? min(head_elems(px), len) : len;
    const int64_t nvec = (len - head) / V;
    A sx = 0, sxy = 0;
    for (int64_t i = lane; i < head; i += 32) {
      const A v = static_cast<A>(px[i]);
      sx += v;
      if (kDual) sxy += v * static_cast<A>(pd[i]);
    }
    const Pack<T, V>* vx = reinterpret_cast<const Pack<T, V>*>(px + head);
    const Pack<T, V>* vd = kDual ? reinterpret_cast<const Pack<T, V>*>(pd + head) : nullptr;
    for (int64_t j = lane; j < nvec; j += 32) {
      const Pack<T, V> a = vx[j];
      if (kDual) {
        const Pack<T, V> b = vd[j];
#pragma unroll
        for (int e = 0; e < V; ++e) {
          const A v = static_cast<A>(a.v[e]);
          sx += v;
          sxy += v * static_cast<A>(b.v[e]);
        }
      } else {
#pragma unroll
        for (int e = 0; e < V; ++e) sx += static_cast<A>(a.v[e]);
      }
    }
    for (int64_t i = head + nvec * V + lane; i < len; i += 32) {
      const A v = static_cast<A>(px[i]);
      sx += v;
      if (kDual) sxy += v * static_cast<A>(pd[i]);
    }
    sx = warp_sum(sx);
    if (kDual) sxy = warp_sum(sxy);
    if (lane == 0) {
      ws_x[item] = sx;  // item == k * planes + plane
      if (kDual) ws_xy[item] = sxy;
    }
  }
}

// channels_last. Block (bx, k, n): channel groups [bx*cw, (bx+1)*cw) of V channels each (V = 1
// when the row is not vectorizable), pixels [k*chunk, (k+1)*chunk) of sample n. Thread t owns
// group t % cw and pixels t / cw, t / cw + rows, ...; the rows are combined in shared memory.
template <typename T, typename A, int V, bool kDual>
__global__ void __launch_bounds__(kThreads)
sums_cl(const T* __restrict__ x, const T* __restrict__ dy, A* __restrict__ ws_x,
        A* __restrict__ ws_xy, int64_t N, int64_t HW, int64_t C, int64_t chunk, int cw) {
  __shared__ A red[kDual ? 2 : 1][kThreads * V];
  const int t = threadIdx.x;
  const int rows = kThreads / cw;
  const int row = t / cw;
  const int64_t groups = C / V;
  const int64_t grp = static_cast<int64_t>(blockIdx.x) * cw + t % cw;
  const int64_t k = blockIdx.y, n = blockIdx.z;
  const int64_t s0 = k * chunk, s1 = min(HW, s0 + chunk);
  A ax[V], axy[V];
#pragma unroll
  for (int e = 0; e < V; ++e) ax[e] = axy[e] = 0;
  if (row < rows && grp < groups) {
    for (int64_t s = s0 + row; s < s1; s += rows) {
      const int64_t off = (n * HW + s) * C + grp * V;
      const Pack<T, V> a = *reinterpret_cast<const Pack<T, V>*>(x + off);
      if (kDual) {
        const Pack<T, V> b = *reinterpret_cast<const Pack<T, V>*>(dy + off);
#pragma unroll
        for (int e = 0; e < V; ++e) {
          const A v = static_cast<A>(a.v[e]);
          ax[e] += v;
          axy[e] += v * static_cast<A>(b.v[e]);
        }
      } else {
#pragma unroll
        for (int e = 0; e < V; ++e) ax[e] += static_cast<A>(a.v[e]);
      }
    }
  }
#pragma unroll
  for (int e = 0; e < V; ++e) {
    red[0][t * V + e] = ax[e];
    if (kDual) red[kDual ? 1 : 0][t * V + e] = axy[e];
  }
  __syncthreads();
  // The block's cw * V channel sums, thread j summing channel j of the block over the rows in
  // order: consecutive threads, consecutive channels (coalesced stores and bank-conflict-free
  // shared reads; a thread per group storing its V channels strode the stores by V).
  const int64_t c0 = static_cast<int64_t>(blockIdx.x) * cw * V;
  for (int j = t; j < cw * V && c0 + j < C; j += kThreads) {
    A sx = 0, sxy = 0;
    for (int r = 0; r < rows; ++r) {
      sx += red[0][r * cw * V + j];
      if (kDual) sxy += red[kDual ? 1 : 0][r * cw * V + j];
    }
    const int64_t idx = k * N * C + n * C + c0 + j;
    ws_x[idx] = sx;
    if (kDual) ws_xy[idx] = sxy;
  }
}

// ---- 2. the per-sample MLP ---------------------------------------------------------------------

// Outputs (pointers into A workspaces, row n): g (N, C) always; for the backward also
// shift (N, C) = dp / HW, pm (N, C) pooled mean, dz (N, C), a (N, S), dh (N, S).
template <typename A>
struct MlpOut {
  A* g;
  A* shift;
  A* pm;
  A* dz;
  A* a;
  A* dh;
};

// The four matrix-vector products of one sample read every weight once, so they are bound by
// the latency of weight loads: both helpers issue V-wide (16-byte when possible) independent
// loads, several per thread, and reduce in a fixed order.

// out[r] = sum_j W[r, j] * v[j] for r < rows (W row-major rows x cols, v in shared memory);
// gs lanes (a power of two <= 32) per row, epi(r, sum) called once per row.
template <typename T, typename A, int V, typename Epi>
__device__ __forceinline__ void row_dots(const T* __restrict__ W, int64_t rows, int64_t cols,
                                         const A* v, int gs, Epi epi) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int rows_per_warp = 32 / gs;
  const int gl = lane % gs;
  const int64_t nvec = cols / V;
  // Warp-uniform loop: every lane reaches the shuffles.
  for (int64_t r0 = static_cast<int64_t>(warp) * rows_per_warp; r0 < rows;
       r0 += static_cast<int64_t>(kWarps) * rows_per_warp) {
    const int64_t r = r0 + lane / gs;
    A acc = 0;
    if (r < rows) {
      const Pack<T, V>* row = reinterpret_cast<const Pack<T, V>*>(W + r * cols);
#pragma unroll 8
      for (int64_t j = gl; j < nvec; j += gs) {
        const Pack<T, V> w = row[j];
#pragma unroll
        for (int e = 0; e < V; ++e) acc += static_cast<A>(w.v[e]) * v[j * V + e];
      }
    }
    for (int o = gs / 2; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if (r < rows && gl == 0) epi(r, acc);
  }
}

// out[j] = sum_r W[r, j] * v[r] for j < cols (W row-major rows x cols, v in shared memory):
// threads own V-wide column vectors and a slice of the rows; the slices are combined in `red`
// (kThreads * V values of shared memory) in slice order. epi(j, sum) once per column.
// Contains __syncthreads: every thread of the block must call it.
template <typename T, typename A, int V, typename Epi>
__device__ __forceinline__ void col_sums(const T* __restrict__ W, int64_t rows, int64_t cols,
                                         const A* v, A* red, Epi epi) {
  const int t = threadIdx.x;
  const int64_t nvec = cols / V;
  for (int64_t vc0 = 0; vc0 < nvec; vc0 += kThreads) {  // block-uniform loop
    const int width = static_cast<int>(min(nvec - vc0, static_cast<int64_t>(kThreads)));
    const int slices = kThreads / width;
    const int slice = t / width;
    const int64_t vc = vc0 + t % width;
    A acc[V];
#pragma unroll
    for (int e = 0; e < V; ++e) acc[e] = 0;
    if (slice < slices) {
#pragma unroll 8
      for (int64_t r = slice; r < rows; r += slices) {
        const Pack<T, V> w = reinterpret_cast<const Pack<T, V>*>(W + r * cols)[vc];
        const A vr = v[r];
#pragma unroll
        for (int e = 0; e < V; ++e) acc[e] += static_cast<A>(w.v[e]) * vr;
      }
    }
    __syncthreads();  // the previous pass has finished reading red
#pragma unroll
    for (int e = 0; e < V; ++e) red[t * V + e] = acc[e];
    __syncthreads();
    if (t < width) {
#pragma unroll
      for (int e = 0; e < V; ++e) {
        A sum = 0;
        for (int sl = 0; sl < slices; ++sl) sum += red[(sl * width + t) * V + e];
        epi((vc0 + t) * V + e, sum);
      }
    }
  }
}

// Lanes per row for row_dots: about 8 vector loads per lane, at most a warp.
inline int lanes_per_row(int64_t nvec) {
  int gs = 1;
  while (gs < 32 && gs * 8 < nvec) gs *= 2;
  return gs;
}

// One block per sample. Shared memory (A): p[C], d[C] (dg, then dz), h[S], a[S], dh[S],
// red[kThreads * V]. V: weight load width (16 / sizeof(T) when C and S allow, else 1).
template <typename T, typename A, int V>
__global__ void __launch_bounds__(kThreads)
mlp_kernel(const A* __restrict__ ws_x, const A* __restrict__ ws_xy, int64_t splits,
           const T* __restrict__ w1, const T* __restrict__ b1, const T* __restrict__ w2,
           const T* __restrict__ b2, int64_t N, int64_t C, int64_t S, int64_t HW, Act act, Act gate,
           bool backward, int gs1, int gs2, MlpOut<A> out) {
  extern __shared__ unsigned char smem_raw[];
  A* p = reinterpret_cast<A*>(smem_raw);
  A* d = p + C;
  A* h = d + C;
  A* a = h + S;
  A* dh = a + S;
  A* red = dh + S;
  const int t = threadIdx.x;
  const int64_t n = blockIdx.x;
  const int64_t NC = N * C;
  const A inv_hw = A(1) / static_cast<A>(HW);

  for (int64_t c = t; c < C; c += kThreads) {
    // The chunks' partial sums added in double: thousands of float partials of a huge plane in a
    // float running sum lose the low bits (the CPU kernel does the same, squeeze_excite.cpp).
    double sx = 0, sxy = 0;
    for (int64_t k = 0; k < splits; ++k) {
      sx += ws_x[k * NC + n * C + c];
      if (backward) sxy += ws_xy[k * NC + n * C + c];
    }
    p[c] = static_cast<A>(sx) * inv_hw;
    if (backward) {
      d[c] = static_cast<A>(sxy);
      out.pm[n * C + c] = p[c];
    }
  }
  __syncthreads();
  // fc1 + act: h = w1 p + b1, a = act(h).
  row_dots<T, A, V>(w1, S, C, p, gs1, [&](int64_t s, A acc) {
    acc += static_cast<A>(b1[s]);
    h[s] = acc;
    a[s] = act_forward(act, acc);
  });
  __syncthreads();
  // fc2 + gate: z = w2 a + b2, g = gate(z); backward: dz = dg * gate'(z) (in place of dg).
  row_dots<T, A, V>(w2, C, S, a, gs2, [&](int64_t c, A acc) {
    const A z = acc + static_cast<A>(b2[c]);
    out.g[n * C + c] = act_forward(gate, z);
    if (backward) {
      const A dz = se::act_grad(gate, z, d[c]);
      d[c] = dz;  // only this lane touches d[c] in this phase
      out.dz[n * C + c] = dz;
    }
  });
  if (!backward) return;  // uniform across the block
  __syncthreads();
  // da = w2^T dz, dh = da * act'(h).
  col_sums<T, A, V>(w2, C, S, d, red, [&](int64_t s, A da) {
    const A g = se::act_grad(act, h[s], da);
    dh[s] = g;
    out.dh[n * S + s] = g;
    out.a[n * S + s] = a[s];
  });
  __syncthreads();
  // dp = w1^T dh; the x gradient gets dp / HW.
  col_sums<T, A, V>(w1, S, C, dh, red, [&](int64_t c, A dp) { out.shift[n * C + c] = dp * inv_hw; });
}

// ---- 3. parameter gradients (backward) ------------------------------------------------------------

// One thread per parameter element, summing over samples in order:
// [0, SC): dw1[s, c]; [SC, 2SC): dw2[c, s]; then S of db1, then C of db2.
template <typename T, typename A>
__global__ void __launch_bounds__(kThreads)
param_grads(const A* __restrict__ pm, const A* __restrict__ dz, const A* __restrict__ a,
            const A* __restrict__ dh, int64_t N, int64_t C, int64_t S, T* __restrict__ dw1,
            T* __restrict__ db1, T* __restrict__ dw2, T* __restrict__ db2) {
  const int64_t SC = S * C;
  const int64_t total = 2 * SC + S + C;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    A acc = 0;
    // Sums over samples in order; the N-loops below have independent loads (unrolled by nvcc).
    if (i < SC) {
      const int64_t s = i / C, c = i % C;
#pragma unroll 8
      for (int64_t n = 0; n < N; ++n) acc += dh[n * S + s] * pm[n * C + c];
      dw1[i] = static_cast<T>(acc);
    } else if (i < 2 * SC) {
      const int64_t j = i - SC;
      const int64_t c = j / S, s = j % S;
#pragma unroll 8
      for (int64_t n = 0; n < N; ++n) acc += dz[n * C + c] * a[n * S + s];
      dw2[j] = static_cast<T>(acc);
    } else if (i < 2 * SC + S) {
      const int64_t s = i - 2 * SC;
      for (int64_t n = 0; n < N; ++n) acc += dh[n * S + s];
      db1[s] = static_cast<T>(acc);
    } else {
      const int64_t c = i - 2 * SC - S;
      for (int64_t n = 0; n < N; ++n) acc += dz[n * C + c];
      db2[c] = static_cast<T>(acc);
    }
  }
}

// ---- 4. the elementwise pass --------------------------------------------------------------------

// NCHW: out = in * g[plane] (+ shift[plane]); same (k, plane) items as sums_nchw.
template <typename T, typename A>
__global__ void __launch_bounds__(kThreads)
apply_nchw(const T* __restrict__ in, T* __restrict__ out, const A* __restrict__ g,
           const A* __restrict__ shift, int64_t planes, int64_t HW, int64_t chunk, int64_t splits) {
  constexpr int V = VecWidth<T>::value;
  const int lane = threadIdx.x % 32;
  const int64_t items = planes * splits;
  const int64_t warp_stride = static_cast<int64_t>(gridDim.x) * kWarps;
  for (int64_t item = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32; item < items;
       item += warp_stride) {
    const int64_t k = item / planes, plane = item % planes;
    const int64_t start = k * chunk;
    const int64_t len = min(HW - start, chunk);
    const T* pi = in + plane * HW + start;
    T* po = out + plane * HW + start;
    const A gv = g[plane];
    const A sv = shift ? shift[plane] : A(0);
    const bool vec = same_misalignment(pi, static_cast<const T*>(po));
    const int64_t head = vec ? min(head_elems(pi), len) : len;
    const int64_t nvec = (len - head) / V;
    for (int64_t i = lane; i < head; i += 32) po[i] = se::scale_shift(pi[i], gv, sv);
    const Pack<T, V>* vi = reinterpret_cast<const Pack<T, V>*>(pi + head);
    Pack<T, V>* vo = reinterpret_cast<Pack<T, V>*>(po + head);
    for (int64_t j = lane; j < nvec; j += 32) {
      const Pack<T, V> a = vi[j];
      Pack<T, V> b;
#pragma unroll
      for (int e = 0; e < V; ++e) b.v[e] = se::scale_shift(a.v[e], gv, sv);
      vo[j] = b;
    }
    for (int64_t i = head + nvec * V + lane; i < len; i += 32) po[i] = se::scale_shift(pi[i], gv, sv);
  }
}

// channels_last: flat over V-element vectors (V divides C; when V > 1, in/out are 16-byte aligned
// and g/shift V * sizeof(A)-byte aligned, so every row n * C + c, c % V == 0, is too).
template <typename T, typename A, int V>
__global__ void __launch_bounds__(kThreads)
apply_cl(const T* __restrict__ in, T* __restrict__ out, const A* __restrict__ g,
         const A* __restrict__ shift, int64_t total_vecs, int64_t HW, int64_t C) {
  const int64_t HWC = HW * C;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; j < total_vecs;
       j += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t e0 = j * V;
    const int64_t n = e0 / HWC, c = e0 % C;
    // V gates (and shifts) per vector, one aligned vector load each (the host checks alignment).
    const Pack<A, V> gn = *reinterpret_cast<const Pack<A, V>*>(g + n * C + c);
    const Pack<T, V> a = reinterpret_cast<const Pack<T, V>*>(in)[j];
    Pack<T, V> b;
    if (shift) {
      const Pack<A, V> sn = *reinterpret_cast<const Pack<A, V>*>(shift + n * C + c);
#pragma unroll
      for (int e = 0; e < V; ++e) b.v[e] = se::scale_shift(a.v[e], gn.v[e], sn.v[e]);
    } else {
#pragma unroll
      for (int e = 0; e < V; ++e) b.v[e] = se::scale(a.v[e], gn.v[e]);
    }
    reinterpret_cast<Pack<T, V>*>(out)[j] = b;
  }
}

// ---- host side ------------------------------------------------------------------------------------

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int sm_count() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }

bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

// How the spatial reduction is split: chunks of HW per (n, c) (NCHW) or per sample (channels_last).
struct Split {
  int64_t splits, chunk;
  int cw;      // channels_last: channel groups per block row
  int vec;     // channels_last: channels per group (1 or 16 / sizeof(T))
  int64_t gx;  // channels_last: blocks across channel groups
};

constexpr int64_t kMaxChunk = 65536;

Split plan_split(const Problem& p, int64_t elem, bool vec_ok) {
  Split sp{1, p.HW, 1, 1, 1};
  const int64_t sms = sm_count();
  if (!p.channels_last) {
    // One warp per (plane, chunk); aim for ~2 waves of full-occupancy warps, chunks >= 512 elems.
    const int64_t planes = p.N * p.C;
    const int64_t want = ceil_div(sms * 128, std::max<int64_t>(planes, 1));
    const int64_t most = std::max<int64_t>(1, p.HW / 512);
    // ... and at most kMaxChunk elements per chunk, so a lane's float sum stays short.
    const int64_t splits = std::max<int64_t>({int64_t(1), std::min(want, most), ceil_div(p.HW, kMaxChunk)});
    sp.chunk = ceil_div(ceil_div(p.HW, splits), kChunkAlign) * kChunkAlign;
    sp.splits = ceil_div(p.HW, sp.chunk);
    return sp;
  }
  const int V = vec_ok ? static_cast<int>(16 / elem) : 1;
  const int64_t groups = p.C / V;
  int cw = 32;
  if (groups < 32) {
    cw = 1;
    while (cw < groups) cw *= 2;
  }
  const int64_t rows = kThreads / cw;
  sp.cw = cw;
  sp.vec = V;
  sp.gx = ceil_div(groups, cw);
  const int64_t want = ceil_div(sms * 16, std::max<int64_t>(sp.gx * p.N, 1));
  const int64_t most = std::max<int64_t>(1, p.HW / (rows * 4));
  // At least enough chunks that a thread's float sum covers at most kMaxChunk / 32 pixels (as a
  // lane's in NCHW), within the grid's 65535 in y.
  const int64_t least = ceil_div(p.HW, rows * (kMaxChunk / 32));
  const int64_t splits =
      std::max<int64_t>(1, std::min<int64_t>(std::max(std::min(want, most), least), 65535));
  sp.chunk = ceil_div(p.HW, splits);
  sp.splits = ceil_div(p.HW, sp.chunk);
  return sp;
}

// Launch the partial sums of x (and dy * x when dy != nullptr) into ws_x / ws_xy (splits, N*C).
template <typename T, typename A>
void launch_sums(const Problem& p, const Split& sp, const T* x, const T* dy, A* ws_x, A* ws_xy,
                 cudaStream_t stream) {
  if (!p.channels_last) {
    const int64_t items = p.N * p.C * sp.splits;
    const int64_t blocks = std::min<int64_t>(ceil_div(items, kWarps), int64_t{sm_count()} * 64);
    if (dy) {
      sums_nchw<T, A, true><<<blocks, kThreads, 0, stream>>>(x, dy, ws_x, ws_xy, p.N * p.C, p.HW,
                                                             sp.chunk, sp.splits);
    } else {
      sums_nchw<T, A, false><<<blocks, kThreads, 0, stream>>>(x, dy, ws_x, ws_xy, p.N * p.C, p.HW,
                                                              sp.chunk, sp.splits);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  TORCH_CHECK(p.N <= 65535, "squeeze_excite: channels_last input with batch size ", p.N,
              " > 65535 is not supported by the CUDA kernel");
  const dim3 grid(static_cast<unsigned>(sp.gx), static_cast<unsigned>(sp.splits),
                  static_cast<unsigned>(p.N));
  constexpr int VW = VecWidth<T>::value;
  if (sp.vec == VW) {
    if (dy) {
      sums_cl<T, A, VW, true><<<grid, kThreads, 0, stream>>>(x, dy, ws_x, ws_xy, p.N, p.HW, p.C,
                                                             sp.chunk, sp.cw);
    } else {
      sums_cl<T, A, VW, false><<<grid, kThreads, 0, stream>>>(x, dy, ws_x, ws_xy, p.N, p.HW, p.C,
                                                              sp.chunk, sp.cw);
    }
  } else {
    if (dy) {
      sums_cl<T, A, 1, true><<<grid, kThreads, 0, stream>>>(x, dy, ws_x, ws_xy, p.N, p.HW, p.C,
                                                            sp.chunk, sp.cw);
    } else {
      sums_cl<T, A, 1, false><<<grid, kThreads, 0, stream>>>(x, dy, ws_x, ws_xy, p.N, p.HW, p.C,
                                                             sp.chunk, sp.cw);
    }
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, typename A, int V>
void launch_mlp_v(const Problem& p, const A* ws_x, const A* ws_xy, int64_t splits, bool backward,
                  const MlpOut<A>& out, cudaStream_t stream) {
  const size_t smem = static_cast<size_t>(2 * p.C + 3 * p.S + kThreads * V) * sizeof(A);
  const size_t optin = at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin;  // cached
  TORCH_CHECK(smem <= optin, "squeeze_excite: C = ", p.C, " and S = ", p.S,
              " need ", smem, " bytes of shared memory per block, more than the device's ", optin);
  if (smem > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(mlp_kernel<T, A, V>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(smem)));
  }
  const int gs1 = lanes_per_row(p.C / V), gs2 = lanes_per_row(p.S / V);
  mlp_kernel<T, A, V><<<static_cast<unsigned>(p.N), kThreads, smem, stream>>>(
      ws_x, ws_xy, splits, p.w1.const_data_ptr<T>(), p.b1.const_data_ptr<T>(),
      p.w2.const_data_ptr<T>(), p.b2.const_data_ptr<T>(), p.N, p.C, p.S, p.HW, p.act, p.gate,
      backward, gs1, gs2, out);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// 16-byte weight loads when every weight row starts 16-byte aligned.
template <typename T, typename A>
void launch_mlp(const Problem& p, const A* ws_x, const A* ws_xy, int64_t splits, bool backward,
                const MlpOut<A>& out, cudaStream_t stream) {
  constexpr int VW = VecWidth<T>::value;
  const bool vec = p.C % VW == 0 && p.S % VW == 0 && aligned16(p.w1.const_data_ptr()) &&
                   aligned16(p.w2.const_data_ptr());
  if (vec) {
    launch_mlp_v<T, A, VW>(p, ws_x, ws_xy, splits, backward, out, stream);
  } else {
    launch_mlp_v<T, A, 1>(p, ws_x, ws_xy, splits, backward, out, stream);
  }
}

template <typename T, typename A>
void launch_apply(const Problem& p, const Split& sp, const T* in, T* out, const A* g,
                  const A* shift, cudaStream_t stream) {
  if (!p.channels_last) {
    const int64_t items = p.N * p.C * sp.splits;
    const int64_t blocks = std::min<int64_t>(ceil_div(items, kWarps), int64_t{sm_count()} * 64);
    apply_nchw<T, A><<<blocks, kThreads, 0, stream>>>(in, out, g, shift, p.N * p.C, p.HW, sp.chunk,
                                                      sp.splits);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  constexpr int VW = VecWidth<T>::value;
  const int64_t total = p.N * p.HW * p.C;
  const auto aligned_gates = [](const A* q) {
    return q == nullptr || reinterpret_cast<std::uintptr_t>(q) % (sizeof(A) * VW) == 0;
  };
  const bool vec = p.C % VW == 0 && aligned16(in) && aligned16(out) && aligned_gates(g) &&
                   aligned_gates(shift);
  const int64_t vecs = vec ? total / VW : total;
  const int64_t blocks = std::min<int64_t>(ceil_div(vecs, kThreads), int64_t{sm_count()} * 32);
  if (vec) {
    apply_cl<T, A, VW><<<blocks, kThreads, 0, stream>>>(in, out, g, shift, vecs, p.HW, p.C);
  } else {
    apply_cl<T, A, 1><<<blocks, kThreads, 0, stream>>>(in, out, g, shift, vecs, p.HW, p.C);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::ScalarType acc_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

at::Tensor squeeze_excite_cuda(const at::Tensor& x_in, const at::Tensor& w1, const at::Tensor& b1,
                               const at::Tensor& w2, const at::Tensor& b2, c10::string_view act,
                               c10::string_view gate) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  const Problem p = se::prepare("squeeze_excite", x_in, w1, b1, w2, b2, std::string(act),
                                std::string(gate), c10::DeviceType::CUDA);
  at::Tensor y = at::empty(p.x.sizes(), p.x.options().memory_format(p.fmt));
  if (y.numel() == 0) return y;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.x.scalar_type(), "squeeze_excite_cuda", [&] {
    using T = scalar_t;
    using A = at::opmath_type<T>;
    const T* x = p.x.const_data_ptr<T>();
    const bool vec_ok = p.C % VecWidth<T>::value == 0 && aligned16(x);
    const Split sp = plan_split(p, sizeof(T), vec_ok);
    const int64_t NC = p.N * p.C;
    at::Tensor ws = at::empty({sp.splits * NC + NC}, p.x.options().dtype(acc_dtype(p.x.scalar_type())));
    A* ws_x = ws.mutable_data_ptr<A>();
    A* g = ws_x + sp.splits * NC;
    launch_sums<T, A>(p, sp, x, nullptr, ws_x, nullptr, stream);
    const MlpOut<A> out{g, nullptr, nullptr, nullptr, nullptr, nullptr};
    launch_mlp<T, A>(p, ws_x, nullptr, sp.splits, /*backward=*/false, out, stream);
    launch_apply<T, A>(p, sp, x, y.mutable_data_ptr<T>(), g, nullptr, stream);
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> squeeze_excite_backward_cuda(
    const at::Tensor& grad, const at::Tensor& x_in, const at::Tensor& w1, const at::Tensor& b1,
    const at::Tensor& w2, const at::Tensor& b2, c10::string_view act, c10::string_view gate) {
  const char* op = "_squeeze_excite_backward";
  const c10::cuda::CUDAGuard guard(x_in.device());
  const Problem p = se::prepare(op, x_in, w1, b1, w2, b2, std::string(act), std::string(gate),
                                c10::DeviceType::CUDA);
  const at::Tensor dy_t = se::prepare_grad(op, grad, p);
  at::Tensor dx = at::empty(p.x.sizes(), p.x.options().memory_format(p.fmt));
  at::Tensor dw1 = at::empty({p.S, p.C}, p.x.options());
  at::Tensor db1 = at::empty({p.S}, p.x.options());
  at::Tensor dw2 = at::empty({p.C, p.S}, p.x.options());
  at::Tensor db2 = at::empty({p.C}, p.x.options());
  if (dx.numel() == 0) {
    dw1.zero_();
    db1.zero_();
    dw2.zero_();
    db2.zero_();
    return {dx, dw1, db1, dw2, db2};
  }
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.x.scalar_type(), "squeeze_excite_backward_cuda", [&] {
    using T = scalar_t;
    using A = at::opmath_type<T>;
    const T* x = p.x.const_data_ptr<T>();
    const T* dy = dy_t.const_data_ptr<T>();
    const bool vec_ok = p.C % VecWidth<T>::value == 0 && aligned16(x) && aligned16(dy);
    const Split sp = plan_split(p, sizeof(T), vec_ok);
    const int64_t NC = p.N * p.C, NS = p.N * p.S;
    at::Tensor ws = at::empty({2 * sp.splits * NC + 4 * NC + 2 * NS},
                              p.x.options().dtype(acc_dtype(p.x.scalar_type())));
    A* ws_x = ws.mutable_data_ptr<A>();
    A* ws_xy = ws_x + sp.splits * NC;
    MlpOut<A> out;
    out.g = ws_xy + sp.splits * NC;
    out.shift = out.g + NC;
    out.pm = out.shift + NC;
    out.dz = out.pm + NC;
    out.a = out.dz + NC;
    out.dh = out.a + NS;
    launch_sums<T, A>(p, sp, x, dy, ws_x, ws_xy, stream);
    launch_mlp<T, A>(p, ws_x, ws_xy, sp.splits, /*backward=*/true, out, stream);
    if (at::globalContext().deterministicAlgorithms()) {
      // Fixed summation order without cuBLAS (which would need CUBLAS_WORKSPACE_CONFIG).
      const int64_t total = 2 * p.S * p.C + p.S + p.C;
      const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>(ceil_div(total, kThreads),
                                                                    int64_t{sm_count()} * 32));
      param_grads<T, A><<<blocks, kThreads, 0, stream>>>(
          out.pm, out.dz, out.a, out.dh, p.N, p.C, p.S, dw1.mutable_data_ptr<T>(),
          db1.mutable_data_ptr<T>(), dw2.mutable_data_ptr<T>(), db2.mutable_data_ptr<T>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    } else {
      // Rank-N products over the (N, C) / (N, S) workspaces: cuBLAS, in the accumulation type.
      const int64_t base = out.pm - ws_x;
      const at::Tensor pm = ws.narrow(0, base, NC).view({p.N, p.C});
      const at::Tensor dz = ws.narrow(0, base + NC, NC).view({p.N, p.C});
      const at::Tensor a = ws.narrow(0, base + 2 * NC, NS).view({p.N, p.S});
      const at::Tensor dh = ws.narrow(0, base + 2 * NC + NS, NS).view({p.N, p.S});
      dw1.copy_(at::mm(dh.t(), pm));
      dw2.copy_(at::mm(dz.t(), a));
      db1.copy_(dh.sum(0));
      db2.copy_(dz.sum(0));
    }
    launch_apply<T, A>(p, sp, dy, dx.mutable_data_ptr<T>(), out.g, out.shift, stream);
  });
  return {dx, dw1, db1, dw2, db2};
}

}  // namespace

TORCH_LIBRARY_IMPL(torchcv_ext, CUDA, m) {
  m.impl("squeeze_excite", &squeeze_excite_cuda);
  m.impl("_squeeze_excite_backward", &squeeze_excite_backward_cuda);
}

}  // namespace torchcv_ext
