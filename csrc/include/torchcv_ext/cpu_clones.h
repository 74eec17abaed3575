// Hot CPU loops compiled three times -- AVX-512, AVX2 + FMA and baseline x86-64 -- with the best one
// for the running CPU picked at load time (GCC function multiversioning). The extension is built
// without -march flags so that one binary runs everywhere; without this, loops are SSE2 only.
// Elsewhere (clang, other architectures) a plain function.
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define TCV_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define TCV_CPU_CLONES
#endif

// 16 floats: one AVX-512 register (transpose16 below). Loops use TCV_VEC_TYPES or f32x8 instead:
// the avx2 clone splits this type through the stack (below). Explicit vector variables keep
// accumulators in registers (a float[] accumulator of runtime length is not).
typedef float f32x16 __attribute__((vector_size(64)));

// `void name params` in versions chosen at load time like TCV_CPU_CLONES, each calling a template
// `body<V>` (always_inline, on V-float vectors) with `args`: V = 16 with AVX-512, 8 with AVX2 +
// FMA and in the baseline -- for loops whose 16-float vectors the AVX2 clone would spill (below).
// The body declares its vector types with TCV_VEC_TYPES(V) and loads / stores with ldv / stv
// (macros, no helper functions taking or returning vectors: those are compiled for the default
// target and pass the vectors in memory).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define TCV_CPU_VERSIONS(name, body, params, args)                    \
  __attribute__((target("avx512f"))) void name params { body<16> args; } \
  __attribute__((target("avx2,fma"))) void name params { body<8> args; } \
  __attribute__((target("default"))) void name params { body<8> args; }
#else
#define TCV_CPU_VERSIONS(name, body, params, args) void name params { body<8> args; }
#endif
// `vec` (V floats) and `vecu` (the same, unaligned, may alias) inside such a body; ldv / stv:
// unaligned load / store of one vec.
#define TCV_VEC_TYPES(V)                                \
  typedef float vec __attribute__((vector_size(4 * (V)))); \
  typedef float vecu __attribute__((vector_size(4 * (V)), aligned(4), may_alias))
#define ldv(p) (*reinterpret_cast<const vecu*>(p))
#define stv(p, v) (*reinterpret_cast<vecu*>(p) = (v))

// 8 floats: for streaming loops (sums, copies) that every clone should run at full width. GCC 12
// lowers the 16-float type in the avx2 clone into 16-byte pieces that pass through the stack
// (row_sum_f32's accumulators: 30 stack moves per 32 floats; a 64-byte copy: 4 loads, 4 stores
// and 6 stack moves), which made those loops slower than ATen's on AVX2-only CPUs; an 8-float
// vector is one ymm register there (and one half of a zmm in the avx512f clone).
typedef float f32x8 __attribute__((vector_size(32)));
typedef float f32x8u __attribute__((vector_size(32), aligned(4), may_alias));
#define load8(p) (*reinterpret_cast<const f32x8u*>(p))
#define store8(p, v) (*reinterpret_cast<f32x8u*>(p) = (v))

// In-place transpose of a 16 x 16 float block held in 16 vectors (r[i][k] -> r[k][i]): four
// butterfly stages, each swapping the off-diagonal d x d blocks (d = 8, 4, 2, 1) of every 2d x 2d
// block -- 64 two-source shuffles (one vpermt2ps each on AVX-512) instead of 256 scalar moves or
// 16-lane gathers / scatters.
// Two-source shuffle with constant indices: __builtin_shufflevector (clang, GCC >= 12), else GCC's
// older __builtin_shuffle with an index vector (GCC 10 / 11 also build C++20 extensions).
// TCV_SHUFFLE(a, b, index vector type, indices...) for any width.
typedef int tcv_i32x16 __attribute__((vector_size(64)));
typedef int tcv_i32x8 __attribute__((vector_size(32)));
typedef int tcv_i32x4 __attribute__((vector_size(16)));
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12 && !defined(TCV_OLD_GCC_SHUFFLE))
#define TCV_SHUFFLE(a, b, idx_t, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define TCV_SHUFFLE(a, b, idx_t, ...) __builtin_shuffle(a, b, idx_t{__VA_ARGS__})
#endif
// One butterfly stage of an N x N transpose (N vectors of type T, index vector type I): for
// every i without bit D, r[i] takes the low lanes (indices ...) and r[i + D] the high ones
// (TCV_T<N>_HI_<D>) of the pair.
#define TCV_T_STAGE(N, T, I, D, ...)                         \
  for (int i = 0; i < (N); ++i) {                            \
    if (i & (D)) continue;                                   \
    const T a = r[i], b = r[i + (D)];                        \
    r[i] = TCV_SHUFFLE(a, b, I, __VA_ARGS__);                \
    r[i + (D)] = TCV_SHUFFLE(a, b, I, TCV_T##N##_HI_##D);    \
  }
#define TCV_T16_HI_8 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31
#define TCV_T16_HI_4 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31
#define TCV_T16_HI_2 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31
#define TCV_T16_HI_1 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31
__attribute__((always_inline)) inline void transpose16(f32x16* r) {
  TCV_T_STAGE(16, f32x16, tcv_i32x16, 8, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23)
  TCV_T_STAGE(16, f32x16, tcv_i32x16, 4, 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27)
  TCV_T_STAGE(16, f32x16, tcv_i32x16, 2, 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29)
  TCV_T_STAGE(16, f32x16, tcv_i32x16, 1, 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30)
}
// The same for an 8 x 8 block in 8 vectors of 8 floats (the AVX2 width; stages d = 4, 2, 1).
#define TCV_T8_HI_4 4, 5, 6, 7, 12, 13, 14, 15
#define TCV_T8_HI_2 2, 3, 10, 11, 6, 7, 14, 15
#define TCV_T8_HI_1 1, 9, 3, 11, 5, 13, 7, 15
__attribute__((always_inline)) inline void transpose8(f32x8* r) {
  TCV_T_STAGE(8, f32x8, tcv_i32x8, 4, 0, 1, 2, 3, 8, 9, 10, 11)
  TCV_T_STAGE(8, f32x8, tcv_i32x8, 2, 0, 1, 8, 9, 4, 5, 12, 13)
  TCV_T_STAGE(8, f32x8, tcv_i32x8, 1, 0, 8, 2, 10, 4, 12, 6, 14)
}
// transpose16 / transpose8 for a width-templated body (TCV_VEC_TYPES(V)'s vec is f32x16 / f32x8).
template <int V, typename vec>
__attribute__((always_inline)) inline void transpose_vv(vec* r) {
  if constexpr (V == 16) {
    transpose16(r);
  } else {
    static_assert(V == 8, "transpose_vv: 8 or 16 floats");
    transpose8(r);
  }
}
#undef TCV_T_STAGE
#undef TCV_T8_HI_4
#undef TCV_T8_HI_2
#undef TCV_T8_HI_1
#undef TCV_T16_HI_8
#undef TCV_T16_HI_4
#undef TCV_T16_HI_2
#undef TCV_T16_HI_1
