// Element-wise activations and their derivatives, written once for CPU and CUDA.
// Used by the fused ops (dwconv_bn_act, squeeze_excite, ...). Math is done in float (or double
// for float64 inputs): call with the accumulation type `acc_t`.
//
// The Python side names activations with the same strings (torchcv_ext/ops/_common.py ACTIVATIONS):
//   "identity", "relu", "relu6", "hardswish", "silu", "hardsigmoid", "sigmoid"
#pragma once
#include <cmath>
#include <string>

#include "torchcv_ext/macros.h"

namespace torchcv_ext {

enum class Act : int { Identity = 0, ReLU, ReLU6, Hardswish, SiLU, Hardsigmoid, Sigmoid };

#if !defined(__CUDA_ARCH__)
// Host-only: parse the schema's `str act` argument. Unknown names are a clear error.
Act parse_act(const std::string& name);  // defined in csrc/activations.cpp
const char* act_name(Act a);
#endif

template <typename T>
TCV_FN T act_sigmoid(T x) {
  return T(1) / (T(1) + exp(-x));
}

// y = f(x)
template <typename T>
TCV_FN T act_forward(Act a, T x) {
  switch (a) {
    case Act::ReLU: return x <= T(0) ? T(0) : x;  // NaN propagates, as torch.relu
    case Act::ReLU6: return x < T(0) ? T(0) : (x > T(6) ? T(6) : x);
    case Act::Hardswish: {
      const T r = x + T(3);
      return x * (r < T(0) ? T(0) : (r > T(6) ? T(6) : r)) / T(6);
    }
    case Act::SiLU: return x * act_sigmoid(x);
    case Act::Hardsigmoid: {
      const T r = x + T(3);
      return (r < T(0) ? T(0) : (r > T(6) ? T(6) : r)) / T(6);
    }
    case Act::Sigmoid: return act_sigmoid(x);
    case Act::Identity:
    default: return x;
  }
}

// dy/dx at x, matching PyTorch's autograd conventions at the kinks:
// relu'(0) = 0; relu6' = 1 on (0, 6) only; hardswish' = 0 for x <= -3, (2x+3)/6 on (-3, 3), 1 from 3;
// hardsigmoid' = 1/6 on (-3, 3) only. At NaN (where PyTorch's own scalar and vectorized kernels
// disagree for relu6' and hardswish') relu' passes the gradient like threshold_backward; the
// forward propagates NaN for every activation.
template <typename T>
TCV_FN T act_backward(Act a, T x) {
  switch (a) {
    case Act::ReLU: return x <= T(0) ? T(0) : T(1);
    case Act::ReLU6: return (x > T(0) && x < T(6)) ? T(1) : T(0);
    case Act::Hardswish: return x <= T(-3) ? T(0) : (x < T(3) ? (T(2) * x + T(3)) / T(6) : T(1));
    case Act::SiLU: {
      const T s = act_sigmoid(x);
      return s * (T(1) + x * (T(1) - s));
    }
    case Act::Hardsigmoid: return (x > T(-3) && x < T(3)) ? T(1) / T(6) : T(0);
    case Act::Sigmoid: {
      const T s = act_sigmoid(x);
      return s * (T(1) - s);
    }
    case Act::Identity:
    default: return T(1);
  }
}

}  // namespace torchcv_ext
