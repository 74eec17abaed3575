// Index width of the grid-stride elementwise kernels (dwconv_bn_act.cu, channel_shuffle.cu):
// 32-bit index arithmetic (cheaper divisions) when it cannot overflow, else 64-bit.
#pragma once
#include <cstdint>
#include <limits>

namespace torchcv_ext {

// True when every index of a grid-stride loop over `numel` elements run by `threads` threads in
// total, and the loop's last increment, stay below the largest value of index type I.
template <typename I>
inline bool index_fits(int64_t numel, int64_t threads) {
#ifdef TORCHCV_CUDA_EMU  // python_tests/cuda_emu: TORCHCV_EMU_INDEX64=1 takes the 64-bit variants
  if (::emu::force_index64()) return false;
#endif
  return numel + threads < static_cast<int64_t>(std::numeric_limits<I>::max());
}

}  // namespace torchcv_ext
