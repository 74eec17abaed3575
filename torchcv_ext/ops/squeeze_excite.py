"""Fused squeeze-and-excitation: y = x * gate(W2 act(W1 mean_hw(x) + b1) + b2).

Schema: csrc/registration.cpp (squeeze-and-excitation section). Kernels: csrc/cpu/squeeze_excite.cpp,
csrc/cuda/squeeze_excite.cu (shared math: csrc/include/torchcv_ext/squeeze_excite.h). Reference:
ops/reference/squeeze_excite.py. Module: torchcv_ext.nn.SqueezeExcite. Tests:
python_tests/test_squeeze_excite.py. Benchmark: benchmarks/bench_squeeze_excite.py.

The op reads x twice (pool, then scale) and writes y once; its backward
``_squeeze_excite_backward`` recomputes the pooled vector and the tiny MLP from x (nothing but the
inputs is saved), reads grad twice and x once, and returns the gradients of x and all four
parameters.
"""
from __future__ import annotations


import torch

from torchcv_ext.ops import _common
from torchcv_ext.ops.reference import squeeze_excite as ref

__all__ = ["squeeze_excite"]

_OP = "squeeze_excite"


def _as_matrix(w: torch.Tensor, name: str) -> torch.Tensor:
    """Accept a 1x1 conv weight (O, I, 1, 1) as the (O, I) matrix it is."""
    if w.dim() == 4:
        if w.shape[2:] != (1, 1):
            raise ValueError(f"squeeze_excite: {name} must be (O, I) or a 1x1 conv weight "
                             f"(O, I, 1, 1), got shape {tuple(w.shape)}")
        return w.flatten(1)
    return w


def squeeze_excite(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
                   b2: torch.Tensor, act: str = "relu", gate: str = "sigmoid") -> torch.Tensor:
    """Squeeze-and-excitation of ``x`` (N, C, *spatial) in one fused op.

    ``w1`` (S, C) / ``b1`` (S,) and ``w2`` (C, S) / ``b2`` (C,) are the two 1x1 convolutions (their
    4-D conv weights are accepted too); ``act`` is the hidden activation and ``gate`` the scale
    activation, by name ("relu", "silu", ... / "sigmoid", "hardsigmoid"; see
    ``torchcv_ext.activations.NAMES``). Same result as torchvision's
    ``SqueezeExcitation``; NCHW and channels_last (the output keeps the layout).
    """
    w1 = _as_matrix(w1, "w1")
    w2 = _as_matrix(w2, "w2")
    if _common.op_available(_OP):
        return _common.OPS.squeeze_excite(x, w1, b1, w2, b2, act, gate)
    if torch.is_autocast_enabled(x.device.type):  # the op's autocast rule, for the reference path
        x, w1, b1, w2, b2 = AUTOCAST(x.device.type, [x, w1, b1, w2, b2])
    return ref.squeeze_excite(x, w1, b1, w2, b2, act, gate)


# ----------------------------------------------------------------------------------------------
# The op declarations (registered only when the compiled extension defined the schemas).
# ----------------------------------------------------------------------------------------------
def _empty_like_layout(x: torch.Tensor) -> torch.Tensor:
    return torch.empty(x.shape, dtype=x.dtype, device=x.device).contiguous(
        memory_format=_common.memory_format_of(x))


def _fake_check(x, w1, b1, w2, b2, op):
    torch._check(x.dim() >= 3, lambda: f"{op}: x must have at least 3 dims (N, C, *spatial)")
    torch._check(w1.dim() == 2 and w1.shape[1] == x.shape[1],
                 lambda: f"{op}: w1 must have shape (S, C)")
    torch._check(w2.dim() == 2 and w2.shape[0] == x.shape[1] and w2.shape[1] == w1.shape[0],
                 lambda: f"{op}: w2 must have shape (C, S)")
    torch._check(b1.dim() == 1 and b1.shape[0] == w1.shape[0], lambda: f"{op}: b1 must have shape (S,)")
    torch._check(b2.dim() == 1 and b2.shape[0] == x.shape[1], lambda: f"{op}: b2 must have shape (C,)")
    for t in (w1, b1, w2, b2):
        torch._check(t.dtype == x.dtype, lambda: f"{op}: the parameters must have the dtype of x")


def _fake(x, w1, b1, w2, b2, act, gate):
    _fake_check(x, w1, b1, w2, b2, "squeeze_excite")
    return _empty_like_layout(x)


def _fake_backward(grad, x, w1, b1, w2, b2, act, gate):
    _fake_check(x, w1, b1, w2, b2, "_squeeze_excite_backward")
    torch._check(grad.shape == x.shape, lambda: "_squeeze_excite_backward: grad must have the shape of x")
    return (_empty_like_layout(x), w1.new_empty(w1.shape), b1.new_empty(b1.shape),
            w2.new_empty(w2.shape), b2.new_empty(b2.shape))


def _fwd_ref(x, w1, b1, w2, b2, act, gate):
    return _common.fresh(ref.squeeze_excite(x, w1, b1, w2, b2, act, gate), x)


def _bwd_ref(grad, x, w1, b1, w2, b2, act, gate):
    dx, dw1, db1, dw2, db2 = ref.squeeze_excite_backward(grad, x, w1, b1, w2, b2, act, gate)
    return (_common.fresh(dx, x), dw1.contiguous().clone(), db1.clone(), dw2.contiguous().clone(),
            db2.clone())


def _setup(ctx, inputs, output):
    x, w1, b1, w2, b2, act, gate = inputs
    ctx.save_for_backward(x, w1, b1, w2, b2)
    ctx.act, ctx.gate = act, gate


def _backward(ctx, grad):
    x, w1, b1, w2, b2 = ctx.saved_tensors
    dx, dw1, db1, dw2, db2 = _common.OPS._squeeze_excite_backward(
        grad, x, w1, b1, w2, b2, ctx.act, ctx.gate)
    return dx, dw1, db1, dw2, db2, None, None


#: Autocast: eager SE runs the 1x1 convs in the autocast dtype and the final multiply in x's dtype
#: (fp32 input -> fp32 output, fp16/bf16 input -> fp16/bf16 output); the fused op matches that
#: output dtype by casting the parameters to x's dtype (the MLP accumulates in float32 either way).
AUTOCAST = _common.autocast_like(0, (1, 2, 3, 4))

SPECS = (
    _common.OpSpec(_OP, reference=_fwd_ref, fake=_fake, backward=_backward, setup_context=_setup,
                   autocast=AUTOCAST),
    _common.OpSpec("_squeeze_excite_backward", reference=_bwd_ref, fake=_fake_backward,
                   differentiable=ref.squeeze_excite_backward),
)

if _common.op_available(_OP):
    _common.register(*SPECS)
