// Flash-style attention: the tiling and online-softmax bookkeeping of the CUDA kernels
// (csrc/cuda/attention*.cu, attention_mma.cuh; run on the CPU by the CUDA emulator).
// No torch headers here, so the CUDA kernel translation units stay light.
//
// Notation: q (B, H, Nq, D), k and v (B, H, Nk, D); every row is unit-stride along D, the other
// dims have arbitrary strides (in elements). Scores are kept in the log2 domain:
//   x = (q . k) * scale * log2(e),
// so a softmax weight is exp2(x - m) and the natural log-sum-exp of the row of q . k * scale is
//   lse = (m + log2(l)) * ln(2),  m = max_j x_j,  l = sum_j exp2(x_j - m).
//
// Forward (FlashAttention-2): for a tile of kBlockM query rows, loop over tiles of kBlockN keys;
// per tile: x = masked scores (key >= Nk -> -inf), m' = max(m, rowmax(x)), alpha = exp2(m - m'),
// p = exp2(x - m'), l = alpha * l + rowsum(p), acc = alpha * acc + p @ V. At the end out = acc / l
// and lse as above. P enters the P @ V product rounded to the input precision (tensor-core
// operands on the GPU).
//
// Backward (recompute from lse): Delta_i = sum_d dO_id * O_id (preprocess), then for a key tile
// looping over query tiles: P = exp2(x - lse * log2(e)), dV += P^T dO, dP = dO V^T,
// dS = P * (dP - Delta), dK += dS^T Q * scale; and in a separate pass for a query tile looping over
// key tiles: dQ += dS K * scale (no atomics: deterministic).
#pragma once
#include <cmath>
#include <cstdint>

#include "torchcv_ext/macros.h"

namespace torchcv_ext::attn {

// Constants in double; cast to the accumulation type where used (float on the GPU).
constexpr double kLog2e = 1.4426950408889634073599;
constexpr double kLn2 = 0.6931471805599453094172;

// ---- tiles ----
TCV_FN int64_t num_tiles(int64_t n, int64_t tile) { return (n + tile - 1) / tile; }
// Rows of tile `t` that lie inside a sequence of length n (the last tile may be partial).
TCV_FN int64_t tile_rows(int64_t n, int64_t tile, int64_t t) {
  const int64_t r = n - t * tile;
  return r < tile ? r : tile;
}

// ---- scalar math, float and double (double is CPU only) ----
TCV_FN float fexp2(float x) { return exp2f(x); }
TCV_FN double fexp2(double x) { return exp2(x); }
TCV_FN float flog2(float x) { return log2f(x); }
TCV_FN double flog2(double x) { return log2(x); }
template <typename A>
TCV_FN A fmax2(A a, A b) { return a > b ? a : b; }
template <typename A>
TCV_FN A neg_inf() { return -static_cast<A>(INFINITY); }

// Score of key `col` in the log2 domain; keys past the end of the sequence are masked out.
template <typename A>
TCV_FN A masked_score(A dot, A scale_log2, int64_t col, int64_t nk) {
  return col < nk ? dot * scale_log2 : neg_inf<A>();
}

// Online-softmax step of one row: given the running max m (log2 domain, -inf before the first
// tile) and the max of the new tile's scores, update m and return the factor alpha by which the
// running sum and accumulator must be rescaled (0 before the first tile).
template <typename A>
TCV_FN A online_rescale(A& m, A tile_max) {
  const A m_new = fmax2(m, tile_max);
  const A alpha = m == neg_inf<A>() ? A(0) : fexp2(m - m_new);
  m = m_new;
  return alpha;
}

// Softmax weight of a score x given the row's running max m: exp2(x - m), with m = -inf (every
// score so far -inf or NaN) read as 0, so that a masked or -inf score weighs 0 and a NaN score
// weighs NaN (FlashAttention's rule). The select depends on the row only: hoisted out of the loop.
template <typename A>
TCV_FN A softmax_weight(A x, A m) {
  return fexp2(x - (m == neg_inf<A>() ? A(0) : m));
}

// NaN and +-Inf as eager softmax(q k^T * scale) @ v (checked by tools/cuda_emu/cases.py and, on
// a GPU, python_tests/test_attention.py: *_nonfinite_as_eager). fmax2 need not propagate NaN (the
// kernels' maxima may skip a NaN score): a NaN score still weighs NaN (softmax_weight) and makes
// l and the row's output NaN; a +Inf score makes m = +Inf and its weight exp2(inf - inf) = NaN.
// Nk = 0 never reaches the kernels (attention_host.h: empty_forward writes out = 0, lse = -inf),
// so l = 0 means every score of the row is -inf, and the row is NaN (0 * 1/0) as in eager softmax.
template <typename A>
TCV_FN A inv_rowsum(A l) { return A(1) / l; }
// The natural log-sum-exp of the row: NaN for a NaN row, so its backward is NaN too.
template <typename A>
TCV_FN A row_lse(A m, A l) {
  return (m + flog2(l)) * static_cast<A>(kLn2);
}

// Backward: the probability of score x (log2 domain) from the row's saved lse (natural log),
// passed as lse * log2(e). Masked keys (x = -inf) give 0; an empty row (lse = -inf) has no keys.
template <typename A>
TCV_FN A prob_from_lse(A x, A lse_log2) { return fexp2(x - lse_log2); }
template <typename A>
TCV_FN A lse_to_log2(A lse) { return static_cast<A>(lse) * static_cast<A>(kLog2e); }

// dS = P * (dP - Delta)
template <typename A>
TCV_FN A dsoftmax(A p, A dp, A delta) { return p * (dp - delta); }

// ---- kernel arguments ----
// One (B, H, N, D) operand: element (b, h, n, d) at ptr[b * sb + h * sh + n * sn + d].
template <typename T>
struct Operand {
  T* ptr;
  int64_t sb, sh, sn;
  TCV_FN T* row(int64_t b, int64_t h, int64_t n) const { return ptr + b * sb + h * sh + n * sn; }
};

// lse (and the Delta workspace) are float32, float64 for float64 inputs.
template <typename T> struct StatType { using type = float; };
template <> struct StatType<double> { using type = double; };
template <typename T> using stat_t = typename StatType<T>::type;

// Forward: out and lse (contiguous (B, H, Nq)) from q, k, v.
template <typename T>
struct FwdParams {
  Operand<const T> q, k, v;
  Operand<T> o;
  stat_t<T>* lse;
  int64_t B, H, Nq, Nk, D;
  double scale;  // softmax scale (1/sqrt(D) by default); the CUDA kernels use it as float
};

// Backward: dq, dk, dv from grad_out (do), q, k, v, out, lse. delta is a (B, H, Nq)
// workspace filled by the preprocess step.
template <typename T>
struct BwdParams {
  Operand<const T> q, k, v, o, dout;
  Operand<T> dq, dk, dv;
  const stat_t<T>* lse;
  stat_t<T>* delta;
  int64_t B, H, Nq, Nk, D;
  double scale;
  // CUDA fp16 / bf16 only: a zeroed float32 [B * H][Nq][D] buffer selects the atomic-dQ backward
  // (attention_mma.cuh, dkdv_mma_kernel<kAtomicDq>); null: the separate, deterministic dQ pass.
  float* dq_acc = nullptr;
};

// Tile sizes of the CUDA tensor-core (fp16 / bf16) kernels; the CPU tiled kernel uses the same
// tiles (its dK/dV pass always takes 64-row query tiles: the tile size does not change its
// results). The fp32 SIMT kernels (attention_f32.cu) use their own: 64 rows x 32-row streamed
// tiles, so with the CPU kernel they differ only in summation order.
constexpr int kFwdBlockM = 64;  // query rows per CTA (4 warps x 16 rows)
constexpr int kFwdBlockN = 64;  // keys per K/V tile
constexpr int kBwdBlockN = 64;  // keys per CTA in the dK/dV pass (4 warps x 16 keys)
// Query rows per tile in the dK/dV pass (fewer at D = 128 to bound the registers).
constexpr int bwd_block_m(int d) { return d >= 128 ? 32 : 64; }
constexpr int kDqBlockM = 64;   // query rows per CTA in the dQ pass
// Keys per K/V tile in the dQ pass (fewer at D = 128: the double-buffered tiles then fit the
// 99 KiB of shared memory of sm_86 / sm_89 GPUs).
constexpr int dq_block_n(int d) { return d >= 128 ? 32 : 64; }
// The CUDA launchers taking these params: csrc/cuda/attention_launch.h.

}  // namespace torchcv_ext::attn
