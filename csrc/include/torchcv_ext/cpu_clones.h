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
