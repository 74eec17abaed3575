// Portability macros shared by the CPU (.cpp, g++) and CUDA (.cu, nvcc) translation units.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define TCV_HOST_DEVICE __host__ __device__
#define TCV_INLINE __forceinline__
#else
#define TCV_HOST_DEVICE
#define TCV_INLINE inline
#endif

// Per-element math that must be bit-for-bit the same on CPU and GPU is written once as
// `TCV_HOST_DEVICE TCV_INLINE` functions in csrc/include/torchcv_ext/*.h.
#define TCV_FN TCV_HOST_DEVICE TCV_INLINE
