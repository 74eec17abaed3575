// A small CUDA execution emulator for the CPU: runs this project's CUDA kernels (every file of
// csrc/cuda/: dwconv_bn_act, squeeze_excite, channel_shuffle, hardswish and the attention kernels,
// whose few PTX instructions ptx_emu.h implements) on CPU tensors, host launch code included, so
// that machines without a GPU execute the CUDA code paths in every test run. build.py rewrites a
// .cu file for it (launch syntax, CUDA headers, dispatch key) and compiles it with g++ and
// AddressSanitizer.
//
// Model:
//   * blocks run one after another (in reverse order under TORCHCV_EMU_ORDER=reverse); the threads
//     of a block are fibers on one OS thread (a small x86-64 stack switch, annotated for
//     AddressSanitizer), run round-robin in a chosen order (TORCHCV_EMU_ORDER=forward|reverse)
//     until each reaches a barrier or exits. Deterministic, and a missing __syncthreads shows up
//     as wrong results (thread 0 reads shared memory before thread 1 has written it, or
//     overwrites it first), as does a block reading another block's output of the same launch;
//     running both orders must give the same bits for the deterministic kernels.
//   * __syncthreads: released when every live thread of the block has arrived (exited threads do
//     not count, as on sm_70+). Threads stuck at different barriers -- a __syncthreads or a warp
//     shuffle in divergent code -- are reported as a deadlock.
//   * __shfl_down_sync / __shfl_xor_sync (full mask only): a warp-wide exchange; an exited or
//     missing source lane is an error, as it is undefined on the GPU.
//   * __shared__ arrays are static (one copy, shared by the running block), refilled with NaN
//     bytes for each block (build.py registers them); dynamic shared memory is a per-block buffer
//     of exactly the launch's size, NaN-filled too, and checked against the kernel's
//     cudaFuncSetAttribute opt-in (48 KiB without). Uninitialized reads show up as NaN.
//   * __syncwarp (full mask) is a warp barrier; the lanes of a warp must all wait at the same
//     warp operation (shuffle, __syncwarp, or ptx_emu.h's mma / ldmatrix, counted per lane), else
//     it is an error. __ldg is a plain load.
//   * atomicAdd (float, float2) is a plain read-modify-write: threads never run concurrently.
//   * __half / __nv_bfloat16 are c10::Half / c10::BFloat16 (round-to-nearest-even conversions,
//     as the CUDA _rn intrinsics).
//   * fiber stacks: 256 KiB each with a guard page below (an overflow faults).
//   * launch checks as on the GPU: grid and block dimensions in range and non-zero.
//   * out-of-bounds accesses of global memory (CPU tensors) and of shared arrays: AddressSanitizer.
//   * build.py's traffic flavor (TORCHCV_EMU_TRAFFIC, no ASan) records every global-memory access
//     of the kernel threads instead, as warp requests of 32-byte sectors (traffic.h).
#pragma once

#include <sys/mman.h>

#include <c10/core/Device.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
};

typedef struct CUstream_st* cudaStream_t;
typedef int cudaError_t;
constexpr cudaError_t cudaSuccess = 0;
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
enum cudaDeviceAttr { cudaDevAttrComputeCapabilityMajor = 75, cudaDevAttrMaxSharedMemoryPerBlockOptin = 97 };

// The fields of cudaDeviceProp the kernels' host code reads, with an H100's values.
struct cudaDeviceProp {
  int multiProcessorCount = 132;
  size_t sharedMemPerBlock = 48 * 1024;
  size_t sharedMemPerBlockOptin = 227 * 1024;
  int maxThreadsPerBlock = 1024;
  int warpSize = 32;
  int major = 9, minor = 0;
};

#if !defined(__x86_64__)
#error "cuda_emu.h: the fiber switch is written for x86-64"
#endif
#if defined(TORCHCV_EMU_TRAFFIC)  // build.py's traffic flavor (traffic.h), not AddressSanitizer
#include "traffic.h"
#define EMU_TRAFFIC(...) __VA_ARGS__
#else
#define EMU_TRAFFIC(...)
#endif
#if defined(__SANITIZE_ADDRESS__) && !defined(TORCHCV_EMU_TRAFFIC)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define EMU_ASAN 1
#else
#define EMU_ASAN 0
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __align__(n) alignas(n)
#define __shared__ static
#define TORCHCV_CUDA_EMU 1
#define C10_CUDA_KERNEL_LAUNCH_CHECK() ((void)0)
#define C10_CUDA_CHECK(expr) ((void)(expr))

namespace emu {

// Built-in variables: the scheduler sets them before resuming a thread (one runs at a time).
inline dim3 threadIdx_, blockIdx_, blockDim_, gridDim_;

enum State { kRunnable, kAtSync, kAtWarp, kDone };

// Fiber switch: saves the callee-saved registers and the FP control words on the current stack,
// stores its stack pointer in *from and continues on `to`'s. No signal-mask syscall (ucontext's
// swapcontext makes one per switch, and ASan's interceptor clears the whole stack's shadow).
extern "C" void emu_fiber_switch(void** from, void* to);
asm(R"(
  .pushsection .text
  .p2align 4
  .weak emu_fiber_switch
  .type emu_fiber_switch, @function
emu_fiber_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size emu_fiber_switch, .-emu_fiber_switch
  .popsection
)");

// A cp.async copy not yet landed (ptx_emu.h): 16 bytes, or 16 zero bytes when !valid.
struct AsyncCopy {
  void* dst;
  const void* src;
  bool valid;
};

struct Thread {
  void* sp = nullptr;
  dim3 tid;
  State state = kRunnable;
  const char* warp_op = nullptr;  // the warp operation a kAtWarp thread waits in, and its count:
  uint64_t warp_seq = 0;          // every lane of a warp must be at the same one
  std::vector<AsyncCopy> copies;  // this thread's cp.async copies in flight
};

constexpr size_t kSlotBytes = 64;  // per lane, for warp exchanges

struct Block {
  std::vector<Thread> threads;
  char* stacks = nullptr;  // kMaxThreads fiber stacks, mapped once and never freed
  std::vector<unsigned char> warp_slots;  // 32 lanes x kSlotBytes per warp
  unsigned char* dyn_smem = nullptr;  // exactly the launch's bytes (ASan sees overruns)
  size_t dyn_smem_bytes = 0;
  bool reverse = false;  // the launch's schedule: threads and blocks in reverse order
  uint64_t generation = 0;            // one per block run: static __shared__ arrays refill
  std::map<const void*, uint64_t> shared_gen;
  void* sched_sp = nullptr;
  const void* sched_bottom = nullptr;  // the scheduler's stack, for ASan
  size_t sched_size = 0;
  int cur = 0;
  int n = 0;
  std::function<void()> body;
  std::exception_ptr error;  // thrown inside a thread (an emulator check), rethrown by the launch
};

inline Block& block() {
  static Block b;
  return b;
}

constexpr size_t kStackBytes = 256 * 1024;  // + a guard page below each stack
constexpr size_t kGuardBytes = 4096;
constexpr int kMaxThreads = 1024;

inline std::map<const void*, int>& smem_optin() {
  static std::map<const void*, int> m;
  return m;
}

inline int linear_tid() {
  return static_cast<int>(threadIdx_.x + threadIdx_.y * blockDim_.x +
                          threadIdx_.z * blockDim_.x * blockDim_.y);
}

// Thread -> scheduler (for good when s == kDone).
inline void yield(State s) {
  Block& b = block();
  Thread& t = b.threads[b.cur];
  t.state = s;
#if EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(s == kDone ? nullptr : &fake, b.sched_bottom, b.sched_size);
  emu_fiber_switch(&t.sp, b.sched_sp);
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
  emu_fiber_switch(&t.sp, b.sched_sp);
#endif
}

// Lane -> warp barrier of operation `op` (every lane of the warp must reach the same one).
inline void warp_wait(const char* op) {
  Block& b = block();
  Thread& t = b.threads[b.cur];
  t.warp_op = op;
  ++t.warp_seq;
  yield(kAtWarp);
}

inline char* stack_of(int i) {
  return block().stacks + static_cast<size_t>(i) * (kStackBytes + kGuardBytes) + kGuardBytes;
}

// Lands a thread's cp.async copies in issue order.
inline void complete_copies(Thread& t) {
  for (const AsyncCopy& c : t.copies) {
    if (c.valid) {
      std::memcpy(c.dst, c.src, 16);
    } else {
      std::memset(c.dst, 0, 16);
    }
  }
  t.copies.clear();
}

[[noreturn]] inline void fiber_entry() {
  Block& b = block();
#if EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &b.sched_bottom, &b.sched_size);
#endif
  try {
    b.body();
    complete_copies(b.threads[b.cur]);  // an exiting thread's copies still land
  } catch (...) {
    if (!b.error) b.error = std::current_exception();
  }
#if EMU_ASAN
  // This frame and yield's never return: clear their stack poison now (down to 4 KiB below),
  // or the next block's thread on this stack would trip over it.
  char* top = stack_of(b.cur) + kStackBytes;
  char* low = static_cast<char*>(__builtin_frame_address(0)) - 4096;
  __asan_unpoison_memory_region(low, static_cast<size_t>(top - low));
#endif
  yield(kDone);
  __builtin_unreachable();
}

// A fresh thread's stack: the frame emu_fiber_switch pops (FP control words, six registers), then
// fiber_entry as the return address, 16-byte aligned as after a call.
inline void* init_stack(char* base, size_t size) {
  auto top = reinterpret_cast<uintptr_t>(base + size) & ~uintptr_t(15);
  auto* sp = reinterpret_cast<uint64_t*>(top);
  *--sp = 0;                                           // alignment: entry sees rsp % 16 == 8
  *--sp = reinterpret_cast<uint64_t>(&fiber_entry);    // ret target
  for (int i = 0; i < 6; ++i) *--sp = 0;               // rbp rbx r12 r13 r14 r15
  --sp;
  uint32_t mxcsr;
  uint16_t fcw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fcw));
  std::memcpy(reinterpret_cast<char*>(sp), &mxcsr, 4);
  std::memcpy(reinterpret_cast<char*>(sp) + 4, &fcw, 2);
  return sp;
}

// Scheduler -> thread i.
inline void resume(int i) {
  Block& b = block();
  b.cur = i;
  threadIdx_ = b.threads[i].tid;
  char* stack = stack_of(i);
#if EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, stack, kStackBytes);
  emu_fiber_switch(&b.sched_sp, b.threads[i].sp);
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
  (void)stack;
  EMU_TRAFFIC(traffic::in_kernel = true;)
  emu_fiber_switch(&b.sched_sp, b.threads[i].sp);
  EMU_TRAFFIC(traffic::in_kernel = false;)
#endif
  if (b.error) {
    std::exception_ptr e = b.error;
    b.error = nullptr;
    std::rethrow_exception(e);
  }
}

inline bool reverse_order() {
  const char* v = std::getenv("TORCHCV_EMU_ORDER");
  return v != nullptr && std::string(v) == "reverse";
}

// TORCHCV_EMU_INDEX64=1: the kernels' 64-bit index variants at any size (csrc/cuda/index_width.cuh),
// so that tests reach them without 2^32-element tensors.
inline bool force_index64() {
  const char* v = std::getenv("TORCHCV_EMU_INDEX64");
  return v != nullptr && std::string(v) == "1";
}

// An integer from the environment (the kernels' launch-shape knobs that tests turn), or fallback.
inline int64_t env_int(const char* name, int64_t fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::strtoll(v, nullptr, 10) : fallback;
}

// Runs every thread of the current block to completion (see the model above).
inline void run_block(const char* kernel) {
  Block& b = block();
  const bool rev = b.reverse;
  const int nwarps = (b.n + 31) / 32;
  for (;;) {
    for (int k = 0; k < b.n; ++k) {
      const int i = rev ? b.n - 1 - k : k;
      if (b.threads[i].state == kRunnable) resume(i);
    }
    int live = 0, at_sync = 0;
    for (const Thread& t : b.threads) {
      live += t.state != kDone;
      at_sync += t.state == kAtSync;
    }
    if (live == 0) return;
    bool released = false;
    for (int w = 0; w < nwarps; ++w) {
      const int lo = w * 32, hi = std::min(b.n, lo + 32);
      int waiting = 0, done = 0;
      for (int i = lo; i < hi; ++i) {
        waiting += b.threads[i].state == kAtWarp;
        done += b.threads[i].state == kDone;
      }
      if (waiting == 0) continue;
      TORCH_CHECK(done == 0, "cuda_emu: ", kernel, ": warp shuffle in warp ", w, " of block (",
                  blockIdx_.x, ",", blockIdx_.y, ",", blockIdx_.z, ") with ", done,
                  " exited lane(s) (full-mask shuffle: undefined on the GPU)");
      if (waiting == hi - lo) {
        for (int i = lo + 1; i < hi; ++i) {
          const Thread& a = b.threads[lo];
          const Thread& t = b.threads[i];
          TORCH_CHECK(std::strcmp(t.warp_op, a.warp_op) == 0 && t.warp_seq == a.warp_seq, "cuda_emu: ", kernel,
                      ": lanes ", lo % 32, " and ", i % 32, " of warp ", w, " in block (", blockIdx_.x,
                      ",", blockIdx_.y, ",", blockIdx_.z, ") wait at different warp operations (",
                      a.warp_op, " #", a.warp_seq, " vs ", t.warp_op, " #", t.warp_seq,
                      "): divergent shuffles / __syncwarp");
        }
        for (int i = lo; i < hi; ++i) b.threads[i].state = kRunnable;
        released = true;
      }
    }
    if (released) continue;
    if (at_sync == live) {
      for (Thread& t : b.threads) {
        if (t.state == kAtSync) t.state = kRunnable;
      }
      continue;
    }
    TORCH_CHECK(false, "cuda_emu: ", kernel, ": deadlock in block (", blockIdx_.x, ",", blockIdx_.y, ",",
                blockIdx_.z, "): ", at_sync, " of ", live,
                " live threads at __syncthreads, the others at a warp shuffle whose warp is not "
                "complete (a barrier or shuffle in divergent code)");
  }
}

struct Launch {
  const char* name;
  dim3 grid, blk;
  size_t smem;

  // build.py rewrites `kernel<<<grid, block[, smem[, stream]]>>>(args)` as
  // `emu::Launch::make("kernel", grid, block[, smem[, stream]])(kernel, args)`.
  static Launch make(const char* name, dim3 grid, dim3 blk, size_t smem = 0, cudaStream_t = nullptr) {
    return Launch{name, grid, blk, smem};
  }

  // Argument -> parameter by copy-initialization: the implicit conversions nvcc allows, no casts.
  template <typename T, typename U>
  static T convert(U&& u) {
    T t = std::forward<U>(u);
    return t;
  }

  template <typename... P, typename... A>
  void operator()(void (*kernel)(P...), A&&... a) const {
    static_assert(sizeof...(P) == sizeof...(A), "cuda_emu: kernel argument count");
    std::tuple<std::decay_t<P>...> args(convert<std::decay_t<P>>(std::forward<A>(a))...);
    run(reinterpret_cast<const void*>(kernel), [&] { std::apply(kernel, args); });
  }

  void run(const void* key, const std::function<void()>& body) const {
    // TORCHCV_EMU_LOG=path: each launched kernel (as spelled at the launch) once, for coverage.
    if (const char* log = std::getenv("TORCHCV_EMU_LOG")) {
      static std::set<std::string> seen;
      if (seen.insert(name).second) std::ofstream(log, std::ios::app) << name << "\n";
    }
    const unsigned long long nthreads = 1ull * blk.x * blk.y * blk.z;
    TORCH_CHECK(grid.x >= 1 && grid.y >= 1 && grid.z >= 1, "cuda_emu: ", name, ": launch with an empty grid (",
                grid.x, ",", grid.y, ",", grid.z, "): invalid configuration argument on the GPU");
    TORCH_CHECK(grid.x <= 2147483647u && grid.y <= 65535u && grid.z <= 65535u,
                "cuda_emu: ", name, ": grid (", grid.x, ",", grid.y, ",", grid.z, ") out of range");
    TORCH_CHECK(nthreads >= 1 && nthreads <= kMaxThreads && blk.z <= 64, "cuda_emu: ", name, ": block (", blk.x, ",",
                blk.y, ",", blk.z, ") out of range");
    auto it = smem_optin().find(key);
    const size_t limit = it != smem_optin().end() ? static_cast<size_t>(it->second) : 48 * 1024;
    TORCH_CHECK(smem <= limit, "cuda_emu: ", name, ": ", smem, " bytes of dynamic shared memory but the kernel may "
                "use ", limit, " (cudaFuncSetAttribute(MaxDynamicSharedMemorySize) missing?)");
    TORCH_CHECK(smem <= cudaDeviceProp{}.sharedMemPerBlockOptin, "cuda_emu: ", name, ": ", smem,
                " bytes of dynamic shared memory exceed the device's limit");
    Block& b = block();
    b.n = static_cast<int>(nthreads);
    b.threads.assign(b.n, Thread{});
    if (b.stacks == nullptr) {
      const size_t stride = kStackBytes + kGuardBytes;
      void* p = mmap(nullptr, kMaxThreads * stride, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      TORCH_CHECK(p != MAP_FAILED, "cuda_emu: cannot map the fiber stacks");
      b.stacks = static_cast<char*>(p);
      for (int i = 0; i < kMaxThreads; ++i) {  // a stack overflow faults instead of corrupting
        TORCH_CHECK(mprotect(b.stacks + i * stride, kGuardBytes, PROT_NONE) == 0,
                    "cuda_emu: cannot protect a stack guard page");
      }
    }
    b.warp_slots.assign(static_cast<size_t>((b.n + 31) / 32) * 32 * kSlotBytes, 0);
    b.body = body;
    blockDim_ = blk;
    gridDim_ = grid;
    // Blocks in linear order, reversed under the reverse schedule (a block that reads what another
    // block of the same launch writes then sees different data).
    b.reverse = reverse_order();
    const bool rev = b.reverse;
    const uint64_t nblocks = uint64_t{grid.x} * grid.y * grid.z;
    EMU_TRAFFIC(traffic::launch_begin(name);)
    for (uint64_t k = 0; k < nblocks; ++k) {
      const uint64_t lin = rev ? nblocks - 1 - k : k;
      blockIdx_ = dim3(static_cast<unsigned>(lin % grid.x), static_cast<unsigned>(lin / grid.x % grid.y),
                       static_cast<unsigned>(lin / (uint64_t{grid.x} * grid.y)));
      ++b.generation;
      // NaN bytes: uninitialized reads stand out. Exactly `smem` bytes, 16-byte aligned.
      b.dyn_smem = static_cast<unsigned char*>(::operator new[](smem, std::align_val_t(16)));
      b.dyn_smem_bytes = smem;
      std::memset(b.dyn_smem, 0xff, smem);
      for (int i = 0; i < b.n; ++i) {
        Thread& t = b.threads[i];
        t = Thread{};
        t.tid = dim3(i % blk.x, (i / blk.x) % blk.y, i / (blk.x * blk.y));
        t.sp = init_stack(stack_of(i), kStackBytes);
      }
      try {
        run_block(name);
      } catch (...) {
        ::operator delete[](b.dyn_smem, std::align_val_t(16));
        b.dyn_smem = nullptr;
#if EMU_ASAN
        // The block's other threads stay suspended mid-kernel, their frames poisoned.
        for (int i = 0; i < b.n; ++i) __asan_unpoison_memory_region(stack_of(i), kStackBytes);
#endif
        throw;
      }
      ::operator delete[](b.dyn_smem, std::align_val_t(16));
      b.dyn_smem = nullptr;
      EMU_TRAFFIC(traffic::block_end();)
    }
    EMU_TRAFFIC(traffic::launch_end();)
  }
};

// 16-byte aligned dynamic shared memory of the running block.
inline void* dynamic_smem() { return block().dyn_smem; }

// build.py adds a call after every static __shared__ declaration: the first thread of a block
// that passes it fills the array with NaN bytes, so a read before any write of this block shows.
inline void fresh_shared(void* p, size_t bytes) {
  Block& b = block();
  uint64_t& gen = b.shared_gen[p];
  if (gen != b.generation) {
    std::memset(p, 0xff, bytes);
    gen = b.generation;
  }
}

// True when [p, p + bytes) lies in the running block's dynamic shared memory.
inline bool in_dynamic_smem(const void* p, size_t bytes) {
  const Block& b = block();
  const auto* c = static_cast<const unsigned char*>(p);
  return b.dyn_smem != nullptr && c >= b.dyn_smem && c + bytes <= b.dyn_smem + b.dyn_smem_bytes;
}

// The protocol of every warp operation: each lane publishes v in its slot, waits for the whole
// warp, reads what it needs with read(slot_of, lane, lanes) (slot_of(l): lane l's value; lanes:
// the warp's width, under 32 in a partial last warp), then waits again so that no slot is
// overwritten before every lane has read.
template <typename T, typename R>
void warp_publish_read(const T& v, const char* what, R&& read) {
  static_assert(sizeof(T) <= kSlotBytes && std::is_trivially_copyable_v<T>,
                "cuda_emu: warp operation on a type over 64 bytes");
  Block& b = block();
  const int tid = linear_tid(), lane = tid % 32, base = tid - lane;
  unsigned char* slots = b.warp_slots.data() + static_cast<size_t>(base / 32) * 32 * kSlotBytes;
  std::memcpy(slots + lane * kSlotBytes, &v, sizeof(T));
  warp_wait(what);
  read([&](int l) {
    T r;
    std::memcpy(&r, slots + l * kSlotBytes, sizeof(T));
    return r;
  }, lane, std::min(32, b.n - base));
  warp_wait(what);
}

// Every lane of the calling thread's (full) warp publishes v; returns all 32 values (lane order).
template <typename T>
std::array<T, 32> warp_gather(const T& v, const char* what) {
  const int base = linear_tid() / 32 * 32;
  TORCH_CHECK(base + 32 <= block().n, "cuda_emu: ", what, " in a partial warp");
  std::array<T, 32> all;
  warp_publish_read(v, what, [&](auto slot_of, int, int) {
    for (int l = 0; l < 32; ++l) all[l] = slot_of(l);
  });
  return all;
}

// Warp exchange: every lane publishes v, then reads lane src's value.
template <typename T, typename F>
T warp_exchange(unsigned mask, T v, F src_of, const char* what) {
  TORCH_CHECK(mask == 0xffffffffu, "cuda_emu: ", what, " with a partial mask is not emulated");
  T r;
  warp_publish_read(v, what, [&](auto slot_of, int lane, int lanes) {
    const int src = src_of(lane);
    TORCH_CHECK(src < lanes, "cuda_emu: ", what, " reads lane ", src, " of a partial warp");
    r = slot_of(src);
  });
  return r;
}

}  // namespace emu

#define threadIdx (::emu::threadIdx_)
#define blockIdx (::emu::blockIdx_)
#define blockDim (::emu::blockDim_)
#define gridDim (::emu::gridDim_)

inline void __syncthreads() { emu::yield(emu::kAtSync); }

// Warp barrier (full mask).
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  TORCH_CHECK(mask == 0xffffffffu, "cuda_emu: __syncwarp with a partial mask is not emulated");
  emu::warp_wait("__syncwarp");
}

// always_inline (here and in atomicAdd): the traffic flavor tells load sites apart by address.
template <typename T>
__attribute__((always_inline)) inline T __ldg(const T* p) {
  return *p;
}

// CUDA's global min / max overloads.
template <typename A, typename B>
inline std::common_type_t<A, B> min(A a, B b) {
  return b < a ? b : a;
}
template <typename A, typename B>
inline std::common_type_t<A, B> max(A a, B b) {
  return a < b ? b : a;
}

template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return emu::warp_exchange(mask, v, [&](int lane) {
    const int seg = lane % width;
    return seg + static_cast<int>(delta) < width ? lane + static_cast<int>(delta) : lane;
  }, "__shfl_down_sync");
}

template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  return emu::warp_exchange(mask, v, [&](int lane) {
    const int src = lane ^ lane_mask;  // a later group's lane: the caller's own value (CUDA)
    return src / width <= lane / width ? src : lane;
  }, "__shfl_xor_sync");
}

// Half types: c10's, with CUDA's names and conversion intrinsics.
using __half = c10::Half;
using __nv_bfloat16 = c10::BFloat16;
struct __half2 {
  __half x, y;
};
struct __nv_bfloat162 {
  __nv_bfloat16 x, y;
};
inline __half __float2half_rn(float v) { return __half(v); }
inline float __half2float(__half v) { return static_cast<float>(v); }
inline __half2 __floats2half2_rn(float lo, float hi) { return {__half(lo), __half(hi)}; }
inline __nv_bfloat16 __float2bfloat16_rn(float v) { return __nv_bfloat16(v); }
inline float __bfloat162float(__nv_bfloat16 v) { return static_cast<float>(v); }
inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) {
  return {__nv_bfloat16(lo), __nv_bfloat16(hi)};
}

struct alignas(8) float2 {
  float x, y;
};
inline float2 make_float2(float x, float y) { return {x, y}; }

// Threads never run concurrently: a plain read-modify-write is atomic.
__attribute__((always_inline)) inline float atomicAdd(float* p, float v) {
  const float old = *p;
  *p = old + v;
  return old;
}
__attribute__((always_inline)) inline float2 atomicAdd(float2* p, float2 v) {
  TORCH_CHECK(reinterpret_cast<uintptr_t>(p) % 8 == 0, "cuda_emu: atomicAdd(float2*) on an address not 8-byte aligned");
  const float2 old = *p;
  p->x = old.x + v.x;
  p->y = old.y + v.y;
  return old;
}

inline cudaError_t cudaGetDevice(int* dev) {
  *dev = 0;
  return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int) {
  const cudaDeviceProp p;
  switch (attr) {
    case cudaDevAttrComputeCapabilityMajor: *value = p.major; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = static_cast<int>(p.sharedMemPerBlockOptin); break;
  }
  return cudaSuccess;
}

template <typename K>
cudaError_t cudaFuncSetAttribute(K* kernel, cudaFuncAttribute attr, int value) {
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    emu::smem_optin()[reinterpret_cast<const void*>(kernel)] = value;
  }
  return cudaSuccess;
}

namespace c10::cuda {
struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
};
struct EmuStream {
  operator cudaStream_t() const { return nullptr; }
};
inline EmuStream getCurrentCUDAStream() { return {}; }
}  // namespace c10::cuda

namespace at::cuda {
inline cudaDeviceProp* getCurrentDeviceProperties() {
  static cudaDeviceProp p;
  return &p;
}
}  // namespace at::cuda
