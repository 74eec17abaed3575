// Global-memory traffic model of the CUDA emulator (build.py's "traffic" flavor, which compiles the
// kernels with -DTORCHCV_EMU_TRAFFIC and GCC's -fsanitize=kernel-address in its outline form: every
// load and store of the kernel code calls a __asan_{load,store}N_noabort hook, defined in
// traffic.cpp). The hooks keep the accesses that a kernel thread makes to CPU tensor memory (torch's
// CPU allocator is wrapped to know which addresses those are; stacks, shared memory and the
// emulator's own data are not tensors) and group them as the GPU issues them: the k-th execution
// of one load or store site (its return address) by the lanes of one warp is one request, and costs
// the 32-byte sectors its lanes' bytes touch. Per launch, traffic.cpp reports requests, sectors, the
// sectors perfectly packed lanes would need (coalescing = ideal / sectors) and the distinct sectors
// touched (a lower bound on DRAM traffic, as if L2 kept everything). No timing: this is the
// memory-access half of a GPU's speed for memory-bound kernels, measured without a GPU
// (python_tests/cuda_emu/traffic.py).
#pragma once

#include <cstddef>

namespace emu::traffic {

inline bool in_kernel = false;  // a kernel thread (fiber) is running: its accesses count

void launch_begin(const char* kernel);
void block_end();
void launch_end();
// One access of `bytes` at p by the running thread, issued at site `pc`.
void record(const void* p, size_t bytes, bool store, const void* pc);

}  // namespace emu::traffic
