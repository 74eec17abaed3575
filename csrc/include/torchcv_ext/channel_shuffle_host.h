// Host-side front end of the channel-shuffle family, shared by the CPU and CUDA backends:
// argument checks, output allocation and the ShufflePlan (pointers, strides, vector width).
// The backends differ only in how they run plan.copy() over every destination element.
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/native_channel_shuffle.h>

#include <type_traits>
#include <torch/library.h>

#include <array>
#include <cstdint>
#include <tuple>
#include <utility>

#include "torchcv_ext/channel_shuffle.h"
#include "torchcv_ext/checks.h"

namespace torchcv_ext::shuffle {

// Can dims 2.. be flattened into one spatial index with a single stride? Size-1 dims may carry
// any stride and are skipped: each dim of size > 1 is compared with the next dim of size > 1.
inline bool spatial_collapsible(const at::Tensor& t) {
  int64_t inner = -1;  // the innermost dim of size > 1 seen so far
  for (int64_t d = t.dim() - 1; d >= 2; --d) {
    if (t.size(d) == 1) continue;
    if (inner >= 0 && t.stride(d) != t.stride(inner) * t.size(inner)) return false;
    inner = d;
  }
  return true;
}

inline at::Tensor collapsible(const at::Tensor& t) {
  return spatial_collapsible(t) ? t : t.contiguous(memory_format_of(t));
}

// Strides of the (N, C, S) view: the flattened spatial index steps by the stride of the innermost
// spatial dim of size > 1 (a size-1 dim may carry any stride).
inline PartStrides part_strides(const at::Tensor& t) {
  int64_t ss = 1;
  for (int64_t d = t.dim() - 1; d >= 2; --d) {
    if (t.size(d) != 1) {
      ss = t.stride(d);
      break;
    }
  }
  return PartStrides{t.stride(0), t.stride(1), ss};
}

inline int64_t spatial_size(const at::Tensor& t) {
  int64_t s = 1;
  for (int64_t d = 2; d < t.dim(); ++d) s *= t.size(d);
  return s;
}

inline void check_input(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.dim() >= 3, op, ": ", name, " must have at least 3 dims (N, C, *spatial), got ",
              t.dim(), " dims of shape ", t.sizes());
}

// Largest power-of-two byte width (<= 16) that divides every byte offset the plan will form and
// aligns every base pointer. Only possible when the spatial index is unit-stride everywhere.
inline int vector_bytes(int64_t elem, int64_t S, const std::array<const at::Tensor*, 4>& parts) {
  for (int w = 16; w > elem; w /= 2) {
    bool ok = (S * elem) % w == 0;
    for (const at::Tensor* t : parts) {
      const PartStrides st = part_strides(*t);
      ok = ok && st.ss == 1 && (st.sn * elem) % w == 0 && (st.sc * elem) % w == 0 &&
           reinterpret_cast<std::uintptr_t>(t->data_ptr()) % w == 0;
    }
    if (ok) return w;
  }
  return static_cast<int>(elem);
}

template <int W> struct UInt;
template <> struct UInt<1> { using type = uint8_t; };
template <> struct UInt<2> { using type = uint16_t; };
template <> struct UInt<4> { using type = uint32_t; };
template <> struct UInt<8> { using type = uint64_t; };
struct alignas(16) U128 { uint64_t lo, hi; };
template <> struct UInt<16> { using type = U128; };

// Build the plan over W-byte words and call run(plan). Data of any dtype is moved as raw words.
template <int W, typename Run>
void run_plan(const std::array<const at::Tensor*, 2>& src, int64_t src_split,
              const std::array<at::Tensor*, 2>& dst, int64_t dst_split, int64_t N, int64_t C,
              int64_t S, int64_t groups, int64_t elem, Run&& run) {
  using T = typename UInt<W>::type;
  const int64_t v = W / elem;  // elements per word
  ShufflePlan<T> p;
  for (int i = 0; i < 2; ++i) {
    PartStrides a = part_strides(*src[i]), b = part_strides(*dst[i]);
    if (v > 1) {  // ss == 1 here (vector_bytes)
      a = {a.sn / v, a.sc / v, 1};
      b = {b.sn / v, b.sc / v, 1};
    }
    p.src[i] = static_cast<const T*>(src[i]->data_ptr());
    p.dst[i] = static_cast<T*>(dst[i]->data_ptr());
    p.src_st[i] = a;
    p.dst_st[i] = b;
  }
  p.src_split = src_split;
  p.dst_split = dst_split;
  p.N = N;
  p.C = C;
  p.S = S / v;
  p.groups = groups;
  p.cpg = C / groups;
  run(p);
}

// Permute: virtual src (src[0] ++ src[1] along C, split at src_split) -> virtual dst.
template <typename Run>
void permute(const at::Tensor& src0, const at::Tensor& src1, int64_t src_split, at::Tensor& dst0,
             at::Tensor& dst1, int64_t dst_split, int64_t groups, Run&& run) {
  const int64_t N = dst0.size(0);
  const int64_t C = dst_split + (dst1.is_same(dst0) ? 0 : dst1.size(1));
  const int64_t S = spatial_size(dst0);
  if (N == 0 || C == 0 || S == 0) return;
  const int64_t elem = dst0.element_size();
  const int w = vector_bytes(elem, S, {&src0, &src1, &dst0, &dst1});
  const std::array<const at::Tensor*, 2> src{&src0, &src1};
  const std::array<at::Tensor*, 2> dst{&dst0, &dst1};
  switch (w) {
    case 1: return run_plan<1>(src, src_split, dst, dst_split, N, C, S, groups, elem, run);
    case 2: return run_plan<2>(src, src_split, dst, dst_split, N, C, S, groups, elem, run);
    case 4: return run_plan<4>(src, src_split, dst, dst_split, N, C, S, groups, elem, run);
    case 8: return run_plan<8>(src, src_split, dst, dst_split, N, C, S, groups, elem, run);
    case 16: return run_plan<16>(src, src_split, dst, dst_split, N, C, S, groups, elem, run);
    default: TORCH_CHECK(false, "channel_shuffle: unsupported element size ", elem);
  }
}

// ---- the ops' front ends; `run` is the backend's loop over a ShufflePlan ----

// A backend with `static constexpr bool kATenShuffle = true` (the CPU's) runs the plain NCHW
// channel_shuffle with ATen's kernel; the others (CUDA, and the CUDA emulator, whose device type
// is the CPU's) with their own loop.
template <typename R, typename = void>
struct uses_aten_shuffle : std::false_type {};
template <typename R>
struct uses_aten_shuffle<R, std::void_t<decltype(R::kATenShuffle)>> : std::bool_constant<R::kATenShuffle> {};

template <typename Run>
at::Tensor channel_shuffle(const at::Tensor& x_in, int64_t groups, Run&& run) {
  check_input("channel_shuffle", "x", x_in);
  const int64_t C = x_in.size(1);
  TORCH_CHECK(groups >= 1, "channel_shuffle: groups must be >= 1, got ", groups);
  TORCH_CHECK(C % groups == 0, "channel_shuffle: the number of channels (", C,
              ") must be divisible by groups (", groups, ")");
  const at::MemoryFormat fmt = memory_format_of(x_in);
  if constexpr (uses_aten_shuffle<std::decay_t<Run>>::value) {
    // The plain NCHW shuffle on the CPU is ATen's own kernel: our row copies ran at 0.84-0.87x of
    // it on ShuffleNet's shapes (benchmarks/bench_channel_shuffle.py, 2026-12-07), still 0.85-0.95x
    // after their copy loop's AVX2 fix (cpu_clones.h's f32x8): ATen's runs at about a copy's
    // speed there, and the op's dispatch costs more than the rest of a row loop. channels_last
    // is ours: ATen's per-pixel transpose ran at 10-17x a copy's time on an AVX2 AMD EPYC, ours
    // (csrc/cpu/channel_shuffle.cpp) at 1.4-1.8x (benchmarks/results/2026-12-07-cpu-shuffle-cl.md).
    if (fmt != at::MemoryFormat::ChannelsLast) {
      at::Tensor y = at::native_channel_shuffle(x_in, groups);
      return y.is_alias_of(x_in) || !y.is_contiguous(fmt) ? y.clone(fmt) : y;
    }
  }
  const at::Tensor x = collapsible(x_in);
  at::Tensor y = at::empty_like(x_in, fmt);
  permute(x, x, C, y, y, C, groups, run);
  return y;
}

inline void check_pair(const char* op, const at::Tensor& a, const at::Tensor& b) {
  check_input(op, "a", a);
  check_same_device_dtype(op, "b", a, b);
  TORCH_CHECK(a.sizes() == b.sizes(), op, ": a and b must have the same shape, got ", a.sizes(),
              " and ", b.sizes());
}

// shuffle_cat(a, b) = channel_shuffle(cat([a, b], 1), 2): channel 2i <- a[i], 2i+1 <- b[i].
// With split=true the result is returned as its two channel halves (the next block's chunk(2)).
template <typename Run>
std::pair<at::Tensor, at::Tensor> shuffle_cat(const at::Tensor& a_in, const at::Tensor& b_in,
                                              bool split, Run&& run) {
  const char* op = split ? "shuffle_cat_split" : "shuffle_cat";
  check_pair(op, a_in, b_in);
  const at::Tensor a = collapsible(a_in), b = collapsible(b_in);
  const int64_t C = a.size(1);
  auto sizes = a.sizes().vec();
  if (split) {
    at::Tensor lo = at::empty_like(a_in, memory_format_of(a_in));
    at::Tensor hi = at::empty_like(a_in, memory_format_of(a_in));
    permute(a, b, C, lo, hi, C, 2, run);
    return {lo, hi};
  }
  sizes[1] = 2 * C;
  at::Tensor y = at::empty(sizes, a_in.options().memory_format(memory_format_of(a_in)));
  at::Tensor lo = y.narrow(1, 0, C), hi = y.narrow(1, C, C);
  permute(a, b, C, lo, hi, C, 2, run);
  return {y, at::Tensor()};
}

// Backward of both shuffle_cat forms: given the gradients of the two output halves (for
// shuffle_cat, the two halves of the output gradient), grad_a[i] = G[2i], grad_b[i] = G[2i+1].
template <typename Run>
std::pair<at::Tensor, at::Tensor> shuffle_cat_backward(const at::Tensor& g_lo_in,
                                                       const at::Tensor& g_hi_in, Run&& run) {
  const char* op = "_shuffle_cat_backward";
  check_pair(op, g_lo_in, g_hi_in);
  const at::Tensor g_lo = collapsible(g_lo_in), g_hi = collapsible(g_hi_in);
  const int64_t C = g_lo.size(1);
  at::Tensor ga = at::empty_like(g_lo_in, memory_format_of(g_lo_in));
  at::Tensor gb = at::empty_like(g_lo_in, memory_format_of(g_lo_in));
  // dst channel k (of grad_a ++ grad_b) reads G channel 2 * (k % C) + k / C: a shuffle with
  // groups = C (cpg = 2) of the virtual 2C-channel gradient.
  permute(g_lo, g_hi, C, ga, gb, C, C, run);
  return {ga, gb};
}

}  // namespace torchcv_ext::shuffle

namespace torchcv_ext::shuffle {

// The dispatcher-facing kernels, written once for both backends. Backend provides:
//   kDevice (c10::DeviceType), Guard (device guard constructible from a Device, or a no-op),
//   and operator()(const ShufflePlan<T>&) that copies every destination element.
template <typename Backend>
struct Kernels {
  static at::Tensor channel_shuffle(const at::Tensor& x, int64_t groups) {
    check_device("channel_shuffle", x, Backend::kDevice);
    const typename Backend::Guard guard(x.device());
    return shuffle::channel_shuffle(x, groups, Backend{});
  }
  static at::Tensor channel_shuffle_backward(const at::Tensor& grad, int64_t groups) {
    check_device("_channel_shuffle_backward", grad, Backend::kDevice);
    TORCH_CHECK(groups >= 1 && grad.dim() >= 3 && grad.size(1) % groups == 0,
                "_channel_shuffle_backward: bad groups ", groups, " for grad of shape ", grad.sizes());
    const typename Backend::Guard guard(grad.device());
    return shuffle::channel_shuffle(grad, grad.size(1) / groups, Backend{});
  }
  static at::Tensor shuffle_cat(const at::Tensor& a, const at::Tensor& b) {
    check_device("shuffle_cat", a, Backend::kDevice);
    const typename Backend::Guard guard(a.device());
    return shuffle::shuffle_cat(a, b, /*split=*/false, Backend{}).first;
  }
  static std::tuple<at::Tensor, at::Tensor> shuffle_cat_split(const at::Tensor& a, const at::Tensor& b) {
    check_device("shuffle_cat_split", a, Backend::kDevice);
    const typename Backend::Guard guard(a.device());
    auto r = shuffle::shuffle_cat(a, b, /*split=*/true, Backend{});
    return {r.first, r.second};
  }
  static std::tuple<at::Tensor, at::Tensor> shuffle_cat_backward(const at::Tensor& g_lo,
                                                                 const at::Tensor& g_hi) {
    check_device("_shuffle_cat_backward", g_lo, Backend::kDevice);
    const typename Backend::Guard guard(g_lo.device());
    auto r = shuffle::shuffle_cat_backward(g_lo, g_hi, Backend{});
    return {r.first, r.second};
  }
};

// TORCH_LIBRARY_IMPL body shared by csrc/cpu/channel_shuffle.cpp and csrc/cuda/channel_shuffle.cu.
template <typename Backend>
void register_kernels(torch::Library& m) {
  using K = Kernels<Backend>;
  m.impl("channel_shuffle", &K::channel_shuffle);
  m.impl("_channel_shuffle_backward", &K::channel_shuffle_backward);
  m.impl("shuffle_cat", &K::shuffle_cat);
  m.impl("shuffle_cat_split", &K::shuffle_cat_split);
  m.impl("_shuffle_cat_backward", &K::shuffle_cat_backward);
}

}  // namespace torchcv_ext::shuffle
