// Squeeze-and-excitation: math shared by csrc/cpu/squeeze_excite.cpp and
// csrc/cuda/squeeze_excite.cu (host front end: squeeze_excite_host.h).
//
// Forward, per sample n (p: pooled mean over the HW spatial positions, A: accumulation type):
//   p[c] = mean_hw x[n, c]          h[s] = b1[s] + sum_c w1[s, c] p[c]     a = act(h)
//   z[c] = b2[c] + sum_s w2[c, s] a[s]                                     g = gate(z)
//   y[n, c, hw] = x[n, c, hw] * g[c]
// Backward (dy = grad of y), recomputing p, h, a, z, g from x:
//   dg[c] = sum_hw dy * x          dz = dg * gate'(z)       db2 += dz      dw2 += dz a^T
//   da = w2^T dz                   dh = da * act'(h)        db1 += dh      dw1 += dh p^T
//   dp = w1^T dh                   dx[n, c, hw] = dy * g[c] + dp[c] / HW
// So the forward reads x twice and writes y once; the backward reads x once, dy twice and writes
// dx once. The per-element formulas below are the ones both backends use.
#pragma once
#include "torchcv_ext/activations.h"
#include "torchcv_ext/macros.h"

namespace torchcv_ext::se {

// y = x * g (computed in A, rounded once to T).
template <typename T, typename A>
TCV_FN T scale(T x, A g) {
  return static_cast<T>(static_cast<A>(x) * g);
}

// dx = dy * g + shift, shift = dp / HW.
template <typename T, typename A>
TCV_FN T scale_shift(T dy, A g, A shift) {
  return static_cast<T>(static_cast<A>(dy) * g + shift);
}

// The gradient that flows into a pre-activation value v, given the gradient d of act(v).
template <typename A>
TCV_FN A act_grad(Act a, A v, A d) {
  return d * act_backward(a, v);
}

}  // namespace torchcv_ext::se
