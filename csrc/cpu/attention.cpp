// CPU kernels of the attention op. Two implementations behind the one op:
//  * default: ATen's CPU flash attention (at::_scaled_dot_product_flash_attention_for_cpu and its
//    backward; vectorized, GEMM-blocked), several times faster than the loops below. Its lse has
//    the op's meaning (natural-log row log-sum-exp of the scaled scores); out and the gradients
//    are returned in the op's (B, N, H, D) layout.
//  * TORCHCV_EXT_CPU_ATTENTION=tiled: the same tiled flash algorithm the CUDA kernels run (query
//    tiles x key tiles, online softmax in the log2 domain, P rounded to the input precision before
//    P @ V, backward recomputed from lse in a dK/dV pass over key tiles and a separate dQ pass),
//    with scalar loops in place of tensor-core tiles -- so the CPU tests (which run both) check
//    the CUDA kernels' bookkeeping (csrc/include/torchcv_ext/attention.h).
// Schemas: csrc/registration.cpp. Autograd / fake / autocast: torchcv_ext/ops/attention.py.
//
// Tiled kernel: accumulation in float (float64 for float64 inputs). Any head dim. Work items run
// in parallel (at::parallel_for over (batch * head, tile)); every output element is written by one
// item, so the results are deterministic.
#include <ATen/Dispatch.h>
#include <ATen/ops/_scaled_dot_product_flash_attention_for_cpu.h>
#include <ATen/ops/_scaled_dot_product_flash_attention_for_cpu_backward.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#include "torchcv_ext/attention_host.h"

namespace torchcv_ext::attn {
namespace {

template <typename T>
using acc_type = std::conditional_t<std::is_same_v<T, double>, double, float>;

// An operand of the tensor-core products: rounded to the input precision (exact for fp32/fp64).
template <typename T, typename A>
inline A mma_operand(A x) {
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
    return x;
  } else {
    return static_cast<A>(static_cast<T>(x));
  }
}

// Dot product with 8 independent partial sums (vectorizable without reassociation flags).
template <typename A>
inline A dot(const A* a, const A* b, int64_t n) {
  constexpr int kW = 8;
  A part[kW] = {};
  int64_t i = 0;
  for (; i + kW <= n; i += kW) {
    for (int j = 0; j < kW; ++j) part[j] += a[i + j] * b[i + j];
  }
  A s = 0;
  for (; i < n; ++i) s += a[i] * b[i];
  for (int j = 0; j < kW; ++j) s += part[j];
  return s;
}

// Copy `rows` rows (starting at row n0 of (b, h)) of an operand into a dense A buffer of
// `tile` rows; rows past the end are zero (the GPU kernels zero-fill them the same way).
template <typename T, typename A>
void load_tile(const Operand<const T>& op, int64_t b, int64_t h, int64_t n0, int64_t rows,
               int64_t tile, int64_t D, A* dst) {
  for (int64_t r = 0; r < tile; ++r) {
    A* d = dst + r * D;
    if (r < rows) {
      const T* s = op.row(b, h, n0 + r);
      for (int64_t i = 0; i < D; ++i) d[i] = static_cast<A>(s[i]);
    } else {
      std::fill(d, d + D, A(0));
    }
  }
}

template <typename T>
void forward(const FwdParams<T>& p) {
  using A = acc_type<T>;
  constexpr int64_t BM = kFwdBlockM, BN = kFwdBlockN;
  const int64_t D = p.D, n_qt = num_tiles(p.Nq, BM), n_kt = num_tiles(p.Nk, BN);
  const A scale_log2 = static_cast<A>(p.scale) * static_cast<A>(kLog2e);
  at::parallel_for(0, p.B * p.H * n_qt, 1, [&](int64_t begin, int64_t end) {
    std::vector<A> q(BM * D), k(BN * D), v(BN * D), acc(BM * D), x(BN), m(BM), l(BM);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t bh = item / n_qt, qt = item % n_qt, b = bh / p.H, h = bh % p.H;
      const int64_t q0 = qt * BM, rows = tile_rows(p.Nq, BM, qt);
      load_tile(p.q, b, h, q0, rows, BM, D, q.data());
      std::fill(acc.begin(), acc.end(), A(0));
      std::fill(m.begin(), m.end(), neg_inf<A>());
      std::fill(l.begin(), l.end(), A(0));
      for (int64_t kt = 0; kt < n_kt; ++kt) {
        const int64_t k0 = kt * BN, keys = tile_rows(p.Nk, BN, kt);
        load_tile(p.k, b, h, k0, keys, BN, D, k.data());
        load_tile(p.v, b, h, k0, keys, BN, D, v.data());
        for (int64_t r = 0; r < rows; ++r) {
          A tile_max = neg_inf<A>();
          for (int64_t c = 0; c < BN; ++c) {
            x[c] = masked_score(dot(&q[r * D], &k[c * D], D), scale_log2, k0 + c, p.Nk);
            tile_max = fmax2(tile_max, x[c]);
          }
          const A alpha = online_rescale(m[r], tile_max);
          A* o = &acc[r * D];
          for (int64_t i = 0; i < D; ++i) o[i] *= alpha;
          A sum = 0;
          for (int64_t c = 0; c < BN; ++c) {
            const A w = softmax_weight(x[c], m[r]);
            sum += w;
            const A wr = mma_operand<T>(w);
            const A* vr = &v[c * D];
            for (int64_t i = 0; i < D; ++i) o[i] += wr * vr[i];
          }
          l[r] = alpha * l[r] + sum;
        }
      }
      for (int64_t r = 0; r < rows; ++r) {
        const A inv = inv_rowsum(l[r]);
        T* o = p.o.row(b, h, q0 + r);
        for (int64_t i = 0; i < D; ++i) o[i] = static_cast<T>(acc[r * D + i] * inv);
        p.lse[bh * p.Nq + q0 + r] = static_cast<stat_t<T>>(row_lse(m[r], l[r]));
      }
    }
  });
}

template <typename T>
void backward(const BwdParams<T>& p) {
  using A = acc_type<T>;
  using S = stat_t<T>;
  const int64_t D = p.D, BH = p.B * p.H;
  const A scale_log2 = static_cast<A>(p.scale) * static_cast<A>(kLog2e);
  const A scale = static_cast<A>(p.scale);

  // Preprocess: Delta = rowsum(dO * O).
  at::parallel_for(0, BH * p.Nq, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t bh = i / p.Nq, n = i % p.Nq, b = bh / p.H, h = bh % p.H;
      const T* go = p.dout.row(b, h, n);
      const T* o = p.o.row(b, h, n);
      A s = 0;
      for (int64_t d = 0; d < D; ++d) s += static_cast<A>(go[d]) * static_cast<A>(o[d]);
      p.delta[i] = static_cast<S>(s);
    }
  });

  // dK, dV: one item per (batch * head, key tile), looping over query tiles.
  {
    constexpr int64_t BN = kBwdBlockN, BM = 64;
    const int64_t n_kt = num_tiles(p.Nk, BN), n_qt = num_tiles(p.Nq, BM);
    at::parallel_for(0, BH * n_kt, 1, [&](int64_t begin, int64_t end) {
      std::vector<A> k(BN * D), v(BN * D), dk(BN * D), dv(BN * D), q(BM * D), go(BM * D);
      std::vector<A> lse2(BM), delta(BM);
      for (int64_t item = begin; item < end; ++item) {
        const int64_t bh = item / n_kt, kt = item % n_kt, b = bh / p.H, h = bh % p.H;
        const int64_t k0 = kt * BN, keys = tile_rows(p.Nk, BN, kt);
        load_tile(p.k, b, h, k0, keys, BN, D, k.data());
        load_tile(p.v, b, h, k0, keys, BN, D, v.data());
        std::fill(dk.begin(), dk.end(), A(0));
        std::fill(dv.begin(), dv.end(), A(0));
        for (int64_t qt = 0; qt < n_qt; ++qt) {
          const int64_t q0 = qt * BM, rows = tile_rows(p.Nq, BM, qt);
          load_tile(p.q, b, h, q0, rows, BM, D, q.data());
          load_tile(p.dout, b, h, q0, rows, BM, D, go.data());
          for (int64_t r = 0; r < rows; ++r) {
            lse2[r] = lse_to_log2(static_cast<A>(p.lse[bh * p.Nq + q0 + r]));
            delta[r] = static_cast<A>(p.delta[bh * p.Nq + q0 + r]);
          }
          for (int64_t c = 0; c < keys; ++c) {
            A* dkc = &dk[c * D];
            A* dvc = &dv[c * D];
            for (int64_t r = 0; r < rows; ++r) {
              const A x = masked_score(dot(&q[r * D], &k[c * D], D), scale_log2, k0 + c, p.Nk);
              const A pr = prob_from_lse(x, lse2[r]);
              const A dp = dot(&go[r * D], &v[c * D], D);
              const A ds = mma_operand<T>(dsoftmax(pr, dp, delta[r]));
              const A pm = mma_operand<T>(pr);
              const A* qr = &q[r * D];
              const A* gr = &go[r * D];
              for (int64_t i = 0; i < D; ++i) {
                dvc[i] += pm * gr[i];
                dkc[i] += ds * qr[i];
              }
            }
          }
        }
        for (int64_t c = 0; c < keys; ++c) {
          T* dkr = p.dk.row(b, h, k0 + c);
          T* dvr = p.dv.row(b, h, k0 + c);
          for (int64_t i = 0; i < D; ++i) {
            dkr[i] = static_cast<T>(dk[c * D + i] * scale);
            dvr[i] = static_cast<T>(dv[c * D + i]);
          }
        }
      }
    });
  }

  // dQ: one item per (batch * head, query tile), looping over key tiles.
  {
    constexpr int64_t BM = kDqBlockM, BN = 64;  // (the tile size does not change the results)
    const int64_t n_qt = num_tiles(p.Nq, BM), n_kt = num_tiles(p.Nk, BN);
    at::parallel_for(0, BH * n_qt, 1, [&](int64_t begin, int64_t end) {
      std::vector<A> q(BM * D), go(BM * D), dq(BM * D), k(BN * D), v(BN * D), lse2(BM), delta(BM);
      for (int64_t item = begin; item < end; ++item) {
        const int64_t bh = item / n_qt, qt = item % n_qt, b = bh / p.H, h = bh % p.H;
        const int64_t q0 = qt * BM, rows = tile_rows(p.Nq, BM, qt);
        load_tile(p.q, b, h, q0, rows, BM, D, q.data());
        load_tile(p.dout, b, h, q0, rows, BM, D, go.data());
        for (int64_t r = 0; r < rows; ++r) {
          lse2[r] = lse_to_log2(static_cast<A>(p.lse[bh * p.Nq + q0 + r]));
          delta[r] = static_cast<A>(p.delta[bh * p.Nq + q0 + r]);
        }
        std::fill(dq.begin(), dq.end(), A(0));
        for (int64_t kt = 0; kt < n_kt; ++kt) {
          const int64_t k0 = kt * BN, keys = tile_rows(p.Nk, BN, kt);
          load_tile(p.k, b, h, k0, keys, BN, D, k.data());
          load_tile(p.v, b, h, k0, keys, BN, D, v.data());
          for (int64_t r = 0; r < rows; ++r) {
            A* dqr = &dq[r * D];
            for (int64_t c = 0; c < keys; ++c) {
              const A x = masked_score(dot(&q[r * D], &k[c * D], D), scale_log2, k0 + c, p.Nk);
              const A pr = prob_from_lse(x, lse2[r]);
              const A dp = dot(&go[r * D], &v[c * D], D);
              const A ds = mma_operand<T>(dsoftmax(pr, dp, delta[r]));
              const A* kc = &k[c * D];
              for (int64_t i = 0; i < D; ++i) dqr[i] += ds * kc[i];
            }
          }
        }
        for (int64_t r = 0; r < rows; ++r) {
          T* dqr = p.dq.row(b, h, q0 + r);
          for (int64_t i = 0; i < D; ++i) dqr[i] = static_cast<T>(dq[r * D + i] * scale);
        }
      }
    });
  }
}

// TORCHCV_EXT_CPU_ATTENTION=tiled selects the tiled kernel (read at every call: tests switch it).
bool tiled_kernel() {
  const char* e = std::getenv("TORCHCV_EXT_CPU_ATTENTION");
  return e != nullptr && std::strcmp(e, "tiled") == 0;
}

// `dst` (allocated in the op's layout) unless `src` already has its strides.
at::Tensor in_layout(const at::Tensor& src, at::Tensor& dst) {
  if (src.strides() == dst.strides()) return src;
  dst.copy_(src);
  return dst;
}

std::tuple<at::Tensor, at::Tensor> attention_cpu(const at::Tensor& q, const at::Tensor& k,
                                                 const at::Tensor& v, std::optional<double> scale) {
  check_device("attention", q, c10::DeviceType::CPU);
  FwdSetup s = forward_setup("attention", q, k, v, scale, /*align=*/0);
  if (empty_forward(s)) return {s.out, s.lse};
  if (!tiled_kernel()) {
    auto [o, l] = at::_scaled_dot_product_flash_attention_for_cpu(s.q, s.k, s.v, 0.0, false, {}, s.scale);
    s.lse.copy_(l);  // ATen's is stored (B, N, H)
    return {in_layout(o, s.out), s.lse};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "attention_cpu",
                                  [&] { forward(fwd_params<scalar_t>(s)); });
  return {s.out, s.lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward_cpu(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, std::optional<double> scale) {
  check_device("_attention_backward", q, c10::DeviceType::CPU);
  BwdSetup s = backward_setup("_attention_backward", dout, q, k, v, out, lse, scale, /*align=*/0);
  if (empty_backward(s)) return {s.dq, s.dk, s.dv};
  if (!tiled_kernel()) {
    auto [dq, dk, dv] = at::_scaled_dot_product_flash_attention_for_cpu_backward(
        s.dout, s.q, s.k, s.v, s.out, s.lse, 0.0, false, {}, s.scale);
    return {in_layout(dq, s.dq), in_layout(dk, s.dk), in_layout(dv, s.dv)};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "attention_backward_cpu",
                                  [&] { backward(bwd_params<scalar_t>(s)); });
  return {s.dq, s.dk, s.dv};
}

}  // namespace

TORCH_LIBRARY_IMPL(torchcv_ext, CPU, m) {
  m.impl("attention", &attention_cpu);
  m.impl("_attention_backward", &attention_backward_cpu);
}

}  // namespace torchcv_ext::attn
