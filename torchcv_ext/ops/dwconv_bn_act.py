"""Fused depthwise conv + BatchNorm + activation: the core layer of MobileNetV2/V3 and EfficientNet.

Schema: csrc/registration.cpp. Kernels: csrc/cpu/dwconv_bn_act.cpp, csrc/cuda/dwconv_bn_act.cu
(per-element math: csrc/include/torchcv_ext/dwconv_bn_act.h). Reference:
ops/reference/dwconv_bn_act.py. Module: torchcv_ext.nn.DWConvBNAct. Tests:
python_tests/test_dwconv_bn_act.py. Benchmark: benchmarks/bench_dwconv_bn_act.py.

Ops (torch.ops.torchcv_ext.*):

* ``dwconv_bn_act(x, weight, scale, shift, stride, padding, dilation, act)`` -- eval: BN folded into
  per-channel ``scale``/``shift`` (see :func:`fold_bn`), one read of x and one write of y.
* ``dwconv_bn_stats(x, weight, stride, padding, dilation) -> (z, mean, var)`` -- train, pass 1: the
  conv output z plus the per-channel batch mean and biased variance, reduced in the conv epilogue
  in a fixed order (deterministic, no float atomics).
* ``scale_shift_act(z, scale, shift, act, mean=None)`` -- train, pass 2: normalize + affine +
  activation, ``act((z - mean) * scale + shift)`` with the batch mean, ``scale = gamma * rsqrt(var +
  eps)`` and ``shift = beta``. Centring before scaling (as eager BatchNorm does) keeps float32
  precise when |mean| >> std, which folding into one shift does not.
* ``dwconv_bn_act_train(x, weight, bn_weight, bn_bias, eps, stride, padding, dilation, act) ->
  (y, mean, var, z)`` -- the train layer: the two passes above as one autograd node (z is returned
  for the backward to save). Its backward (``_train_bwd`` below) runs the scale_shift_act
  backward's per-channel sums, BatchNorm's chain rule on the (C,) vectors, then the conv backward
  on the gradient of y itself: z's gradient is applied inside the conv backward's loads and never
  written (10 passes over the activations of a stride-1 layer for the whole train step, where
  chaining the two ops' autograd makes 11).
* backward ops: ``_scale_shift_act_backward`` (dz, dscale, dshift; ``grad_z=False``: the sums only)
  and ``_dwconv_bn_stats_backward`` (dx, dweight given dz and the gradients of mean/var, or given
  the gradient of y with ``scale``, ``shift``, ``act``); the eval op's backward recomputes z with
  ``dwconv_bn_stats`` and uses the second form too. Weight-gradient reductions run in a fixed
  order.

Per-channel vectors (scale, shift, mean, var) are kept in float32 (float64 for float64 inputs);
x, weight and the outputs use the input dtype (fp32/fp16/bf16/fp64), accumulation in float32.
"""
from __future__ import annotations

import contextlib
from typing import Optional, Sequence, Tuple, Union

import torch

from torchcv_ext import activations
from torchcv_ext.ops import _common
from torchcv_ext.ops.reference import dwconv_bn_act as ref

__all__ = ["backend", "dwconv_bn_act", "dwconv_bn_act_train", "fold_bn", "same_padding"]

IntPair = Union[int, Sequence[int]]


def _pair(v: IntPair, name: str) -> Tuple[int, int]:
    return _common.int_tuple("dwconv_bn_act", name, v)


def same_padding(kernel_size: IntPair, dilation: IntPair = 1) -> Tuple[int, int]:
    """``(k - 1) // 2 * dilation`` per dim: torchvision's Conv2dNormActivation default, which is
    "same" padding for odd kernels at stride 1."""
    k, d = _pair(kernel_size, "kernel_size"), _pair(dilation, "dilation")
    return ((k[0] - 1) // 2 * d[0], (k[1] - 1) // 2 * d[1])


def _conv_args(weight: torch.Tensor, stride: IntPair, padding, dilation: IntPair):
    s, d = _pair(stride, "stride"), _pair(dilation, "dilation")
    if padding is None or padding == "same":
        if weight.dim() != 4:
            raise RuntimeError(f"dwconv_bn_act: weight must be 4-D (C, 1, kh, kw), got {tuple(weight.shape)}")
        p = same_padding((weight.shape[2], weight.shape[3]), d)
    else:
        p = _pair(padding, "padding")
    return list(s), list(p), list(d)


def fold_bn(bn_weight: Optional[torch.Tensor], bn_bias: Optional[torch.Tensor],
            running_mean: torch.Tensor, running_var: torch.Tensor, eps: float,
            conv_bias: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Fold eval-mode BatchNorm (and an optional conv bias) into per-channel (scale, shift) such
    that ``bn(conv(x)) = conv_nobias(x) * scale + shift``. Differentiable w.r.t. the BN affine
    parameters. The result is float32 (float64 when the statistics are float64)."""
    dt = torch.float64 if running_var.dtype == torch.float64 else torch.float32
    scale = torch.rsqrt(running_var.to(dt) + eps)
    if bn_weight is not None:
        scale = scale * bn_weight.to(dt)
    mean = running_mean.to(dt)
    if conv_bias is not None:
        mean = mean - conv_bias.to(dt)
    shift = -mean * scale
    if bn_bias is not None:
        shift = shift + bn_bias.to(dt)
    return scale, shift


def _ref_autocast(x: torch.Tensor, weight: torch.Tensor):
    """Reference path (no compiled extension): apply the ops' autocast rule (``_AUTOCAST_X_W``) by
    hand and return a context that disables autocast inside (the reference casts to float32 itself)."""
    dev = x.device.type
    if dev in ("cpu", "cuda") and torch.is_autocast_enabled(dev):
        x, weight = _AUTOCAST_X_W(dev, [x, weight])
        return x, weight, torch.autocast(dev, enabled=False)
    return x, weight, contextlib.nullcontext()


def dwconv_bn_act(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                  stride: IntPair = 1, padding: Union[IntPair, str, None] = None, dilation: IntPair = 1,
                  activation: str = "relu") -> torch.Tensor:
    """Eval-mode fused layer: ``act(depthwise_conv2d(x, weight) * scale + shift)``.

    ``weight`` is (C, 1, kh, kw); ``scale``/``shift`` are (C,) (BN folded, see :func:`fold_bn`);
    ``padding=None`` or ``"same"`` means ``(k - 1) // 2 * dilation``. NCHW or channels_last input
    (the output keeps the layout); fp32/fp16/bf16/fp64."""
    s, p, d = _conv_args(weight, stride, padding, dilation)
    activations.check(activation)
    if _common.op_available("dwconv_bn_act"):
        return _common.OPS.dwconv_bn_act(x, weight, scale, shift, s, p, d, activation)
    x, weight, ctx = _ref_autocast(x, weight)
    with ctx:
        return ref.dwconv_bn_act(x, weight, scale, shift, s, p, d, activation)


def _check_batch(z_shape) -> None:
    if z_shape[0] * z_shape[2] * z_shape[3] == 1:
        # Same message and type as torch.nn.functional.batch_norm.
        raise ValueError(f"Expected more than 1 value per channel when training, got input size "
                         f"{torch.Size(z_shape)}")


def backend(x: torch.Tensor, train: bool) -> str:
    """The one place that chooses the depthwise layer's path for input ``x`` (the functional ops
    and torchcv_ext.nn.DWConvBNAct both ask here; ``config`` fields documented in ops/_common.py):

    * ``train=True``: "ops" -- the fused train ops (CUDA; on the CPU the float32 C++ kernels
      outside autocast on a CPU with AVX2 + FMA or AVX-512, ``config.dwconv_cpu_train_backend``
      "auto" / "kernels"), or "eager" -- torch's own conv + batch_norm (the modules in
      DWConvBNAct, the reference composition in the functional op): other CPU dtypes, autocast
      and other CPUs.
    * ``train=False``: "onednn" -- try oneDNN's fused depthwise conv first (BN folded, activation
      as a post-op; CPU channels_last inputs: up to 16 MiB with AVX-512, where its JIT kernels
      beat ours, any size without; ``config.dwconv_cpu_eval_backend``; never while a graph is
      captured), "eager" -- torch's own modules (CPU NCHW inputs without AVX2), or "ops" -- the
      fused eval op (our C++ / CUDA kernel). Measurements: benchmarks/results/
      2026-12-07-cpu-avx2-dwconv.md (AVX2), 2026-12-07-cpu-defaults-vs-eager.md (AVX-512)."""
    cfg = _common.config
    if not train:
        mode = cfg.dwconv_cpu_eval_backend
        if mode not in ("auto", "kernel", "onednn"):
            raise ValueError(f"config.dwconv_cpu_eval_backend must be 'auto', 'kernel' or 'onednn', got {mode!r}")
        if x.device.type != "cpu" or mode == "kernel" or _common.capturing_graph():
            return "ops"
        channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        if mode == "onednn":
            return "onednn" if channels_last else "ops"
        if channels_last:
            small = x.numel() * x.element_size() <= (16 << 20)
            return "onednn" if small or not _common.CPU_AVX512 else "ops"
        return "ops" if _common.CPU_AVX2 else "eager"
    if not _common.op_available("dwconv_bn_stats"):
        return "eager"
    if x.device.type != "cpu":
        return "ops"
    mode = cfg.dwconv_cpu_train_backend
    if mode not in ("auto", "kernels", "eager"):
        raise ValueError(f"config.dwconv_cpu_train_backend must be 'auto', 'kernels' or 'eager', got {mode!r}")
    if mode == "auto":
        fast = x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu") and _common.CPU_AVX2
        return "ops" if fast else "eager"
    return "ops" if mode == "kernels" else "eager"


def dwconv_bn_act_train(x: torch.Tensor, weight: torch.Tensor, bn_weight: Optional[torch.Tensor],
                        bn_bias: Optional[torch.Tensor], eps: float = 1e-5, stride: IntPair = 1,
                        padding: Union[IntPair, str, None] = None, dilation: IntPair = 1,
                        activation: str = "relu") -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train-mode fused layer: depthwise conv, BatchNorm with batch statistics, activation.

    Returns ``(y, batch_mean, batch_var)`` with the *biased* variance (what normalizes); the caller
    updates running statistics (``torchcv_ext.nn.DWConvBNAct`` does it exactly like BatchNorm2d).
    Raises ValueError like BatchNorm when there is only one value per channel."""
    s, p, d = _conv_args(weight, stride, padding, dilation)
    activations.check(activation)
    if x.dim() == 4 and weight.dim() == 4:
        ho = ref.out_size(x.shape[2], weight.shape[2], s[0], p[0], d[0])
        wo = ref.out_size(x.shape[3], weight.shape[3], s[1], p[1], d[1])
        if ho >= 1 and wo >= 1:
            _check_batch((x.shape[0], x.shape[1], ho, wo))
    if backend(x, train=True) == "ops":
        y, mean, var, _ = _common.OPS.dwconv_bn_act_train(x, weight, bn_weight, bn_bias, eps,
                                                          s, p, d, activation)
        return y, mean, var
    x, weight, ctx = _ref_autocast(x, weight)
    if weight.dtype != x.dtype:  # the op's boundary check (checks.h), on the eager path too
        raise RuntimeError(f"dwconv_bn_act_train: weight has dtype {weight.dtype} but the input has dtype {x.dtype}")
    with ctx:
        z, mean, var = ref.dwconv_bn_stats(x, weight, s, p, d)
    scale, shift = ref.batch_scale_shift(var, bn_weight, bn_bias, eps)
    with torch.autocast(z.device.type, enabled=False):
        y = ref.scale_shift_act(z, scale, shift, activation, mean)
    return y, mean, var


# ----------------------------------------------------------------------------------------------
# The op declarations (registered only when the compiled extension defined the schemas).
# ----------------------------------------------------------------------------------------------


def _like(shape, like: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype or like.dtype, device=like.device).contiguous(
        memory_format=_common.memory_format_of(like))


def _fake_out_hw(op: str, x, weight, stride, padding, dilation):
    torch._check(x.dim() == 4, lambda: f"{op}: x must be 4-D (N, C, H, W)")
    torch._check(weight.dim() == 4 and weight.shape[0] == x.shape[1] and weight.shape[1] == 1,
                 lambda: f"{op}: weight must have shape (C, 1, kh, kw)")
    torch._check(weight.dtype == x.dtype,
                 lambda: f"{op}: weight has dtype {weight.dtype} but the input has dtype {x.dtype}; cast one "
                         "of them, or run under torch.autocast")
    ho = ref.out_size(x.shape[2], weight.shape[2], stride[0], padding[0], dilation[0])
    wo = ref.out_size(x.shape[3], weight.shape[3], stride[1], padding[1], dilation[1])
    torch._check(ho >= 1 and wo >= 1, lambda: f"{op}: the output would be empty")
    return ho, wo


def _fake_dwconv_bn_act(x, weight, scale, shift, stride, padding, dilation, act):
    ho, wo = _fake_out_hw("dwconv_bn_act", x, weight, stride, padding, dilation)
    return _like((x.shape[0], x.shape[1], ho, wo), x)


def _fake_stats(x, weight, stride, padding, dilation):
    ho, wo = _fake_out_hw("dwconv_bn_stats", x, weight, stride, padding, dilation)
    a, c = ref.acc_dtype(x.dtype), x.shape[1]
    return _like((x.shape[0], c, ho, wo), x), x.new_empty((c,), dtype=a), x.new_empty((c,), dtype=a)


def _fake_train(x, weight, bn_weight, bn_bias, eps, stride, padding, dilation, act):
    ho, wo = _fake_out_hw("dwconv_bn_act_train", x, weight, stride, padding, dilation)
    a, c = ref.acc_dtype(x.dtype), x.shape[1]
    shape = (x.shape[0], c, ho, wo)
    return _like(shape, x), x.new_empty((c,), dtype=a), x.new_empty((c,), dtype=a), _like(shape, x)


def _fake_ssa(z, scale, shift, act, mean=None):
    torch._check(z.dim() == 4, lambda: "scale_shift_act: z must be 4-D (N, C, H, W)")
    return _like(z.shape, z)


def _fake_ssa_backward(grad, z, scale, shift, act, mean=None, grad_z=True):
    a, c = ref.acc_dtype(z.dtype), z.shape[1]
    gz = _like(z.shape, z) if grad_z else z.new_empty(0)
    return gz, z.new_empty((c,), dtype=a), z.new_empty((c,), dtype=a)


def _fake_stats_backward(grad_z, grad_mean, grad_var, x, z, mean, weight, stride, padding, dilation,
                         scale=None, shift=None, act="identity"):
    return _like(x.shape, x), weight.new_empty(weight.shape, dtype=ref.acc_dtype(x.dtype))


# Reference kernels (with the kernels' output layouts).
def _stats_ref(x, w, s, p, d):
    z, mean, var = ref.dwconv_bn_stats(x, w, s, p, d)
    return z, mean.contiguous(), var.contiguous()


def _train_ref(x, w, bn_w, bn_b, eps, s, p, d, act):
    z, mean, var = _stats_ref(x, w, s, p, d)
    scale, shift = ref.batch_scale_shift(var, bn_w, bn_b, eps)
    return ref.scale_shift_act(z, scale, shift, act, mean), mean, var, z


def _ssa_bwd_ref(grad, z, scale, shift, act, mean=None, grad_z=True):
    gz, gs, gb = ref.scale_shift_act_backward(grad, z, scale, shift, act, mean, grad_z)
    return gz, gs.contiguous(), gb.contiguous()


def _stats_bwd_ref(gz, gm, gv, x, z, mean, w, s, p, d, scale=None, shift=None, act="identity"):
    gx, gw = ref.dwconv_bn_stats_backward(gz, gm, gv, x, z, mean, w, s, p, d, scale, shift, act)
    return _common.fresh(gx, x), gw.contiguous()


# Autograd.
def _eval_setup(ctx, inputs, output):
    x, weight, scale, shift, stride, padding, dilation, act = inputs
    ctx.save_for_backward(x, weight, scale, shift)
    ctx.conv = (stride, padding, dilation)
    ctx.act = act


def _eval_bwd(ctx, grad):
    x, weight, scale, shift = ctx.saved_tensors
    s, p, d = ctx.conv
    ops = _common.OPS
    # Recompute z (cheap: a depthwise conv) instead of keeping it alive from the forward.
    z, _, _ = ops.dwconv_bn_stats(x, weight, s, p, d)
    g_scale = g_shift = None
    if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
        _, g_scale, g_shift = ops._scale_shift_act_backward(grad, z, scale, shift, ctx.act, None, False)
        g_scale, g_shift = g_scale.to(scale.dtype), g_shift.to(shift.dtype)
    # The conv backward takes the gradient of y (scale/shift/act given; centre 0: the eval
    # form act(z * scale + shift)), so z's gradient is never written.
    zero = torch.zeros_like(scale)
    gx, gw = ops._dwconv_bn_stats_backward(grad, None, None, x, z, zero, weight, s, p, d,
                                           scale, shift, ctx.act)
    return gx, gw.to(weight.dtype), g_scale, g_shift, None, None, None, None


def _stats_setup(ctx, inputs, output):
    x, weight, stride, padding, dilation = inputs
    z, mean, _ = output
    ctx.save_for_backward(x, weight, z, mean)
    ctx.conv = (stride, padding, dilation)


def _stats_bwd(ctx, gz, g_mean, g_var):
    x, weight, z, mean = ctx.saved_tensors
    s, p, d = ctx.conv
    if gz is None:
        gz = torch.zeros_like(z)
    gx, gw = _common.OPS._dwconv_bn_stats_backward(gz, g_mean, g_var, x, z, mean,
                                                   weight, s, p, d)
    return gx, gw.to(weight.dtype), None, None, None


def _train_setup(ctx, inputs, output):
    x, weight, bn_weight, bn_bias, eps, stride, padding, dilation, act = inputs
    _, mean, var, z = output
    ctx.save_for_backward(x, weight, bn_weight, bn_bias, z, mean, var)
    ctx.eps, ctx.conv, ctx.act = eps, (stride, padding, dilation), act
    # Outputs that receive no gradient (z always, in DWConvBNAct) arrive as None, not as
    # zeros: a zero g_z would send the backward down the two-op path (z's gradient written,
    # then added to g_z and read again) and cost three activation-sized passes more.
    ctx.set_materialize_grads(False)


def _train_bwd(ctx, g_y, g_mean, g_var, g_z):
    """One backward for the train layer: the scale_shift_act sums, BatchNorm's per-channel chain
    rule, then the conv backward taking g_y itself (z's gradient applied on the fly, never
    written: a pass over the activations less than chaining the two ops' backwards)."""
    x, weight, bn_weight, bn_bias, z, mean, var = ctx.saved_tensors
    s, p, d = ctx.conv
    ops = _common.OPS
    invstd = torch.rsqrt(var + ctx.eps)
    scale, shift = ref.scale_shift_from_invstd(invstd, bn_weight, bn_bias)
    if g_y is None:
        g_y = torch.zeros_like(z)
    fuse = g_z is None  # z is an output only to be saved; a gradient for it takes the long way
    gz, g_scale, g_shift = ops._scale_shift_act_backward(g_y, z, scale, shift, ctx.act, mean,
                                                         not fuse)
    # scale = gamma * invstd, invstd = (var + eps)^-1/2, shift = beta, u = (z - mean) * scale + shift
    g_invstd = g_scale * bn_weight.to(g_scale.dtype) if bn_weight is not None else g_scale
    g_var_total = g_invstd * (-0.5) * invstd.pow(3)
    if g_var is not None:
        g_var_total = g_var_total + g_var
    g_mean_total = -g_shift * scale
    if g_mean is not None:
        g_mean_total = g_mean_total + g_mean
    if fuse:
        gx, gw = ops._dwconv_bn_stats_backward(g_y, g_mean_total, g_var_total, x, z, mean, weight,
                                               s, p, d, scale, shift, ctx.act)
    else:
        gx, gw = ops._dwconv_bn_stats_backward(gz + g_z, g_mean_total, g_var_total, x, z, mean,
                                               weight, s, p, d)
    g_bn_weight = (g_scale * invstd).to(bn_weight.dtype) if bn_weight is not None else None
    g_bn_bias = g_shift.to(bn_bias.dtype) if bn_bias is not None else None
    return gx, gw.to(weight.dtype), g_bn_weight, g_bn_bias, None, None, None, None, None


def _ssa_setup(ctx, inputs, output):
    z, scale, shift, act, mean = inputs
    ctx.save_for_backward(z, scale, shift, mean)
    ctx.act = act


def _ssa_bwd(ctx, grad):
    z, scale, shift, mean = ctx.saved_tensors
    gz, g_scale, g_shift = _common.OPS._scale_shift_act_backward(grad, z, scale, shift,
                                                                 ctx.act, mean)
    # u = (z - mean) * scale + shift  =>  du/dmean = -scale.
    g_mean = None
    if mean is not None and ctx.needs_input_grad[4]:
        g_mean = (-g_shift * scale.to(g_shift.dtype)).to(mean.dtype)
    return gz, g_scale.to(scale.dtype), g_shift.to(shift.dtype), None, g_mean


#: Autocast: x and weight (and z) go to the autocast dtype; the per-channel vectors stay in
#: float32, as BatchNorm keeps its parameters and statistics in float32 under autocast.
_AUTOCAST_X_W = _common.autocast_to((0, 1))

SPECS = (
    _common.OpSpec("dwconv_bn_act", reference=ref.dwconv_bn_act, fake=_fake_dwconv_bn_act,
                   backward=_eval_bwd, setup_context=_eval_setup, autocast=_AUTOCAST_X_W),
    _common.OpSpec("dwconv_bn_stats", reference=_stats_ref, fake=_fake_stats, backward=_stats_bwd,
                   setup_context=_stats_setup, autocast=_AUTOCAST_X_W),
    _common.OpSpec("dwconv_bn_act_train", reference=_train_ref, fake=_fake_train, backward=_train_bwd,
                   setup_context=_train_setup, autocast=_AUTOCAST_X_W),
    _common.OpSpec("scale_shift_act", reference=ref.scale_shift_act, fake=_fake_ssa, backward=_ssa_bwd,
                   setup_context=_ssa_setup, autocast=_common.autocast_to((0,))),
    _common.OpSpec("_scale_shift_act_backward", reference=_ssa_bwd_ref, fake=_fake_ssa_backward,
                   differentiable=ref.scale_shift_act_backward),
    _common.OpSpec("_dwconv_bn_stats_backward", reference=_stats_bwd_ref, fake=_fake_stats_backward,
                   differentiable=ref.dwconv_bn_stats_backward),
)

if _common.op_available("dwconv_bn_act"):
    _common.register(*SPECS)
