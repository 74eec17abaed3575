// The emulator's csrc/cuda/attention_ptx.cuh: the PTX instructions of the tensor-core attention
// kernels, implemented from the PTX ISA's definitions on top of cuda_emu.h (build.py includes this
// file in its place). The kernel code around them -- fragment addressing, shared-memory layout,
// barriers, the online softmax -- is the real one.
//
//   * mma.sync.m16n8k16 (f16 / bf16 -> f32): a warp operation; the 32 lanes' A, B and C fragments
//     are gathered, the 16 x 8 tile computed in double from the exact operand values and rounded
//     once to float (the tensor cores' fp32 accumulation differs from this in the last bits).
//   * ldmatrix.x4.trans: a warp operation; every lane's row address must be 16-byte aligned and
//     lie (with its 16 bytes) in the block's dynamic shared memory, and each matrix's 8 rows must
//     fall in distinct 16-byte bank groups ((address / 16) % 8): a bank conflict is reported as an
//     error (the kernels pad their tiles to avoid them; a change that loses the padding shows here).
//   * cp.async.cg 16 bytes: dst in dynamic shared memory, both addresses 16-byte aligned. Under the
//     forward thread order a copy lands at the thread's cp_async_wait_all() (or when it exits);
//     under the reverse order at once. Reading a tile before the wait and the barrier after it
//     then gives different results under the two orders, which cases.py's run2 reports.
#pragma once
#include <cstring>

#include "cuda_emu.h"

namespace torchcv_ext::attn::ptx {
namespace emu_detail {

struct MmaFragments {
  uint32_t a[4];
  uint32_t b[2];
};

// Element `hi` (0: bits 0-15, 1: bits 16-31) of a packed pair of E (c10::Half / c10::BFloat16).
template <typename E>
inline double half_of(uint32_t word, int hi) {
  const uint16_t bits = static_cast<uint16_t>(hi ? word >> 16 : word & 0xffffu);
  E e;
  std::memcpy(&e, &bits, sizeof(bits));
  return static_cast<double>(static_cast<float>(e));
}

template <typename E>
inline void mma_m16n8k16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1,
                         const char* what) {
  const auto all = ::emu::warp_gather(MmaFragments{{a[0], a[1], a[2], a[3]}, {b0, b1}}, what);
  double A[16][16], B[16][8];
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane / 4, t = lane % 4;
    const MmaFragments& f = all[lane];
    for (int i = 0; i < 2; ++i) {
      A[g][2 * t + i] = half_of<E>(f.a[0], i);
      A[g + 8][2 * t + i] = half_of<E>(f.a[1], i);
      A[g][2 * t + 8 + i] = half_of<E>(f.a[2], i);
      A[g + 8][2 * t + 8 + i] = half_of<E>(f.a[3], i);
      B[2 * t + i][g] = half_of<E>(f.b[0], i);
      B[2 * t + 8 + i][g] = half_of<E>(f.b[1], i);
    }
  }
  const int lane = ::emu::linear_tid() % 32, g = lane / 4, t = lane % 4;
  for (int e = 0; e < 4; ++e) {  // c0, c1 = C[g][2t, 2t + 1]; c2, c3 = C[g + 8][2t, 2t + 1]
    const int row = g + 8 * (e >> 1), col = 2 * t + (e & 1);
    double acc = c[e];
    for (int k = 0; k < 16; ++k) acc += A[row][k] * B[k][col];
    c[e] = static_cast<float>(acc);
  }
}

inline void check_smem(const void* p, const char* what) {
  TORCH_CHECK(reinterpret_cast<uintptr_t>(p) % 16 == 0, "cuda_emu: ", what,
              ": shared-memory address not 16-byte aligned");
  TORCH_CHECK(::emu::in_dynamic_smem(p, 16), "cuda_emu: ", what,
              ": address outside the block's dynamic shared memory");
}

}  // namespace emu_detail

inline void mma_m16n8k16_f16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  emu_detail::mma_m16n8k16<c10::Half>(c, a, b0, b1, "mma.sync.m16n8k16.f16");
}

inline void mma_m16n8k16_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  emu_detail::mma_m16n8k16<c10::BFloat16>(c, a, b0, b1, "mma.sync.m16n8k16.bf16");
}

inline void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) {
  emu_detail::check_smem(row, "ldmatrix.x4.trans");
  const auto rows = ::emu::warp_gather(row, "ldmatrix.x4.trans");
  for (int i = 0; i < 4; ++i) {  // one shared-memory phase per matrix: 8 rows x 16 bytes
    unsigned groups = 0;
    for (int r = 0; r < 8; ++r) groups |= 1u << ((reinterpret_cast<uintptr_t>(rows[8 * i + r]) / 16) % 8);
    TORCH_CHECK(groups == 0xffu, "cuda_emu: ldmatrix.x4.trans: the rows of matrix ", i,
                " share shared-memory banks (a bank conflict; pad the tile's rows)");
  }
  const int lane = ::emu::linear_tid() % 32, g = lane / 4, t = lane % 4;
  for (int i = 0; i < 4; ++i) {  // matrix i: rows given by lanes 8i .. 8i + 7
    uint16_t lo, hi;             // [2t][g] and [2t + 1][g]
    std::memcpy(&lo, static_cast<const unsigned char*>(rows[8 * i + 2 * t]) + 2 * g, 2);
    std::memcpy(&hi, static_cast<const unsigned char*>(rows[8 * i + 2 * t + 1]) + 2 * g, 2);
    r[i] = static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
  }
}

// noinline in the traffic flavor: its return address names the copy site.
EMU_TRAFFIC(__attribute__((noinline))) inline void cp_async_16(void* dst, const void* src, bool valid) {
  emu_detail::check_smem(dst, "cp.async");
  TORCH_CHECK(reinterpret_cast<uintptr_t>(src) % 16 == 0,
              "cuda_emu: cp.async: global address not 16-byte aligned");
  ::emu::Block& b = ::emu::block();
  ::emu::Thread& t = b.threads[b.cur];
  t.copies.push_back({dst, src, valid});
  EMU_TRAFFIC(if (valid) ::emu::traffic::record(src, 16, false, __builtin_return_address(0));)
  if (b.reverse) ::emu::complete_copies(t);
}

inline void cp_async_commit() {}

inline void cp_async_wait_all() {
  ::emu::Block& b = ::emu::block();
  ::emu::complete_copies(b.threads[b.cur]);
}

}  // namespace torchcv_ext::attn::ptx
