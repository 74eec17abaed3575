// CPU kernels of the dwconv_bn_act family. Schemas: csrc/registration.cpp. Front end (checks,
// layouts, outputs): csrc/include/torchcv_ext/dwconv_bn_act_host.h. Per-element math:
// csrc/include/torchcv_ext/dwconv_bn_act.h. Autograd / fake / autocast: torchcv_ext/ops/dwconv_bn_act.py.
//
// eval / stats forward (the fast paths):
//   NCHW: one task per (n, c) plane; the plane is copied once into a zero-padded float buffer
//         (per task), stored phase-split by the stride so that every tap reads a unit-stride
//         segment; each output row accumulates its kh*kw segments in registers (32 outputs at a
//         time, AVX-512 / AVX2 / baseline clones picked at load time) and the whole plane then goes
//         through the epilogue (BN fold + activation with a vectorizable exp for SiLU/sigmoid, or
//         statistics: per-plane sum and squared deviations, merged Welford-style) while it is
//         still in L1/L2.
//         Narrow rows (Wo < 16) and strided convs: 16-channel blocks transposed into a padded tile
//         instead (nchw_blocked_f32; eval and statistics epilogues).
//   channels_last: one task per output row (n, oh); per output pixel the taps accumulate 64/32/16
//         channel register blocks, then the row's epilogue.
// One read of x and one write of y. float64 uses the same loops without the float clones.
// Train forward: the stats kernel above, then scale_shift_act (vectorized for float32).
// Backward: float32 in dwconv_bn_act_backward.cpp (vectorized, the train path DWConvBNAct takes by
// default); other dtypes here, straightforward loops over the shared per-element math
// (dwconv_bn_act.h) -- the CUDA kernels' math, run and tested on the CPU.
// Reductions (statistics, weight/BN gradients) are combined in a fixed order that does not depend
// on the number of threads: deterministic.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "dwconv_bn_act_cpu.h"
#include "torchcv_ext/cpu_clones.h"
#include "torchcv_ext/dwconv_bn_act_host.h"

namespace torchcv_ext {
namespace dwconv {

namespace {

// Tile <- pixels [0, P) of nc <= 16 NCHW planes (planes `pstride` apart, x at the first pixel),
// pixel p going to tile + dst(p) * 16 with dst(p) = (p / W) * Wt + p % W (the span covers whole
// rows of W pixels; rows are Wt tile pixels apart). Channels >= nc are zero. 16 pixels at a time
// through in-register transposes: one 16 x 16 (V = 16) or four 8 x 8 (V = 8).
template <int V>
__attribute__((always_inline)) inline void blk_fill_body(const float* x, int64_t pstride, int64_t nc,
                                                         int64_t P, int64_t W, int64_t Wt, float* tile) {
  TCV_VEC_TYPES(V);
  int64_t row = 0, col = 0;  // p = row * W + col
  int64_t p = 0;
  for (; p + 16 <= P; p += 16) {
    float* dst[16];  // the 16 pixels' places in the tile
    for (int i = 0; i < 16; ++i) {
      dst[i] = tile + (row * Wt + col) * 16;
      if (++col == W) col = 0, ++row;
    }
    for (int pb = 0; pb < 16; pb += V) {    // pixels p + pb ...
      for (int cb = 0; cb < 16; cb += V) {  // ... of channels cb ...
        vec r[V];
        for (int c = 0; c < V; ++c) r[c] = cb + c < nc ? ldv(x + (cb + c) * pstride + p + pb) : vec{};
        transpose_vv<V>(r);
        for (int i = 0; i < V; ++i) stv(dst[pb + i] + cb, r[i]);
      }
    }
  }
  for (; p < P; ++p) {
    float* t = tile + (row * Wt + col) * 16;
    for (int64_t c = 0; c < 16; ++c) t[c] = c < nc ? x[c * pstride + p] : 0.0f;
    if (++col == W) col = 0, ++row;
  }
}

// nc <= 16 NCHW planes (planes `pstride` apart, y at the first pixel), pixels [0, P) <- acc[p * 16 + c].
template <int V>
__attribute__((always_inline)) inline void blk_store_body(const float* acc, int64_t nc, int64_t P, float* y,
                                                          int64_t pstride) {
  TCV_VEC_TYPES(V);
  int64_t p = 0;
  for (; p + 16 <= P; p += 16) {
    for (int pb = 0; pb < 16; pb += V) {
      for (int cb = 0; cb < nc; cb += V) {
        vec r[V];
        for (int i = 0; i < V; ++i) r[i] = ldv(acc + (p + pb + i) * 16 + cb);
        transpose_vv<V>(r);
        for (int64_t c = 0; c < std::min<int64_t>(V, nc - cb); ++c) stv(y + (cb + c) * pstride + p + pb, r[c]);
      }
    }
  }
  for (; p < P; ++p) {
    for (int64_t c = 0; c < nc; ++c) y[c * pstride + p] = acc[p * 16 + c];
  }
}

// Versions per CPU (TCV_CPU_VERSIONS): the 16-float transposes in the AVX2 clone went through the
// stack (cpu_clones.h).
TCV_CPU_VERSIONS(blk_fill_v, blk_fill_body,
                 (const float* x, int64_t pstride, int64_t nc, int64_t P, int64_t W, int64_t Wt, float* tile),
                 (x, pstride, nc, P, W, Wt, tile))
TCV_CPU_VERSIONS(blk_store_v, blk_store_body, (const float* acc, int64_t nc, int64_t P, float* y, int64_t pstride),
                 (acc, nc, P, y, pstride))

}  // namespace

namespace cpu {  // (declared in dwconv_bn_act_cpu.h: the float32 backward uses them too)

// Plain functions around the versions above: a call from another file, which does not see the
// versions, would otherwise bind to the baseline one.
void blk_fill_nchw_f32(const float* x, int64_t pstride, int64_t nc, int64_t P, int64_t W, int64_t Wt,
                       float* tile) {
  blk_fill_v(x, pstride, nc, P, W, Wt, tile);
}
void blk_store_nchw_f32(const float* acc, int64_t nc, int64_t P, float* y, int64_t pstride) {
  blk_store_v(acc, nc, P, y, pstride);
}

}  // namespace cpu

namespace {

using namespace cpu;  // dwconv_bn_act_cpu.h

// ---- float hot loops, compiled for AVX-512 / AVX2+FMA / baseline (cpu_clones.h) -----------------

// One NCHW output row: out[ow] = sum_t w[t] * in[off[t] + ow] for ow in [0, roundup(Wo, 32)).
// `in` is the row's base in the phase-split padded plane (see NchwScratch): every tap reads a
// unit-stride segment whatever the conv stride. Whole blocks are computed (the buffer has the
// slack); the caller keeps the first Wo values. The body, for V-float vectors (8 or 16), is
// compiled into each of nchw_row_f32's versions below.
template <int V>
__attribute__((always_inline)) inline void nchw_row_f32_body(const float* in, const int64_t* off,
                                                             const float* w, int taps, int64_t Wo,
                                                             float* out) {
  TCV_VEC_TYPES(V);  // vec, vecu (cpu_clones.h)
  constexpr int K = 16 / V;  // vectors per 16 outputs
  // Taps alternate between accumulator sets: independent FMA chains hide the FMA latency.
  if (Wo <= 16) {  // narrow rows (late MobileNet stages): 16 outputs, four sets
    vec a[4][K] = {};
    int t = 0;
    for (; t + 4 <= taps; t += 4) {
      for (int u = 0; u < 4; ++u) {
        for (int k = 0; k < K; ++k) a[u][k] += w[t + u] * ldv(in + off[t + u] + V * k);
      }
    }
    for (; t < taps; ++t) {
      for (int k = 0; k < K; ++k) a[0][k] += w[t] * ldv(in + off[t] + V * k);
    }
    for (int k = 0; k < K; ++k) stv(out + V * k, (a[0][k] + a[1][k]) + (a[2][k] + a[3][k]));
    return;
  }
  constexpr int B = kRowBlock / V;  // vectors per row block
  for (int64_t ow = 0; ow < Wo; ow += kRowBlock) {
    vec a[B] = {}, b[B] = {};
    int t = 0;
    for (; t + 2 <= taps; t += 2) {
      const float* p = in + off[t] + ow;
      const float* q = in + off[t + 1] + ow;
      for (int k = 0; k < B; ++k) a[k] += w[t] * ldv(p + V * k);
      for (int k = 0; k < B; ++k) b[k] += w[t + 1] * ldv(q + V * k);
    }
    if (t < taps) {
      const float* p = in + off[t] + ow;
      for (int k = 0; k < B; ++k) a[k] += w[t] * ldv(p + V * k);
    }
    for (int k = 0; k < B; ++k) stv(out + ow + V * k, a[k] + b[k]);
  }
}

// One NCHW output row (above). Versions per CPU (TCV_CPU_VERSIONS): 16-float vectors with
// AVX-512, 8-float vectors with AVX2 + FMA and elsewhere, because GCC compiles the 16-float type's
// arithmetic in an AVX2 function through the stack (cpu_clones.h): 8-14x slower, 0.1-0.65x
// eager's depthwise conv on an AVX2 AMD EPYC (benchmarks/results/2026-12-07-cpu-avx2-vector-width.md).
TCV_CPU_VERSIONS(nchw_row_f32, nchw_row_f32_body,
                 (const float* in, const int64_t* off, const float* w, int taps, int64_t Wo, float* out),
                 (in, off, w, taps, Wo, out))

// Accumulate NV vectors (V * NV channels from c0) of one output pixel over the valid taps.
#define TCV_CL_BLOCK(NV)                                                                   \
  for (; c0 + V * (NV) <= C; c0 += V * (NV)) {                                             \
    vec a[(NV)] = {}, b[(NV)] = {}; /* even / odd taps: independent FMA chains */            \
    for (int i = 0; i < kh; ++i) {                                                         \
      const int64_t ih = h0 + static_cast<int64_t>(i) * dh;                                \
      if (ih < 0 || ih >= H) continue;                                                     \
      for (int j = 0; j < kw; ++j) {                                                       \
        const int64_t iw = w0 + static_cast<int64_t>(j) * dw;                              \
        if (iw < 0 || iw >= W) continue;                                                   \
        const float* xs = xn + (ih * W + iw) * C + c0;                                     \
        const float* ws = wt + static_cast<int64_t>(i * kw + j) * C + c0;                  \
        if (j & 1) {                                                                       \
          for (int v = 0; v < (NV); ++v) b[v] += ldv(ws + V * v) * ldv(xs + V * v);          \
        } else {                                                                           \
          for (int v = 0; v < (NV); ++v) a[v] += ldv(ws + V * v) * ldv(xs + V * v);          \
        }                                                                                  \
      }                                                                                    \
    }                                                                                      \
    for (int v = 0; v < (NV); ++v) stv(out + ow * C + c0 + V * v, a[v] + b[v]);             \
  }

// Channels [c0, C) (fewer than one vector: < 8 with AVX2, < 16 with AVX-512) of one channels_last
// output pixel (top-left input (h0, w0)).
__attribute__((always_inline)) inline void cl_pixel_tail_f32(const float* xn, const float* wt, int64_t H,
                                                             int64_t W, int64_t C, int kh, int kw, int dh,
                                                             int dw, int64_t h0, int64_t w0, int64_t c0,
                                                             float* out_pixel) {
  float acc[16] = {};
  const int64_t cb = C - c0;
  for (int i = 0; i < kh; ++i) {
    const int64_t ih = h0 + static_cast<int64_t>(i) * dh;
    if (ih < 0 || ih >= H) continue;
    for (int j = 0; j < kw; ++j) {
      const int64_t iw = w0 + static_cast<int64_t>(j) * dw;
      if (iw < 0 || iw >= W) continue;
      const float* xs = xn + (ih * W + iw) * C + c0;
      const float* ws = wt + static_cast<int64_t>(i * kw + j) * C + c0;
      for (int64_t c = 0; c < cb; ++c) acc[c] += ws[c] * xs[c];
    }
  }
  for (int64_t c = 0; c < cb; ++c) out_pixel[c0 + c] = acc[c];
}

// Interior outputs, kOwBlock pixels at a time: every tap of the block is inside the row, so each
// weight register is loaded once per tap and reused for kOwBlock pixels (the per-pixel loop
// below loads one weight per FMA). V * NV channels from c0 per pass.
constexpr int64_t kOwBlock = 4;
#define TCV_CL_OWBLOCK(NV)                                                                      \
  for (; c0 + V * (NV) <= C; c0 += V * (NV)) {                                                  \
    vec a[kOwBlock][(NV)] = {};                                                                 \
    for (int i = 0; i < kh; ++i) {                                                              \
      const int64_t ih = h0 + static_cast<int64_t>(i) * dh;                                     \
      if (ih < 0 || ih >= H) continue;                                                          \
      const float* xr = xn + ih * W * C + c0;                                                   \
      for (int j = 0; j < kw; ++j) {                                                            \
        const float* ws = wt + static_cast<int64_t>(i * kw + j) * C + c0;                       \
        vec wv[(NV)];                                                                           \
        for (int v = 0; v < (NV); ++v) wv[v] = ldv(ws + V * v);                                  \
        const float* xs = xr + (ow * sw - pw + static_cast<int64_t>(j) * dw) * C;               \
        for (int q = 0; q < kOwBlock; ++q) {                                                    \
          for (int v = 0; v < (NV); ++v) a[q][v] += wv[v] * ldv(xs + q * sw * C + V * v);       \
        }                                                                                       \
      }                                                                                         \
    }                                                                                           \
    for (int q = 0; q < kOwBlock; ++q) {                                                        \
      for (int v = 0; v < (NV); ++v) stv(out + (ow + q) * C + c0 + V * v, a[q][v]);              \
    }                                                                                           \
  }

// One channels_last output row (n, oh): out[ow * C + c]. xn = x[n] (H, W, C), wt = (kh*kw, C).
// The body for V-float vectors (8 or 16), compiled into each of cl_row_f32's versions below (as
// nchw_row_f32). Channel blocks are counted in vectors, so with 8-float vectors the blocks are
// half as wide (at most 8 accumulators) and the per-pixel scalar tail is under 8 channels
// (MobileNetV3's 72, 120, 184 and 200 channels end in 8).
template <int V>
__attribute__((always_inline)) inline void cl_row_f32_body(const float* xn, const float* wt, int64_t H,
                                                           int64_t W, int64_t C, int kh, int kw, int sh,
                                                           int sw, int ph, int pw, int dh, int dw,
                                                           int64_t oh, int64_t Wo, float* out) {
  TCV_VEC_TYPES(V);
  const int64_t h0 = oh * sh - ph;
  // Outputs [ow_lo, ow_hi) read only columns inside [0, W) for every tap.
  const int64_t ow_lo = (pw + sw - 1) / sw;
  const int64_t last = W - 1 + pw - static_cast<int64_t>(kw - 1) * dw;  // max ow * sw
  const int64_t ow_hi = last < 0 ? 0 : std::min<int64_t>(Wo, last / sw + 1);
  for (int64_t ow = 0; ow < Wo; ++ow) {
    const int64_t w0 = ow * sw - pw;
    int64_t c0 = 0;
    if (ow >= ow_lo && ow + kOwBlock <= ow_hi) {
      TCV_CL_OWBLOCK(2)
      TCV_CL_OWBLOCK(1)
      if (c0 == C) {  // all channels of the kOwBlock pixels done
        ow += kOwBlock - 1;
        continue;
      }
      // < V channels left: finish them pixel by pixel.
      for (int64_t q = 0; q < kOwBlock; ++q) {
        cl_pixel_tail_f32(xn, wt, H, W, C, kh, kw, dh, dw, h0, (ow + q) * sw - pw, c0, out + (ow + q) * C);
      }
      ow += kOwBlock - 1;
      continue;
    }
    TCV_CL_BLOCK(4)
    TCV_CL_BLOCK(2)
    TCV_CL_BLOCK(1)
    if (c0 < C) cl_pixel_tail_f32(xn, wt, H, W, C, kh, kw, dh, dw, h0, w0, c0, out + ow * C);
  }
}
#undef TCV_CL_BLOCK
#undef TCV_CL_OWBLOCK

TCV_CPU_VERSIONS(cl_row_f32, cl_row_f32_body,
                 (const float* xn, const float* wt, int64_t H, int64_t W, int64_t C, int kh, int kw, int sh,
                  int sw, int ph, int pw, int dh, int dw, int64_t oh, int64_t Wo, float* out),
                 (xn, wt, H, W, C, kh, kw, sh, sw, ph, pw, dh, dw, oh, Wo, out))

// NCHW row: one channel, scalar scale/shift.
TCV_CPU_CLONES void epi_row_f32(Act act, const float* in, float* out, int64_t n, float s, float b) {
  TCV_ACT_CASES(_Pragma("omp simd") for (int64_t i = 0; i < n; ++i) out[i] = act_f32<kA>(in[i] * s + b))
}

// channels_last: npix pixels of C channels.
TCV_CPU_CLONES void epi_pix_f32(Act act, const float* in, float* out, int64_t npix, int64_t C,
                                const float* sc, const float* sh) {
  TCV_ACT_CASES(for (int64_t q = 0; q < npix; ++q) {
    const float* a = in + q * C;
    float* o = out + q * C;
    _Pragma("omp simd") for (int64_t c = 0; c < C; ++c) o[c] = act_f32<kA>(a[c] * sc[c] + sh[c]);
  })
}

// The train forward's epilogues: y = act((z - mean) * scale + shift), centred first (dwconv_bn_act.h).
TCV_CPU_CLONES void ssa_row_f32(Act act, const float* in, float* out, int64_t n, float m, float s, float b) {
  TCV_ACT_CASES(_Pragma("omp simd") for (int64_t i = 0; i < n; ++i) out[i] = act_f32<kA>((in[i] - m) * s + b))
}

TCV_CPU_CLONES void ssa_pix_f32(Act act, const float* in, float* out, int64_t npix, int64_t C,
                                const float* mu, const float* sc, const float* sh) {
  TCV_ACT_CASES(for (int64_t q = 0; q < npix; ++q) {
    const float* a = in + q * C;
    float* o = out + q * C;
    _Pragma("omp simd") for (int64_t c = 0; c < C; ++c) o[c] = act_f32<kA>((a[c] - mu[c]) * sc[c] + sh[c]);
  })
}

// Statistics of a block held in L1/L2 (a plane, or one channel of a row): count, mean and M2 by
// two vectorized passes (the per-element Welford update has a divide in a serial chain), merged
// across blocks with welford_merge. A block longer than kStatsChunk is split into chunks merged
// the same way, so a float sum never runs over more than kStatsChunk values (a constant 3.0 plane
// of 2^28 pixels has mean 3.0 exactly, not 1.0 off).
constexpr int64_t kStatsChunk = 4096;

template <typename acc_t>
Welford<acc_t> block_stats(const acc_t* a, int64_t n) {
  if (n > kStatsChunk) {
    Welford<acc_t> s = welford_init<acc_t>();
    for (int64_t i = 0; i < n; i += kStatsChunk) {
      s = welford_merge(s, block_stats(a + i, std::min(kStatsChunk, n - i)));
    }
    return s;
  }
  acc_t sum = acc_t(0);
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += a[i];
  const acc_t m = sum / static_cast<acc_t>(n);
  acc_t m2 = acc_t(0);
#pragma omp simd reduction(+ : m2)
  for (int64_t i = 0; i < n; ++i) m2 += (a[i] - m) * (a[i] - m);
  return Welford<acc_t>{static_cast<acc_t>(n), m, m2};
}

// The same per channel of a channels_last row of npix <= kStatsChunk pixels: part[c] for c < C
// (mean, m2: C elements of scratch each).
template <typename acc_t>
__attribute__((always_inline)) inline void row_stats_chunk(const acc_t* row, int64_t npix, int64_t C, acc_t* mean,
                                                           acc_t* m2, Welford<acc_t>* part) {
  std::fill(mean, mean + C, acc_t(0));
  std::fill(m2, m2 + C, acc_t(0));
  for (int64_t q = 0; q < npix; ++q) {
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) mean[c] += row[q * C + c];
  }
  const acc_t inv = acc_t(1) / static_cast<acc_t>(npix);
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) mean[c] *= inv;
  for (int64_t q = 0; q < npix; ++q) {
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) m2[c] += (row[q * C + c] - mean[c]) * (row[q * C + c] - mean[c]);
  }
  for (int64_t c = 0; c < C; ++c) part[c] = Welford<acc_t>{static_cast<acc_t>(npix), mean[c], m2[c]};
}

// Any npix, chunked like block_stats. Inlined into row_stats_f32's clones below.
template <typename acc_t>
__attribute__((always_inline)) inline void row_stats(const acc_t* row, int64_t npix, int64_t C, acc_t* mean,
                                                     acc_t* m2, Welford<acc_t>* part) {
  if (npix <= kStatsChunk) return row_stats_chunk(row, npix, C, mean, m2, part);
  std::vector<Welford<acc_t>> piece(static_cast<size_t>(C));
  std::fill(part, part + C, welford_init<acc_t>());
  for (int64_t q = 0; q < npix; q += kStatsChunk) {
    row_stats_chunk(row + q * C, std::min(kStatsChunk, npix - q), C, mean, m2, piece.data());
    for (int64_t c = 0; c < C; ++c) part[c] = welford_merge(part[c], piece[c]);
  }
}

// row_stats for float32, compiled per CPU (as a plain function it ran at SSE2 width: half the time
// of the channels_last train forward's conv on AVX2).
TCV_CPU_CLONES void row_stats_f32(const float* row, int64_t npix, int64_t C, float* mean, float* m2,
                                  Welford<float>* part) {
  row_stats(row, npix, C, mean, m2, part);
}

// ---- float32 eval, NCHW, blocked: 16 channels at a time in a zero-padded tile -------------------
// For narrow rows (Wo < 16: late MobileNet / EfficientNet stages) the per-plane row kernel below
// wastes most of its 16-wide registers, and for strided convs its phase-split copies cost more
// than they save, so this kernel vectorizes over channels instead, without converting the tensors
// to channels_last (two extra passes over memory). One task = (image n, block of 16
// channels, band of output rows): the band's input rows of the 16 planes are transposed (in L1)
// into a zero-padded, pixel-major tile, tile[(r * Wt + q) * 16 + c] (r, q: padded row and column,
// c: channel in the block). Every tap of every output then reads in bounds -- no bounds checks --
// and each weight register serves kBlkOw output pixels. The band's outputs go through the BN +
// activation epilogue in L1/L2 and are transposed back into the 16 output planes. Both transposes
// work on 16 consecutive pixels of a band (contiguous in every plane) in registers
// (blk_fill_nchw_f32 / blk_store_nchw_f32). One read of x, one write of y.
constexpr int64_t kBlkOw = 8;                 // output pixels per register block
constexpr int64_t kBlkTileBytes = 96 * 1024;  // target tile size (L2-resident)

// blk_conv_row for stride 1, dilation 1 along W (any along H) and a kernel width KW known at
// compile time: a sliding window. Output q of tap j reads tile column q + j, so each of the
// kBlkOw + KW - 1 columns of a row is loaded once and feeds up to KW accumulators (KW weight
// registers held), instead of one load per FMA -- the loop becomes FMA-bound. V-float vectors:
// the 16 channels in 16 / V passes (V = 8: 8 accumulators, KW weights and a column in the 16
// AVX2 registers).
template <int V, int KW>
__attribute__((always_inline)) inline void blk_conv_row_s1(const float* tile, int64_t row16, const float* w16,
                                                           int kh, int dh, int64_t Wo, float* acc) {
  TCV_VEC_TYPES(V);
  static_assert(kBlkOw == 8, "the unroll pragmas below are written for 8 outputs");
  for (int64_t ow = 0; ow < Wo; ow += kBlkOw) {
    for (int cb = 0; cb < 16; cb += V) {
      vec a[kBlkOw] = {};
      for (int i = 0; i < kh; ++i) {
        const float* tr = tile + static_cast<int64_t>(i) * dh * row16 + ow * 16 + cb;
        vec wv[KW];
#pragma GCC unroll 8
        for (int j = 0; j < KW; ++j) wv[j] = ldv(w16 + (i * KW + j) * 16 + cb);
#pragma GCC unroll 16
        for (int col = 0; col < kBlkOw + KW - 1; ++col) {
          const vec xv = ldv(tr + col * 16);
#pragma GCC unroll 8
          for (int j = 0; j < KW; ++j) {
            const int q = col - j;
            if (q >= 0 && q < kBlkOw) a[q] += wv[j] * xv;
          }
        }
      }
#pragma GCC unroll 8
      for (int q = 0; q < kBlkOw; ++q) stv(acc + (ow + q) * 16 + cb, a[q]);
    }
  }
}

// acc[q * 16 + c] = sum_{i,j} w16[(i * kw + j) * 16 + c] * tile[(i*dh) row, (q*sw + j*dw) col][c]
// for q in [0, roundup(Wo, kBlkOw)); `tile` points at the output row's first tile row.
template <int V>
__attribute__((always_inline)) inline void blk_conv_row_body(const float* tile, int64_t row16, const float* w16,
                                                             int kh, int kw, int sw, int dh, int dw, int64_t Wo,
                                                             float* acc) {
  TCV_VEC_TYPES(V);
  if (sw == 1 && dw == 1) {
    switch (kw) {
      case 3: return blk_conv_row_s1<V, 3>(tile, row16, w16, kh, dh, Wo, acc);
      case 5: return blk_conv_row_s1<V, 5>(tile, row16, w16, kh, dh, Wo, acc);
      case 7: return blk_conv_row_s1<V, 7>(tile, row16, w16, kh, dh, Wo, acc);
      default: break;
    }
  }
  const int64_t step = 16 * static_cast<int64_t>(sw);
  for (int64_t ow = 0; ow < Wo; ow += kBlkOw) {
    for (int cb = 0; cb < 16; cb += V) {
      vec a[kBlkOw] = {};
      for (int i = 0; i < kh; ++i) {
        const float* tr = tile + static_cast<int64_t>(i) * dh * row16 + ow * step + cb;
        const float* wr = w16 + static_cast<int64_t>(i) * kw * 16 + cb;
        for (int j = 0; j < kw; ++j) {
          const vec wv = ldv(wr + 16 * j);
          const float* p = tr + static_cast<int64_t>(j) * dw * 16;
#pragma GCC unroll 8
          for (int q = 0; q < kBlkOw; ++q) a[q] += wv * ldv(p + q * step);
        }
      }
#pragma GCC unroll 8
      for (int q = 0; q < kBlkOw; ++q) stv(acc + (ow + q) * 16 + cb, a[q]);
    }
  }
}

// Versions per CPU (TCV_CPU_VERSIONS): in the AVX2 clone the 16-float accumulators went through
// the stack (cpu_clones.h).
TCV_CPU_VERSIONS(blk_conv_row_f32, blk_conv_row_body,
                 (const float* tile, int64_t row16, const float* w16, int kh, int kw, int sw, int dh, int dw,
                  int64_t Wo, float* acc),
                 (tile, row16, w16, kh, kw, sw, dh, dw, Wo, acc))

// Output rows per task of nchw_blocked_f32 (the tile of the band's input rows is about
// kBlkTileBytes) and the tile's width in pixels: Wt columns cover every tap of roundup(Wo, kBlkOw)
// outputs.
struct BlockedGeom {
  int64_t Wo8, Wt, row16, kspan, band, nbands, tile_rows;
  explicit BlockedGeom(const Geom& g) {
    Wo8 = (g.Wo + kBlkOw - 1) / kBlkOw * kBlkOw;
    Wt = (Wo8 - 1) * g.sw + static_cast<int64_t>(g.kw - 1) * g.dw + 1;
    row16 = Wt * 16;
    kspan = static_cast<int64_t>(g.kh - 1) * g.dh + 1;
    const int64_t max_rows = std::max<int64_t>(kspan, kBlkTileBytes / (row16 * 4));
    band = std::clamp<int64_t>((max_rows - kspan) / g.sh + 1, 1, g.Ho);
    nbands = (g.Ho + band - 1) / band;
    tile_rows = (band - 1) * g.sh + kspan;
  }
};

// conv(x), float32, x NCHW, by tasks (image n, block of 16 channels from c0, band bd of output
// rows [oh0, oh1)): epi(n, c0, nc, bd, oh0, oh1, acc) gets the band's outputs pixel-major,
// acc[p * 16 + c] for p in [0, (oh1 - oh0) * Wo) (rows of Wo packed), channels >= nc zero, and
// may overwrite them.
template <typename Epi>
void nchw_blocked_f32(const at::Tensor& x, const at::Tensor& w, const Geom& g, Epi&& epi) {
  const int64_t C = g.C, nb = (C + 15) / 16, kk = static_cast<int64_t>(g.kh) * g.kw;
  const std::vector<float> w16 = weights_by_block16(w.const_data_ptr<float>(), C, kk);
  const BlockedGeom bg(g);
  const int64_t Wo8 = bg.Wo8, Wt = bg.Wt, row16 = bg.row16, kspan = bg.kspan, band = bg.band;
  const int64_t nbands = bg.nbands, tile_rows = bg.tile_rows;
  const float* xd = x.const_data_ptr<float>();
  at::parallel_for(0, g.N * nb * nbands, 1, [&](int64_t begin, int64_t end) {
    // acc: the band's output pixels, rows of Wo packed (+ the last row's block overhang).
    std::vector<float> tile(static_cast<size_t>(tile_rows * row16)),
        acc(static_cast<size_t>((band * g.Wo + Wo8) * 16));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / (nb * nbands), cb = (task / nbands) % nb, bd = task % nbands;
      const int64_t c0 = cb * 16, nc = std::min<int64_t>(16, C - c0);
      const int64_t oh0 = bd * band, oh1 = std::min(g.Ho, oh0 + band);
      const int64_t ih0 = oh0 * g.sh - g.ph;  // input row of tile row 0
      const int64_t rows = (oh1 - oh0 - 1) * g.sh + kspan;
      // Tile rows [r0, r1) hold input rows [0, H); the rest, and the columns around the input's
      // [pw, pw + W) (clipped to the tile), are zero padding.
      const int64_t r0 = std::clamp<int64_t>(-ih0, 0, rows), r1 = std::clamp<int64_t>(g.H - ih0, r0, rows);
      const int64_t lpad = std::min<int64_t>(g.pw, Wt);
      const int64_t iw_end = std::max<int64_t>(0, std::min<int64_t>(g.W, Wt - lpad));
      std::fill(tile.data(), tile.data() + r0 * row16, 0.0f);
      std::fill(tile.data() + r1 * row16, tile.data() + rows * row16, 0.0f);
      for (int64_t r = r0; r < r1; ++r) {
        float* row = tile.data() + r * row16;
        std::fill(row, row + lpad * 16, 0.0f);
        std::fill(row + (lpad + iw_end) * 16, row + row16, 0.0f);
      }
      const float* xp = xd + (n * C + c0) * g.H * g.W;
      if (iw_end == g.W) {  // whole input rows: one contiguous span per plane
        blk_fill_nchw_f32(xp + (ih0 + r0) * g.W, g.H * g.W, nc, (r1 - r0) * g.W, g.W, Wt,
                          tile.data() + (r0 * Wt + lpad) * 16);
      } else {
        for (int64_t r = r0; r < r1; ++r) {
          blk_fill_nchw_f32(xp + (ih0 + r) * g.W, g.H * g.W, nc, iw_end, iw_end, Wt,
                            tile.data() + (r * Wt + lpad) * 16);
        }
      }
      const float* wb = w16.data() + cb * kk * 16;
      for (int64_t oh = oh0; oh < oh1; ++oh) {  // row oh's block overhang is overwritten by row oh + 1
        blk_conv_row_f32(tile.data() + (oh - oh0) * g.sh * row16, row16, wb, g.kh, g.kw, g.sw, g.dh,
                         g.dw, g.Wo, acc.data() + (oh - oh0) * g.Wo * 16);
      }
      epi(n, c0, nc, bd, oh0, oh1, acc.data());
    }
  });
}

// Whether the NCHW eval / stats forward of x runs nchw_blocked_f32 rather than the per-plane row
// kernel: float32 with narrow rows or a strided conv (measured on MobileNetV3 / EfficientNet-B0
// layers; the per-plane kernel wins on wide stride-1 planes).
bool nchw_blocked_wins(const at::Tensor& x, const Geom& g) {
  return x.scalar_type() == at::kFloat && x.is_contiguous() && (g.Wo < 16 || g.sw > 1) && g.C >= 16;
}

// y = act(conv(x) * scale + shift), float32, x and y NCHW.
void eval_nchw_blocked_f32(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale,
                           const at::Tensor& shift, const Geom& g, Act act, at::Tensor& y) {
  // scale / shift zero-padded to whole 16-channel blocks.
  const int64_t C = g.C, HWo = g.Ho * g.Wo;
  std::vector<float> s16(static_cast<size_t>((C + 15) / 16 * 16), 0.0f), b16(s16.size(), 0.0f);
  std::copy_n(scale.const_data_ptr<float>(), C, s16.data());
  std::copy_n(shift.const_data_ptr<float>(), C, b16.data());
  float* yd = y.mutable_data_ptr<float>();
  nchw_blocked_f32(x, w, g, [&](int64_t n, int64_t c0, int64_t nc, int64_t, int64_t oh0, int64_t oh1, float* acc) {
    const int64_t P = (oh1 - oh0) * g.Wo;
    epi_pix_f32(act, acc, acc, P, 16, s16.data() + c0, b16.data() + c0);
    blk_store_nchw_f32(acc, nc, P, yd + (n * C + c0) * HWo + oh0 * g.Wo, HWo);
  });
}

// Computes plane (n, c) of z (input plane xp, NCHW rows of W) into s.plane (Ho x Wo, acc_t)
// and hands it to epi(plane).
template <typename T, typename acc_t, typename Epi>
void conv_plane_nchw(const T* xp, const acc_t* w, const Geom& g, NchwScratch<acc_t>& s, Epi&& epi) {
  s.fill(xp, g);
  const int taps = g.kh * g.kw;
  for (int64_t oh = 0; oh < g.Ho; ++oh) {
    const acc_t* in = s.buf.data() + oh * s.row_step;
    acc_t* out = s.plane.data() + oh * g.Wo;
    if constexpr (std::is_same_v<acc_t, float>) {
      nchw_row_f32(in, s.off.data(), w, taps, g.Wo, out);
    } else {
      std::fill(out, out + g.Wo, acc_t(0));
      for (int t = 0; t < taps; ++t) {
        const acc_t wv = w[t];
        const acc_t* p = in + s.off[t];
        for (int64_t ow = 0; ow < g.Wo; ++ow) out[ow] += wv * p[ow];
      }
    }
  }
  epi(static_cast<const acc_t*>(s.plane.data()));
}

// ---- conv forward, channels_last --------------------------------------------------------------
// Output row (n, oh): row[ow * C + c]. wt is the weight transposed to (kh*kw, C).
template <typename T, typename acc_t>
void conv_row_cl(const T* x, const acc_t* wt, const Geom& g, int64_t n, int64_t oh, acc_t* row) {
  const int64_t C = g.C;
  if constexpr (std::is_same_v<T, float>) {
    cl_row_f32(x + n * g.H * g.W * C, wt, g.H, g.W, C, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.dh,
               g.dw, oh, g.Wo, row);
    return;
  }
  std::fill(row, row + g.Wo * C, acc_t(0));
  for (int i = 0; i < g.kh; ++i) {
    const int64_t ih = oh * g.sh - g.ph + static_cast<int64_t>(i) * g.dh;
    if (ih < 0 || ih >= g.H) continue;
    const T* xr = x + (n * g.H + ih) * g.W * C;
    for (int j = 0; j < g.kw; ++j) {
      const acc_t* wj = wt + (i * g.kw + j) * C;
      for (int64_t ow = 0; ow < g.Wo; ++ow) {
        const int64_t iw = ow * g.sw - g.pw + static_cast<int64_t>(j) * g.dw;
        if (iw < 0 || iw >= g.W) continue;
        const T* xs = xr + iw * C;
        acc_t* r = row + ow * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) r[c] += wj[c] * static_cast<acc_t>(xs[c]);
      }
    }
  }
}

template <typename T>
void eval_impl(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale,
               const at::Tensor& shift, const Geom& g, Act act, at::Tensor& y) {
  using acc_t = acc_of<T>;
  const T* xd = x.const_data_ptr<T>();
  T* yd = y.mutable_data_ptr<T>();
  const acc_t* sc = scale.const_data_ptr<acc_t>();
  const acc_t* sh = shift.const_data_ptr<acc_t>();
  if (!(x.is_contiguous() && y.is_contiguous())) {  // channels_last (both are, see host.h)
    const at::Tensor wt_t = w.t().contiguous();
    const acc_t* wt = wt_t.const_data_ptr<acc_t>();
    const int64_t C = g.C;
    at::parallel_for(0, g.N * g.Ho, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> row(static_cast<size_t>(g.Wo * C)), tmp;
      for (int64_t r = begin; r < end; ++r) {
        conv_row_cl(xd, wt, g, r / g.Ho, r % g.Ho, row.data());
        T* yr = yd + r * g.Wo * C;
        if constexpr (std::is_same_v<T, float>) {
          epi_pix_f32(act, row.data(), yr, g.Wo, C, sc, sh);
        } else if constexpr (std::is_same_v<acc_t, float>) {
          tmp.resize(row.size());
          epi_pix_f32(act, row.data(), tmp.data(), g.Wo, C, sc, sh);
          for (size_t i = 0; i < tmp.size(); ++i) yr[i] = static_cast<T>(tmp[i]);
        } else {
          for (int64_t q = 0; q < g.Wo; ++q) {
            for (int64_t c = 0; c < C; ++c) {
              yr[q * C + c] = static_cast<T>(bn_act<acc_t>(act, row[q * C + c], sc[c], sh[c]));
            }
          }
        }
      }
    });
    return;
  }
  const acc_t* wd = w.const_data_ptr<acc_t>();
  const int64_t kk = static_cast<int64_t>(g.kh) * g.kw;
  at::parallel_for(0, g.N * g.C, 1, [&](int64_t begin, int64_t end) {
    NchwScratch<acc_t> scratch(g);
    const int64_t HWo = g.Ho * g.Wo;
    std::vector<acc_t> tmp(static_cast<size_t>(HWo));
    for (int64_t p = begin; p < end; ++p) {
      const int64_t c = p % g.C;
      const acc_t s = sc[c], b = sh[c];
      T* o = yd + p * HWo;
      conv_plane_nchw(xd + p * g.H * g.W, wd + c * kk, g, scratch, [&](const acc_t* a) {
        if constexpr (std::is_same_v<T, float>) {
          epi_row_f32(act, a, o, HWo, s, b);
        } else if constexpr (std::is_same_v<acc_t, float>) {
          epi_row_f32(act, a, tmp.data(), HWo, s, b);
          for (int64_t i = 0; i < HWo; ++i) o[i] = static_cast<T>(tmp[i]);
        } else {
          for (int64_t i = 0; i < HWo; ++i) o[i] = static_cast<T>(bn_act<acc_t>(act, a[i], s, b));
        }
      });
    }
  });
}

// z's Welford partials of a task grid fixed by the shape, part[r * C + c] for r < nparts, merged
// per channel in increasing r: mean and biased variance, deterministic whatever the thread count.
template <typename acc_t>
void merge_stats(const std::vector<Welford<acc_t>>& part, int64_t nparts, int64_t C, at::Tensor& mean,
                 at::Tensor& var) {
  acc_t* md = mean.mutable_data_ptr<acc_t>();
  acc_t* vd = var.mutable_data_ptr<acc_t>();
  at::parallel_for(0, C, 16, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      Welford<acc_t> s = welford_init<acc_t>();
      for (int64_t r = 0; r < nparts; ++r) s = welford_merge(s, part[r * C + c]);
      md[c] = s.mean;
      vd[c] = welford_var(s);
    }
  });
}

// z = conv(x) and per-channel statistics, float32 NCHW through nchw_blocked_f32: partials per
// (n, band of output rows), r = n * nbands + band.
void stats_nchw_blocked_f32(const at::Tensor& x, const at::Tensor& w, const Geom& g, at::Tensor& z,
                            at::Tensor& mean, at::Tensor& var) {
  const int64_t C = g.C, nbands = BlockedGeom(g).nbands, HWo = g.Ho * g.Wo, nparts = g.N * nbands;
  float* zd = z.mutable_data_ptr<float>();
  std::vector<Welford<float>> part(static_cast<size_t>(nparts * C));
  nchw_blocked_f32(x, w, g, [&](int64_t n, int64_t c0, int64_t nc, int64_t bd, int64_t oh0, int64_t oh1,
                                float* acc) {
    const int64_t P = (oh1 - oh0) * g.Wo;
    blk_store_nchw_f32(acc, nc, P, zd + (n * C + c0) * HWo + oh0 * g.Wo, HWo);
    float mu[16], m2[16];
    Welford<float> st[16];
    row_stats_f32(acc, P, 16, mu, m2, st);
    std::copy_n(st, nc, part.data() + (n * nbands + bd) * C + c0);
  });
  merge_stats(part, nparts, C, mean, var);
}

// z = conv(x) and per-channel statistics: Welford partials per (n, c) plane (NCHW) or per output
// row (channels_last).
template <typename T>
void stats_impl(const at::Tensor& x, const at::Tensor& w, const Geom& g, at::Tensor& z,
                at::Tensor& mean, at::Tensor& var) {
  using acc_t = acc_of<T>;
  const T* xd = x.const_data_ptr<T>();
  T* zd = z.mutable_data_ptr<T>();
  const int64_t C = g.C;
  std::vector<Welford<acc_t>> part;
  int64_t nparts;
  if (!(x.is_contiguous() && z.is_contiguous())) {  // channels_last: part[r * C + c], r = output row
    nparts = g.N * g.Ho;
    part.assign(static_cast<size_t>(nparts * C), welford_init<acc_t>());
    const at::Tensor wt_t = w.t().contiguous();
    const acc_t* wt = wt_t.const_data_ptr<acc_t>();
    at::parallel_for(0, nparts, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> row(static_cast<size_t>(g.Wo * C)), mu(static_cast<size_t>(C)), m2(mu.size());
      for (int64_t r = begin; r < end; ++r) {
        if constexpr (std::is_same_v<T, float>) {  // the row straight into z
          float* zr = zd + r * g.Wo * C;
          conv_row_cl(xd, wt, g, r / g.Ho, r % g.Ho, zr);
          row_stats_f32(zr, g.Wo, C, mu.data(), m2.data(), part.data() + r * C);
        } else {
          conv_row_cl(xd, wt, g, r / g.Ho, r % g.Ho, row.data());
          std::copy(row.begin(), row.end(), zd + r * g.Wo * C);  // (converts to T)
          row_stats(row.data(), g.Wo, C, mu.data(), m2.data(), part.data() + r * C);
        }
      }
    });
  } else {  // NCHW: part[n * C + c]
    nparts = g.N;
    part.assign(static_cast<size_t>(g.N * C), welford_init<acc_t>());
    const acc_t* wd = w.const_data_ptr<acc_t>();
    const int64_t kk = static_cast<int64_t>(g.kh) * g.kw;
    at::parallel_for(0, g.N * C, 1, [&](int64_t begin, int64_t end) {
      NchwScratch<acc_t> scratch(g);
      for (int64_t p = begin; p < end; ++p) {
        const int64_t c = p % C;
        const int64_t HWo = g.Ho * g.Wo;
        conv_plane_nchw(xd + p * g.H * g.W, wd + c * kk, g, scratch, [&](const acc_t* a) {
          std::copy(a, a + HWo, zd + p * HWo);  // (converts to T)
          part[p] = block_stats(a, HWo);
        });
      }
    });
  }
  merge_stats(part, nparts, C, mean, var);
}

// Index helpers for a contiguous NCHW or channels_last tensor of logical shape (N, C, H, W).
struct Layout {
  int64_t N, C, HW;
  bool cl;
};

template <typename T>
void ssa_impl(const at::Tensor& z, const at::Tensor& mean, const at::Tensor& scale,
              const at::Tensor& shift, Act act, at::Tensor& y) {
  using acc_t = acc_of<T>;
  const T* zd = z.const_data_ptr<T>();
  T* yd = y.mutable_data_ptr<T>();
  const acc_t* mu = mean.const_data_ptr<acc_t>();
  const acc_t* sc = scale.const_data_ptr<acc_t>();
  const acc_t* sh = shift.const_data_ptr<acc_t>();
  const int64_t N = z.size(0), C = z.size(1), HW = z.size(2) * z.size(3);
  const bool cl = !z.is_contiguous();
  if constexpr (std::is_same_v<T, float>) {
    if (cl) {
      at::parallel_for(0, N * HW, std::max<int64_t>(1, 4096 / std::max<int64_t>(C, 1)), [&](int64_t b, int64_t e) {
        ssa_pix_f32(act, zd + b * C, yd + b * C, e - b, C, mu, sc, sh);
      });
    } else {
      at::parallel_for(0, N * C, std::max<int64_t>(1, 4096 / std::max<int64_t>(HW, 1)), [&](int64_t b, int64_t e) {
        for (int64_t p = b; p < e; ++p) {
          const int64_t c = p % C;
          ssa_row_f32(act, zd + p * HW, yd + p * HW, HW, mu[c], sc[c], sh[c]);
        }
      });
    }
    return;
  }
  with_act(act, [&](auto A) {
    constexpr Act kA = decltype(A)::value;
    if (cl) {
      at::parallel_for(0, N * HW, std::max<int64_t>(1, 4096 / std::max<int64_t>(C, 1)), [&](int64_t b, int64_t e) {
        for (int64_t q = b; q < e; ++q) {
          for (int64_t c = 0; c < C; ++c) {
            const acc_t zc = static_cast<acc_t>(zd[q * C + c]) - mu[c];
            yd[q * C + c] = static_cast<T>(bn_act<acc_t>(kA, zc, sc[c], sh[c]));
          }
        }
      });
    } else {
      at::parallel_for(0, N * C, std::max<int64_t>(1, 4096 / std::max<int64_t>(HW, 1)), [&](int64_t b, int64_t e) {
        for (int64_t p = b; p < e; ++p) {
          const int64_t c = p % C;
          const acc_t m = mu[c], s = sc[c], t = sh[c];
          for (int64_t i = p * HW; i < (p + 1) * HW; ++i) {
            yd[i] = static_cast<T>(bn_act<acc_t>(kA, static_cast<acc_t>(zd[i]) - m, s, t));
          }
        }
      });
    }
  });
}

// Per-channel reductions below run with one task per channel (strided access in channels_last:
// fine for the CPU train path), summing (n, h, w) in increasing order: deterministic.
template <typename T>
void ssa_backward_impl(const at::Tensor& grad, const at::Tensor& z, const at::Tensor& mean,
                       const at::Tensor& scale, const at::Tensor& shift, Act act, at::Tensor& gz,
                       at::Tensor& gsc, at::Tensor& gsh) {
  using acc_t = acc_of<T>;
  const T* gd = grad.const_data_ptr<T>();
  const T* zd = z.const_data_ptr<T>();
  const acc_t* mu = mean.const_data_ptr<acc_t>();
  T* gzd = gz.defined() ? gz.mutable_data_ptr<T>() : nullptr;  // undefined: sums only
  const acc_t* sc = scale.const_data_ptr<acc_t>();
  const acc_t* sh = shift.const_data_ptr<acc_t>();
  acc_t* gscd = gsc.mutable_data_ptr<acc_t>();
  acc_t* gshd = gsh.mutable_data_ptr<acc_t>();
  const int64_t N = z.size(0), C = z.size(1), HW = z.size(2) * z.size(3);
  const bool cl = !z.is_contiguous();
  const int64_t sc_c = cl ? 1 : HW, sc_s = cl ? C : 1, sc_n = C * HW;
  with_act(act, [&](auto A) {
    constexpr Act kA = decltype(A)::value;
    at::parallel_for(0, C, 1, [&](int64_t b, int64_t e) {
      for (int64_t c = b; c < e; ++c) {
        const acc_t m = mu[c], s = sc[c], t = sh[c];
        acc_t sum_u = 0, sum_uz = 0;
        for (int64_t n = 0; n < N; ++n) {
          acc_t pu = 0, puz = 0;  // per-plane partials
          const int64_t base = n * sc_n + c * sc_c;
          for (int64_t q = 0; q < HW; ++q) {
            const int64_t i = base + q * sc_s;
            const acc_t zv = static_cast<acc_t>(zd[i]) - m;
            const acc_t gu = bn_act_grad_u<acc_t>(kA, static_cast<acc_t>(gd[i]), zv, s, t);
            if (gzd) gzd[i] = static_cast<T>(gu * s);
            pu += gu;
            puz += gu * zv;
          }
          sum_u += pu;
          sum_uz += puz;
        }
        gscd[c] = sum_uz;
        gshd[c] = sum_u;
      }
    });
  });
}

template <typename T>
void stats_backward_impl(const at::Tensor& gz, const at::Tensor& a, const at::Tensor& b, bool use_b,
                         const at::Tensor& x, const at::Tensor& z, const at::Tensor& mean,
                         const at::Tensor& w, const Geom& g, const SsaGrad& ssa, at::Tensor& gx,
                         at::Tensor& gw) {
  using acc_t = acc_of<T>;
  const T* gzd = gz.const_data_ptr<T>();
  const T* zd = z.const_data_ptr<T>();
  const T* xd = x.const_data_ptr<T>();
  T* gxd = gx.mutable_data_ptr<T>();
  const acc_t* ad = a.const_data_ptr<acc_t>();
  const acc_t* bd = b.const_data_ptr<acc_t>();
  const acc_t* md = mean.const_data_ptr<acc_t>();
  const acc_t* wd = w.const_data_ptr<acc_t>();
  acc_t* gwd = gw.mutable_data_ptr<acc_t>();
  const Strides4 xs = strides_of(x), zs = strides_of(z);
  const int64_t kk = static_cast<int64_t>(g.kh) * g.kw;
  const acc_t* ssc = ssa.scale.defined() ? ssa.scale.const_data_ptr<acc_t>() : nullptr;
  const acc_t* ssh = ssa.scale.defined() ? ssa.shift.const_data_ptr<acc_t>() : nullptr;
  // Total gradient of z at (n, c, oh, ow).
  auto dz_at = [&](int64_t n, int64_t c, int64_t oh, int64_t ow) -> acc_t {
    const int64_t i = n * zs.n + c * zs.c + oh * zs.h + ow * zs.w;
    const bool need_z = use_b || ssc;
    const acc_t zv = need_z ? static_cast<acc_t>(zd[i]) : acc_t(0);
    acc_t gv = static_cast<acc_t>(gzd[i]);
    if (ssc) gv = ssa_grad_z<acc_t>(ssa.act, gv, zv - md[c], ssc[c], ssh[c]);
    return stats_grad<acc_t>(gv, zv, md[c], ad[c], bd[c], use_b);
  };
  // grad x: one task per (n, c) plane.
  at::parallel_for(0, g.N * g.C, 1, [&](int64_t b0, int64_t e0) {
    for (int64_t p = b0; p < e0; ++p) {
      const int64_t n = p / g.C, c = p % g.C;
      auto dz = [&](int64_t oh, int64_t ow) { return dz_at(n, c, oh, ow); };
      for (int64_t ih = 0; ih < g.H; ++ih) {
        for (int64_t iw = 0; iw < g.W; ++iw) {
          gxd[n * xs.n + c * xs.c + ih * xs.h + iw * xs.w] =
              static_cast<T>(input_grad_at<acc_t>(dz, wd + c * kk, 1, g, ih, iw));
        }
      }
    }
  });
  // grad weight: one task per channel, per-plane partials added in increasing n.
  at::parallel_for(0, g.C, 1, [&](int64_t b0, int64_t e0) {
    std::vector<acc_t> part(static_cast<size_t>(kk));
    for (int64_t c = b0; c < e0; ++c) {
      acc_t* out = gwd + c * kk;
      for (int64_t n = 0; n < g.N; ++n) {
        std::fill(part.begin(), part.end(), acc_t(0));
        const T* xp = xd + n * xs.n + c * xs.c;
        for (int64_t oh = 0; oh < g.Ho; ++oh) {
          for (int64_t ow = 0; ow < g.Wo; ++ow) {
            const acc_t d = dz_at(n, c, oh, ow);
            for (int i = 0; i < g.kh; ++i) {
              for (int j = 0; j < g.kw; ++j) {
                part[i * g.kw + j] += d * tap_input<acc_t>(xp, xs.h, xs.w, g, oh, ow, i, j);
              }
            }
          }
        }
        for (int64_t t = 0; t < kk; ++t) out[t] += part[t];
      }
    }
  });
}

#define TCV_DW_DISPATCH(T, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, T, NAME, __VA_ARGS__)

struct CpuBackend {
  static constexpr c10::DeviceType kDevice = c10::DeviceType::CPU;
  struct Guard {
    explicit Guard(c10::Device) {}
  };
  static void eval(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale,
                   const at::Tensor& shift, const Geom& g, Act act, at::Tensor& y) {
    if (nchw_blocked_wins(x, g)) {
      eval_nchw_blocked_f32(x, w, scale, shift, g, act, y);
      return;
    }
    TCV_DW_DISPATCH(x.scalar_type(), "dwconv_bn_act", [&] { eval_impl<scalar_t>(x, w, scale, shift, g, act, y); });
  }
  static void stats(const at::Tensor& x, const at::Tensor& w, const Geom& g, at::Tensor& z,
                    at::Tensor& mean, at::Tensor& var) {
    if (nchw_blocked_wins(x, g)) {
      stats_nchw_blocked_f32(x, w, g, z, mean, var);
      return;
    }
    TCV_DW_DISPATCH(x.scalar_type(), "dwconv_bn_stats", [&] { stats_impl<scalar_t>(x, w, g, z, mean, var); });
  }
  static void ssa(const at::Tensor& z, const at::Tensor& mean, const at::Tensor& scale,
                  const at::Tensor& shift, Act act, at::Tensor& y) {
    TCV_DW_DISPATCH(z.scalar_type(), "scale_shift_act", [&] {
      ssa_impl<scalar_t>(z, mean, scale, shift, act, y);
    });
  }
  static void ssa_backward(const at::Tensor& grad, const at::Tensor& z, const at::Tensor& mean,
                           const at::Tensor& scale, const at::Tensor& shift, Act act, at::Tensor& gz,
                           at::Tensor& gsc, at::Tensor& gsh) {
    if (z.scalar_type() == at::kFloat) {
      ssa_backward_f32(grad, z, mean, scale, shift, act, gz, gsc, gsh);  // dwconv_bn_act_backward.cpp
      return;
    }
    TCV_DW_DISPATCH(z.scalar_type(), "_scale_shift_act_backward", [&] {
      ssa_backward_impl<scalar_t>(grad, z, mean, scale, shift, act, gz, gsc, gsh);
    });
  }
  static void stats_backward(const at::Tensor& gz, const at::Tensor& a, const at::Tensor& b, bool use_b,
                             const at::Tensor& x, const at::Tensor& z, const at::Tensor& mean,
                             const at::Tensor& w, const Geom& g, const SsaGrad& ssa, at::Tensor& gx,
                             at::Tensor& gw) {
    if (x.scalar_type() == at::kFloat) {
      stats_backward_f32(gz, a, b, use_b, x, z, mean, w, g, ssa, gx, gw);  // dwconv_bn_act_backward.cpp
      return;
    }
    TCV_DW_DISPATCH(x.scalar_type(), "_dwconv_bn_stats_backward", [&] {
      stats_backward_impl<scalar_t>(gz, a, b, use_b, x, z, mean, w, g, ssa, gx, gw);
    });
  }
};

}  // namespace
}  // namespace dwconv

TORCH_LIBRARY_IMPL(torchcv_ext, CPU, m) { dwconv::register_kernels<dwconv::CpuBackend>(m); }

}  // namespace torchcv_ext
