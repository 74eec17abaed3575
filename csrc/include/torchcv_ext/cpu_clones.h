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

// 16 floats: one AVX-512 register in the avx512f clone, split by the compiler elsewhere. Explicit
// vector variables keep accumulators in registers (a float[] accumulator of runtime length is not).
typedef float f32x16 __attribute__((vector_size(64)));
typedef float f32x16u __attribute__((vector_size(64), aligned(4), may_alias));

// Unaligned 16-float load/store (macros: inlined into every clone, no vector-ABI calls).
#define load16(p) (*reinterpret_cast<const f32x16u*>(p))
#define store16(p, v) (*reinterpret_cast<f32x16u*>(p) = (v))
