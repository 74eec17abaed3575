// The activations of activations.h in the form the CPU's float32 loops vectorize (shared by
// csrc/cpu/dwconv_bn_act*.cpp and csrc/cpu/activation.cpp): SiLU / sigmoid / GELU through exp_f32,
// erf_f32 and tanh_f32 (std::exp / erf / tanh do not vectorize: a scalar erf per element made
// GELU 12x slower than eager), the hard activations multiplying by 1/6 (a vector divide per element
// cost as much as the rest of the loop). Within 1e-7 or so of activations.h; the other activations
// are activations.h's own.
#pragma once
#include <cstdint>

#include "torchcv_ext/activations.h"

namespace torchcv_ext::cpu {

// exp for the vectorized float epilogues (SiLU / sigmoid): Cephes-style range reduction
// x = n ln2 + r, |r| <= ln2/2, degree-6 polynomial, 2^n by exponent bits; ~2 ulp, and unlike
// std::exp it vectorizes. Everything is branch-free arithmetic: the clamps become min/max and n
// is rounded to nearest with the 1.5 * 2^23 trick (no floorf, which is a library call -- and
// stops vectorization -- below SSE4.1). Inputs are clamped to [-88, 89] (exp(-88) ~ 6e-39:
// sigmoid's tails are exactly 0 / 1 in float anyway); from 89 up (+inf included) 2^n has the
// all-ones exponent, so the result is +inf as std::exp's is, and silu(-inf) = -inf / inf is NaN as
// in eager PyTorch (not -inf). NaN propagates.
__attribute__((always_inline)) inline float exp_f32(float x) {
  x = x < -88.0f ? -88.0f : x;
  x = x > 89.0f ? 89.0f : x;
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t e = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  __builtin_memcpy(&scale, &e, sizeof(scale));
  return p * scale;
}

// erf for the vectorized loops: Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7, the formula of
// ATen's vectorized float erf) with exp_f32; erf(+-inf) = +-1, NaN propagates.
__attribute__((always_inline)) inline float erf_f32(float x) {
  const float a = x < 0.0f ? -x : x;
  const float t = 1.0f / (1.0f + 0.3275911f * a);
  float p = 1.061405429f;
  p = p * t - 1.453152027f;
  p = p * t + 1.421413741f;
  p = p * t - 0.284496736f;
  p = p * t + 0.254829592f;
  const float y = 1.0f - p * t * exp_f32(-a * a);
  return x < 0.0f ? -y : y;
}

// tanh for the vectorized loops: 1 - 2 / (exp(2x) + 1) with exp_f32 (absolute error ~1e-7;
// +-inf -> +-1, NaN propagates).
__attribute__((always_inline)) inline float tanh_f32(float x) {
  return 1.0f - 2.0f / (exp_f32(2.0f * x) + 1.0f);
}

// Activation for the float loops: activations.h except that SiLU / sigmoid / GELU use exp_f32,
// erf_f32 and tanh_f32 and the hard activations multiply by 1/6.
template <Act A>
__attribute__((always_inline)) inline float act_f32(float x) {
  if constexpr (A == Act::SiLU) {
    return x / (1.0f + exp_f32(-x));
  } else if constexpr (A == Act::Sigmoid) {
    return 1.0f / (1.0f + exp_f32(-x));
  } else if constexpr (A == Act::Hardswish || A == Act::Hardsigmoid) {
    // relu6(x + 3) * (1/6) instead of activations.h's / 6, which is PyTorch's formula: a vector
    // divide per element made the epilogue cost as much as a 5x5 conv (AVX-512, C1152 7x7 k5:
    // 0.47 -> 0.31 ms); the two differ by at most an ulp or so.
    const float r = x + 3.0f;
    const float h = (r < 0.0f ? 0.0f : (r > 6.0f ? 6.0f : r)) * (1.0f / 6.0f);
    return A == Act::Hardswish ? x * h : h;
  } else if constexpr (A == Act::GELU) {
    return x * 0.5f * (1.0f + erf_f32(x * static_cast<float>(kActSqrt1_2)));
  } else if constexpr (A == Act::GELUTanh) {
    const float inner = static_cast<float>(kActGeluBeta) * (x + static_cast<float>(kActGeluKappa) * x * x * x);
    return 0.5f * x * (1.0f + tanh_f32(inner));
  } else {
    return act_forward(A, x);
  }
}

// act'(u) for the float loops: activations.h's act_backward with exp_f32 and * (1/6), as act_f32.
template <Act A>
__attribute__((always_inline)) inline float act_grad_f32(float u) {
  if constexpr (A == Act::SiLU) {
    const float s = 1.0f / (1.0f + exp_f32(-u));
    return s * (1.0f + u * (1.0f - s));
  } else if constexpr (A == Act::Sigmoid) {
    const float s = 1.0f / (1.0f + exp_f32(-u));
    return s * (1.0f - s);
  } else if constexpr (A == Act::Hardswish) {
    return u <= -3.0f ? 0.0f : (u < 3.0f ? (2.0f * u + 3.0f) * (1.0f / 6.0f) : 1.0f);
  } else if constexpr (A == Act::GELU) {
    const float cdf = 0.5f * (1.0f + erf_f32(u * static_cast<float>(kActSqrt1_2)));
    return cdf + u * static_cast<float>(kActInvSqrt2Pi) * exp_f32(-0.5f * u * u);
  } else if constexpr (A == Act::GELUTanh) {
    constexpr float beta = static_cast<float>(kActGeluBeta), kappa = static_cast<float>(kActGeluKappa);
    const float t = tanh_f32(beta * (u + kappa * u * u * u));
    return 0.5f * (1.0f + t) + 0.5f * u * (1.0f - t * t) * beta * (1.0f + 3.0f * kappa * u * u);
  } else {
    return act_backward(A, u);
  }
}

}  // namespace torchcv_ext::cpu
