// Flash attention on tensor cores (fp16 / bf16 operands, fp32 accumulation) with
// mma.sync.aligned.m16n8k16 (sm_80+). Instantiated per dtype in attention_f16.cu and
// attention_bf16.cu for head dims 32, 64 and 128. Bookkeeping shared with the CPU kernel:
// csrc/include/torchcv_ext/attention.h.
//
// Fragment layouts of m16n8k16 (PTX ISA), lane = 4 * g + t (g = lane / 4, t = lane % 4):
//   A (16 x 16, row major), 4 x 32-bit regs: a0 = A[g][2t, 2t+1], a1 = A[g+8][2t, 2t+1],
//                                            a2 = A[g][2t+8, 2t+9], a3 = A[g+8][2t+8, 2t+9]
//   B (16 x 8, "col": B[k][n]), 2 regs:      b0 = B[2t, 2t+1][g], b1 = B[2t+8, 2t+9][g]
//   C (16 x 8, fp32), 4 floats:              c0, c1 = C[g][2t, 2t+1], c2, c3 = C[g+8][2t, 2t+1]
// (the lower half of a 32-bit register holds the lower index). Two C tiles covering columns
// [16j, 16j + 16) are exactly the A fragment of k-step j, so P and dS go from accumulators to
// operands in registers. Every operand tile is stored row-major in shared memory as it is in
// global memory ([seq][head dim]). B operands whose k index is the head dim (S = Q K^T,
// dP = dO V^T, ...) are read as 32-bit words (k contiguous); those whose k index is a sequence
// index (P V, P^T dO, dS^T Q, dS K) with ldmatrix.trans, which transposes 8 x 8 blocks on load.
//
// Shared-memory rows are padded by 8 elements (16 bytes): the 32-bit fragment reads of a warp
// (8 rows x 4 words) and the 8 row addresses of each ldmatrix phase then fall in distinct banks,
// and rows stay 16-byte aligned for the 16-byte global -> shared copies and ldmatrix.
#pragma once
#include <algorithm>

#include "attention_common.cuh"
#include "attention_ptx.cuh"

namespace torchcv_ext::attn {

template <typename T>
struct Mma;

template <>
struct Mma<__half> {
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
  static __device__ __forceinline__ __half cvt(float x) { return __float2half_rn(x); }
  static __device__ __forceinline__ void run(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
    ptx::mma_m16n8k16_f16(c, a, b0, b1);
  }
};

template <>
struct Mma<__nv_bfloat16> {
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
  static __device__ __forceinline__ __nv_bfloat16 cvt(float x) { return __float2bfloat16_rn(x); }
  static __device__ __forceinline__ void run(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
    ptx::mma_m16n8k16_bf16(c, a, b0, b1);
  }
};

template <typename T>
__device__ __forceinline__ uint32_t lds32(const T* p) {
  return *reinterpret_cast<const uint32_t*>(p);
}

// A fragment of rows [r0, r0 + 16), columns [c0, c0 + 16) of a row-major shared tile.
template <typename T>
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const T* s, int ld, int r0, int c0, int g,
                                       int t) {
  a[0] = lds32(s + (r0 + g) * ld + c0 + 2 * t);
  a[1] = lds32(s + (r0 + g + 8) * ld + c0 + 2 * t);
  a[2] = lds32(s + (r0 + g) * ld + c0 + 2 * t + 8);
  a[3] = lds32(s + (r0 + g + 8) * ld + c0 + 2 * t + 8);
}

// A fragment of k-step j from the accumulators of the C tiles 2j and 2j+1.
template <typename T, int NT>
__device__ __forceinline__ void acc_to_a(uint32_t (&a)[4], const float (&c)[NT][4], int j) {
  a[0] = Mma<T>::pack(c[2 * j][0], c[2 * j][1]);
  a[1] = Mma<T>::pack(c[2 * j][2], c[2 * j][3]);
  a[2] = Mma<T>::pack(c[2 * j + 1][0], c[2 * j + 1][1]);
  a[3] = Mma<T>::pack(c[2 * j + 1][2], c[2 * j + 1][3]);
}

// b0, b1 of the n-tiles at columns n0 and n0 + 8 for the k-step at rows k0 of B[k][n] = s[k][n]
// (s: row-major shared tile [k][ld]), with one ldmatrix.x4.trans: lane l gives the address of
// row k0 + (l & 7) + 8 * ((l >> 3) & 1), columns n0 + 8 * (l >> 4) (matrices 0..3 = (k0, n0),
// (k0 + 8, n0), (k0, n0 + 8), (k0 + 8, n0 + 8)); with .trans, register i of lane 4g + t holds
// matrix i's elements [2t][g], [2t + 1][g], which is b0 (i even) or b1 (i odd) of the mma.
template <typename T>
__device__ __forceinline__ void ldsm_b_trans(uint32_t (&b)[4], const T* s, int ld, int k0, int n0,
                                             int lane) {
  const T* p = s + (k0 + (lane & 7) + ((lane >> 3) & 1) * 8) * ld + n0 + (lane >> 4) * 8;
  ptx::ldmatrix_x4_trans(b, p);
}

// C[NT tiles of 8 columns] += A (16 x 16K) x B with B[k][n] = s[k][n] (row-major shared tile,
// k = its row): the products whose k index is a sequence index. NT is even.
template <typename T, int NT, int KSTEPS, typename AOf>
__device__ __forceinline__ void mma_ab(float (&c)[NT][4], AOf&& a_of, const T* s, int ld, int lane) {
  static_assert(NT % 2 == 0, "mma_ab: NT must be even");
#pragma unroll
  for (int kk = 0; kk < KSTEPS; ++kk) {
    uint32_t a[4];
    a_of(kk, a);
#pragma unroll
    for (int nt = 0; nt < NT; nt += 2) {
      uint32_t b[4];
      ldsm_b_trans(b, s, ld, kk * 16, nt * 8, lane);
      Mma<T>::run(c[nt], a, b[0], b[1]);
      Mma<T>::run(c[nt + 1], a, b[2], b[3]);
    }
  }
}

// C[NT tiles of 8 columns] += A (16 x 16K) x B where B[k][n] = s[n][k] (s: row-major shared tile,
// n = its row, k = its column), i.e. C = A s^T. `a_of(kk, a)` gives the A fragment of k-step kk.
template <typename T, int NT, int KSTEPS, typename AOf>
__device__ __forceinline__ void mma_abt(float (&c)[NT][4], AOf&& a_of, const T* s, int ld, int g,
                                        int t) {
#pragma unroll
  for (int kk = 0; kk < KSTEPS; ++kk) {
    uint32_t a[4];
    a_of(kk, a);
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const T* row = s + (nt * 8 + g) * ld + kk * 16 + 2 * t;
      Mma<T>::run(c[nt], a, lds32(row), lds32(row + 8));
    }
  }
}

template <int NT>
__device__ __forceinline__ void zero(float (&c)[NT][4]) {
#pragma unroll
  for (int i = 0; i < NT; ++i) c[i][0] = c[i][1] = c[i][2] = c[i][3] = 0.f;
}

// Global -> shared copies with cp.async (ptx::cp_async_16, commit, wait): they land in shared
// memory after cp_async_wait_all() (each thread waits for its own copies; a __syncthreads() then
// publishes the tile to the CTA).
using ptx::cp_async_16;
using ptx::cp_async_commit;
using ptx::cp_async_wait_all;

// Copy rows [n0, n0 + ROWS) of an operand (D contiguous elements each, 16-byte aligned) into a
// row-major shared tile dst[ROWS][lds] with 16-byte cp.async copies, as one commit group. Rows at
// or past `n` are zero-filled by the copy (source size 0; the source address is then row 0,
// which exists since n > 0).
template <typename T, int D, int ROWS, int NTHREADS>
__device__ __forceinline__ void load_tile_async(const Operand<const T>& op, int64_t b, int64_t h,
                                                int64_t n0, int64_t n, T* dst, int lds) {
  constexpr int kVec = 8;  // 16 bytes
  constexpr int kChunksPerRow = D / kVec;
  for (int c = threadIdx.x; c < ROWS * kChunksPerRow; c += NTHREADS) {
    const int r = c / kChunksPerRow, col = (c % kChunksPerRow) * kVec;
    const bool valid = n0 + r < n;
    cp_async_16(dst + r * lds + col, op.row(b, h, valid ? n0 + r : 0) + col, valid);
  }
  cp_async_commit();
}

// ------------------------------------------------------------------------------------------------
// Forward. CTA = 4 warps = kFwdBlockM (64) query rows, warp w owns rows [16w, 16w + 16). Loop over
// K/V tiles of kFwdBlockN (64) keys: S = Q K^T (Q fragments kept in registers), online softmax on
// the accumulators (each thread holds 2 rows x 2 columns per 8-column tile; row statistics are
// reduced over the 4 threads of a quad), O = alpha * O + P V. Copies overlap compute (FA2 order):
// V_j is fetched while S_j and the softmax are computed, K_{j+1} while P V_j is.
// ------------------------------------------------------------------------------------------------
template <int D>
constexpr int fwd_smem_bytes() {
  return (kFwdBlockM + 2 * kFwdBlockN) * (D + 8) * 2;
}

template <typename T, int D>
__global__ void __launch_bounds__(128) fwd_mma_kernel(const FwdParams<T> p, int64_t n_qt,
                                                      float scale_log2) {
  constexpr int BM = kFwdBlockM, BN = kFwdBlockN, LDS = D + 8;
  constexpr int NT_S = BN / 8, NT_O = D / 8, KD = D / 16, KN = BN / 16;
  extern __shared__ __align__(16) unsigned char smem[];
  T* sQ = reinterpret_cast<T*>(smem);  // [BM][LDS]
  T* sK = sQ + BM * LDS;               // [BN][LDS]
  T* sV = sK + BN * LDS;               // [BN][LDS]

  const int64_t bh = blockIdx.x / n_qt, qt = blockIdx.x % n_qt;
  const int64_t b = bh / p.H, h = bh % p.H;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int64_t q0 = qt * BM;

  load_tile_async<T, D, BM, 128>(p.q, b, h, q0, p.Nq, sQ, LDS);
  load_tile_async<T, D, BN, 128>(p.k, b, h, 0, p.Nk, sK, LDS);
  cp_async_wait_all();
  __syncthreads();
  uint32_t qf[KD][4];
#pragma unroll
  for (int kk = 0; kk < KD; ++kk) load_a(qf[kk], sQ, LDS, warp * 16, kk * 16, g, t);

  float o[NT_O][4];
  zero(o);
  float m[2] = {neg_inf<float>(), neg_inf<float>()};
  float l[2] = {0.f, 0.f};  // per-thread partial row sums (reduced over the quad at the end)

  const int64_t n_kt = num_tiles(p.Nk, BN);
  for (int64_t kt = 0; kt < n_kt; ++kt) {
    const int64_t k0 = kt * BN;
    // K_kt has landed (this thread's copies; the barrier makes every thread's visible) and every
    // warp is done reading V_{kt-1}, so fetch V_kt.
    cp_async_wait_all();
    __syncthreads();
    load_tile_async<T, D, BN, 128>(p.v, b, h, k0, p.Nk, sV, LDS);

    float s[NT_S][4];
    zero(s);
    mma_abt<T, NT_S, KD>(s, [&](int kk, uint32_t(&a)[4]) {
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = qf[kk][i];
    }, sK, LDS, g, t);

    float tmax[2] = {neg_inf<float>(), neg_inf<float>()};
#pragma unroll
    for (int nt = 0; nt < NT_S; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t col = k0 + nt * 8 + 2 * t + (e & 1);
        s[nt][e] = masked_score(s[nt][e], scale_log2, col, p.Nk);
        tmax[e >> 1] = fmax2(tmax[e >> 1], s[nt][e]);
      }
    }
    float alpha[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) alpha[i] = online_rescale(m[i], quad_max(tmax[i]));
    float rs[2] = {0.f, 0.f};
#pragma unroll
    for (int nt = 0; nt < NT_S; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[nt][e] = softmax_weight(s[nt][e], m[e >> 1]);
        rs[e >> 1] += s[nt][e];
      }
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) l[i] = alpha[i] * l[i] + rs[i];
#pragma unroll
    for (int nt = 0; nt < NT_O; ++nt) {
      o[nt][0] *= alpha[0];
      o[nt][1] *= alpha[0];
      o[nt][2] *= alpha[1];
      o[nt][3] *= alpha[1];
    }
    // V_kt has landed and is visible; every warp is done reading K_kt, so fetch K_{kt+1}.
    cp_async_wait_all();
    __syncthreads();
    if (kt + 1 < n_kt) load_tile_async<T, D, BN, 128>(p.k, b, h, k0 + BN, p.Nk, sK, LDS);
    // O += P V: B[k = key][n = d] = V[key][d].
    mma_ab<T, NT_O, KN>(o, [&](int kk, uint32_t(&a)[4]) { acc_to_a<T>(a, s, kk); }, sV, LDS, lane);
  }

#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const float lsum = quad_sum(l[i]);
    const int64_t r = q0 + warp * 16 + g + 8 * i;
    if (r < p.Nq) {
      const float inv = inv_rowsum(lsum);
      T* orow = p.o.row(b, h, r);
#pragma unroll
      for (int nt = 0; nt < NT_O; ++nt) {
        *reinterpret_cast<uint32_t*>(orow + nt * 8 + 2 * t) =
            Mma<T>::pack(o[nt][2 * i] * inv, o[nt][2 * i + 1] * inv);
      }
      if (t == 0) p.lse[bh * p.Nq + r] = row_lse(m[i], lsum);
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Backward, dK / dV pass. CTA = 4 warps = kBwdBlockN (64) keys, warp w owns keys [16w, 16w + 16).
// Loop over query tiles of BMQ rows, computing transposed products so that the key rows stay in
// the accumulator rows:
//   S^T = K Q^T, P^T = exp2(S^T * scale * log2e - lse_q * log2e), dV += P^T dO,
//   dP^T = V dO^T, dS^T = P^T * (dP^T - Delta_q), dK += dS^T Q;  dK *= scale at the end.
// Q, dO, lse and Delta tiles are double-buffered: tile i + 1 is fetched (cp.async) while tile i
// is computed on, with one barrier per tile.
// ------------------------------------------------------------------------------------------------
//
// kAtomicDq (p.dq_acc set): the pass also produces dQ, FlashAttention-2 style, instead of the
// separate dQ pass recomputing S and dP (5 tile products per tile instead of 7): each warp writes
// its dS^T fragments to shared memory as dS[query][key], and after a barrier the 4 warps split
// dQ_tile += dS K (BMQ x D) by 16-row blocks (and column halves at D = 128), adding their
// fragments into the float32 accumulator p.dq_acc with atomicAdd (dq_convert_kernel scales and
// converts it afterwards). Not deterministic (atomic order): deterministic mode keeps the
// separate pass.
template <int D, bool kAtomicDq = false>
constexpr int dkdv_smem_bytes() {
  constexpr int BMQ = bwd_block_m(D);
  return (2 * kBwdBlockN + 4 * BMQ) * (D + 8) * 2 + 4 * BMQ * 4 +
         (kAtomicDq ? BMQ * (kBwdBlockN + 8) * 2 : 0);
}

// Query tile qt of the dK/dV pass: Q and dO go to shared memory by cp.async; this thread's row
// (threadIdx.x < BMQ) of lse and Delta is returned in registers, to be stored to shared
// memory by the caller (rows past Nq: lse = +inf, zero Q and dO rows; the caller gives them
// P = 0). The caller stores them after the tile's MMAs, so the global-load latency is hidden
// behind them instead of stalling the first warps at the top of every tile.
struct RowStats {
  float lse = INFINITY, delta = 0.f;  // raw loads: nothing consumes them until the store
};

template <typename T, int D, int BMQ>
__device__ __forceinline__ RowStats stage_query_tile(const BwdParams<T>& p, int64_t bh, int64_t b,
                                                     int64_t h, int64_t qt, T* sQ, T* sdO) {
  static_assert(BMQ <= 128, "one lse / Delta row per thread");
  constexpr int LDS = D + 8;
  const int64_t q0 = qt * BMQ;
  load_tile_async<T, D, BMQ, 128>(p.q, b, h, q0, p.Nq, sQ, LDS);
  load_tile_async<T, D, BMQ, 128>(p.dout, b, h, q0, p.Nq, sdO, LDS);
  RowStats rs;
  const int r = static_cast<int>(threadIdx.x);
  if (r < BMQ && q0 + r < p.Nq) {
    rs.lse = p.lse[bh * p.Nq + q0 + r];
    rs.delta = p.delta[bh * p.Nq + q0 + r];
  }
  return rs;
}

// sLse = lse * log2(e), sDelta = Delta for this thread's row.
template <int BMQ>
__device__ __forceinline__ void store_row_stats(const RowStats& rs, float* sLse, float* sDelta) {
  if (threadIdx.x < BMQ) {
    sLse[threadIdx.x] = lse_to_log2(rs.lse);  // +inf stays +inf
    sDelta[threadIdx.x] = rs.delta;
  }
}

template <typename T, int D, bool kAtomicDq>
__global__ void __launch_bounds__(128) dkdv_mma_kernel(const BwdParams<T> p, int64_t n_kt,
                                                       float scale_log2) {
  constexpr int BN = kBwdBlockN, BMQ = bwd_block_m(D), LDS = D + 8;
  constexpr int NT_Q = BMQ / 8, NT_D = D / 8, KD = D / 16, KQ = BMQ / 16;
  // Atomic dQ: dS tile [BMQ][LDSS]; warp w adds rows [16 * (w % RB), +16) x columns
  // [DC * (w / RB), +DC) of dQ_tile.
  constexpr int LDSS = BN + 8, RB = BMQ / 16, CS = 4 / RB, DC = D / CS, NT_DQ = DC / 8;
  static_assert(RB * CS == 4 && DC * CS == D, "4 warps cover the dQ tile");
  extern __shared__ __align__(16) unsigned char smem[];
  T* sK = reinterpret_cast<T*>(smem);  // [BN][LDS]
  T* sV = sK + BN * LDS;               // [BN][LDS]
  T* sQbuf = sV + BN * LDS;            // [2][BMQ][LDS]
  T* sdObuf = sQbuf + 2 * BMQ * LDS;   // [2][BMQ][LDS]
  float* sLsebuf = reinterpret_cast<float*>(sdObuf + 2 * BMQ * LDS);  // [2][BMQ], lse * log2(e)
  float* sDeltabuf = sLsebuf + 2 * BMQ;                               // [2][BMQ]
  T* sdS = reinterpret_cast<T*>(sDeltabuf + 2 * BMQ);                 // [BMQ][LDSS] (kAtomicDq)

  const int64_t bh = blockIdx.x / n_kt, kt = blockIdx.x % n_kt;
  const int64_t b = bh / p.H, h = bh % p.H;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int64_t k0 = kt * BN;

  load_tile_async<T, D, BN, 128>(p.k, b, h, k0, p.Nk, sK, LDS);
  load_tile_async<T, D, BN, 128>(p.v, b, h, k0, p.Nk, sV, LDS);
  store_row_stats<BMQ>(stage_query_tile<T, D, BMQ>(p, bh, b, h, 0, sQbuf, sdObuf), sLsebuf, sDeltabuf);

  float dk[NT_D][4], dv[NT_D][4];
  zero(dk);
  zero(dv);
  // Keys of this thread's two accumulator rows; keys past Nk get P = 0.
  bool key_ok[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) key_ok[i] = k0 + warp * 16 + g + 8 * i < p.Nk;

  const int64_t n_qt = num_tiles(p.Nq, BMQ);
  for (int64_t qt = 0; qt < n_qt; ++qt) {
    const int cur = static_cast<int>(qt & 1), nxt = cur ^ 1;
    // Tile qt (and K, V) has landed and is visible; every warp is done with tile qt - 1, whose
    // buffer now receives tile qt + 1 (its lse / Delta rows are stored at the bottom of this
    // iteration, before the next barrier publishes them).
    cp_async_wait_all();
    __syncthreads();
    RowStats next_rows;
    if (qt + 1 < n_qt) {
      next_rows = stage_query_tile<T, D, BMQ>(p, bh, b, h, qt + 1, sQbuf + nxt * BMQ * LDS,
                                              sdObuf + nxt * BMQ * LDS);
    }
    const T* sQ = sQbuf + cur * BMQ * LDS;
    const T* sdO = sdObuf + cur * BMQ * LDS;
    const float* sLse = sLsebuf + cur * BMQ;
    const float* sDelta = sDeltabuf + cur * BMQ;

    // S^T = K Q^T (16 keys x BMQ queries per warp).
    float st[NT_Q][4];
    zero(st);
    mma_abt<T, NT_Q, KD>(st, [&](int kk, uint32_t(&a)[4]) {
      load_a(a, sK, LDS, warp * 16, kk * 16, g, t);
    }, sQ, LDS, g, t);
    // Query rows past Nq get P = 0 too: their lse of +inf alone gives exp2(x - inf) = NaN when a
    // key holds an Inf (x = 0 * inf), which would reach dK and dV through their zero rows.
    // qc = nt * 8 + 2t + (e & 1) < rows  <=>  nt * 8 + (e & 1) < rows - 2t (compile-time left side).
    const int q_left = static_cast<int>(tile_rows(p.Nq, BMQ, qt)) - 2 * t;
#pragma unroll
    for (int nt = 0; nt < NT_Q; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int qc = nt * 8 + 2 * t + (e & 1);
        const bool ok = key_ok[e >> 1] && nt * 8 + (e & 1) < q_left;
        st[nt][e] = ok ? prob_from_lse(st[nt][e] * scale_log2, sLse[qc]) : 0.f;
      }
    }
    // dV += P^T dO: B[k = query][n = d] = dO[query][d].
    mma_ab<T, NT_D, KQ>(dv, [&](int kk, uint32_t(&a)[4]) { acc_to_a<T>(a, st, kk); }, sdO, LDS,
                        lane);
    // dP^T = V dO^T.
    float dpt[NT_Q][4];
    zero(dpt);
    mma_abt<T, NT_Q, KD>(dpt, [&](int kk, uint32_t(&a)[4]) {
      load_a(a, sV, LDS, warp * 16, kk * 16, g, t);
    }, sdO, LDS, g, t);
#pragma unroll
    for (int nt = 0; nt < NT_Q; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int qc = nt * 8 + 2 * t + (e & 1);
        dpt[nt][e] = dsoftmax(st[nt][e], dpt[nt][e], sDelta[qc]);
      }
    }
    // dK += dS^T Q: B[k = query][n = d] = Q[query][d].
    mma_ab<T, NT_D, KQ>(dk, [&](int kk, uint32_t(&a)[4]) { acc_to_a<T>(a, dpt, kk); }, sQ, LDS,
                        lane);
    if constexpr (kAtomicDq) {
      // sdS[query][key] = dS, rounded to T like the MMA operands (acc_to_a). Every (query, key)
      // of the tile is written (padded keys / queries: dS = 0). The previous tile's readers are
      // past this iteration's top barrier.
#pragma unroll
      for (int nt = 0; nt < NT_Q; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          sdS[(nt * 8 + 2 * t + (e & 1)) * LDSS + warp * 16 + g + 8 * (e >> 1)] = Mma<T>::cvt(dpt[nt][e]);
        }
      }
      __syncthreads();  // every warp's keys are in sdS
      const int rb = warp % RB, c0 = (warp / RB) * DC;
      float dqa[NT_DQ][4];
      zero(dqa);
      // dQ_tile[rb rows][c0..] += dS K: A = sdS rows, B[k = key][n = d] = K[key][c0 + d].
      mma_ab<T, NT_DQ, BN / 16>(dqa, [&](int kk, uint32_t(&a)[4]) {
        load_a(a, sdS, LDSS, rb * 16, kk * 16, g, t);
      }, sK + c0, LDS, lane);
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int64_t r = qt * BMQ + rb * 16 + g + 8 * i;
        if (r < p.Nq) {
          float* dst = p.dq_acc + (bh * p.Nq + r) * D + c0 + 2 * t;  // 8-byte aligned
#pragma unroll
          for (int nt = 0; nt < NT_DQ; ++nt) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
            atomicAdd(reinterpret_cast<float2*>(dst + nt * 8), make_float2(dqa[nt][2 * i], dqa[nt][2 * i + 1]));
#else
            atomicAdd(dst + nt * 8, dqa[nt][2 * i]);
            atomicAdd(dst + nt * 8 + 1, dqa[nt][2 * i + 1]);
#endif
          }
        }
      }
    }
    if (qt + 1 < n_qt) store_row_stats<BMQ>(next_rows, sLsebuf + nxt * BMQ, sDeltabuf + nxt * BMQ);
  }

  const float scale = static_cast<float>(p.scale);
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int64_t key = k0 + warp * 16 + g + 8 * i;
    if (key < p.Nk) {
      T* dkr = p.dk.row(b, h, key);
      T* dvr = p.dv.row(b, h, key);
#pragma unroll
      for (int nt = 0; nt < NT_D; ++nt) {
        *reinterpret_cast<uint32_t*>(dkr + nt * 8 + 2 * t) =
            Mma<T>::pack(dk[nt][2 * i] * scale, dk[nt][2 * i + 1] * scale);
        *reinterpret_cast<uint32_t*>(dvr + nt * 8 + 2 * t) =
            Mma<T>::pack(dv[nt][2 * i], dv[nt][2 * i + 1]);
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Backward, dQ pass (separate, no atomics). CTA = 4 warps = kDqBlockM (64) query rows; loop over
// K/V tiles of dq_block_n(D) (64, 32 at D = 128) keys: S = Q K^T, P = exp2(S * scale * log2e - lse * log2e),
// dP = dO V^T, dS = P * (dP - Delta), dQ += dS K;  dQ *= scale at the end. K/V tiles are
// double-buffered: tile j + 1 is fetched (cp.async) while tile j is computed on.
// ------------------------------------------------------------------------------------------------
template <int D>
constexpr int dq_smem_bytes() {
  return (2 * kDqBlockM + 4 * dq_block_n(D)) * (D + 8) * 2;
}

template <typename T, int D>
__global__ void __launch_bounds__(128) dq_mma_kernel(const BwdParams<T> p, int64_t n_qt,
                                                     float scale_log2) {
  constexpr int BM = kDqBlockM, BN = dq_block_n(D), LDS = D + 8;
  constexpr int NT_K = BN / 8, NT_D = D / 8, KD = D / 16, KN = BN / 16;
  extern __shared__ __align__(16) unsigned char smem[];
  T* sQ = reinterpret_cast<T*>(smem);  // [BM][LDS]
  T* sdO = sQ + BM * LDS;              // [BM][LDS]
  T* sKbuf = sdO + BM * LDS;           // [2][BN][LDS]
  T* sVbuf = sKbuf + 2 * BN * LDS;     // [2][BN][LDS]

  const int64_t bh = blockIdx.x / n_qt, qt = blockIdx.x % n_qt;
  const int64_t b = bh / p.H, h = bh % p.H;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int64_t q0 = qt * BM;

  load_tile_async<T, D, BM, 128>(p.q, b, h, q0, p.Nq, sQ, LDS);
  load_tile_async<T, D, BM, 128>(p.dout, b, h, q0, p.Nq, sdO, LDS);
  load_tile_async<T, D, BN, 128>(p.k, b, h, 0, p.Nk, sKbuf, LDS);
  load_tile_async<T, D, BN, 128>(p.v, b, h, 0, p.Nk, sVbuf, LDS);
  float lse2[2], delta[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int64_t r = q0 + warp * 16 + g + 8 * i;
    lse2[i] = r < p.Nq ? lse_to_log2(p.lse[bh * p.Nq + r]) : INFINITY;
    delta[i] = r < p.Nq ? p.delta[bh * p.Nq + r] : 0.f;
  }

  float dq[NT_D][4];
  zero(dq);
  const int64_t n_kt = num_tiles(p.Nk, BN);
  for (int64_t kt = 0; kt < n_kt; ++kt) {
    const int64_t k0 = kt * BN;
    const int cur = static_cast<int>(kt & 1), nxt = cur ^ 1;
    // Tile kt (and Q, dO) has landed and is visible; every warp is done with tile kt - 1, whose
    // buffer now receives tile kt + 1.
    cp_async_wait_all();
    __syncthreads();
    if (kt + 1 < n_kt) {
      load_tile_async<T, D, BN, 128>(p.k, b, h, k0 + BN, p.Nk, sKbuf + nxt * BN * LDS, LDS);
      load_tile_async<T, D, BN, 128>(p.v, b, h, k0 + BN, p.Nk, sVbuf + nxt * BN * LDS, LDS);
    }
    const T* sK = sKbuf + cur * BN * LDS;
    const T* sV = sVbuf + cur * BN * LDS;

    float s[NT_K][4];
    zero(s);
    mma_abt<T, NT_K, KD>(s, [&](int kk, uint32_t(&a)[4]) {
      load_a(a, sQ, LDS, warp * 16, kk * 16, g, t);
    }, sK, LDS, g, t);
    float dp[NT_K][4];
    zero(dp);
    mma_abt<T, NT_K, KD>(dp, [&](int kk, uint32_t(&a)[4]) {
      load_a(a, sdO, LDS, warp * 16, kk * 16, g, t);
    }, sV, LDS, g, t);
#pragma unroll
    for (int nt = 0; nt < NT_K; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t col = k0 + nt * 8 + 2 * t + (e & 1);
        const float pr = prob_from_lse(masked_score(s[nt][e], scale_log2, col, p.Nk), lse2[e >> 1]);
        s[nt][e] = dsoftmax(pr, dp[nt][e], delta[e >> 1]);
      }
    }
    // dQ += dS K: B[k = key][n = d] = K[key][d].
    mma_ab<T, NT_D, KN>(dq, [&](int kk, uint32_t(&a)[4]) { acc_to_a<T>(a, s, kk); }, sK, LDS, lane);
  }

  const float scale = static_cast<float>(p.scale);
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int64_t r = q0 + warp * 16 + g + 8 * i;
    if (r < p.Nq) {
      T* dqr = p.dq.row(b, h, r);
#pragma unroll
      for (int nt = 0; nt < NT_D; ++nt) {
        *reinterpret_cast<uint32_t*>(dqr + nt * 8 + 2 * t) =
            Mma<T>::pack(dq[nt][2 * i] * scale, dq[nt][2 * i + 1] * scale);
      }
    }
  }
}

// dQ = dq_acc * scale in T (the atomic-dQ dK/dV pass's float32 accumulator, [B * H][Nq][D]):
// one warp per row, two elements per lane and step (8-byte loads, 4-byte packed stores).
template <typename T, int D>
__global__ void __launch_bounds__(128) dq_convert_kernel(const BwdParams<T> p) {
  const int64_t rows = p.B * p.H * p.Nq;
  const float scale = static_cast<float>(p.scale);
  const int lane = threadIdx.x % 32;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * 4 + threadIdx.x / 32; row < rows;
       row += static_cast<int64_t>(gridDim.x) * 4) {
    const int64_t r = row % p.Nq, bh = row / p.Nq;
    const float* src = p.dq_acc + row * D;
    T* dst = p.dq.row(bh / p.H, bh % p.H, r);
#pragma unroll
    for (int d = 2 * lane; d < D; d += 64) {
      const float2 v = *reinterpret_cast<const float2*>(src + d);
      *reinterpret_cast<uint32_t*>(dst + d) = Mma<T>::pack(v.x * scale, v.y * scale);
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Launchers.
// ------------------------------------------------------------------------------------------------
inline void require_sm80(const char* op) {
  int dev = 0, major = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  TORCH_CHECK(major >= 8, op, ": float16/bfloat16 kernels need compute capability 8.0 or newer");
}

template <typename T, int D>
void forward_mma(const FwdParams<T>& p, cudaStream_t stream) {
  const int64_t n_qt = num_tiles(p.Nq, kFwdBlockM);
  const unsigned grid = grid_of(p.B * p.H * n_qt, "attention");
  constexpr int smem = fwd_smem_bytes<D>();
  set_smem(fwd_mma_kernel<T, D>, smem, "attention");
  const float scale_log2 = static_cast<float>(p.scale * kLog2e);
  fwd_mma_kernel<T, D><<<grid, 128, smem, stream>>>(p, n_qt, scale_log2);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, int D>
void backward_mma(const BwdParams<T>& p, cudaStream_t stream) {
  launch_delta(p, stream);
  const float scale_log2 = static_cast<float>(p.scale * kLog2e);
  const int64_t n_kt = num_tiles(p.Nk, kBwdBlockN);
  const unsigned grid = grid_of(p.B * p.H * n_kt, "_attention_backward");
  if (p.dq_acc != nullptr) {  // dQ from the same pass (atomic, zeroed accumulator), then converted
    constexpr int smem = dkdv_smem_bytes<D, true>();
    set_smem(dkdv_mma_kernel<T, D, true>, smem, "_attention_backward");
    dkdv_mma_kernel<T, D, true><<<grid, 128, smem, stream>>>(p, n_kt, scale_log2);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const int64_t rows = p.B * p.H * p.Nq;
    const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((rows + 3) / 4, 65536));
    dq_convert_kernel<T, D><<<blocks, 128, 0, stream>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  {
    constexpr int smem = dkdv_smem_bytes<D>();
    set_smem(dkdv_mma_kernel<T, D, false>, smem, "_attention_backward");
    dkdv_mma_kernel<T, D, false><<<grid, 128, smem, stream>>>(p, n_kt, scale_log2);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  {
    const int64_t n_qt = num_tiles(p.Nq, kDqBlockM);
    const unsigned grid = grid_of(p.B * p.H * n_qt, "_attention_backward");
    constexpr int smem = dq_smem_bytes<D>();
    set_smem(dq_mma_kernel<T, D>, smem, "_attention_backward");
    dq_mma_kernel<T, D><<<grid, 128, smem, stream>>>(p, n_qt, scale_log2);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

template <typename T>
void launch_forward_mma(const FwdParams<T>& p, cudaStream_t stream) {
  require_sm80("attention");
  switch (p.D) {
    case 32: return forward_mma<T, 32>(p, stream);
    case 64: return forward_mma<T, 64>(p, stream);
    case 128: return forward_mma<T, 128>(p, stream);
    default: TORCH_CHECK(false, "attention: head_dim must be 32, 64 or 128 on CUDA, got ", p.D);
  }
}

template <typename T>
void launch_backward_mma(const BwdParams<T>& p, cudaStream_t stream) {
  require_sm80("_attention_backward");
  switch (p.D) {
    case 32: return backward_mma<T, 32>(p, stream);
    case 64: return backward_mma<T, 64>(p, stream);
    case 128: return backward_mma<T, 128>(p, stream);
    default:
      TORCH_CHECK(false, "_attention_backward: head_dim must be 32, 64 or 128 on CUDA, got ", p.D);
  }
}

}  // namespace torchcv_ext::attn
