"""Adversarial input for every op and entry point (issue 26): each case asserts either the eager
PyTorch result or a clear error naming the problem. Tiny tensors; the one 2^28-element reduction
per op uses expanded (stride-0) views the kernels read in place, so nothing large is allocated."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from torchcv_ext import ops
from testing import requires_ext

pytestmark = requires_ext

F64 = torch.float64


def _t(*shape, dtype=F64, grad=True):
    return torch.randn(*shape, dtype=dtype).requires_grad_(grad)


@pytest.fixture
def kernels(monkeypatch):
    """Every op on its C++ kernels (the CPU train op and attention otherwise run eager / ATen paths
    for some inputs)."""
    monkeypatch.setattr(ops.config, "dwconv_cpu_train_backend", "kernels")
    monkeypatch.setenv("TORCHCV_EXT_CPU_ATTENTION", "tiled")


# ---- double backward: exact second derivatives (float64 finite differences) ----------------

def _dw_inputs():
    return _t(2, 2, 4, 4), _t(2, 1, 3, 3), _t(2), _t(2)


DOUBLE_BACKWARD = {
    "dwconv_bn_act": (lambda x, w, a, b, act: ops.dwconv_bn_act(x, w, a, b, 1, 1, 1, act), _dw_inputs),
    "dwconv_bn_act_train": (lambda x, w, a, b, act: ops.dwconv_bn_act_train(x, w, a, b, 1e-5, 2, 1, 1, act),
                            _dw_inputs),
    "squeeze_excite": (lambda x, w1, b1, w2, b2, act: ops.squeeze_excite(x, w1, b1, w2, b2, act, "sigmoid"),
                       lambda: (_t(2, 3, 2, 2), _t(2, 3), _t(2), _t(3, 2), _t(3))),
    "attention": (lambda q, k, v, act: ops.attention(q, k, v),
                  lambda: (_t(1, 1, 3, 4), _t(1, 1, 2, 4), _t(1, 1, 2, 4))),
    "hardswish": (lambda x, act: ops.hardswish(x), lambda: (_t(3, 4),)),
    "channel_shuffle": (lambda x, act: ops.channel_shuffle(x, 2), lambda: (_t(2, 4, 3),)),
}


@pytest.mark.parametrize("op, act", [(op, "silu") for op in sorted(DOUBLE_BACKWARD)] + [
    (op, "hardswish") for op in ("dwconv_bn_act", "dwconv_bn_act_train", "squeeze_excite")])
def test_double_backward_matches_finite_differences(kernels, op, act):
    fn, make = DOUBLE_BACKWARD[op]
    assert torch.autograd.gradgradcheck(lambda *a: fn(*a, act), make(), fast_mode=True)


def test_double_backward_module_gradient_penalty(kernels):
    """R1-style penalty through a train-mode DWConvBNAct + SqueezeExcite: the gradient of the
    penalty equals that of the same layers in eager PyTorch."""
    from torchcv_ext.ops.reference import dwconv_bn_act as ref_dw, squeeze_excite as ref_se
    x, w, g, b = _dw_inputs()
    w1, b1, w2, b2 = _t(3, 2), _t(3), _t(2, 3), _t(2)

    def net(dw, se):
        y = dw(x, w, g, b)
        return se(y, w1, b1, w2, b2, "relu", "sigmoid")

    outs = []
    for dw, se in ((lambda *a: ops.dwconv_bn_act_train(*a, 1e-5, 1, 1, 1, "silu")[0], ops.squeeze_excite),
                   (lambda *a: ref_dw.dwconv_bn_act_train(*a, 1e-5, [1, 1], [1, 1], [1, 1], "silu")[0],
                    ref_se.squeeze_excite)):
        (gx,) = torch.autograd.grad(net(dw, se).square().sum(), x, create_graph=True)
        outs.append(torch.autograd.grad(gx.square().sum(), (w, g, w1, w2)))
    for a, e in zip(*outs):
        torch.testing.assert_close(a, e)
