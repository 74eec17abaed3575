// Host-side front end of the dwconv_bn_act family, shared by the CPU and CUDA backends: argument
// checks, layout/dtype normalization, output allocation. The backends only run the loops.
//
// Every tensor handed to a backend is contiguous in fmt = memory_format_of(x) (NCHW or
// channels_last), x/z/grads in the input dtype T; weight (C, kh*kw), scale, shift, mean, a, b in
// acc_t (float, or double for float64 inputs), contiguous.
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <limits>
#include <optional>
#include <vector>
#include <string>
#include <tuple>

#include "torchcv_ext/activations.h"
#include "torchcv_ext/checks.h"
#include "torchcv_ext/dwconv_bn_act.h"

namespace torchcv_ext {
// activations.h declares this only outside nvcc's device pass; the host templates below are also
// parsed in that pass, so (re)declare it unconditionally (defined in csrc/activations.cpp).
Act parse_act(const std::string& name);
}  // namespace torchcv_ext

namespace torchcv_ext::dwconv {

inline at::ScalarType acc_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_x(const char* op, const char* name, const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 4, op, ": ", name, " must be 4-D (N, C, H, W), got ", x.dim(),
              " dims of shape ", x.sizes());
  check_float_dtype(op, name, x);
}

inline Geom make_geom(const char* op, const at::Tensor& x, const at::Tensor& weight,
                      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  check_x(op, "x", x);
  const int64_t C = x.size(1);
  TORCH_CHECK(weight.dim() == 4 && weight.size(0) == C && weight.size(1) == 1, op,
              ": weight must have shape (C, 1, kh, kw) with C = ", C,
              " (depthwise, channel multiplier 1), got ", weight.sizes());
  check_float_dtype(op, "weight", weight);
  TORCH_CHECK(weight.device() == x.device(), op, ": weight is on ", weight.device(),
              " but the input is on ", x.device());
  // As eager conv2d: one dtype for x and weight (autocast casts both; the per-channel vectors are
  // float32 by design and may differ).
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), op, ": weight has dtype ", weight.scalar_type(),
              " but the input has dtype ", x.scalar_type(), "; cast one of them, or run under torch.autocast");
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2, op,
              ": stride, padding and dilation must have 2 values each");
  TORCH_CHECK(stride[0] >= 1 && stride[1] >= 1 && dilation[0] >= 1 && dilation[1] >= 1 &&
                  padding[0] >= 0 && padding[1] >= 0,
              op, ": need stride >= 1, dilation >= 1, padding >= 0, got stride=", stride,
              ", padding=", padding, ", dilation=", dilation);
  TORCH_CHECK(weight.size(2) >= 1 && weight.size(3) >= 1 && weight.size(2) <= 64 && weight.size(3) <= 64,
              op, ": kernel size must be in [1, 64], got ", weight.sizes());
  TORCH_CHECK(stride[0] <= 64 && stride[1] <= 64 && dilation[0] <= 64 && dilation[1] <= 64 &&
                  padding[0] <= 4096 && padding[1] <= 4096,
              op, ": stride/dilation (<= 64) or padding (<= 4096) out of range");
  Geom g;
  g.N = x.size(0);
  g.C = C;
  g.H = x.size(2);
  g.W = x.size(3);
  g.kh = static_cast<int>(weight.size(2));
  g.kw = static_cast<int>(weight.size(3));
  g.sh = static_cast<int>(stride[0]);
  g.sw = static_cast<int>(stride[1]);
  g.ph = static_cast<int>(padding[0]);
  g.pw = static_cast<int>(padding[1]);
  g.dh = static_cast<int>(dilation[0]);
  g.dw = static_cast<int>(dilation[1]);
  g.Ho = conv_out_size(g.H, g.kh, g.sh, g.ph, g.dh);
  g.Wo = conv_out_size(g.W, g.kw, g.sw, g.pw, g.dw);
  TORCH_CHECK(g.Ho >= 1 && g.Wo >= 1, op, ": the output would be empty (", g.Ho, "x", g.Wo,
              ") for input ", x.sizes(), ", kernel ", weight.sizes(), ", padding ", padding,
              ", dilation ", dilation);
  return g;
}

// (C,) per-channel vector in acc_t, contiguous.
inline at::Tensor channel_vec(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == x.size(1), op, ": ", name, " must have shape (",
              x.size(1), ",), got ", t.sizes());
  check_float_dtype(op, name, t);
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " is on ", t.device(),
              " but the input is on ", x.device());
  return t.to(acc_type(x.scalar_type())).contiguous();
}

// Weight as (C, kh*kw) in acc_t, contiguous.
inline at::Tensor weight_acc(const at::Tensor& weight, const at::Tensor& x) {
  return weight.reshape({weight.size(0), weight.size(2) * weight.size(3)})
      .to(acc_type(x.scalar_type()))
      .contiguous();
}

inline Strides4 strides_of(const at::Tensor& t) {
  return Strides4{t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

inline at::Tensor new_like_x(const at::Tensor& x, int64_t H, int64_t W, at::MemoryFormat fmt) {
  return at::empty({x.size(0), x.size(1), H, W}, x.options().memory_format(fmt));
}

// A gradient/activation tensor that must have `shape`, on x's device and in x's dtype, laid out in fmt.
inline at::Tensor same_shape(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x,
                             at::IntArrayRef shape, at::MemoryFormat fmt) {
  TORCH_CHECK(t.sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ", t.sizes());
  check_same_device_dtype(op, name, x, t);
  return t.contiguous(fmt);
}

// The conv backward's view of its incoming gradient: z's own (scale undefined), or the gradient of
// y = act((z - mean) * scale + shift), turned into z's on the fly (ssa_grad_z).
struct SsaGrad {
  at::Tensor scale, shift;  // acc_t, contiguous, or undefined
  Act act = Act::Identity;
};

// The backend provides:
//   kDevice, Guard
//   eval(x, w, scale, shift, g, act, y)               y = act(conv(x) * scale + shift)
//   stats(x, w, g, z, mean, var)                      z = conv(x), batch mean / biased var
//   ssa(z, scale, shift, act, y)                      y = act(z * scale + shift)
//   ssa_backward(grad, z, mean, scale, shift, act, gz, gscale, gshift)   gz undefined: sums only
//   stats_backward(gz, a, b, use_b, x, z, mean, w, g, ssa, gx, gw)       ssa: see SsaGrad
template <typename B>
struct Kernels {
  static at::Tensor eval(const at::Tensor& x_in, const at::Tensor& weight, const at::Tensor& scale,
                         const at::Tensor& shift, at::IntArrayRef stride, at::IntArrayRef padding,
                         at::IntArrayRef dilation, c10::string_view act_name) {
    const char* op = "dwconv_bn_act";
    check_device(op, x_in, B::kDevice);
    const typename B::Guard guard(x_in.device());
    const Geom g = make_geom(op, x_in, weight, stride, padding, dilation);
    const Act act = parse_act(std::string(act_name));
    const at::Tensor sc = channel_vec(op, "scale", scale, x_in);
    const at::Tensor sh = channel_vec(op, "shift", shift, x_in);
    const at::MemoryFormat fmt = memory_format_of(x_in);
    at::Tensor y = new_like_x(x_in, g.Ho, g.Wo, fmt);
    if (y.numel() == 0) return y;
    const at::Tensor x = x_in.contiguous(fmt);
    B::eval(x, weight_acc(weight, x_in), sc, sh, g, act, y);
    return y;
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor> stats(const at::Tensor& x_in,
                                                              const at::Tensor& weight,
                                                              at::IntArrayRef stride,
                                                              at::IntArrayRef padding,
                                                              at::IntArrayRef dilation) {
    const char* op = "dwconv_bn_stats";
    check_device(op, x_in, B::kDevice);
    const typename B::Guard guard(x_in.device());
    const Geom g = make_geom(op, x_in, weight, stride, padding, dilation);
    const at::MemoryFormat fmt = memory_format_of(x_in);
    at::Tensor z = new_like_x(x_in, g.Ho, g.Wo, fmt);
    const auto vopt = x_in.options().dtype(acc_type(x_in.scalar_type()));
    at::Tensor mean = at::empty({g.C}, vopt), var = at::empty({g.C}, vopt);
    if (g.C == 0) return {z, mean, var};
    if (z.numel() == 0) {  // N == 0: statistics of an empty batch
      mean.fill_(std::numeric_limits<double>::quiet_NaN());
      var.fill_(std::numeric_limits<double>::quiet_NaN());
      return {z, mean, var};
    }
    const at::Tensor x = x_in.contiguous(fmt);
    B::stats(x, weight_acc(weight, x_in), g, z, mean, var);
    return {z, mean, var};
  }

  // The whole train-mode layer: stats, then y = act((z - mean) * scale + shift) with
  // scale = gamma / sqrt(var + eps), shift = beta (the reference's batch_scale_shift).
  static std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> train(
      const at::Tensor& x_in, const at::Tensor& weight, const std::optional<at::Tensor>& bn_weight,
      const std::optional<at::Tensor>& bn_bias, double eps, at::IntArrayRef stride,
      at::IntArrayRef padding, at::IntArrayRef dilation, c10::string_view act_name) {
    const char* op = "dwconv_bn_act_train";
    auto [z, mean, var] = stats(x_in, weight, stride, padding, dilation);
    const typename B::Guard guard(x_in.device());
    at::Tensor sc = (var + eps).rsqrt();
    if (bn_weight.has_value() && bn_weight->defined()) sc = sc * channel_vec(op, "bn_weight", *bn_weight, x_in);
    at::Tensor sh = bn_bias.has_value() && bn_bias->defined() ? channel_vec(op, "bn_bias", *bn_bias, x_in)
                                                              : at::zeros_like(sc);
    return {ssa(z, sc, sh, act_name, mean), mean, var, z};
  }

  // The centre of scale_shift_act: `mean` as an accumulation-dtype vector, zeros when absent.
  static at::Tensor ssa_center(const char* op, const std::optional<at::Tensor>& mean,
                               const at::Tensor& z, const at::Tensor& sc) {
    if (mean.has_value() && mean->defined()) return channel_vec(op, "mean", *mean, z);
    return at::zeros({z.size(1)}, sc.options());
  }

  static at::Tensor ssa(const at::Tensor& z_in, const at::Tensor& scale, const at::Tensor& shift,
                        c10::string_view act_name, const std::optional<at::Tensor>& mean) {
    const char* op = "scale_shift_act";
    check_device(op, z_in, B::kDevice);
    const typename B::Guard guard(z_in.device());
    check_x(op, "z", z_in);
    const Act act = parse_act(std::string(act_name));
    const at::Tensor sc = channel_vec(op, "scale", scale, z_in);
    const at::Tensor sh = channel_vec(op, "shift", shift, z_in);
    const at::Tensor mu = ssa_center(op, mean, z_in, sc);
    const at::MemoryFormat fmt = memory_format_of(z_in);
    at::Tensor y = at::empty(z_in.sizes(), z_in.options().memory_format(fmt));
    if (y.numel() == 0) return y;
    B::ssa(z_in.contiguous(fmt), mu, sc, sh, act, y);
    return y;
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor> ssa_backward(
      const at::Tensor& grad, const at::Tensor& z_in, const at::Tensor& scale, const at::Tensor& shift,
      c10::string_view act_name, const std::optional<at::Tensor>& mean, bool want_gz) {
    const char* op = "_scale_shift_act_backward";
    check_device(op, z_in, B::kDevice);
    const typename B::Guard guard(z_in.device());
    check_x(op, "z", z_in);
    const Act act = parse_act(std::string(act_name));
    const at::Tensor sc = channel_vec(op, "scale", scale, z_in);
    const at::Tensor sh = channel_vec(op, "shift", shift, z_in);
    const at::Tensor mu = ssa_center(op, mean, z_in, sc);
    const at::MemoryFormat fmt = memory_format_of(z_in);
    const at::Tensor gr = same_shape(op, "grad", grad, z_in, z_in.sizes(), fmt);
    at::Tensor gz = want_gz ? at::empty(z_in.sizes(), z_in.options().memory_format(fmt))
                            : at::empty({0}, z_in.options());
    at::Tensor gsc = at::zeros({z_in.size(1)}, sc.options());
    at::Tensor gsh = at::zeros({z_in.size(1)}, sc.options());
    if (z_in.numel() == 0) return {gz, gsc, gsh};
    at::Tensor gz_out = want_gz ? gz : at::Tensor();
    B::ssa_backward(gr, z_in.contiguous(fmt), mu, sc, sh, act, gz_out, gsc, gsh);
    return {gz, gsc, gsh};
  }

  static std::tuple<at::Tensor, at::Tensor> stats_backward(
      const at::Tensor& grad_z, const std::optional<at::Tensor>& grad_mean,
      const std::optional<at::Tensor>& grad_var, const at::Tensor& x_in, const at::Tensor& z_in,
      const at::Tensor& mean, const at::Tensor& weight, at::IntArrayRef stride,
      at::IntArrayRef padding, at::IntArrayRef dilation, const std::optional<at::Tensor>& scale,
      const std::optional<at::Tensor>& shift, c10::string_view act_name) {
    const char* op = "_dwconv_bn_stats_backward";
    check_device(op, x_in, B::kDevice);
    const typename B::Guard guard(x_in.device());
    const Geom g = make_geom(op, x_in, weight, stride, padding, dilation);
    const at::MemoryFormat fmt = memory_format_of(x_in);
    const std::vector<int64_t> zshape{g.N, g.C, g.Ho, g.Wo};
    const at::Tensor gz = same_shape(op, "grad_z", grad_z, x_in, zshape, fmt);
    const at::Tensor z = same_shape(op, "z", z_in, x_in, zshape, fmt);
    const at::Tensor mu = channel_vec(op, "mean", mean, x_in);
    const double M = static_cast<double>(g.N * g.Ho * g.Wo);
    at::Tensor a = at::zeros({g.C}, mu.options());
    at::Tensor b = at::zeros({g.C}, mu.options());
    const bool use_b = grad_var.has_value() && grad_var->defined();
    if (grad_mean.has_value() && grad_mean->defined()) {
      a = channel_vec(op, "grad_mean", *grad_mean, x_in) / M;
    }
    if (use_b) b = channel_vec(op, "grad_var", *grad_var, x_in) * (2.0 / M);
    SsaGrad ssa;
    ssa.act = parse_act(std::string(act_name));
    const bool has_scale = scale.has_value() && scale->defined();
    TORCH_CHECK(has_scale == (shift.has_value() && shift->defined()), op,
                ": scale and shift must be given together");
    if (has_scale) {
      ssa.scale = channel_vec(op, "scale", *scale, x_in);
      ssa.shift = channel_vec(op, "shift", *shift, x_in);
    }
    at::Tensor gx = at::empty(x_in.sizes(), x_in.options().memory_format(fmt));
    const at::Tensor wa = weight_acc(weight, x_in);
    at::Tensor gw = at::zeros_like(wa);
    if (gz.numel() != 0 && gx.numel() != 0) {
      B::stats_backward(gz, a.contiguous(), b.contiguous(), use_b, x_in.contiguous(fmt), z, mu, wa, g,
                        ssa, gx, gw);
    } else if (gx.numel() != 0) {
      gx.zero_();
    }
    return {gx, gw.view(weight.sizes())};
  }
};

template <typename B>
void register_kernels(torch::Library& m) {
  using K = Kernels<B>;
  m.impl("dwconv_bn_act", &K::eval);
  m.impl("dwconv_bn_stats", &K::stats);
  m.impl("dwconv_bn_act_train", &K::train);
  m.impl("scale_shift_act", &K::ssa);
  m.impl("_scale_shift_act_backward", &K::ssa_backward);
  m.impl("_dwconv_bn_stats_backward", &K::stats_backward);
}

}  // namespace torchcv_ext::dwconv
