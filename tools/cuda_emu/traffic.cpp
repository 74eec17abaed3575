// The traffic flavor's recorder (see traffic.h): the __asan_*_noabort hooks that GCC's
// -fsanitize=kernel-address (outline) calls on every load and store, a wrapper of torch's CPU
// allocator that tells tensor memory from the rest, the grouping of accesses into warp requests,
// and the op that hands the per-launch counts to Python:
//   torch.ops.torchcv_ext_emu._emu_traffic(reset) -> JSON list, one entry per kernel launch:
//   {"kernel", "blocks", "load": {...}, "store": {...}} with, per direction, "requests", "bytes"
//   (what the lanes asked for), "sectors" (32-byte sectors the requests touched), "ideal" (sectors
//   the requests' distinct bytes would need if perfectly packed) and "unique" (distinct sectors of
//   the launch: the DRAM traffic if L2 kept everything).
#include <c10/core/CPUAllocator.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "cuda_emu.h"

#if !defined(TORCHCV_EMU_TRAFFIC)
#error "traffic.cpp belongs to build.py's traffic flavor (-DTORCHCV_EMU_TRAFFIC)"
#endif

#define EMU_NO_INSTRUMENT __attribute__((no_sanitize_address))

namespace emu::traffic {
namespace {

// ---- which addresses are tensor memory: torch's CPU allocator, wrapped -------------------------
std::mutex g_alloc_mu;
std::map<uintptr_t, size_t>& live() {  // start -> bytes of every live allocation
  static std::map<uintptr_t, size_t> m;
  return m;
}
c10::Allocator* g_inner = nullptr;
c10::DeleterFnPtr g_inner_delete = nullptr;

void tracked_delete(void* p) {
  {
    std::lock_guard<std::mutex> lock(g_alloc_mu);
    live().erase(reinterpret_cast<uintptr_t>(p));
  }
  g_inner_delete(p);
}

struct TrackingAllocator final : c10::Allocator {
  c10::DataPtr allocate(size_t n) override {
    void* p = g_inner->raw_allocate(n);
    if (p != nullptr && n > 0) {
      std::lock_guard<std::mutex> lock(g_alloc_mu);
      live()[reinterpret_cast<uintptr_t>(p)] = n;
    }
    return {p, p, &tracked_delete, c10::Device(c10::DeviceType::CPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &tracked_delete; }
  void copy_data(void* dst, const void* src, size_t n) const override { default_copy_data(dst, src, n); }
};

TrackingAllocator g_tracker;

// Installed when the library loads, before the tensors of any case exist.
const bool g_installed = [] {
  g_inner = c10::GetCPUAllocator();
  g_inner_delete = g_inner->raw_deleter();
  TORCH_CHECK(g_inner_delete != nullptr, "cuda_emu traffic: the CPU allocator has no raw deleter");
  c10::SetCPUAllocator(&g_tracker, /*priority=*/100);
  return true;
}();

EMU_NO_INSTRUMENT bool is_tensor_memory(uintptr_t a) {
  const auto& m = live();
  auto it = m.upper_bound(a);
  if (it == m.begin()) return false;
  --it;
  return a < it->first + it->second;
}

// ---- grouping into requests --------------------------------------------------------------------
struct Access {
  uintptr_t addr;
  uint32_t bytes;
};

struct Site {  // (thread or warp, site, occurrence, direction)
  uint32_t who;
  uint32_t occ;
  uintptr_t pc;
  bool store;
  bool operator==(const Site& o) const {
    return who == o.who && occ == o.occ && pc == o.pc && store == o.store;
  }
};
struct SiteHash {
  size_t operator()(const Site& s) const {
    return std::hash<uintptr_t>()(s.pc) ^ (size_t{s.who} * 0x9E3779B97F4A7C15ull) ^ (size_t{s.occ} << 20) ^
           size_t{s.store};
  }
};

struct Dir {
  uint64_t requests = 0, bytes = 0, sectors = 0, ideal = 0;
  std::unordered_set<uint64_t> unique;
};
struct LaunchStats {
  std::string kernel;
  uint64_t blocks = 0;
  Dir load, store;
};

bool g_busy = false;  // inside the recorder: its own (instrumented) accesses do not count
bool g_in_launch = false;
std::vector<LaunchStats> g_launches;
std::unordered_map<Site, uint32_t, SiteHash> g_occ;                 // per thread: executions so far
std::unordered_map<Site, std::vector<Access>, SiteHash> g_requests;  // per warp: the lanes' accesses

void close_request(const std::vector<Access>& acc, Dir& d) {
  std::vector<uint64_t> sectors;
  std::vector<std::pair<uintptr_t, uintptr_t>> ranges;
  uint64_t asked = 0;
  for (const Access& a : acc) {
    asked += a.bytes;
    ranges.emplace_back(a.addr, a.addr + a.bytes);
    for (uintptr_t s = a.addr / 32; s <= (a.addr + a.bytes - 1) / 32; ++s) sectors.push_back(s);
  }
  std::sort(sectors.begin(), sectors.end());
  sectors.erase(std::unique(sectors.begin(), sectors.end()), sectors.end());
  std::sort(ranges.begin(), ranges.end());
  uint64_t distinct = 0;
  uintptr_t end = 0;
  for (const auto& [lo, hi] : ranges) {  // the union of the lanes' byte ranges
    const uintptr_t from = std::max(lo, end);
    if (hi > from) distinct += hi - from;
    end = std::max(end, hi);
  }
  d.requests += 1;
  d.bytes += asked;
  d.sectors += sectors.size();
  d.ideal += (distinct + 31) / 32;
  d.unique.insert(sectors.begin(), sectors.end());
}

}  // namespace

void launch_begin(const char* kernel) {
  g_busy = true;
  g_launches.push_back(LaunchStats{kernel});
  g_occ.clear();
  g_requests.clear();
  g_in_launch = true;
  g_busy = false;
}

void block_end() {
  g_busy = true;
  LaunchStats& l = g_launches.back();
  l.blocks += 1;
  for (const auto& [site, acc] : g_requests) close_request(acc, site.store ? l.store : l.load);
  g_occ.clear();
  g_requests.clear();
  g_busy = false;
}

void launch_end() { g_in_launch = false; }

void record(const void* p, size_t bytes, bool store, const void* pc) {
  if (!in_kernel || !g_in_launch || g_busy || bytes == 0) return;
  g_busy = true;
  const auto a = reinterpret_cast<uintptr_t>(p);
  const Block& b = block();
  const auto stacks = reinterpret_cast<uintptr_t>(b.stacks);
  const bool on_stack = a >= stacks && a < stacks + kMaxThreads * (kStackBytes + kGuardBytes);
  if (!on_stack && is_tensor_memory(a)) {
    const auto tid = static_cast<uint32_t>(linear_tid());
    const auto site = reinterpret_cast<uintptr_t>(pc);
    const uint32_t occ = g_occ[Site{tid, 0, site, store}]++;
    g_requests[Site{tid / 32, occ, site, store}].push_back(Access{a, static_cast<uint32_t>(bytes)});
  }
  g_busy = false;
}

namespace {

void dir_json(std::ostringstream& o, const Dir& d) {
  o << "{\"requests\": " << d.requests << ", \"bytes\": " << d.bytes << ", \"sectors\": " << d.sectors
    << ", \"ideal\": " << d.ideal << ", \"unique\": " << d.unique.size() << "}";
}

std::string take(bool reset) {
  std::ostringstream o;
  o << "[";
  for (size_t i = 0; i < g_launches.size(); ++i) {
    const LaunchStats& l = g_launches[i];
    o << (i ? ", " : "") << "{\"kernel\": \"" << l.kernel << "\", \"blocks\": " << l.blocks << ", \"load\": ";
    dir_json(o, l.load);
    o << ", \"store\": ";
    dir_json(o, l.store);
    o << "}";
  }
  o << "]";
  if (reset) g_launches.clear();
  return o.str();
}

}  // namespace
}  // namespace emu::traffic

// The hooks of -fsanitize=kernel-address (outline): not instrumented themselves.
extern "C" {
#define EMU_HOOK(n)                                                                                      \
  EMU_NO_INSTRUMENT void __asan_load##n##_noabort(uintptr_t a) {                                        \
    emu::traffic::record(reinterpret_cast<const void*>(a), n, false, __builtin_return_address(0));      \
  }                                                                                                      \
  EMU_NO_INSTRUMENT void __asan_store##n##_noabort(uintptr_t a) {                                       \
    emu::traffic::record(reinterpret_cast<const void*>(a), n, true, __builtin_return_address(0));       \
  }
EMU_HOOK(1)
EMU_HOOK(2)
EMU_HOOK(4)
EMU_HOOK(8)
EMU_HOOK(16)
#undef EMU_HOOK
EMU_NO_INSTRUMENT void __asan_loadN_noabort(uintptr_t a, size_t n) {
  emu::traffic::record(reinterpret_cast<const void*>(a), n, false, __builtin_return_address(0));
}
EMU_NO_INSTRUMENT void __asan_storeN_noabort(uintptr_t a, size_t n) {
  emu::traffic::record(reinterpret_cast<const void*>(a), n, true, __builtin_return_address(0));
}
EMU_NO_INSTRUMENT void __asan_handle_no_return() {}
EMU_NO_INSTRUMENT void __asan_before_dynamic_init(const char*) {}
EMU_NO_INSTRUMENT void __asan_after_dynamic_init() {}
}

TORCH_LIBRARY_FRAGMENT(torchcv_ext_emu, m) {
  m.def("_emu_traffic(bool reset) -> str", [](bool reset) { return emu::traffic::take(reset); });
}
