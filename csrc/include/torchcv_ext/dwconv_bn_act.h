// Depthwise conv + BatchNorm + activation: per-element math shared by csrc/cpu/dwconv_bn_act.cpp
// and csrc/cuda/dwconv_bn_act.cu (the CPU tests exercise the same functions the GPU runs).
//
//   z[n,c,oh,ow] = sum_{i,j} w[c,i,j] * x[n, c, oh*sh - ph + i*dh, ow*sw - pw + j*dw]   (zero pad)
//   eval:   y = act(z * scale[c] + shift[c])                      (BN folded into scale/shift)
//   train:  z plus per-channel (count, mean, M2) partials merged in a fixed order -> mean, var
//           y = act((z - mean[c]) * scale[c] + shift[c]), scale = gamma / sqrt(var + eps),
//           shift = beta: centred first, as eager BatchNorm, so |mean| >> std loses nothing
//           (the kernels pass z - mean as `z` to bn_act / bn_act_grad_u below)
//   backward of y = act((z - mean) * scale + shift):  gu = g * act'(u);  dz = gu * scale;
//           dscale = sum gu * (z - mean);  dshift = sum gu;  (dmean = -dshift * scale, in Python)
//   backward of (z, mean, var):  dz_total = dz + dmean / M + dvar * 2 (z - mean) / M (dz from
//           the gradient of y on the fly in the train op's backward: ssa_grad_z),
//           dx = transposed depthwise conv of dz_total, dw[c,i,j] = sum dz_total * x(tap i,j)
//
// Accumulation type acc_t: float for fp32/fp16/bf16, double for fp64. Weights, scale, shift and
// statistics are passed to the kernels already converted to acc_t.
#pragma once
#include <cstdint>

#include "torchcv_ext/activations.h"
#include "torchcv_ext/macros.h"

namespace torchcv_ext::dwconv {

// Shapes and conv hyper-parameters.
struct Geom {
  int64_t N, C, H, W;  // input
  int64_t Ho, Wo;      // output
  int kh, kw, sh, sw, ph, pw, dh, dw;
};

// Element strides of a 4-D (N, C, H, W) tensor.
struct Strides4 {
  int64_t n, c, h, w;
};

TCV_FN int64_t conv_out_size(int64_t size, int k, int stride, int pad, int dil) {
  return (size + 2 * static_cast<int64_t>(pad) - static_cast<int64_t>(dil) * (k - 1) - 1) / stride + 1;
}

// z at output (oh, ow) of one (n, c) plane. `xp` points at x[n, c, 0, 0], `w` at the channel's
// first tap; tap (i, j) is w[(i * kw + j) * ws]. Zero padding by bounds checks.
template <typename acc_t, typename T>
TCV_FN acc_t conv_at(const T* xp, int64_t sxh, int64_t sxw, const acc_t* w, int64_t ws,
                     const Geom& g, int64_t oh, int64_t ow) {
  acc_t acc = acc_t(0);
  const int64_t h0 = oh * g.sh - g.ph, w0 = ow * g.sw - g.pw;
  for (int i = 0; i < g.kh; ++i) {
    const int64_t ih = h0 + static_cast<int64_t>(i) * g.dh;
    if (ih < 0 || ih >= g.H) continue;
    for (int j = 0; j < g.kw; ++j) {
      const int64_t iw = w0 + static_cast<int64_t>(j) * g.dw;
      if (iw < 0 || iw >= g.W) continue;
      acc += w[(i * g.kw + j) * ws] * static_cast<acc_t>(xp[ih * sxh + iw * sxw]);
    }
  }
  return acc;
}

// The output position that tap `i` of input coordinate `in` contributes to, or -1 when none:
// in = o * s - p + i * d  =>  o = (in + p - i * d) / s when divisible and 0 <= o < out.
// Strides 1 and 2 (uniform across a GPU warp) avoid the integer division.
TCV_FN int64_t tap_source(int64_t in, int i, int s, int p, int d, int64_t out) {
  const int64_t t = in + p - static_cast<int64_t>(i) * d;
  if (t < 0) return -1;
  int64_t o;
  if (s == 1) {
    o = t;
  } else if (s == 2) {
    if (t & 1) return -1;
    o = t >> 1;
  } else {
    if (t % s != 0) return -1;
    o = t / s;
  }
  return o < out ? o : -1;
}

// dx at input (ih, iw) of one plane: sum over the taps that read it of w * dz(oh, ow).
// `dz(oh, ow)` returns the (total) gradient of z as acc_t.
template <typename acc_t, typename DZ>
TCV_FN acc_t input_grad_at(const DZ& dz, const acc_t* w, int64_t ws, const Geom& g, int64_t ih,
                           int64_t iw) {
  acc_t acc = acc_t(0);
  for (int i = 0; i < g.kh; ++i) {
    const int64_t oh = tap_source(ih, i, g.sh, g.ph, g.dh, g.Ho);
    if (oh < 0) continue;
    for (int j = 0; j < g.kw; ++j) {
      const int64_t ow = tap_source(iw, j, g.sw, g.pw, g.dw, g.Wo);
      if (ow < 0) continue;
      acc += w[(i * g.kw + j) * ws] * dz(oh, ow);
    }
  }
  return acc;
}

// x under tap (i, j) of output (oh, ow), 0 in the padding.
template <typename acc_t, typename T>
TCV_FN acc_t tap_input(const T* xp, int64_t sxh, int64_t sxw, const Geom& g, int64_t oh, int64_t ow,
                       int i, int j) {
  const int64_t ih = oh * g.sh - g.ph + static_cast<int64_t>(i) * g.dh;
  const int64_t iw = ow * g.sw - g.pw + static_cast<int64_t>(j) * g.dw;
  if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) return acc_t(0);
  return static_cast<acc_t>(xp[ih * sxh + iw * sxw]);
}

// Folded BN + activation epilogue.
template <typename acc_t>
TCV_FN acc_t bn_act(Act a, acc_t z, acc_t scale, acc_t shift) {
  return act_forward(a, z * scale + shift);
}

// Gradient at u = z * scale + shift of y = act(u).
template <typename acc_t>
TCV_FN acc_t bn_act_grad_u(Act a, acc_t g, acc_t z, acc_t scale, acc_t shift) {
  return g * act_backward(a, z * scale + shift);
}

// Gradient of z (centred: zc = z - mean) from the gradient g of y = act(zc * scale + shift): the
// scale_shift_act backward's gz, which the train op's conv backward computes on the fly.
template <typename acc_t>
TCV_FN acc_t ssa_grad_z(Act a, acc_t g, acc_t zc, acc_t scale, acc_t shift) {
  return bn_act_grad_u<acc_t>(a, g, zc, scale, shift) * scale;
}

// Total gradient of z from the gradients of (z, mean, var): a = dmean / M, b = 2 dvar / M.
// use_b = false (no gradient reached var, e.g. the eval op): the b term is left out rather than
// multiplied by 0, since an infinite z or mean would make it 0 * inf = NaN.
template <typename acc_t>
TCV_FN acc_t stats_grad(acc_t gz, acc_t z, acc_t mean, acc_t a, acc_t b, bool use_b) {
  return use_b ? gz + a + b * (z - mean) : gz + a;
}

// Welford / Chan running statistics: count, mean and sum of squared deviations (M2). Merging
// partials in a fixed order makes the batch statistics deterministic and free of the
// cancellation of sum / sum-of-squares.
template <typename acc_t>
struct Welford {
  acc_t n, mean, m2;
};

template <typename acc_t>
TCV_FN Welford<acc_t> welford_init() {
  return Welford<acc_t>{acc_t(0), acc_t(0), acc_t(0)};
}

template <typename acc_t>
TCV_FN void welford_push(Welford<acc_t>& s, acc_t v) {
  s.n += acc_t(1);
  const acc_t d = v - s.mean;
  s.mean += d / s.n;
  s.m2 += d * (v - s.mean);
}

template <typename acc_t>
TCV_FN Welford<acc_t> welford_merge(const Welford<acc_t>& a, const Welford<acc_t>& b) {
  const acc_t n = a.n + b.n;
  if (b.n == acc_t(0)) return a;
  if (a.n == acc_t(0)) return b;
  const acc_t d = b.mean - a.mean;
  const acc_t fb = b.n / n;
  return Welford<acc_t>{n, a.mean + d * fb, a.m2 + b.m2 + d * d * a.n * fb};
}

// Biased variance of merged statistics.
template <typename acc_t>
TCV_FN acc_t welford_var(const Welford<acc_t>& s) {
  return s.n > acc_t(0) ? s.m2 / s.n : acc_t(0);
}

}  // namespace torchcv_ext::dwconv
