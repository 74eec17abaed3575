// Channel shuffle: index math shared by csrc/cpu/channel_shuffle.cpp and
// csrc/cuda/channel_shuffle.cu.
//
// channel_shuffle(x, g) views the C = g * cpg channels as (g, cpg), transposes to (cpg, g) and
// flattens, so output channel k = i * g + j reads input channel j * cpg + i.
// Its inverse (the backward) is the shuffle with g' = cpg.
//
// All four ops of this family (channel_shuffle, shuffle_cat, shuffle_cat_split and their
// backwards) are one "two-part channel permutation": a virtual source of C channels stored as two
// tensors (channels [0, src_split) in src[0], the rest in src[1]) is permuted into a virtual
// destination stored as two tensors (split at dst_split). For a plain shuffle both parts are the
// same tensor.
#pragma once
#include <cstdint>

#include "torchcv_ext/macros.h"

namespace torchcv_ext {

// Source channel of output channel k for a shuffle with `groups` groups of `cpg` channels.
TCV_FN int64_t shuffle_src_channel(int64_t k, int64_t groups, int64_t cpg) {
  return (k % groups) * cpg + k / groups;
}

// Element (n, c, s) of a part lives at n * sn + c * sc + s * ss, s = flattened spatial index.
struct PartStrides {
  int64_t sn, sc, ss;
};

template <typename T>
struct ShufflePlan {
  const T* src[2];
  T* dst[2];
  PartStrides src_st[2];
  PartStrides dst_st[2];
  int64_t src_split;  // virtual source channel c lives in src[c >= src_split] at c - split
  int64_t dst_split;
  int64_t N, C, S;    // batch, total channels, flattened spatial size
  int64_t groups, cpg;

  // Address of element (n, c, s) of the virtual source / destination.
  TCV_FN const T* src_at(int64_t n, int64_t c, int64_t s) const {
    const int p = c >= src_split;
    const PartStrides& a = src_st[p];
    return src[p] + n * a.sn + (c - p * src_split) * a.sc + s * a.ss;
  }
  TCV_FN T* dst_at(int64_t n, int64_t k, int64_t s) const {
    const int p = k >= dst_split;
    const PartStrides& b = dst_st[p];
    return dst[p] + n * b.sn + (k - p * dst_split) * b.sc + s * b.ss;
  }
  // Copy one element: destination channel k, batch n, spatial s.
  TCV_FN void copy(int64_t n, int64_t k, int64_t s) const {
    *dst_at(n, k, s) = *src_at(n, shuffle_src_channel(k, groups, cpg), s);
  }
  // True when every part is unit-stride along the spatial index (NCHW rows).
  TCV_FN bool spatial_rows() const {
    return src_st[0].ss == 1 && src_st[1].ss == 1 && dst_st[0].ss == 1 && dst_st[1].ss == 1;
  }
};

}  // namespace torchcv_ext
