// Every op schema of the torchcv_ext library, in one place.
//
// For each op you will find:
//   kernels    csrc/cpu/<op>.cpp (TORCH_LIBRARY_IMPL CPU), csrc/cuda/<op>.cu (TORCH_LIBRARY_IMPL CUDA)
//   python     torchcv_ext/ops/<op>.py: public function, autograd, fake (meta) kernel, autocast,
//              and the pure-PyTorch reference registered where no C++ kernel exists
//   reference  torchcv_ext/ops/reference/<op>.py (CPU fallback and test oracle)
//   module     torchcv_ext/nn/<op>.py, test python_tests/test_<op>.py, benchmark benchmarks/bench_<op>.py
// Backward passes are ops of their own, named _<op>_backward.
#include <torch/library.h>

TORCH_LIBRARY(torchcv_ext, m) {
  const std::vector<at::Tag> pt2 = {at::Tag::pt2_compliant_tag};

  // ---- channel shuffle family (op: channel_shuffle) ----
  // channel_shuffle(x, g): (N, g*cpg, *) -> channel i*g + j <- channel j*cpg + i
  m.def("channel_shuffle(Tensor x, int groups) -> Tensor", pt2);
  m.def("_channel_shuffle_backward(Tensor grad, int groups) -> Tensor", pt2);
  // ShuffleNetV2 fused form: channel_shuffle(cat([a, b], 1), 2) in one pass, and the same
  // returned as its two channel halves (the next block's split).
  m.def("shuffle_cat(Tensor a, Tensor b) -> Tensor", pt2);
  m.def("shuffle_cat_split(Tensor a, Tensor b) -> (Tensor, Tensor)", pt2);
  m.def("_shuffle_cat_backward(Tensor grad_lo, Tensor grad_hi) -> (Tensor, Tensor)", pt2);

  // ---- depthwise conv + BatchNorm + activation (op: dwconv_bn_act) ----
  // Depthwise conv (weight (C, 1, kh, kw)), per-channel scale/shift (BN folded), activation `act`
  // (names of csrc/include/torchcv_ext/activations.h). Per-channel vectors in float32 (float64 for
  // float64 x); x/weight/outputs in the input dtype.
  // eval: y = act(dwconv(x) * scale + shift), one pass.
  m.def("dwconv_bn_act(Tensor x, Tensor weight, Tensor scale, Tensor shift, int[2] stride, "
        "int[2] padding, int[2] dilation, str act) -> Tensor", pt2);
  // train, pass 1: z = dwconv(x) and the per-channel batch mean / biased variance of z.
  m.def("dwconv_bn_stats(Tensor x, Tensor weight, int[2] stride, int[2] padding, int[2] dilation) "
        "-> (Tensor z, Tensor mean, Tensor var)", pt2);
  // train, pass 2: y = act((z - mean) * scale + shift), mean = 0 when not given. Train mode
  // passes the batch mean, scale = gamma / sqrt(var + eps) and shift = beta: centering before
  // scaling keeps eager BatchNorm's precision when |mean| >> std.
  m.def("scale_shift_act(Tensor z, Tensor scale, Tensor shift, str act, Tensor? mean=None) -> Tensor",
        pt2);
  // train, the whole layer: both passes above with scale = gamma / sqrt(var + eps) and shift =
  // beta (weight / bias of the BatchNorm, optional) -> (y, mean, var, z); z is kept for the
  // backward. Its backward applies the scale_shift_act backward inside the conv backward (the
  // two backward ops below with grad_z=False / scale given), so dz is never written.
  m.def("dwconv_bn_act_train(Tensor x, Tensor weight, Tensor? bn_weight, Tensor? bn_bias, float eps, "
        "int[2] stride, int[2] padding, int[2] dilation, str act) -> (Tensor y, Tensor mean, "
        "Tensor var, Tensor z)", pt2);
  // -> (grad_z, grad_scale, grad_shift); grad_mean = -grad_shift * scale is left to the caller.
  // grad_z=False: only the two sums (the first output is empty).
  m.def("_scale_shift_act_backward(Tensor grad, Tensor z, Tensor scale, Tensor shift, str act, "
        "Tensor? mean=None, bool grad_z=True) -> (Tensor, Tensor, Tensor)", pt2);
  // -> (grad_x, grad_weight); grad of z is grad_z + grad_mean / M + grad_var * 2 (z - mean) / M.
  // With scale (and shift, act): grad_z is the gradient of y = act((z - mean) * scale + shift)
  // instead, z's own being grad_z * act'(u) * scale (the train op's backward).
  m.def("_dwconv_bn_stats_backward(Tensor grad_z, Tensor? grad_mean, Tensor? grad_var, Tensor x, "
        "Tensor z, Tensor mean, Tensor weight, int[2] stride, int[2] padding, int[2] dilation, "
        "Tensor? scale=None, Tensor? shift=None, str act=\"identity\") -> (Tensor, Tensor)", pt2);

  // ---- squeeze-and-excitation (op: squeeze_excite) ----
  // squeeze_excite(x, w1, b1, w2, b2, act, gate) = x * gate(w2 @ act(w1 @ mean_hw(x) + b1) + b2)
  // x: (N, C, *spatial); w1: (S, C); b1: (S,); w2: (C, S); b2: (C,); act/gate: activation names.
  m.def("squeeze_excite(Tensor x, Tensor w1, Tensor b1, Tensor w2, Tensor b2, str act, str gate) -> Tensor",
        pt2);
  // Recomputes the pooled vector and the MLP from x; returns (dx, dw1, db1, dw2, db2).
  m.def("_squeeze_excite_backward(Tensor grad, Tensor x, Tensor w1, Tensor b1, Tensor w2, Tensor b2, "
        "str act, str gate) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
        pt2);

  // ---- elementwise activation (op: activation) ----
  // y = act(x) for any activation of csrc/include/torchcv_ext/activations.h (hardswish,
  // hardsigmoid, gelu, ...); the backward takes x, so autograd saves only x.
  m.def("activation(Tensor x, str act) -> Tensor", pt2);
  m.def("_activation_backward(Tensor grad, Tensor x, str act) -> Tensor", pt2);

  // ---- multi-head attention (op: attention) ----
  // attention(q, k, v, scale): q (B, H, Nq, D), k/v (B, H, Nk, D) -> out = softmax(q k^T * scale) v
  // (B, H, Nq, D) and lse = logsumexp(q k^T * scale, -1) float32 (B, H, Nq); scale defaults to
  // 1/sqrt(D). Flash-style: tiled, online softmax, the Nq x Nk matrix is never stored.
  m.def("attention(Tensor q, Tensor k, Tensor v, float? scale=None) -> (Tensor, Tensor)", pt2);
  // Recomputes the attention from lse: (dq, dk, dv). atomic_dq (CUDA, fp16/bf16; ignored elsewhere and
  // under deterministic algorithms): dQ from the dK/dV pass with float32 atomics instead of a separate
  // dQ pass (torchcv_ext.ops.config.cuda_attention_dq chooses).
  m.def("_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, "
        "Tensor lse, float? scale=None, bool atomic_dq=False) -> (Tensor, Tensor, Tensor)", pt2);
}
