// CPU kernels of squeeze_excite and its backward. Schemas: csrc/registration.cpp. Math and front
// end: csrc/include/torchcv_ext/squeeze_excite.h. Autograd / fake / autocast:
// torchcv_ext/ops/squeeze_excite.py.
//
// Forward: (1) per-(n, c) sums of x, (2) the per-sample MLP -> gate g (N, C), (3) y = x * g.
// When a sample fits in cache and there are at least as many samples as threads, the three phases
// run per sample inside one task, so the second read of x hits the cache. Reductions accumulate
// in float (double for float64) in a fixed order: results do not depend on timing.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <type_traits>
#include <vector>

#include "torchcv_ext/cpu_clones.h"
#include "torchcv_ext/squeeze_excite_host.h"

namespace torchcv_ext {
namespace {

using se::Problem;

constexpr int kLanes = 16;  // independent accumulators (lets the compiler vectorize the sums)

// ---- contiguous-row primitives --------------------------------------------------------------

// Rows longer than kSumChunk are summed in chunks whose totals are added in double: a float
// running sum over 2^28 values loses the low bits (the mean of a constant 3.0 plane came out 3.67).
constexpr int64_t kSumChunk = 4096;

// float32 NCHW rows, vectorized per CPU (TCV_CPU_CLONES): the templates below compile to SSE2
// only, which made the NCHW forward 0.7-0.9x eager on EfficientNet-B0's 112x112 planes.
// 16 lanes (a0 | a1) and 16 more (b0 | b1) in 8-float vectors (cpu_clones.h: not 16 on AVX2).
TCV_CPU_CLONES float row_sum_f32(const float* x, int64_t n) {  // n <= kSumChunk
  f32x8 a0 = {}, a1 = {}, b0 = {}, b1 = {};
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    a0 += load8(x + i);
    a1 += load8(x + i + 8);
    b0 += load8(x + i + 16);
    b1 += load8(x + i + 24);
  }
  for (; i + 16 <= n; i += 16) {
    a0 += load8(x + i);
    a1 += load8(x + i + 8);
  }
  a0 += b0;
  a1 += b1;
  float s = 0;
  for (int l = 0; l < 8; ++l) s += a0[l];
  for (int l = 0; l < 8; ++l) s += a1[l];
  for (; i < n; ++i) s += x[i];
  return s;
}

TCV_CPU_CLONES void row_scale_f32(const float* in, float* out, int64_t n, float g) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = in[i] * g;
}

template <typename T, typename A>
A row_sum(const T* x, int64_t n) {
  if (n > kSumChunk) {
    double total = 0;
    for (int64_t i = 0; i < n; i += kSumChunk) total += row_sum<T, A>(x + i, std::min(kSumChunk, n - i));
    return static_cast<A>(total);
  }
  if constexpr (std::is_same_v<T, float> && std::is_same_v<A, float>) return row_sum_f32(x, n);
  A acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) acc[l] += static_cast<A>(x[i + l]);
  }
  for (; i < n; ++i) acc[0] += static_cast<A>(x[i]);
  A s = 0;
  for (int l = 0; l < kLanes; ++l) s += acc[l];
  return s;
}

// sum_i w[i] * v[i] with independent partial sums (vectorizable).
template <typename T, typename A>
A dot(const T* w, const A* v, int64_t n) {
  A acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) acc[l] += static_cast<A>(w[i + l]) * v[i + l];
  }
  for (; i < n; ++i) acc[0] += static_cast<A>(w[i]) * v[i];
  A s = 0;
  for (int l = 0; l < kLanes; ++l) s += acc[l];
  return s;
}

// sum(x) and sum(dy * x) over a row.
template <typename T, typename A>
void row_sum2(const T* x, const T* dy, int64_t n, A& sx, A& sxy) {
  if (n > kSumChunk) {  // chunked as row_sum
    double tx = 0, txy = 0;
    for (int64_t i = 0; i < n; i += kSumChunk) {
      A cx, cxy;
      row_sum2<T, A>(x + i, dy + i, std::min(kSumChunk, n - i), cx, cxy);
      tx += cx;
      txy += cxy;
    }
    sx = static_cast<A>(tx);
    sxy = static_cast<A>(txy);
    return;
  }
  A ax[kLanes] = {}, axy[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const A v = static_cast<A>(x[i + l]);
      ax[l] += v;
      axy[l] += v * static_cast<A>(dy[i + l]);
    }
  }
  for (; i < n; ++i) {
    const A v = static_cast<A>(x[i]);
    ax[0] += v;
    axy[0] += v * static_cast<A>(dy[i]);
  }
  sx = 0;
  sxy = 0;
  for (int l = 0; l < kLanes; ++l) {
    sx += ax[l];
    sxy += axy[l];
  }
}

// out = in * g (+ shift) over a row with one scale.
template <typename T, typename A>
void row_scale(const T* in, T* out, int64_t n, A g) {
  if constexpr (std::is_same_v<T, float> && std::is_same_v<A, float>) {
    row_scale_f32(in, out, n, g);
  } else {
    for (int64_t i = 0; i < n; ++i) out[i] = se::scale(in[i], g);
  }
}
template <typename T, typename A>
void row_scale_shift(const T* in, T* out, int64_t n, A g, A shift) {
  for (int64_t i = 0; i < n; ++i) out[i] = se::scale_shift(in[i], g, shift);
}

// channels_last pixel rows: per-channel accumulate / scale.
template <typename T, typename A>
void pixel_accum(const T* x, int64_t C, A* acc) {
  for (int64_t c = 0; c < C; ++c) acc[c] += static_cast<A>(x[c]);
}
template <typename T, typename A>
void pixel_accum2(const T* x, const T* dy, int64_t C, A* sx, A* sxy) {
  for (int64_t c = 0; c < C; ++c) {
    const A v = static_cast<A>(x[c]);
    sx[c] += v;
    sxy[c] += v * static_cast<A>(dy[c]);
  }
}
template <typename T, typename A>
void pixel_scale(const T* in, T* out, int64_t C, const A* g) {
  for (int64_t c = 0; c < C; ++c) out[c] = se::scale(in[c], g[c]);
}
template <typename T, typename A>
void pixel_scale_shift(const T* in, T* out, int64_t C, const A* g, const A* shift) {
  for (int64_t c = 0; c < C; ++c) out[c] = se::scale_shift(in[c], g[c], shift[c]);
}

// float32 channels_last over npix pixels of C channels, vectorized per CPU (TCV_CPU_CLONES): the
// accumulators of a channel block stay in registers across the pixels (a per-pixel loop over a
// runtime-length acc[] loads and stores it for every pixel). 32-channel blocks, then the < 32
// remaining channels in one more pass, all through cl_accum_rest: 8 accumulator vectors of 8
// floats (cpu_clones.h: not 16-float vectors, which the avx2 clone spilled), half of AVX2's
// registers.

// acc[0, R) += sum over npix pixels of x[s * C + (0, R)], R = 8 * NV + tail (tail < 8 only when
// TAIL): NV whole vectors plus, when TAIL, one vector whose lanes >= tail are discarded (it reads
// into the next pixel's channels). Pixels whose vector reads would pass the `avail` floats that
// follow x (the end of the chunk) are added one channel at a time. Two pixels per step in
// separate accumulators: independent add chains.
template <int NV, bool TAIL>
__attribute__((always_inline)) inline void cl_accum_rest(const float* x, int64_t npix, int64_t C,
                                                         int64_t tail, int64_t avail, float* acc) {
  constexpr int V = NV + (TAIL ? 1 : 0);
  static_assert(V > 0 && V <= 4, "one to four vectors");
  const int64_t R = 8 * NV + (TAIL ? tail : 0);
  const int64_t lim = avail - 8 * V;  // pixel s may use vector reads iff s * C <= lim
  const int64_t full = lim < 0 ? 0 : std::min<int64_t>(npix, lim / C + 1);
  f32x8 a[V] = {}, b[V] = {};
  int64_t s = 0;
  for (; s + 2 <= full; s += 2) {
    const float* p = x + s * C;
    for (int v = 0; v < V; ++v) a[v] += load8(p + 8 * v);
    for (int v = 0; v < V; ++v) b[v] += load8(p + C + 8 * v);
  }
  for (; s < full; ++s) {
    for (int v = 0; v < V; ++v) a[v] += load8(x + s * C + 8 * v);
  }
  float t[8 * V];
  for (int v = 0; v < V; ++v) store8(t + 8 * v, a[v] + b[v]);
  for (int64_t c = 0; c < R; ++c) acc[c] += t[c];
  for (; s < npix; ++s) {
    for (int64_t c = 0; c < R; ++c) acc[c] += x[s * C + c];
  }
}

TCV_CPU_CLONES void cl_accum_f32(const float* x, int64_t npix, int64_t C, float* acc) {
  if (npix <= 0) return;
  int64_t c0 = 0;
  for (; c0 + 32 <= C; c0 += 32) cl_accum_rest<4, false>(x + c0, npix, C, 0, npix * C - c0, acc + c0);
  const int64_t rest = C - c0, nv = rest / 8, tail = rest % 8;
  if (rest == 0) return;
  const float* xr = x + c0;
  const int64_t avail = npix * C - c0;  // floats from xr to the end of the pixels
  float* ar = acc + c0;
  if (tail == 0) {
    switch (nv) {
      case 1: return cl_accum_rest<1, false>(xr, npix, C, 0, avail, ar);
      case 2: return cl_accum_rest<2, false>(xr, npix, C, 0, avail, ar);
      default: return cl_accum_rest<3, false>(xr, npix, C, 0, avail, ar);
    }
  }
  switch (nv) {
    case 0: return cl_accum_rest<0, true>(xr, npix, C, tail, avail, ar);
    case 1: return cl_accum_rest<1, true>(xr, npix, C, tail, avail, ar);
    case 2: return cl_accum_rest<2, true>(xr, npix, C, tail, avail, ar);
    default: return cl_accum_rest<3, true>(xr, npix, C, tail, avail, ar);
  }
}

// out = in * g[c] over npix channels_last pixels.
TCV_CPU_CLONES void cl_scale_f32(const float* in, float* out, int64_t npix, int64_t C, const float* g) {
  for (int64_t s = 0; s < npix; ++s) {
    const float* i = in + s * C;
    float* o = out + s * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) o[c] = i[c] * g[c];
  }
}

// Items per task so that a task has >= ~32K elementary operations (small problems run inline on
// the calling thread, like ATen's own kernels).
int64_t grain_for(int64_t work_per_item) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(work_per_item, 1));
}

// ---- phase 1: per-(n, c) sums ----------------------------------------------------------------

// Sums of one sample n over its spatial positions: sx[c] (and sxy[c] = sum dy * x when dy != null).
template <typename T, typename A>
void sample_sums(const Problem& p, const T* x, const T* dy, int64_t n, A* sx, A* sxy) {
  const int64_t C = p.C, HW = p.HW;
  const T* xs = x + n * C * HW;
  const T* ds = dy ? dy + n * C * HW : nullptr;
  if (!p.channels_last) {
    for (int64_t c = 0; c < C; ++c) {
      if (ds) {
        row_sum2<T, A>(xs + c * HW, ds + c * HW, HW, sx[c], sxy[c]);
      } else {
        sx[c] = row_sum<T, A>(xs + c * HW, HW);
      }
    }
    return;
  }
  // Sums over pixels [s0, s1) into ax (and axy).
  auto accum = [&](int64_t s0, int64_t s1, A* ax, A* axy) {
    std::fill(ax, ax + C, A(0));
    if (ds) std::fill(axy, axy + C, A(0));
    if constexpr (std::is_same_v<T, float> && std::is_same_v<A, float>) {
      if (!ds) return cl_accum_f32(xs + s0 * C, s1 - s0, C, ax);
    }
    for (int64_t s = s0; s < s1; ++s) {
      if (ds) {
        pixel_accum2<T, A>(xs + s * C, ds + s * C, C, ax, axy);
      } else {
        pixel_accum<T, A>(xs + s * C, C, ax);
      }
    }
  };
  if (HW <= kSumChunk) return accum(0, HW, sx, sxy);
  // Chunks of kSumChunk pixels, their sums added in double (as row_sum).
  std::vector<A> cx(static_cast<size_t>(C)), cxy(static_cast<size_t>(C));
  std::vector<double> tx(static_cast<size_t>(C), 0.0), txy(static_cast<size_t>(C), 0.0);
  for (int64_t s0 = 0; s0 < HW; s0 += kSumChunk) {
    accum(s0, std::min(HW, s0 + kSumChunk), cx.data(), cxy.data());
    for (int64_t c = 0; c < C; ++c) {
      tx[c] += cx[c];
      if (ds) txy[c] += cxy[c];
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    sx[c] = static_cast<A>(tx[c]);
    if (ds) sxy[c] = static_cast<A>(txy[c]);
  }
}

// All samples, parallel over (n, c) planes (NCHW) or (n, pixel chunk) (channels_last, partial sums
// combined in chunk order).
template <typename T, typename A>
void all_sums(const Problem& p, const T* x, const T* dy, A* sx, A* sxy) {
  const int64_t N = p.N, C = p.C, HW = p.HW;
  if (!p.channels_last) {
    const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(HW, 1));
    at::parallel_for(0, N * C, grain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        if (dy) {
          row_sum2<T, A>(x + r * HW, dy + r * HW, HW, sx[r], sxy[r]);
        } else {
          sx[r] = row_sum<T, A>(x + r * HW, HW);
        }
      }
    });
    return;
  }
  // channels_last: K pixel chunks per sample.
  const int64_t threads = at::get_num_threads();
  // At most kSumChunk pixels per chunk: float partial sums stay short (combined in double below).
  const int64_t K = std::max<int64_t>(
      {int64_t(1), std::min<int64_t>((threads * 4 + N - 1) / N, (HW * C) / 16384),
       (HW + kSumChunk - 1) / kSumChunk});
  const int64_t chunk = (HW + K - 1) / K;
  const int64_t arrays = dy ? 2 : 1;
  std::vector<A> part(static_cast<size_t>(N * K * C * arrays), A(0));
  at::parallel_for(0, N * K, grain_for(chunk * C), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / K, k = r % K;
      A* ax = part.data() + r * C;
      A* axy = dy ? part.data() + (N * K + r) * C : nullptr;
      const int64_t s0 = k * chunk, s1 = std::min(HW, s0 + chunk);
      if constexpr (std::is_same_v<T, float> && std::is_same_v<A, float>) {
        if (!dy) {
          if (s1 > s0) cl_accum_f32(x + (n * HW + s0) * C, s1 - s0, C, ax);
          continue;
        }
      }
      for (int64_t s = s0; s < s1; ++s) {
        const int64_t off = (n * HW + s) * C;
        if (dy) {
          pixel_accum2<T, A>(x + off, dy + off, C, ax, axy);
        } else {
          pixel_accum<T, A>(x + off, C, ax);
        }
      }
    }
  });
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t c = 0; c < C; ++c) {
      double a = 0, b = 0;
      for (int64_t k = 0; k < K; ++k) {
        a += part[(n * K + k) * C + c];
        if (dy) b += part[(N * K + n * K + k) * C + c];
      }
      sx[n * C + c] = static_cast<A>(a);
      if (dy) sxy[n * C + c] = static_cast<A>(b);
    }
  }
}

// ---- phase 2: the per-sample MLP ---------------------------------------------------------------

// From the spatial sum sx[C] of one sample: the pooled mean p[C], pre-activation h[S], hidden a[S],
// pre-gate z[C] and gate g[C].
template <typename T, typename A>
void mlp_forward(const Problem& p, const T* w1, const T* b1, const T* w2, const T* b2,
                 const A* sx, A* pm, A* h, A* a, A* z, A* g) {
  const int64_t C = p.C, S = p.S;
  const A inv_hw = A(1) / static_cast<A>(p.HW);
  for (int64_t c = 0; c < C; ++c) pm[c] = sx[c] * inv_hw;
  for (int64_t s = 0; s < S; ++s) {
    const A acc = static_cast<A>(b1[s]) + dot<T, A>(w1 + s * C, pm, C);
    h[s] = acc;
    a[s] = act_forward(p.act, acc);
  }
  for (int64_t c = 0; c < C; ++c) {
    const A acc = static_cast<A>(b2[c]) + dot<T, A>(w2 + c * S, a, S);
    z[c] = acc;
    g[c] = act_forward(p.gate, acc);
  }
}

// Backward of the MLP of one sample: from dg[C] (= sum dy * x), dz[C], dh[S] and the x shift
// dp[C] / HW. Uses h, z from mlp_forward. `da` is S scratch values.
template <typename T, typename A>
void mlp_backward(const Problem& p, const T* w1, const T* w2, const A* h, const A* z, const A* dg,
                  A* dz, A* da, A* dh, A* shift) {
  const int64_t C = p.C, S = p.S;
  std::fill(da, da + S, A(0));
  for (int64_t c = 0; c < C; ++c) {
    dz[c] = se::act_grad(p.gate, z[c], dg[c]);
    const T* w = w2 + c * S;
    for (int64_t s = 0; s < S; ++s) da[s] += static_cast<A>(w[s]) * dz[c];
  }
  for (int64_t s = 0; s < S; ++s) dh[s] = se::act_grad(p.act, h[s], da[s]);
  const A inv_hw = A(1) / static_cast<A>(p.HW);
  std::fill(shift, shift + C, A(0));
  for (int64_t s = 0; s < S; ++s) {
    const T* w = w1 + s * C;
    for (int64_t c = 0; c < C; ++c) shift[c] += static_cast<A>(w[c]) * dh[s];
  }
  for (int64_t c = 0; c < C; ++c) shift[c] *= inv_hw;
}

// ---- phase 3: the elementwise pass -------------------------------------------------------------

template <typename T, typename A>
void sample_apply(const Problem& p, const T* in, T* out, int64_t n, const A* g, const A* shift) {
  const int64_t C = p.C, HW = p.HW;
  const T* is = in + n * C * HW;
  T* os = out + n * C * HW;
  if (!p.channels_last) {
    for (int64_t c = 0; c < C; ++c) {
      if (shift) {
        row_scale_shift<T, A>(is + c * HW, os + c * HW, HW, g[c], shift[c]);
      } else {
        row_scale<T, A>(is + c * HW, os + c * HW, HW, g[c]);
      }
    }
    return;
  }
  if constexpr (std::is_same_v<T, float> && std::is_same_v<A, float>) {
    if (!shift) return cl_scale_f32(is, os, HW, C, g);
  }
  for (int64_t s = 0; s < HW; ++s) {
    if (shift) {
      pixel_scale_shift<T, A>(is + s * C, os + s * C, C, g, shift);
    } else {
      pixel_scale<T, A>(is + s * C, os + s * C, C, g);
    }
  }
}

template <typename T, typename A>
void all_apply(const Problem& p, const T* in, T* out, const A* g, const A* shift) {
  const int64_t N = p.N, C = p.C, HW = p.HW;
  if (!p.channels_last) {
    const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(HW, 1));
    at::parallel_for(0, N * C, grain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        if (shift) {
          row_scale_shift<T, A>(in + r * HW, out + r * HW, HW, g[r], shift[r]);
        } else {
          row_scale<T, A>(in + r * HW, out + r * HW, HW, g[r]);
        }
      }
    });
    return;
  }
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(C, 1));
  at::parallel_for(0, N * HW, grain, [&](int64_t begin, int64_t end) {
    if constexpr (std::is_same_v<T, float> && std::is_same_v<A, float>) {
      if (!shift) {  // runs of pixels of one sample at a time
        for (int64_t r = begin; r < end;) {
          const int64_t n = r / HW, stop = std::min(end, (n + 1) * HW);
          cl_scale_f32(in + r * C, out + r * C, stop - r, C, g + n * C);
          r = stop;
        }
        return;
      }
    }
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / HW;
      const A* gn = g + n * C;
      if (shift) {
        pixel_scale_shift<T, A>(in + r * C, out + r * C, C, gn, shift + n * C);
      } else {
        pixel_scale<T, A>(in + r * C, out + r * C, C, gn);
      }
    }
  });
}

// Per-sample fusion pays off when a sample stays in cache between its two reads and every thread
// gets whole samples.
bool per_sample(const Problem& p, int64_t elem_bytes, int64_t arrays) {
  const int64_t sample_bytes = p.C * p.HW * elem_bytes * arrays;
  return p.N >= at::get_num_threads() && sample_bytes <= (int64_t{1} << 20);
}

// ---- the ops --------------------------------------------------------------------------------

at::Tensor squeeze_excite_cpu(const at::Tensor& x_in, const at::Tensor& w1_in, const at::Tensor& b1_in,
                              const at::Tensor& w2_in, const at::Tensor& b2_in, c10::string_view act,
                              c10::string_view gate) {
  const Problem p = se::prepare("squeeze_excite", x_in, w1_in, b1_in, w2_in, b2_in, std::string(act),
                                std::string(gate), c10::DeviceType::CPU);
  at::Tensor y = at::empty(p.x.sizes(), p.x.options().memory_format(p.fmt));
  if (y.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.x.scalar_type(), "squeeze_excite_cpu", [&] {
    using T = scalar_t;
    using A = at::opmath_type<T>;
    const T* x = p.x.const_data_ptr<T>();
    T* out = y.mutable_data_ptr<T>();
    const T* w1 = p.w1.const_data_ptr<T>();
    const T* b1 = p.b1.const_data_ptr<T>();
    const T* w2 = p.w2.const_data_ptr<T>();
    const T* b2 = p.b2.const_data_ptr<T>();
    const int64_t N = p.N, C = p.C, S = p.S;
    if (per_sample(p, sizeof(T), 1)) {
      at::parallel_for(0, N, grain_for(C * p.HW), [&](int64_t begin, int64_t end) {
        std::vector<A> buf(static_cast<size_t>(4 * C + 2 * S));
        A *sx = buf.data(), *pm = sx + C, *z = pm + C, *g = z + C, *h = g + C, *a = h + S;
        for (int64_t n = begin; n < end; ++n) {
          sample_sums<T, A>(p, x, nullptr, n, sx, nullptr);
          mlp_forward<T, A>(p, w1, b1, w2, b2, sx, pm, h, a, z, g);
          sample_apply<T, A>(p, x, out, n, g, nullptr);
        }
      });
      return;
    }
    std::vector<A> sx(static_cast<size_t>(N * C)), g(static_cast<size_t>(N * C));
    all_sums<T, A>(p, x, nullptr, sx.data(), nullptr);
    at::parallel_for(0, N, grain_for(2 * C * S), [&](int64_t begin, int64_t end) {
      std::vector<A> buf(static_cast<size_t>(2 * C + 2 * S));
      A *pm = buf.data(), *z = pm + C, *h = z + C, *a = h + S;
      for (int64_t n = begin; n < end; ++n) {
        mlp_forward<T, A>(p, w1, b1, w2, b2, sx.data() + n * C, pm, h, a, z, g.data() + n * C);
      }
    });
    all_apply<T, A>(p, x, out, g.data(), static_cast<const A*>(nullptr));
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> squeeze_excite_backward_cpu(
    const at::Tensor& grad_in, const at::Tensor& x_in, const at::Tensor& w1_in, const at::Tensor& b1_in,
    const at::Tensor& w2_in, const at::Tensor& b2_in, c10::string_view act, c10::string_view gate) {
  const char* op = "_squeeze_excite_backward";
  const Problem p = se::prepare(op, x_in, w1_in, b1_in, w2_in, b2_in, std::string(act),
                                std::string(gate), c10::DeviceType::CPU);
  const at::Tensor dy_t = se::prepare_grad(op, grad_in, p);
  at::Tensor dx = at::empty(p.x.sizes(), p.x.options().memory_format(p.fmt));
  const int64_t N = p.N, C = p.C, S = p.S;
  // Parameter gradients accumulate over samples in A, then are rounded to the parameter dtype.
  const auto acc_opts = p.x.options().dtype(p.x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
  at::Tensor dw1 = at::zeros({S, C}, acc_opts), db1 = at::zeros({S}, acc_opts);
  at::Tensor dw2 = at::zeros({C, S}, acc_opts), db2 = at::zeros({C}, acc_opts);
  auto finish = [&] {
    const auto dt = p.x.scalar_type();
    return std::make_tuple(dx, dw1.to(dt), db1.to(dt), dw2.to(dt), db2.to(dt));
  };
  if (dx.numel() == 0) return finish();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.x.scalar_type(), "squeeze_excite_backward_cpu", [&] {
    using T = scalar_t;
    using A = at::opmath_type<T>;
    const T* x = p.x.const_data_ptr<T>();
    const T* dy = dy_t.const_data_ptr<T>();
    T* out = dx.mutable_data_ptr<T>();
    const T* w1 = p.w1.const_data_ptr<T>();
    const T* b1 = p.b1.const_data_ptr<T>();
    const T* w2 = p.w2.const_data_ptr<T>();
    const T* b2 = p.b2.const_data_ptr<T>();
    // Per-sample vectors kept for the parameter gradients.
    std::vector<A> pm(static_cast<size_t>(N * C)), a(static_cast<size_t>(N * S)),
        dz(static_cast<size_t>(N * C)), dh(static_cast<size_t>(N * S));
    std::vector<A> g(static_cast<size_t>(N * C)), shift(static_cast<size_t>(N * C));
    auto mlp = [&](int64_t n, const A* sx, const A* dg, A* scratch) {
      A *h = scratch, *da = h + S, *z = da + S;
      mlp_forward<T, A>(p, w1, b1, w2, b2, sx, pm.data() + n * C, h, a.data() + n * S, z,
                        g.data() + n * C);
      mlp_backward<T, A>(p, w1, w2, h, z, dg, dz.data() + n * C, da, dh.data() + n * S,
                         shift.data() + n * C);
    };
    if (per_sample(p, sizeof(T), 2)) {
      at::parallel_for(0, N, grain_for(2 * C * p.HW), [&](int64_t begin, int64_t end) {
        std::vector<A> buf(static_cast<size_t>(3 * C + 2 * S));
        A *sx = buf.data(), *dg = sx + C, *scratch = dg + C;
        for (int64_t n = begin; n < end; ++n) {
          sample_sums<T, A>(p, x, dy, n, sx, dg);
          mlp(n, sx, dg, scratch);
          sample_apply<T, A>(p, dy, out, n, g.data() + n * C, shift.data() + n * C);
        }
      });
    } else {
      std::vector<A> sx(static_cast<size_t>(N * C)), dg(static_cast<size_t>(N * C));
      all_sums<T, A>(p, x, dy, sx.data(), dg.data());
      at::parallel_for(0, N, grain_for(4 * C * S), [&](int64_t begin, int64_t end) {
        std::vector<A> buf(static_cast<size_t>(C + 2 * S));
        for (int64_t n = begin; n < end; ++n) mlp(n, sx.data() + n * C, dg.data() + n * C, buf.data());
      });
      all_apply<T, A>(p, dy, out, g.data(), shift.data());
    }
    // Parameter gradients: sums over samples in sample order (deterministic).
    A* gw1 = dw1.mutable_data_ptr<A>();
    A* gb1 = db1.mutable_data_ptr<A>();
    A* gw2 = dw2.mutable_data_ptr<A>();
    A* gb2 = db2.mutable_data_ptr<A>();
    at::parallel_for(0, S + C, grain_for(N * std::max(C, S)), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        if (r < S) {  // dw1[r, :] += dh[n, r] * p[n, :]
          A* row = gw1 + r * C;
          for (int64_t n = 0; n < N; ++n) {
            const A d = dh[n * S + r];
            gb1[r] += d;
            const A* pn = pm.data() + n * C;
            for (int64_t c = 0; c < C; ++c) row[c] += d * pn[c];
          }
        } else {  // dw2[c, :] += dz[n, c] * a[n, :]
          const int64_t c = r - S;
          A* row = gw2 + c * S;
          for (int64_t n = 0; n < N; ++n) {
            const A d = dz[n * C + c];
            gb2[c] += d;
            const A* an = a.data() + n * S;
            for (int64_t s = 0; s < S; ++s) row[s] += d * an[s];
          }
        }
      }
    });
  });
  return finish();
}

}  // namespace

TORCH_LIBRARY_IMPL(torchcv_ext, CPU, m) {
  m.impl("squeeze_excite", &squeeze_excite_cpu);
  m.impl("_squeeze_excite_backward", &squeeze_excite_backward_cpu);
}

}  // namespace torchcv_ext
