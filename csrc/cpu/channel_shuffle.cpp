// CPU kernels of the channel-shuffle family. Schemas: csrc/registration.cpp. Front end (checks,
// outputs, plan): csrc/include/torchcv_ext/channel_shuffle_host.h. Autograd / fake:
// torchcv_ext/ops/channel_shuffle.py.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "torchcv_ext/channel_shuffle_host.h"
#include "torchcv_ext/cpu_clones.h"

namespace torchcv_ext {
namespace {

// Copy n bytes with 64-byte vector moves (per-CPU clones). memmove of rows of a few KB took the
// `rep movsb` path and ran at ~60% of copy speed on AMD Zen (ShuffleNetV1 g=3 rows: 3 KB).
TCV_CPU_CLONES void copy_bytes(void* dst, const void* src, int64_t n) {
  auto* d = static_cast<char*>(dst);
  const auto* s = static_cast<const char*>(src);
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {  // 8-float vectors (cpu_clones.h: not 16 on AVX2)
    store8(d + i, load8(s + i));
    store8(d + i + 32, load8(s + i + 32));
  }
  std::memcpy(d + i, s + i, static_cast<size_t>(n - i));
}

// channel_shuffle(groups = 2) of `pixels` consecutive channels_last pixels of 2 * cpg 4-byte words
// (float32 and every other 4-byte type: the words are moved, not computed on), source and
// destination dense: out[2i] = a[i], out[2i + 1] = b[i] with a, b the pixel's two channel groups,
// 8 (then 4) pairs per two vector shuffles (unpack + lane permute on AVX2). ShuffleNet's shuffle;
// the per-pixel loops below ran at 2-6x a copy's time on its shapes.
typedef float tcv_f32x4u __attribute__((vector_size(16), aligned(4), may_alias));
TCV_CPU_CLONES void zip2_pixels_words32(const void* src, void* dst, int64_t pixels, int64_t cpg) {
  const auto* ps = static_cast<const float*>(src);
  auto* pd = static_cast<float*>(dst);
  for (int64_t p = 0; p < pixels; ++p, ps += 2 * cpg, pd += 2 * cpg) {
    const float* pa = ps;
    const float* pb = ps + cpg;
    int64_t i = 0;
    for (; i + 8 <= cpg; i += 8) {
      const f32x8 x = load8(pa + i);
      const f32x8 y = load8(pb + i);
      store8(pd + 2 * i, TCV_SHUFFLE(x, y, tcv_i32x8, 0, 8, 1, 9, 2, 10, 3, 11));
      store8(pd + 2 * i + 8, TCV_SHUFFLE(x, y, tcv_i32x8, 4, 12, 5, 13, 6, 14, 7, 15));
    }
    for (; i + 4 <= cpg; i += 4) {
      const tcv_f32x4u x = *reinterpret_cast<const tcv_f32x4u*>(pa + i);
      const tcv_f32x4u y = *reinterpret_cast<const tcv_f32x4u*>(pb + i);
      *reinterpret_cast<tcv_f32x4u*>(pd + 2 * i) = TCV_SHUFFLE(x, y, tcv_i32x4, 0, 4, 1, 5);
      *reinterpret_cast<tcv_f32x4u*>(pd + 2 * i + 4) = TCV_SHUFFLE(x, y, tcv_i32x4, 2, 6, 3, 7);
    }
    for (; i < cpg; ++i) {
      pd[2 * i] = pa[i];
      pd[2 * i + 1] = pb[i];
    }
  }
}

struct CpuRun {
  static constexpr c10::DeviceType kDevice = c10::DeviceType::CPU;
  static constexpr bool kATenShuffle = true;  // channel_shuffle_host.h: the plain NCHW shuffle is ATen's
  struct Guard {
    explicit Guard(c10::Device) {}
  };

  template <typename T>
  void operator()(const ShufflePlan<T>& p) const {
    if (p.spatial_rows()) {
      // NCHW: every (n, k) destination row is one contiguous source row.
      const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(p.S, 1));
      at::parallel_for(0, p.N * p.C, grain, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          const int64_t n = r / p.C, k = r % p.C;
          const T* src = p.src_at(n, shuffle_src_channel(k, p.groups, p.cpg), 0);
          copy_bytes(p.dst_at(n, k, 0), src, p.S * static_cast<int64_t>(sizeof(T)));
        }
      });
    } else if (!try_channels_last_transpose(p)) {
      // channels_last with general strides: gather the C channels of each pixel through a
      // per-channel table of (part, offset) computed once, so the inner loop is a plain indexed copy.
      std::vector<int8_t> sp(p.C), dp(p.C);
      std::vector<int64_t> so(p.C), dof(p.C);
      for (int64_t k = 0; k < p.C; ++k) {
        const int64_t c = shuffle_src_channel(k, p.groups, p.cpg);
        sp[k] = c >= p.src_split;
        so[k] = (c - sp[k] * p.src_split) * p.src_st[sp[k]].sc;
        dp[k] = k >= p.dst_split;
        dof[k] = (k - dp[k] * p.dst_split) * p.dst_st[dp[k]].sc;
      }
      const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(p.C, 1));
      at::parallel_for(0, p.N * p.S, grain, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          const int64_t n = r / p.S, s = r % p.S;
          const T* src[2] = {p.src_at(n, 0, s), p.src[1] + n * p.src_st[1].sn + s * p.src_st[1].ss};
          T* dst[2] = {p.dst_at(n, 0, s), p.dst[1] + n * p.dst_st[1].sn + s * p.dst_st[1].ss};
          for (int64_t k = 0; k < p.C; ++k) dst[dp[k]][dof[k]] = src[sp[k]][so[k]];
        }
      });
    }
  }

  // channels_last with unit channel strides (every layout the ops produce); false (nothing done)
  // for other plans. Per pixel, the shuffle is a transpose of the (groups, cpg) channel matrix,
  // run by loops the compiler vectorizes for the common shapes -- groups 2/3/4 (forward), or
  // cpg 2/3/4 (backward, shuffle_cat's backward).
  // Each source group must lie in one source part (the parts split at a multiple of cpg); the
  // destination pixel is written directly, or through a C-element buffer when it is two parts.
  template <typename T>
  static bool try_channels_last_transpose(const ShufflePlan<T>& p) {
    for (int i = 0; i < 2; ++i) {
      if (p.src_st[i].sc != 1 || p.dst_st[i].sc != 1) return false;
    }
    if (p.src_split < p.C && p.src_split % p.cpg != 0) return false;
    const bool by_group = p.groups <= 4 && p.groups >= 2;
    const bool by_cpg = p.cpg <= 4 && p.cpg >= 2;
    if (!by_group && !by_cpg) return false;
    const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(p.C, 1));
    const int64_t jsplit = std::min(p.src_split, p.C) / p.cpg;  // groups in source part 0
    const bool split_dst = p.dst_split < p.C;
    if (sizeof(T) == 4 && p.groups == 2 && jsplit == 2 && !split_dst && p.src_st[0].sn == p.S * p.C &&
        p.src_st[0].ss == p.C && p.dst_st[0].sn == p.S * p.C && p.dst_st[0].ss == p.C) {
      // The plain channel_shuffle(x, 2) of a dense channels_last tensor: pixel r at r * C.
      at::parallel_for(0, p.N * p.S, grain, [&](int64_t begin, int64_t end) {
        zip2_pixels_words32(p.src[0] + begin * p.C, p.dst[0] + begin * p.C, end - begin, p.cpg);
      });
      return true;
    }
    at::parallel_for(0, p.N * p.S, grain, [&](int64_t begin, int64_t end) {
      std::vector<T> buf(split_dst ? static_cast<size_t>(p.C) : 0);
      // (n, s) of pixel r, stepped instead of divided per pixel (a 64-bit division cost about
      // as much as moving a ShuffleNet pixel's 116 channels).
      int64_t n = begin / p.S, s = begin % p.S;
      for (int64_t r = begin; r < end; ++r, ++s) {
        if (s == p.S) s = 0, ++n;
        const T* s0 = p.src[0] + n * p.src_st[0].sn + s * p.src_st[0].ss;
        const T* s1 = p.src[1] + n * p.src_st[1].sn + s * p.src_st[1].ss;
        T* d0 = p.dst[0] + n * p.dst_st[0].sn + s * p.dst_st[0].ss;
        T* out = split_dst ? buf.data() : d0;
        if (by_group) {
          switch (p.groups) {
            case 2: transpose_groups<2>(s0, s1, jsplit, p.cpg, out); break;
            case 3: transpose_groups<3>(s0, s1, jsplit, p.cpg, out); break;
            default: transpose_groups<4>(s0, s1, jsplit, p.cpg, out); break;
          }
        } else {
          switch (p.cpg) {
            case 2: transpose_cpg<2>(s0, s1, jsplit, p.groups, out); break;
            case 3: transpose_cpg<3>(s0, s1, jsplit, p.groups, out); break;
            default: transpose_cpg<4>(s0, s1, jsplit, p.groups, out); break;
          }
        }
        if (split_dst) {
          T* d1 = p.dst[1] + n * p.dst_st[1].sn + s * p.dst_st[1].ss;
          std::copy_n(buf.data(), p.dst_split, d0);
          std::copy_n(buf.data() + p.dst_split, p.C - p.dst_split, d1);
        }
      }
    });
    return true;
  }

  // Group j's cpg channels start at s0 + j * cpg (j < jsplit) or s1 + (j - jsplit) * cpg.
  template <int G, typename T>
  static void transpose_groups(const T* s0, const T* s1, int64_t jsplit, int64_t cpg, T* out) {
    const T* src[G];
    for (int j = 0; j < G; ++j) src[j] = j < jsplit ? s0 + j * cpg : s1 + (j - jsplit) * cpg;
    for (int64_t i = 0; i < cpg; ++i) {
      for (int j = 0; j < G; ++j) out[i * G + j] = src[j][i];
    }
  }
  template <int CPG, typename T>
  static void transpose_cpg(const T* s0, const T* s1, int64_t jsplit, int64_t groups, T* out) {
    for (int i = 0; i < CPG; ++i) {
      T* o = out + i * groups;
      for (int64_t j = 0; j < jsplit; ++j) o[j] = s0[j * CPG + i];
      for (int64_t j = jsplit; j < groups; ++j) o[j] = s1[(j - jsplit) * CPG + i];
    }
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(torchcv_ext, CPU, m) { shuffle::register_kernels<CpuRun>(m); }

}  // namespace torchcv_ext
