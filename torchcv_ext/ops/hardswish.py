"""Memory-efficient hardswish / hardsigmoid: elementwise kernels whose autograd saves only the
input x (the backward recomputes the derivative from x).

Schemas: csrc/registration.cpp (squeeze-and-excitation section). Kernels: csrc/cpu/hardswish.cpp,
csrc/cuda/hardswish.cu (math: csrc/include/torchcv_ext/activations.h). Reference:
ops/reference/hardswish.py. Modules: torchcv_ext.nn.Hardswish / Hardsigmoid. Tests:
python_tests/test_hardswish.py.
"""
from __future__ import annotations

import torch

from torchcv_ext.ops import _common
from torchcv_ext.ops.reference import hardswish as ref

__all__ = ["hardswish", "hardsigmoid"]


def hardswish(x: torch.Tensor) -> torch.Tensor:
    """``torch.nn.functional.hardswish``: x * relu6(x + 3) / 6. Any float dtype and layout."""
    if _common.op_available("hardswish"):
        return torch.ops.torchcv_ext.hardswish(x)
    return ref.hardswish(x)


def hardsigmoid(x: torch.Tensor) -> torch.Tensor:
    """``torch.nn.functional.hardsigmoid``: relu6(x + 3) / 6. Any float dtype and layout."""
    if _common.op_available("hardsigmoid"):
        return torch.ops.torchcv_ext.hardsigmoid(x)
    return ref.hardsigmoid(x)


# ----------------------------------------------------------------------------------------------
# Dispatcher registrations (only when the compiled extension defined the schemas).
# ----------------------------------------------------------------------------------------------
def _register() -> None:
    lib = "torchcv_ext::"
    ops = torch.ops.torchcv_ext

    def _layout(x):
        return torch.empty(x.shape, dtype=x.dtype, device=x.device).contiguous(
            memory_format=_common.memory_format_of(x))

    for name, fwd, bwd in (("hardswish", ref.hardswish, ref.hardswish_backward),
                           ("hardsigmoid", ref.hardsigmoid, ref.hardsigmoid_backward)):
        _common.register_reference_kernels(name, (lambda f: lambda x: _common.fresh(f(x), x))(fwd))
        _common.register_reference_kernels(
            f"_{name}_backward", (lambda f: lambda g, x: _common.fresh(f(g, x), x))(bwd))
        _common.register_fake(name)(lambda x: _layout(x))
        _common.register_fake(f"_{name}_backward")(lambda grad, x: _layout(x))

    def _save_x(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    def _save_grad_x(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    # First derivatives: only x is saved (no output, no mask).
    def _hardswish_bwd(ctx, grad):
        (x,) = ctx.saved_tensors
        return ops._hardswish_backward(grad, x)

    def _hardsigmoid_bwd(ctx, grad):
        (x,) = ctx.saved_tensors
        return ops._hardsigmoid_backward(grad, x)

    # Second derivatives (double backward): hardswish'' = 1/3 on (-3, 3), hardsigmoid'' = 0.
    def _hardswish_bwd_bwd(ctx, gg):
        grad, x = ctx.saved_tensors
        inner = (x > -3) & (x < 3)
        return ops._hardswish_backward(gg, x), torch.where(inner, gg * grad / 3, torch.zeros_like(x))

    def _hardsigmoid_bwd_bwd(ctx, gg):
        grad, x = ctx.saved_tensors
        return ops._hardsigmoid_backward(gg, x), torch.zeros_like(x)

    torch.library.register_autograd(lib + "hardswish", _hardswish_bwd, setup_context=_save_x)
    torch.library.register_autograd(lib + "hardsigmoid", _hardsigmoid_bwd, setup_context=_save_x)
    torch.library.register_autograd(lib + "_hardswish_backward", _hardswish_bwd_bwd,
                                    setup_context=_save_grad_x)
    torch.library.register_autograd(lib + "_hardsigmoid_backward", _hardsigmoid_bwd_bwd,
                                    setup_context=_save_grad_x)


if _common.op_available("hardswish"):
    _register()
