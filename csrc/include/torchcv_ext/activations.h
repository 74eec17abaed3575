// The activations of the fused ops, and their derivatives, written once for CPU and CUDA:
// dwconv_bn_act's epilogue, squeeze_excite's hidden and gate activations, and the elementwise
// `activation` op. Math is done in float (or double for float64 inputs): call with the
// accumulation type `acc_t`.
//
// To add an activation: a line in TCV_FOR_EACH_ACT below and its two cases in act_forward /
// act_backward here, and its entry in torchcv_ext/activations.py (the Python registry: name,
// eager function, derivative, nn.Module). Every op, module and convert() takes it from there.
#pragma once
#include <cmath>
#include <string>
#include <type_traits>

#include "torchcv_ext/macros.h"

// X(Enum, "name", ...): one line per activation; the name is the schema's `str act` value (the
// same string in torchcv_ext/activations.py). Extra arguments are passed through to X.
#define TCV_FOR_EACH_ACT(X, ...)                  \
  X(Identity, "identity", __VA_ARGS__)            \
  X(ReLU, "relu", __VA_ARGS__)                    \
  X(ReLU6, "relu6", __VA_ARGS__)                  \
  X(Hardswish, "hardswish", __VA_ARGS__)          \
  X(SiLU, "silu", __VA_ARGS__)                    \
  X(Hardsigmoid, "hardsigmoid", __VA_ARGS__)      \
  X(Sigmoid, "sigmoid", __VA_ARGS__)              \
  X(GELU, "gelu", __VA_ARGS__)                    \
  X(GELUTanh, "gelu_tanh", __VA_ARGS__)

namespace torchcv_ext {

#define TCV_ACT_ENUM_(E, S, ...) E,
enum class Act : int { TCV_FOR_EACH_ACT(TCV_ACT_ENUM_, ) };
#undef TCV_ACT_ENUM_

// TCV_ACT_CASES(BODY...): `switch (act)` (a variable named act in scope) with BODY compiled once
// per activation, `constexpr Act kA` set to it: the switch is hoisted out of the loops in BODY.
#define TCV_ACT_CASE_(E, S, ...) \
  case ::torchcv_ext::Act::E: {  \
    constexpr ::torchcv_ext::Act kA = ::torchcv_ext::Act::E; \
    __VA_ARGS__;                 \
  } break;
#define TCV_ACT_CASES(...) \
  switch (act) { TCV_FOR_EACH_ACT(TCV_ACT_CASE_, __VA_ARGS__) }

// Run f(std::integral_constant<Act, A>) for the runtime activation (a lambda form of TCV_ACT_CASES).
template <typename F>
void with_act(Act act, F&& f) {
  TCV_ACT_CASES(f(std::integral_constant<Act, kA>{}))
}

// Host functions (declared for nvcc's device pass too, which parses the .cu files' host code):
// parse the schema's `str act` argument, unknown names being a clear error; and back.
Act parse_act(const std::string& name);  // defined in csrc/activations.cpp
const char* act_name(Act a);

// GELU constants: 1 / sqrt(2), 1 / sqrt(2 pi), and the tanh form's sqrt(2 / pi) and 0.044715
// (PyTorch's, aten/src/ATen/native/cpu/Activation.cpp).
constexpr double kActSqrt1_2 = 0.70710678118654752440;
constexpr double kActInvSqrt2Pi = 0.39894228040143267794;
constexpr double kActGeluBeta = 0.79788456080286535588;
constexpr double kActGeluKappa = 0.044715;

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
    case Act::GELU: return x * T(0.5) * (T(1) + erf(x * T(kActSqrt1_2)));
    case Act::GELUTanh: {
      const T inner = T(kActGeluBeta) * (x + T(kActGeluKappa) * x * x * x);
      return T(0.5) * x * (T(1) + tanh(inner));
    }
    case Act::Identity:
    default: return x;
  }
}

// dy/dx at x, matching PyTorch's autograd conventions at the kinks:
// relu'(0) = 0; relu6' = 1 on (0, 6) only; hardswish' = 0 for x <= -3, (2x+3)/6 on (-3, 3), 1 from 3;
// hardsigmoid' = 1/6 on (-3, 3) only; gelu' as PyTorch's gelu_backward. At NaN (where PyTorch's
// own scalar and vectorized kernels disagree for relu6' and hardswish') relu' passes the gradient like threshold_backward; the
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
    case Act::GELU: {  // Phi(x) + x phi(x)
      const T cdf = T(0.5) * (T(1) + erf(x * T(kActSqrt1_2)));
      return cdf + x * T(kActInvSqrt2Pi) * exp(T(-0.5) * x * x);
    }
    case Act::GELUTanh: {
      const T t = tanh(T(kActGeluBeta) * (x + T(kActGeluKappa) * x * x * x));
      return T(0.5) * (T(1) + t) +
             T(0.5) * x * (T(1) - t * t) * T(kActGeluBeta) * (T(1) + T(3 * kActGeluKappa) * x * x);
    }
    case Act::Identity:
    default: return T(1);
  }
}

}  // namespace torchcv_ext
