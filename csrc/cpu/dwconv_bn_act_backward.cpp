// float32 CPU backward of the dwconv_bn_act family: _scale_shift_act_backward and
// _dwconv_bn_stats_backward (the train layer's backward runs both: csrc/cpu/dwconv_bn_act.cpp's
// CpuBackend sends float32 here, other dtypes to its generic loops). Math: dwconv_bn_act.h.
//
// _scale_shift_act_backward: per-channel sums of gu = g * act'(u) and gu * (z - mean) (and
//   gz = gu * scale when asked), vectorized; partials per (n, c) plane (NCHW) or per fixed chunk
//   of pixels (channels_last), added in increasing order.
// _dwconv_bn_stats_backward: dz = the total gradient of z, computed from g (and z) once per
//   element (ssa_grad_z + stats_grad), then
//   channels_last: one task per band of input rows of one image: dz of the output rows the band
//         reads goes to an L2-resident buffer, then per input row a gather over the taps that
//         read it gives dx and, in the same loop, the weight-gradient terms (16 channels per
//         vector, the tap's weights and sums held in registers along the row).
//   NCHW, C >= 16: the same band kernel per (image, block of 16 channels, band): the band's rows
//         of the 16 planes are transposed in L1/L2 into pixel-major buffers and dx back
//         (stats_backward_nchw_blocked) -- no whole-tensor layout conversion.
//   NCHW, C < 16: one task per (n, c) plane, everything in L1/L2: the plane's dz, its x copied
//         into a phase-split padded buffer (NchwScratch, rows split by phase too, so an output
//         row's step in it is about Wo at any stride) and a gradient buffer of the same geometry.
//         Per tap one flat unit-stride loop over the plane does both the weight-gradient dot
//         product (dz . x) and the input-gradient scatter (+= w * dz) -- the transpose of the
//         forward's gather (per output row where the kernel is wide for the plane) -- then the
//         buffer's data cells are the plane's dx.
// Per-channel weight-gradient partials over a task grid fixed by the shape, added in increasing
// order: deterministic whatever the thread count.
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "dwconv_bn_act_cpu.h"
#include "torchcv_ext/cpu_clones.h"

namespace torchcv_ext::dwconv::cpu {
namespace {

// ---- _scale_shift_act_backward ------------------------------------------------------------------

// One NCHW plane (scalar mean / scale / shift): sums of gu and gu * zc; gz = gu * s when gz != null.
TCV_CPU_CLONES void ssa_bwd_plane_f32(Act act, const float* g, const float* z, float* gz, int64_t n,
                                      float m, float s, float t, float* sum_u, float* sum_uz) {
  float su = 0.0f, suz = 0.0f;
  TCV_ACT_CASES(
      if (gz) {
        _Pragma("omp simd reduction(+ : su, suz)") for (int64_t i = 0; i < n; ++i) {
          const float zc = z[i] - m;
          const float gu = g[i] * act_grad_f32<kA>(zc * s + t);
          gz[i] = gu * s;
          su += gu;
          suz += gu * zc;
        }
      } else {
        _Pragma("omp simd reduction(+ : su, suz)") for (int64_t i = 0; i < n; ++i) {
          const float zc = z[i] - m;
          const float gu = g[i] * act_grad_f32<kA>(zc * s + t);
          su += gu;
          suz += gu * zc;
        }
      })
  *sum_u = su;
  *sum_uz = suz;
}

// npix channels_last pixels: su[c] / suz[c] (C each) <- the sums over the pixels.
TCV_CPU_CLONES void ssa_bwd_pix_f32(Act act, const float* g, const float* z, float* gz, int64_t npix,
                                    int64_t C, const float* mu, const float* sc, const float* sh,
                                    float* su, float* suz) {
  std::fill(su, su + C, 0.0f);
  std::fill(suz, suz + C, 0.0f);
  TCV_ACT_CASES(for (int64_t q = 0; q < npix; ++q) {
    const float* gq = g + q * C;
    const float* zq = z + q * C;
    float* gzq = gz ? gz + q * C : nullptr;
    _Pragma("omp simd") for (int64_t c = 0; c < C; ++c) {
      const float zc = zq[c] - mu[c];
      const float gu = gq[c] * act_grad_f32<kA>(zc * sc[c] + sh[c]);
      if (gzq) gzq[c] = gu * sc[c];
      su[c] += gu;
      suz[c] += gu * zc;
    }
  })
}

// Pixels per channels_last task: the task grid depends on the shape only (deterministic sums).
int64_t cl_chunk_pixels(int64_t C) { return std::max<int64_t>(16, 8192 / std::max<int64_t>(C, 1)); }

// ---- _dwconv_bn_stats_backward: dz ----------------------------------------------------------------

// dz = stats_grad(g * act'(u) * s, z, m, a, b, use_b), u = (z - m) * s + t, for n elements of one
// channel. Without a scale_shift_act in front the caller passes identity, s = 1, t = 0 (g * 1 * 1 = g).
TCV_CPU_CLONES void dz_plane_f32(Act act, bool use_b, const float* g, const float* z, int64_t n,
                                 float m, float s, float t, float a, float b, float* dz) {
  TCV_ACT_CASES(
      if (use_b) {
        _Pragma("omp simd") for (int64_t i = 0; i < n; ++i) {
          const float zc = z[i] - m;
          dz[i] = g[i] * act_grad_f32<kA>(zc * s + t) * s + a + b * zc;
        }
      } else {
        _Pragma("omp simd") for (int64_t i = 0; i < n; ++i) {
          dz[i] = g[i] * act_grad_f32<kA>((z[i] - m) * s + t) * s + a;
        }
      })
}

// The same for npix channels_last pixels, per-channel vectors.
TCV_CPU_CLONES void dz_pix_f32(Act act, bool use_b, const float* g, const float* z, int64_t npix,
                               int64_t C, const float* mu, const float* sc, const float* sh,
                               const float* a, const float* b, float* dz) {
  TCV_ACT_CASES(for (int64_t q = 0; q < npix; ++q) {
    const float* gq = g + q * C;
    const float* zq = z + q * C;
    float* dq = dz + q * C;
    if (use_b) {
      _Pragma("omp simd") for (int64_t c = 0; c < C; ++c) {
        const float zc = zq[c] - mu[c];
        dq[c] = gq[c] * act_grad_f32<kA>(zc * sc[c] + sh[c]) * sc[c] + a[c] + b[c] * zc;
      }
    } else {
      _Pragma("omp simd") for (int64_t c = 0; c < C; ++c) {
        dq[c] = gq[c] * act_grad_f32<kA>((zq[c] - mu[c]) * sc[c] + sh[c]) * sc[c] + a[c];
      }
    }
  })
}

// ---- NCHW conv backward: one plane ----------------------------------------------------------------

// xb: the plane's x in the phase-split padded layout, gb: a zeroed buffer of the same layout that
// receives dx, dz: Ho x Wo. Row oh, tap t reads / writes the unit-stride segment at
// oh * row_step + off[t] (NchwScratch::row_step). dw[t] <- sum dz * x under tap t.
TCV_CPU_CLONES void conv_bwd_plane_f32(const float* dz, const float* xb, float* gb, const int64_t* off,
                                       const float* w, int taps, int64_t Ho, int64_t Wo, int64_t row_step,
                                       float* dw) {
  for (int t = 0; t < taps; ++t) dw[t] = 0.0f;
  for (int64_t oh = 0; oh < Ho; ++oh) {
    const float* d = dz + oh * Wo;
    for (int t = 0; t < taps; ++t) {
      const float* xi = xb + oh * row_step + off[t];
      float* gi = gb + oh * row_step + off[t];
      const float wt = w[t];
      float acc = 0.0f;
      _Pragma("omp simd reduction(+ : acc)") for (int64_t ow = 0; ow < Wo; ++ow) {
        acc += d[ow] * xi[ow];
        gi[ow] += wt * d[ow];
      }
      dw[t] += acc;
    }
  }
}

// The flat form, when the buffer's row step is close to Wo (NchwScratch with split_rows: at any
// stride, unless the kernel is wide for the plane): dzb holds dz with the buffer's row step (row
// oh at oh * row_step, the cells past Wo zero), so tap t is one unit-stride loop over the whole
// plane, len = (Ho - 1) * row_step + Wo -- a gap cell adds w * 0 to gb and 0 to the dot. One long
// loop per tap instead of Ho short ones, whose loop overhead and horizontal sums of the dot
// products took most of the time on planes of 28 x 28 and less (2-3x slower).
TCV_CPU_CLONES void conv_bwd_flat_f32(const float* dzb, const float* xb, float* gb, const int64_t* off,
                                      const float* w, int taps, int64_t len, float* dw) {
  for (int t = 0; t < taps; ++t) {
    const float* xi = xb + off[t];
    float* gi = gb + off[t];
    const float wt = w[t];
    float acc = 0.0f;
    _Pragma("omp simd reduction(+ : acc)") for (int64_t q = 0; q < len; ++q) {
      acc += dzb[q] * xi[q];
      gi[q] += wt * dzb[q];
    }
    dw[t] = acc;
  }
}

// Whether the NCHW backward runs its flat form (conv_bwd_flat_f32): the row step of its buffer
// (NchwScratch with split_rows and slack 0: ceil(Wn / sw)) is at most 1.5 Wo, so at most a third
// of the flat loop runs over gap cells -- any stride, unless the kernel is wide for the plane.
bool nchw_bwd_flat(const Geom& g) {
  const int64_t Wn = (g.Wo - 1) * g.sw + static_cast<int64_t>(g.kw - 1) * g.dw + 1;
  return 2 * ((Wn + g.sw - 1) / g.sw) <= 3 * g.Wo;
}

void stats_backward_nchw(const float* gd, const float* zd, const float* xd, float* gxd, const float* ad,
                         const float* bd, bool use_b, const float* md, const float* wd, const Geom& g,
                         Act act, const float* ssc, const float* ssh, float* gwd) {
  const int64_t kk = static_cast<int64_t>(g.kh) * g.kw, HWo = g.Ho * g.Wo;
  std::vector<float> part(static_cast<size_t>(g.N * g.C * kk));
  at::parallel_for(0, g.N * g.C, 1, [&](int64_t begin, int64_t end) {
    // (rows stop at Wo; rows phase-split too: the row step is about Wo at any stride)
    NchwScratch<float> s(g, /*slack=*/0, /*split_rows=*/true);
    std::vector<float> gbuf(s.buf.size());
    std::vector<float>& dz = s.plane;  // Ho x Wo
    const int64_t row_step = s.row_step;
    const bool flat = nchw_bwd_flat(g);
    std::vector<float> dzb(flat ? static_cast<size_t>(g.Ho * row_step) : 0, 0.0f);  // gaps stay 0
    for (int64_t p = begin; p < end; ++p) {
      const int64_t c = p % g.C;
      const float sc = ssc ? ssc[c] : 1.0f, sh = ssc ? ssh[c] : 0.0f;
      dz_plane_f32(ssc ? act : Act::Identity, use_b, gd + p * HWo, zd + p * HWo, HWo, md[c], sc, sh,
                   ad[c], bd[c], dz.data());
      s.fill(xd + p * g.H * g.W, g);
      std::fill(gbuf.begin(), gbuf.end(), 0.0f);
      if (flat) {
        for (int64_t oh = 0; oh < g.Ho; ++oh) {
          std::copy_n(dz.data() + oh * g.Wo, g.Wo, dzb.data() + oh * row_step);
        }
        conv_bwd_flat_f32(dzb.data(), s.buf.data(), gbuf.data(), s.off.data(), wd + c * kk,
                          static_cast<int>(kk), (g.Ho - 1) * row_step + g.Wo, part.data() + p * kk);
      } else {
        conv_bwd_plane_f32(dz.data(), s.buf.data(), gbuf.data(), s.off.data(), wd + c * kk,
                           static_cast<int>(kk), g.Ho, g.Wo, row_step, part.data() + p * kk);
      }
      s.extract(gbuf.data(), g, gxd + p * g.H * g.W);
    }
  });
  at::parallel_for(0, g.C, 16, [&](int64_t b0, int64_t e0) {
    for (int64_t c = b0; c < e0; ++c) {
      for (int64_t n = 0; n < g.N; ++n) {
        const float* pp = part.data() + (n * g.C + c) * kk;
        for (int64_t t = 0; t < kk; ++t) gwd[c * kk + t] += pp[t];
      }
    }
  });
}

// ---- channels_last conv backward --------------------------------------------------------------

// Outputs [lo, hi) whose tap j (column offset j * dw) reads an input column inside [0, W).
inline void tap_out_range(int64_t W, int64_t Wo, int s, int p, int64_t jd, int64_t& lo, int64_t& hi) {
  // iw = ow * s - p + jd in [0, W)  <=>  ow in [ceil((p - jd) / s), floor((W - 1 + p - jd) / s)]
  const int64_t a = p - jd, b = W - 1 + p - jd;
  lo = a <= 0 ? 0 : (a + s - 1) / s;
  hi = b < 0 ? 0 : std::min<int64_t>(Wo, b / s + 1);
  if (hi < lo) hi = lo;
}

// Input row ih of image n: its dx (gxr: W x C, overwritten) and its terms of the weight gradient,
// acc[t * C + c] += dz * x over the (output, tap) pairs that read row ih. dz: output rows from
// oh0 on of image n (Wo x C each), xr = x row ih (W x C), wt: the weights as (kk, C). V-float
// vectors.
template <int V>
__attribute__((always_inline)) inline void cl_bwd_row(const float* dz, int64_t oh0, const float* xr,
                                                      const float* wt, const Geom& g, int64_t ih,
                                                      float* gxr, float* acc) {
  TCV_VEC_TYPES(V);
  const int64_t C = g.C;
  std::fill(gxr, gxr + g.W * C, 0.0f);
  for (int i = 0; i < g.kh; ++i) {
    const int64_t oh = tap_source(ih, i, g.sh, g.ph, g.dh, g.Ho);
    if (oh < 0) continue;
    const float* dr = dz + (oh - oh0) * g.Wo * C;
    for (int j = 0; j < g.kw; ++j) {
      const int64_t jd = static_cast<int64_t>(j) * g.dw;
      int64_t lo, hi;
      tap_out_range(g.W, g.Wo, g.sw, g.pw, jd, lo, hi);
      const int64_t t = static_cast<int64_t>(i) * g.kw + j;
      const float* wv = wt + t * C;
      float* a = acc + t * C;
      const int64_t step = g.sw * C, iw_lo = lo * g.sw - g.pw + jd;
      int64_t c0 = 0;
      // V channels at a time, the tap's weights and weight-gradient sums held in registers
      // along the row.
      for (; c0 + V <= C; c0 += V) {
        const vec wc = ldv(wv + c0);
        vec ac = ldv(a + c0);
        float* o = gxr + iw_lo * C + c0;
        const float* xs = xr + iw_lo * C + c0;
        const float* d = dr + lo * C + c0;
        for (int64_t ow = lo; ow < hi; ++ow, o += step, xs += step, d += C) {
          const vec dc = ldv(d);
          stv(o, ldv(o) + wc * dc);
          ac += dc * ldv(xs);
        }
        stv(a + c0, ac);
      }
      if (c0 == C) continue;
      for (int64_t ow = lo; ow < hi; ++ow) {
        const int64_t iw = ow * g.sw - g.pw + jd;
        float* o = gxr + iw * C;
        const float* xs = xr + iw * C;
        const float* d = dr + ow * C;
        for (int64_t c = c0; c < C; ++c) {
          o[c] += wv[c] * d[c];
          a[c] += d[c] * xs[c];
        }
      }
    }
  }
}

// The output rows [oh0, oh1) that read input rows [ih0, ih1): oh * sh - ph + i * dh in
// [ih0, ih1) for some tap i (empty: oh1 <= oh0).
inline void band_out_rows(const Geom& g, int64_t ih0, int64_t ih1, int64_t& oh0, int64_t& oh1) {
  const int64_t lo = ih0 + g.ph - static_cast<int64_t>(g.kh - 1) * g.dh;
  oh0 = lo <= 0 ? 0 : (lo + g.sh - 1) / g.sh;
  oh1 = std::min<int64_t>(g.Ho, (ih1 - 1 + g.ph) / g.sh + 1);
}

// One task: input rows [ih0, ih1) of one image, reading output rows [oh0, oh1) (band_out_rows).
// g0 / z0 point at output row oh0, x0 / gx0 at input row ih0 (channels_last rows of C). dz of
// the output rows goes to buf first (L2-resident); then row by row dx and the weight-gradient
// terms (acc: kk x C).
template <int V>
__attribute__((always_inline)) inline void cl_bwd_band_body(Act act, bool use_b, const float* g0,
                                                            const float* z0, const float* x0, float* gx0,
                                                            const float* mu, const float* sc, const float* sh,
                                                            const float* a, const float* b, const float* wt,
                                                            const Geom& g, int64_t ih0, int64_t ih1,
                                                            int64_t oh0, int64_t oh1, float* buf, float* acc) {
  const int64_t C = g.C;
  if (oh1 > oh0) dz_pix_f32(act, use_b, g0, z0, (oh1 - oh0) * g.Wo, C, mu, sc, sh, a, b, buf);
  for (int64_t ih = ih0; ih < ih1; ++ih) {
    cl_bwd_row<V>(buf, oh0, x0 + (ih - ih0) * g.W * C, wt, g, ih, gx0 + (ih - ih0) * g.W * C, acc);
  }
}
// Versions per CPU (TCV_CPU_VERSIONS): the 16-float type in the AVX2 clone goes through the stack
// (cpu_clones.h).
TCV_CPU_VERSIONS(cl_bwd_band_f32, cl_bwd_band_body,
                 (Act act, bool use_b, const float* g0, const float* z0, const float* x0, float* gx0,
                  const float* mu, const float* sc, const float* sh, const float* a, const float* b,
                  const float* wt, const Geom& g, int64_t ih0, int64_t ih1, int64_t oh0, int64_t oh1,
                  float* buf, float* acc),
                 (act, use_b, g0, z0, x0, gx0, mu, sc, sh, a, b, wt, g, ih0, ih1, oh0, oh1, buf, acc))

// The band grid of the channels_last kernel: bands of `rows` input rows (dz of about 128K floats,
// 512 KB, per band, 4..32 output rows' worth; a band's dz rows are recomputed by its neighbours
// only in the (kh - 1) * dh / sh rows they share), and the most output rows a band reads.
struct Bands {
  int64_t rows, count, max_out;
  explicit Bands(const Geom& g) {
    const int64_t r = 131072 / std::max<int64_t>(1, g.Wo * g.C);
    rows = std::min<int64_t>(g.H, std::clamp<int64_t>(r, 4, 32) * g.sh);
    count = (g.H + rows - 1) / rows;
    max_out = 0;
    for (int64_t k = 0; k < count; ++k) {
      int64_t oh0, oh1;
      range(g, k, oh0, oh1);
      max_out = std::max(max_out, oh1 - oh0);
    }
  }
  // Band k: input rows [ih0, ih1), output rows [oh0, oh1).
  void range(const Geom& g, int64_t k, int64_t& oh0, int64_t& oh1) const {
    band_out_rows(g, k * rows, std::min(g.H, (k + 1) * rows), oh0, oh1);
  }
};

void stats_backward_cl(const float* gd, const float* zd, const float* xd, float* gxd, const float* ad,
                       const float* bd, bool use_b, const float* md, const float* wd, const Geom& g,
                       Act act, const float* ssc, const float* ssh, float* gwd) {
  const int64_t C = g.C, kk = static_cast<int64_t>(g.kh) * g.kw;
  std::vector<float> ones, zeros;  // no scale_shift_act in front: identity, scale 1, shift 0
  if (!ssc) {
    ones.assign(static_cast<size_t>(C), 1.0f);
    zeros.assign(static_cast<size_t>(C), 0.0f);
  }
  std::vector<float> wt(static_cast<size_t>(kk * C));  // weights as (kk, C)
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t t = 0; t < kk; ++t) wt[t * C + c] = wd[c * kk + t];
  }
  const Bands bands(g);
  const int64_t ntasks = g.N * bands.count;
  // Weight-gradient partials per task (a grid fixed by the shape), added in task order below.
  std::vector<float> part(static_cast<size_t>(ntasks * kk * C), 0.0f);
  const int64_t in_img = g.H * g.W * C, out_img = g.Ho * g.Wo * C;
  at::parallel_for(0, ntasks, 1, [&](int64_t b0, int64_t e0) {
    std::vector<float> buf(static_cast<size_t>(bands.max_out * g.Wo * C));
    for (int64_t k = b0; k < e0; ++k) {
      const int64_t n = k / bands.count, ih0 = (k % bands.count) * bands.rows;
      const int64_t ih1 = std::min(g.H, ih0 + bands.rows);
      int64_t oh0, oh1;
      bands.range(g, k % bands.count, oh0, oh1);
      const int64_t o = n * out_img + oh0 * g.Wo * C, i = n * in_img + ih0 * g.W * C;
      cl_bwd_band_f32(ssc ? act : Act::Identity, use_b, gd + o, zd + o, xd + i, gxd + i, md,
                      ssc ? ssc : ones.data(), ssc ? ssh : zeros.data(), ad, bd, wt.data(), g, ih0, ih1,
                      oh0, oh1, buf.data(), part.data() + k * kk * C);
    }
  });
  at::parallel_for(0, C, 16, [&](int64_t b0, int64_t e0) {
    for (int64_t c = b0; c < e0; ++c) {
      for (int64_t k = 0; k < ntasks; ++k) {
        const float* pp = part.data() + k * kk * C;
        for (int64_t t = 0; t < kk; ++t) gwd[c * kk + t] += pp[t * C + c];
      }
    }
  });
}

// NCHW with C >= 16: per task (image n, block of 16 channels, band of input rows) the band's rows
// of g, z and x in the block's 16 planes are transposed in L1/L2 into pixel-major 16-channel
// buffers (blk_fill_nchw_f32), the channels_last band kernel runs on them as an image of 16
// channels, and dx is transposed back: vectorized over channels, which is what narrow planes
// (late MobileNet / EfficientNet stages) need, without converting whole tensors to channels_last
// (four extra passes over memory). On wide planes it measured as fast as the per-plane kernel or
// faster.
void stats_backward_nchw_blocked(const float* gd, const float* zd, const float* xd, float* gxd,
                                 const float* ad, const float* bd, bool use_b, const float* md,
                                 const float* wd, const Geom& g, Act act, const float* ssc,
                                 const float* ssh, float* gwd) {
  const int64_t C = g.C, nb = (C + 15) / 16, C16 = nb * 16, kk = static_cast<int64_t>(g.kh) * g.kw;
  const int64_t HW = g.H * g.W, HWo = g.Ho * g.Wo;
  // Per-channel vectors and weights (kk, 16) per block, padded to whole blocks: a padded channel
  // has g = 0, a = b = 0, so its dz is 0. No scale_shift_act in front: identity, scale 1, shift 0.
  std::vector<float> a16(C16, 0.0f), b16(C16, 0.0f), m16(C16, 0.0f), s16(C16, 1.0f), h16(C16, 0.0f);
  for (int64_t c = 0; c < C; ++c) {
    a16[c] = ad[c];
    b16[c] = bd[c];
    m16[c] = md[c];
    if (ssc) s16[c] = ssc[c], h16[c] = ssh[c];
  }
  const std::vector<float> w16 = weights_by_block16(wd, C, kk);
  Geom g16 = g;
  g16.C = 16;
  const Bands bands(g16);
  const Act a = ssc ? act : Act::Identity;
  const int64_t ntasks = g.N * nb * bands.count;
  std::vector<float> part(static_cast<size_t>(ntasks * kk * 16), 0.0f);  // [n][block][band][t][16]
  at::parallel_for(0, ntasks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> gt(static_cast<size_t>(bands.max_out * g.Wo * 16)), zt(gt.size()), dzt(gt.size());
    std::vector<float> xt(static_cast<size_t>(bands.rows * g.W * 16)), gxt(xt.size());
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / (nb * bands.count), c0 = (task / bands.count) % nb * 16;
      const int64_t k = task % bands.count, nc = std::min<int64_t>(16, C - c0);
      const int64_t ih0 = k * bands.rows, ih1 = std::min(g.H, ih0 + bands.rows);
      int64_t oh0, oh1;
      bands.range(g16, k, oh0, oh1);
      const int64_t po = (n * C + c0) * HWo + oh0 * g.Wo, pi = (n * C + c0) * HW + ih0 * g.W;
      const int64_t no = std::max<int64_t>(0, oh1 - oh0) * g.Wo, ni = (ih1 - ih0) * g.W;
      blk_fill_nchw_f32(gd + po, HWo, nc, no, no, no, gt.data());
      blk_fill_nchw_f32(zd + po, HWo, nc, no, no, no, zt.data());
      blk_fill_nchw_f32(xd + pi, HW, nc, ni, ni, ni, xt.data());
      cl_bwd_band_f32(a, use_b, gt.data(), zt.data(), xt.data(), gxt.data(), m16.data() + c0,
                      s16.data() + c0, h16.data() + c0, a16.data() + c0, b16.data() + c0,
                      w16.data() + (c0 / 16) * kk * 16, g16, ih0, ih1, oh0, oh1, dzt.data(),
                      part.data() + task * kk * 16);
      blk_store_nchw_f32(gxt.data(), nc, ni, gxd + pi, HW);
    }
  });
  at::parallel_for(0, C, 16, [&](int64_t b0, int64_t e0) {
    for (int64_t c = b0; c < e0; ++c) {
      for (int64_t n = 0; n < g.N; ++n) {
        for (int64_t k = 0; k < bands.count; ++k) {
          const float* pp = part.data() + ((n * nb + c / 16) * bands.count + k) * kk * 16 + c % 16;
          for (int64_t t = 0; t < kk; ++t) gwd[c * kk + t] += pp[t * 16];
        }
      }
    }
  });
}

}  // namespace

void ssa_backward_f32(const at::Tensor& grad, const at::Tensor& z, const at::Tensor& mean,
                      const at::Tensor& scale, const at::Tensor& shift, Act act, at::Tensor& gz,
                      at::Tensor& gscale, at::Tensor& gshift) {
  const float* gd = grad.const_data_ptr<float>();
  const float* zd = z.const_data_ptr<float>();
  float* gzd = gz.defined() ? gz.mutable_data_ptr<float>() : nullptr;  // undefined: sums only
  const float* mu = mean.const_data_ptr<float>();
  const float* sc = scale.const_data_ptr<float>();
  const float* sh = shift.const_data_ptr<float>();
  float* gsc = gscale.mutable_data_ptr<float>();
  float* gsh = gshift.mutable_data_ptr<float>();
  const int64_t N = z.size(0), C = z.size(1), HW = z.size(2) * z.size(3);
  if (z.is_contiguous()) {  // NCHW: partials per plane, added in increasing n
    std::vector<float> part(static_cast<size_t>(2 * N * C));
    at::parallel_for(0, N * C, 1, [&](int64_t b, int64_t e) {
      for (int64_t p = b; p < e; ++p) {
        const int64_t c = p % C;
        ssa_bwd_plane_f32(act, gd + p * HW, zd + p * HW, gzd ? gzd + p * HW : nullptr, HW, mu[c], sc[c],
                          sh[c], &part[2 * p], &part[2 * p + 1]);
      }
    });
    for (int64_t c = 0; c < C; ++c) {
      float su = 0.0f, suz = 0.0f;
      for (int64_t n = 0; n < N; ++n) {
        su += part[2 * (n * C + c)];
        suz += part[2 * (n * C + c) + 1];
      }
      gsh[c] = su;
      gsc[c] = suz;
    }
    return;
  }
  // channels_last: fixed pixel chunks, partials [chunk][2][C], added in chunk order.
  const int64_t P = N * HW, chunk = cl_chunk_pixels(C), nchunks = (P + chunk - 1) / chunk;
  std::vector<float> part(static_cast<size_t>(nchunks * 2 * C));
  at::parallel_for(0, nchunks, 1, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) {
      const int64_t q0 = k * chunk, np = std::min(P, q0 + chunk) - q0;
      ssa_bwd_pix_f32(act, gd + q0 * C, zd + q0 * C, gzd ? gzd + q0 * C : nullptr, np, C, mu, sc, sh,
                      part.data() + k * 2 * C, part.data() + k * 2 * C + C);
    }
  });
  std::fill(gsh, gsh + C, 0.0f);
  std::fill(gsc, gsc + C, 0.0f);
  for (int64_t k = 0; k < nchunks; ++k) {
    const float* pk = part.data() + k * 2 * C;
    for (int64_t c = 0; c < C; ++c) {
      gsh[c] += pk[c];
      gsc[c] += pk[C + c];
    }
  }
}

void stats_backward_f32(const at::Tensor& gz, const at::Tensor& a, const at::Tensor& b, bool use_b,
                        const at::Tensor& x, const at::Tensor& z, const at::Tensor& mean,
                        const at::Tensor& w, const Geom& g, const SsaGrad& ssa, at::Tensor& gx,
                        at::Tensor& gw) {
  const float* ssc = ssa.scale.defined() ? ssa.scale.const_data_ptr<float>() : nullptr;
  const float* ssh = ssa.scale.defined() ? ssa.shift.const_data_ptr<float>() : nullptr;
  // (x or z may be contiguous in both layouts -- C = 1, 1 x 1 planes -- the other tells them apart)
  const bool nchw = x.is_contiguous() && z.is_contiguous();
  // NCHW: 16-channel blocks where there are 16 channels, else per plane.
  auto run = !nchw ? stats_backward_cl : (g.C >= 16 ? stats_backward_nchw_blocked : stats_backward_nchw);
  run(gz.const_data_ptr<float>(), z.const_data_ptr<float>(), x.const_data_ptr<float>(),
      gx.mutable_data_ptr<float>(), a.const_data_ptr<float>(), b.const_data_ptr<float>(), use_b,
      mean.const_data_ptr<float>(), w.const_data_ptr<float>(), g, ssa.act, ssc, ssh,
      gw.mutable_data_ptr<float>());
}

}  // namespace torchcv_ext::dwconv::cpu
