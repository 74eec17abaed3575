// CPU-only pieces of the dwconv_bn_act kernels shared by csrc/cpu/dwconv_bn_act.cpp (forward,
// eval, generic backward) and csrc/cpu/dwconv_bn_act_backward.cpp (the float32 backward): the
// vectorizable float activations, the phase-split padded plane of the NCHW kernels, and the
// float32 backward entry points. The per-element math every backend shares is in
// csrc/include/torchcv_ext/dwconv_bn_act.h.
#pragma once
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "act_f32.h"
#include "torchcv_ext/activations.h"
#include "torchcv_ext/dwconv_bn_act.h"
#include "torchcv_ext/dwconv_bn_act_host.h"

namespace torchcv_ext::dwconv::cpu {

using torchcv_ext::cpu::act_f32;
using torchcv_ext::cpu::act_grad_f32;
using torchcv_ext::cpu::exp_f32;

template <typename T>
using acc_of = std::conditional_t<std::is_same_v<T, double>, double, float>;

constexpr int64_t kRowBlock = 32;  // outputs per register block along W (NCHW)

// TCV_ACT_CASES (activations.h) runs a loop with `constexpr Act kA` per activation, inside a
// TCV_CPU_CLONES function (with_act's lambdas would not be inlined into the clones).

// ---- the phase-split padded plane of the NCHW kernels ------------------------------------------
// Per-task scratch: the padded plane, stored "phase-split" so that strided taps read unit-stride
// segments. Columns: padded column q is in column phase q % sw, slot q / sw (phases Lp apart, or
// whole phase planes apart with split_rows). Rows, two layouts:
//   default:    padded (r, q) at r * rs + (q % sw) * Lp + q / sw, rs = sw * Lp; output row oh
//               starts at oh * sh * rs (row_step = sh * rs).
//   split_rows: rows are phase-split too, each (row phase, column phase) a plane of Hp x Lp:
//               (r, q) at ((r % sh) * sw + q % sw) * Hp * Lp + (r / sh) * Lp + q / sw; output
//               row oh starts at oh * Lp (row_step = Lp, about Wo), so a whole output plane is
//               one unit-stride run per tap (the flat loops of the float32 backward).
// Either way output ow of tap (i, j) reads in[oh * row_step + off[t] + ow]. Padding cells are
// zeroed once (same geometry for every plane) and never written.
template <typename acc_t>
struct NchwScratch {
  int64_t Hn, Wn, Lp, rs, Hp, row_step;
  bool split_rows;
  std::vector<acc_t> buf, plane;
  std::vector<int64_t> off;
  // Per column phase: first padded data column q0 (q0 % sw == phase) and its cell offset slot.
  std::vector<int64_t> q0, slot;
  int64_t lo, hi;  // data columns [lo, hi) in padded coordinates
  // slack: columns past each phase's data that whole-block row loops may read (the forward's
  // nchw_row_f32 computes kRowBlock outputs at a time); 0 for loops that stop at Wo.
  explicit NchwScratch(const Geom& g, int64_t slack = kRowBlock, bool split_rows_ = false)
      : split_rows(split_rows_) {
    Hn = (g.Ho - 1) * g.sh + static_cast<int64_t>(g.kh - 1) * g.dh + 1;
    Wn = (g.Wo - 1) * g.sw + static_cast<int64_t>(g.kw - 1) * g.dw + 1;
    Lp = (Wn + g.sw - 1) / g.sw + slack;  // >= every index a whole row block reads, + 1
    rs = g.sw * Lp;
    Hp = split_rows ? (Hn + g.sh - 1) / g.sh : Hn;
    row_step = split_rows ? Lp : g.sh * rs;
    buf.assign(static_cast<size_t>(split_rows ? g.sh * g.sw * Hp * Lp : Hn * rs), acc_t(0));
    // Output plane (rows of Wo) + slack: a row's last block may spill into the next rows, which
    // are computed afterwards, or into the slack.
    plane.assign(static_cast<size_t>(g.Ho * g.Wo + slack), acc_t(0));
    off.resize(static_cast<size_t>(g.kh) * g.kw);
    for (int i = 0; i < g.kh; ++i) {
      for (int j = 0; j < g.kw; ++j) {
        const int64_t q = static_cast<int64_t>(j) * g.dw;
        off[i * g.kw + j] = row_base(static_cast<int64_t>(i) * g.dh, g) + phase_base(q % g.sw) + q / g.sw;
      }
    }
    lo = std::min<int64_t>(g.pw, Wn);
    hi = std::min<int64_t>(Wn, g.pw + g.W);
    for (int ph = 0; ph < g.sw; ++ph) {
      const int64_t q = lo + ((ph - lo % g.sw) + g.sw) % g.sw;
      q0.push_back(q);
      slot.push_back(phase_base(ph) + q / g.sw);
    }
  }

  // Cell offset of padded row r's column phase 0, slot 0 / of column phase ph within a row.
  int64_t row_base(int64_t r, const Geom& g) const {
    return split_rows ? (r % g.sh) * g.sw * Hp * Lp + (r / g.sh) * Lp : r * rs;
  }
  int64_t phase_base(int64_t ph) const { return ph * (split_rows ? Hp * Lp : Lp); }

  // buf <- input plane xp (NCHW rows of W), padding cells untouched (zero).
  template <typename T>
  void fill(const T* xp, const Geom& g) {
    for (int64_t r = 0; r < Hn; ++r) {
      const int64_t ih = r - g.ph;
      if (ih < 0 || ih >= g.H) continue;
      const T* xr = xp + ih * g.W - g.pw;  // xr[q] = x[ih, q - pw]
      acc_t* b = buf.data() + row_base(r, g);
      if (g.sw == 1) {
        for (int64_t q = lo; q < hi; ++q) b[q] = static_cast<acc_t>(xr[q]);
      } else {
        for (int ph = 0; ph < g.sw; ++ph) {
          acc_t* d = b + slot[ph];
          const T* src = xr + q0[ph];
          const int64_t cnt = q0[ph] < hi ? (hi - q0[ph] + g.sw - 1) / g.sw : 0;
          if (g.sw == 2) {  // constant stride: the compiler vectorizes the deinterleave
            for (int64_t k = 0; k < cnt; ++k) d[k] = static_cast<acc_t>(src[2 * k]);
          } else {
            for (int64_t k = 0; k < cnt; ++k) d[k] = static_cast<acc_t>(src[k * g.sw]);
          }
        }
      }
    }
  }

  // The transpose of fill: input plane gp <- the data cells of `src` (same geometry as buf);
  // inputs no output reads (beyond the padded window) get 0.
  template <typename T>
  void extract(const acc_t* src, const Geom& g, T* gp) const {
    for (int64_t ih = 0; ih < g.H; ++ih) {
      const int64_t r = ih + g.ph;
      T* gr = gp + ih * g.W - g.pw;  // gr[q] = g[ih, q - pw]
      if (r >= Hn) {
        std::fill(gp + ih * g.W, gp + (ih + 1) * g.W, T(0));
        continue;
      }
      const acc_t* b = src + row_base(r, g);
      for (int64_t q = std::max<int64_t>(hi, g.pw); q < g.pw + g.W; ++q) gr[q] = T(0);
      if (g.sw == 1) {
        for (int64_t q = lo; q < hi; ++q) gr[q] = static_cast<T>(b[q]);
      } else {
        for (int ph = 0; ph < g.sw; ++ph) {
          const acc_t* d = b + slot[ph];
          T* dst = gr + q0[ph];
          const int64_t cnt = q0[ph] < hi ? (hi - q0[ph] + g.sw - 1) / g.sw : 0;
          if (g.sw == 2) {
            for (int64_t k = 0; k < cnt; ++k) dst[2 * k] = static_cast<T>(d[k]);
          } else {
            for (int64_t k = 0; k < cnt; ++k) dst[k * g.sw] = static_cast<T>(d[k]);
          }
        }
      }
    }
  }
};

// ---- NCHW <-> pixel-major 16-channel tiles (dwconv_bn_act.cpp) ---------------------------------
// The (C, 1, kh, kw) weights wd by 16-channel block, as the tile kernels read them: (block, tap,
// 16), zero-padded to whole blocks.
inline std::vector<float> weights_by_block16(const float* wd, int64_t C, int64_t kk) {
  std::vector<float> w16(static_cast<size_t>((C + 15) / 16 * kk * 16), 0.0f);
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t t = 0; t < kk; ++t) w16[((c / 16) * kk + t) * 16 + c % 16] = wd[c * kk + t];
  }
  return w16;
}

// Tile <- pixels [0, P) of nc <= 16 NCHW planes (planes `pstride` apart, x at the first pixel),
// pixel p going to tile + dst(p) * 16, dst(p) = (p / W) * Wt + p % W; channels >= nc are zero.
void blk_fill_nchw_f32(const float* x, int64_t pstride, int64_t nc, int64_t P, int64_t W, int64_t Wt,
                       float* tile);
// nc <= 16 NCHW planes (planes `pstride` apart, y at the first pixel), pixels [0, P) <- acc[p * 16 + c].
void blk_store_nchw_f32(const float* acc, int64_t nc, int64_t P, float* y, int64_t pstride);

// ---- float32 backward (dwconv_bn_act_backward.cpp) ----------------------------------------------
// Same contracts as CpuBackend::ssa_backward / stats_backward (dwconv_bn_act_host.h), for float32
// tensors contiguous in NCHW or channels_last. Per-channel sums are combined from partials over a
// task grid fixed by the shape, in increasing order: deterministic whatever the thread count.
void ssa_backward_f32(const at::Tensor& grad, const at::Tensor& z, const at::Tensor& mean,
                      const at::Tensor& scale, const at::Tensor& shift, Act act, at::Tensor& gz,
                      at::Tensor& gscale, at::Tensor& gshift);
void stats_backward_f32(const at::Tensor& gz, const at::Tensor& a, const at::Tensor& b, bool use_b,
                        const at::Tensor& x, const at::Tensor& z, const at::Tensor& mean,
                        const at::Tensor& w, const Geom& g, const SsaGrad& ssa, at::Tensor& gx,
                        at::Tensor& gw);

}  // namespace torchcv_ext::dwconv::cpu
