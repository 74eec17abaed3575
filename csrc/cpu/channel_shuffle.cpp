// CPU kernels of the channel-shuffle family. Schemas: csrc/registration.cpp. Front end (checks,
// outputs, plan): csrc/include/torchcv_ext/channel_shuffle_host.h. Autograd / fake:
// torchcv_ext/ops/channel_shuffle.py.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "torchcv_ext/channel_shuffle_host.h"

namespace torchcv_ext {
namespace {

struct CpuRun {
  static constexpr c10::DeviceType kDevice = c10::DeviceType::CPU;
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
          std::copy_n(src, p.S, p.dst_at(n, k, 0));
        }
      });
    } else {
      // channels_last: gather the C channels of each pixel through a per-channel table of
      // (part, offset) computed once, so the inner loop is a plain indexed copy.
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
};

}  // namespace

TORCH_LIBRARY_IMPL(torchcv_ext, CPU, m) { shuffle::register_kernels<CpuRun>(m); }

}  // namespace torchcv_ext
