"""The elementwise activation op: ``activation(x, act)`` for every activation of the registry
(torchcv_ext/activations.py: hardswish, hardsigmoid, gelu, ...), whose autograd saves only the
input x (the backward recomputes the derivative from x).

Schema: csrc/registration.cpp (``activation``, ``_activation_backward``). Kernels:
csrc/cpu/activation.cpp, csrc/cuda/activation.cu (math: csrc/include/torchcv_ext/activations.h).
Reference: ops/reference/activation.py. Modules: torchcv_ext.nn.Hardswish / Hardsigmoid. Tests:
python_tests/test_activation.py.
"""
from __future__ import annotations

import torch

from torchcv_ext import activations
from torchcv_ext.ops import _common
from torchcv_ext.ops.reference import activation as ref

__all__ = ["activation", "hardswish", "hardsigmoid"]


def activation(x: torch.Tensor, act: str) -> torch.Tensor:
    """``act(x)`` by registered name (``torchcv_ext.activations.NAMES``); any float dtype and layout."""
    a = activations.REGISTRY.get(act) if type(act) is str else None
    if a is None:
        a = activations.get(act)  # a str subclass; or raises, naming the registered activations
    if x.is_cpu and not _common.capturing_graph():
        # Eager's own function (ATen's vectorized kernel, bound without F's Python layer) and its
        # autograd: on the CPU the op's kernels are ATen's very math, eager autograd saves x alone
        # as the op does, and any custom op's autograd costs more per call than ATen's generated
        # node (Python autograd.Function: ~55 us a forward + backward on the 2-vCPU benchmark
        # machine, a C++ autograd::Function ~30 us; 5-7% of a MobileNetV3-sized hardsigmoid,
        # benchmarks/results/2026-12-08-cpu-defaults-last-rows.md). So the CPU default is eager,
        # bit for bit, eager's limits included: hardsigmoid has no double backward there, as in
        # eager; the op itself (torch.ops.torchcv_ext.activation) has one on every device.
        # Graph capture takes the op; CUDA its kernels.
        if not x.is_floating_point():
            raise RuntimeError(f"activation: x must be a floating-point tensor, got {x.dtype}")
        return a.fn(x)
    if _common.op_available("activation"):
        return _common.OPS.activation(x, act)
    return ref.activation(x, act)


def hardswish(x: torch.Tensor) -> torch.Tensor:
    """``torch.nn.functional.hardswish``: x * relu6(x + 3) / 6. Any float dtype and layout."""
    return activation(x, "hardswish")


def hardsigmoid(x: torch.Tensor) -> torch.Tensor:
    """``torch.nn.functional.hardsigmoid``: relu6(x + 3) / 6. Any float dtype and layout."""
    return activation(x, "hardsigmoid")


# ----------------------------------------------------------------------------------------------
# The op declarations (registered only when the compiled extension defined the schemas).
# ----------------------------------------------------------------------------------------------
def _like(x: torch.Tensor) -> torch.Tensor:
    return torch.empty(x.shape, dtype=x.dtype, device=x.device).contiguous(
        memory_format=_common.memory_format_of(x))


def _setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])  # x alone: no output, no mask
    ctx.act = inputs[1]


def _backward(ctx, grad):
    (x,) = ctx.saved_tensors
    return _common.OPS._activation_backward(grad, x, ctx.act), None


SPECS = (
    _common.OpSpec("activation", reference=lambda x, act: _common.fresh(ref.activation(x, act), x),
                   fake=lambda x, act: _like(x), backward=_backward, setup_context=_setup),
    # Double backward: autograd through the reference backward (explicit derivative formulas).
    _common.OpSpec("_activation_backward",
                   reference=lambda g, x, act: _common.fresh(ref.activation_backward(g, x, act), x),
                   fake=lambda grad, x, act: _like(x), differentiable=ref.activation_backward),
)

if _common.op_available("activation"):
    _common.register(*SPECS)
