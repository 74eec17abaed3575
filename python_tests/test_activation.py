"""The elementwise activation op, for every activation of the registry (torchcv_ext/activations.py):
values and derivatives (kinks included) vs PyTorch's own modules, gradcheck/gradgradcheck in
float64, opcheck, torch.compile, layouts, the Hardswish / Hardsigmoid drop-ins, bad input; and the
registry itself (modules, calls, aliases recognized; the C++ side knows every name)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchcv_ext
from torchcv_ext import activations
from torchcv_ext.ops import activation, hardsigmoid, hardswish
from testing import DEVICES, DTYPES, assert_close, opcheck, requires_ext

NAMES = list(activations.NAMES)
KINKS = [-4.0, -3.0, -2.5, -1e-3, 0.0, 1e-3, 2.5, 3.0, 4.0, 6.0]


def _theirs(name):
    """PyTorch's module for ``name`` (the oracle), built from the registry's class and arguments."""
    a = activations.get(name)
    return a.module(**a.module_kwargs)


def _exact(name, x):
    """The function in float64; the hard activations exactly (PyTorch's float64 hardsigmoid
    multiplies by a float 1/6)."""
    if name in ("hardswish", "hardsigmoid"):
        r = (x + 3).clamp(0, 6) / 6
        return x * r if name == "hardswish" else r
    return _theirs(name)(x)


def _exact_derivative(name, x):
    """The derivative in float64 by autograd through PyTorch's module (exact 1/6 for hardsigmoid,
    whose PyTorch backward uses a float constant)."""
    if name == "hardsigmoid":
        return torch.where((x > -3) & (x < 3), torch.full_like(x, 1.0 / 6), torch.zeros_like(x))
    xx = x.detach().clone().requires_grad_()
    (d,) = torch.autograd.grad(_theirs(name)(xx), xx, torch.ones_like(xx))
    return d


def _with_autograd():
    """The public function (on the CPU eager's own function and autograd: ops/activation.py) and
    the op itself, whose kernels and autograd graph capture and CUDA run."""
    if not torchcv_ext.extension_loaded():
        return [activation]
    return [activation, torch.ops.torchcv_ext.activation]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_vs_pytorch(device, dtype, name):
    x = torch.cat([torch.randn(1000, dtype=torch.float64) * 4, torch.tensor(KINKS, dtype=torch.float64)])
    x = x.to(device=device, dtype=dtype)
    x64 = x.double()
    y = activation(x, name)
    assert y.dtype == dtype and y.shape == x.shape
    assert_close(y, _exact(name, x64), dtype)
    g = torch.randn_like(x)
    for fn in _with_autograd():
        xg = x.clone().requires_grad_()
        yg = fn(xg, name)
        (dx,) = torch.autograd.grad(yg, xg, g)
        assert dx.dtype == dtype
        if fn is activation and device == "cpu":
            # The CPU default is eager itself, bit for bit (eager's float64 hardsigmoid backward,
            # 3e-8 off the exact 1/6, included); the op below is held to the exact derivative.
            xe = x.clone().requires_grad_()
            ye = _theirs(name)(xe)
            assert torch.equal(yg, ye) and torch.equal(dx, torch.autograd.grad(ye, xe, g)[0])
            continue
        assert_close(yg.detach(), _exact(name, x64), dtype)
        assert_close(dx, g.double() * _exact_derivative(name, x64), dtype)
    # PyTorch's values at the kinks (hardswish'(-3) = 0, hardswish'(3) = 1, relu'(0) = 0, ...)
    k = torch.tensor(KINKS, dtype=torch.float64, device=device, requires_grad=True)
    (want,) = torch.autograd.grad(_theirs(name)(k), k, torch.ones_like(k))
    kk = k.detach().clone().requires_grad_()
    (got,) = torch.autograd.grad(activation(kk, name), kk, torch.ones_like(kk))
    assert_close(got, want, torch.float32)


@pytest.mark.parametrize("name", NAMES)
def test_nan_inf_as_eager(name):
    # The op vs eager in float64 (eager's float32 vectorized GELU has turned gelu(+inf) into NaN;
    # float64 and the kernels give +inf); the public function vs eager in float32 (on the CPU it
    # runs the eager function itself: ops/activation.py).
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, 1.0])
    for fn in _with_autograd():
        want = _theirs(name)(x.double()).float() if fn is not activation else _theirs(name)(x)
        torch.testing.assert_close(fn(x.detach().requires_grad_(), name).detach(), want, equal_nan=True)
    with torch.no_grad():
        torch.testing.assert_close(activation(x, name), _theirs(name)(x), equal_nan=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_and_gradgradcheck(device, name):
    # Stay away from the kinks, where finite differences are meaningless.
    x = torch.linspace(-5, 5, 41, dtype=torch.float64, device=device)
    x = x[((x.abs() - 3).abs() > 0.1) & (x.abs() > 0.1) & ((x - 6).abs() > 0.1)][:36].reshape(2, 3, 6)
    x = x.requires_grad_()
    for fn in _with_autograd():
        assert torch.autograd.gradcheck(lambda t: fn(t, name), (x,))
        if fn is activation and device == "cpu" and name == "hardsigmoid":
            # Eager's own autograd on the CPU, which has no double backward here; the op has one.
            with pytest.raises(RuntimeError, match="hardsigmoid_backward is not implemented"):
                torch.autograd.gradgradcheck(lambda t: fn(t, name), (x,))
            continue
        assert torch.autograd.gradgradcheck(lambda t: fn(t, name), (x,))


@requires_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["hardswish", "gelu_tanh"])
def test_opcheck(device, name):
    x = torch.randn(2, 5, 4, 3, device=device).contiguous(memory_format=torch.channels_last).requires_grad_()
    opcheck(torch.ops.torchcv_ext.activation.default, (x, name))
    opcheck(torch.ops.torchcv_ext._activation_backward.default, (torch.randn_like(x), x.detach(), name))


@requires_ext
def test_torch_compile_fullgraph():
    torch._dynamo.reset()

    def f(t):
        return hardsigmoid(activation(hardswish(t) * 2, "gelu"))

    cf = torch.compile(f, fullgraph=True, backend="aot_eager")
    x = torch.randn(3, 8, 5, 5, requires_grad=True)
    y = cf(x)
    assert_close(y, F.hardsigmoid(F.gelu(F.hardswish(x) * 2)), torch.float32)
    y.sum().backward()
    xr = x.detach().clone().requires_grad_()
    F.hardsigmoid(F.gelu(F.hardswish(xr) * 2)).sum().backward()
    assert_close(x.grad, xr.grad, torch.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["hardswish", "hardsigmoid", "gelu"])
def test_layouts_and_odd_sizes(device, name):
    base = torch.randn(3, 10, 7, 9, device=device) * 4
    for x in [base.contiguous(memory_format=torch.channels_last), base[:, ::3], base.transpose(1, 3),
              base[..., 1:], torch.randn(7, device=device), torch.randn(0, 3, device=device),
              torch.randn(17, 1, device=device)[3:], torch.randn(3, 1, device=device).expand(3, 5)]:
        y = activation(x, name)
        assert y.shape == x.shape
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            assert y.is_contiguous(memory_format=torch.channels_last)
        assert_close(y, _exact(name, x.double()), torch.float32)
        xg = x.clone().requires_grad_()
        g = torch.randn_like(x)
        yg = activation(xg, name)
        assert_close(yg.detach(), _exact(name, x.double()), torch.float32)
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            assert yg.is_contiguous(memory_format=torch.channels_last)
        (dx,) = torch.autograd.grad(yg, xg, g)
        assert_close(dx, g.double() * _exact_derivative(name, x.double()), torch.float32)


@pytest.mark.parametrize("name", ["hardswish", "gelu"])
def test_saves_only_input(name):
    """The autograd graph keeps x alone (no output, no mask)."""
    from torch.autograd.graph import saved_tensors_hooks

    saved = []
    x = torch.randn(4, 6, requires_grad=True)
    with saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        _with_autograd()[-1](x, name)
    if torchcv_ext.extension_loaded():
        assert len(saved) == 1 and saved[0].data_ptr() == x.data_ptr()


def test_modules_drop_in():
    for ours_cls, theirs_cls in ((torchcv_ext.nn.Hardswish, nn.Hardswish),
                                 (torchcv_ext.nn.Hardsigmoid, nn.Hardsigmoid)):
        m = ours_cls(inplace=True)
        x = torch.randn(2, 3, 4, 4)
        before = x.clone()
        assert_close(m(x), theirs_cls()(before), torch.float32)
        assert torch.equal(x, before)  # inplace is accepted; the result is a new tensor
        assert m.state_dict() == {}


@pytest.mark.parametrize("device", DEVICES)
def test_bad_input(device):
    with pytest.raises(RuntimeError, match="activation: x must be"):
        hardswish(torch.arange(4, device=device))
    with pytest.raises(ValueError, match="unknown activation 'gelu_erf'; expected one of identity"):
        activation(torch.randn(3, device=device), "gelu_erf")
    if torchcv_ext.extension_loaded():
        x = torch.randn(4, device=device)
        with pytest.raises(RuntimeError, match="_activation_backward: grad"):
            torch.ops.torchcv_ext._activation_backward(torch.randn(5, device=device), x, "hardswish")
        with pytest.raises(RuntimeError, match="_activation_backward: grad has dtype"):
            torch.ops.torchcv_ext._activation_backward(x.double(), x, "hardsigmoid")
        with pytest.raises(RuntimeError, match="unknown activation 'swish'"):  # aliases are the modules'
            torch.ops.torchcv_ext.activation(x, "swish")


# ---- the registry ------------------------------------------------------------------------------
@requires_ext
@pytest.mark.parametrize("name", NAMES)
def test_every_name_reaches_the_kernels(name):
    """The C++ side (activations.h) knows every registered name, in every op that takes one."""
    x = torch.randn(2, 4, 5, 5)
    torch.ops.torchcv_ext.activation(x, name)
    w = torch.randn(4, 1, 3, 3)
    one, zero = torch.ones(4), torch.zeros(4)
    torch.ops.torchcv_ext.dwconv_bn_act(x, w, one, zero, [1, 1], [1, 1], [1, 1], name)
    torch.ops.torchcv_ext.squeeze_excite(x, torch.randn(2, 4), torch.randn(2), torch.randn(4, 2),
                                         torch.randn(4), name, name)


def test_modules_and_calls_are_recognized():
    for name in NAMES:
        m = activations.make_module(name)
        assert activations.fused_name(m) == name
        assert_close(m(torch.linspace(-5, 5, 11)), activations.forward(name, torch.linspace(-5, 5, 11)),
                     torch.float32)
    assert activations.fused_name(nn.GELU) == "gelu"
    assert activations.fused_name(nn.GELU(approximate="tanh")) == "gelu_tanh"
    assert activations.fused_name(torchcv_ext.nn.Hardswish()) == "hardswish"
    assert activations.fused_name(type("MyReLU", (nn.ReLU,), {})) is None  # a subclass may differ
    assert activations.call_name("call_function", F.gelu, (None,), {"approximate": "tanh"}) == "gelu_tanh"
    assert activations.call_name("call_function", F.gelu, (None,)) == "gelu"
    assert activations.call_name("call_method", "sigmoid_") == "sigmoid"
    assert activations.parse("Swish", "x") == "silu" and activations.parse("none", "x") == "identity"
    with pytest.raises(ValueError, match="owner: unknown activation 'mish'"):
        activations.parse("mish", "owner")
