"""Memory-efficient hardswish / hardsigmoid: values and derivatives (kinks included) vs PyTorch,
gradcheck/gradgradcheck in float64, opcheck, torch.compile, layouts, modules, bad input."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchcv_ext
from torchcv_ext.ops import hardsigmoid, hardswish
from testing import DEVICES, DTYPES, assert_close, opcheck, requires_ext

FUNCS = [(hardswish, F.hardswish, "hardswish"), (hardsigmoid, F.hardsigmoid, "hardsigmoid")]
KINKS = [-4.0, -3.0, -2.5, -1e-3, 0.0, 1e-3, 2.5, 3.0, 4.0]


def _exact_derivative(name, x):
    """The exact derivative in float64 (PyTorch's own hardsigmoid backward uses a float 1/6)."""
    if name == "hardswish":
        return torch.where(x <= -3, 0.0, torch.where(x < 3, (2 * x + 3) / 6, 1.0)).to(x.dtype)
    return torch.where((x > -3) & (x < 3), torch.full_like(x, 1.0 / 6), torch.zeros_like(x))


def _exact(name, x):
    """The exact function in float64 (PyTorch's float64 hardsigmoid multiplies by a float 1/6)."""
    r = (x + 3).clamp(0, 6) / 6
    return x * r if name == "hardswish" else r


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
@pytest.mark.parametrize("ours,theirs,name", FUNCS)
def test_forward_backward_vs_pytorch(device, dtype, ours, theirs, name):
    x = torch.cat([torch.randn(1000, dtype=torch.float64) * 4, torch.tensor(KINKS, dtype=torch.float64)])
    x = x.to(device=device, dtype=dtype)
    x64 = x.double()
    y = ours(x)
    assert y.dtype == dtype and y.shape == x.shape
    assert_close(y, _exact(name, x64), dtype)
    xg = x.clone().requires_grad_()
    g = torch.randn_like(x)
    (dx,) = torch.autograd.grad(ours(xg), xg, g)
    assert dx.dtype == dtype
    assert_close(dx, g.double() * _exact_derivative(name, x64), dtype)
    # PyTorch's values at the kinks (hardswish'(-3) = 0, hardswish'(3) = 1, hardsigmoid'(+-3) = 0)
    k = torch.tensor(KINKS, dtype=torch.float64, device=device, requires_grad=True)
    (want,) = torch.autograd.grad(theirs(k), k, torch.ones_like(k))
    kk = k.detach().clone().requires_grad_()
    (got,) = torch.autograd.grad(ours(kk), kk, torch.ones_like(kk))
    assert_close(got, want, torch.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("ours,theirs,name", FUNCS)
def test_gradcheck_and_gradgradcheck(device, ours, theirs, name):
    # Stay away from the kinks, where finite differences are meaningless.
    x = torch.linspace(-5, 5, 41, dtype=torch.float64, device=device)
    x = x[(x.abs() - 3).abs() > 0.1].reshape(-1)[:36].reshape(2, 3, 6).requires_grad_()
    assert torch.autograd.gradcheck(ours, (x,))
    if torchcv_ext.extension_loaded() or name == "hardswish":  # PyTorch has no hardsigmoid double backward
        assert torch.autograd.gradgradcheck(ours, (x,))


@requires_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["hardswish", "hardsigmoid"])
def test_opcheck(device, name):
    x = torch.randn(2, 5, 4, 3, device=device).contiguous(memory_format=torch.channels_last).requires_grad_()
    opcheck(getattr(torch.ops.torchcv_ext, name).default, (x,))
    opcheck(getattr(torch.ops.torchcv_ext, f"_{name}_backward").default,
                          (torch.randn_like(x), x.detach()))


@requires_ext
def test_torch_compile_fullgraph():
    torch._dynamo.reset()

    def f(t):
        return hardsigmoid(hardswish(t) * 2)

    cf = torch.compile(f, fullgraph=True, backend="aot_eager")
    x = torch.randn(3, 8, 5, 5, requires_grad=True)
    y = cf(x)
    assert_close(y, F.hardsigmoid(F.hardswish(x) * 2), torch.float32)
    y.sum().backward()
    xr = x.detach().clone().requires_grad_()
    F.hardsigmoid(F.hardswish(xr) * 2).sum().backward()
    assert_close(x.grad, xr.grad, torch.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("ours,theirs,name", FUNCS)
def test_layouts_and_odd_sizes(device, ours, theirs, name):
    base = torch.randn(3, 10, 7, 9, device=device) * 4
    for x in [base.contiguous(memory_format=torch.channels_last), base[:, ::3], base.transpose(1, 3),
              base[..., 1:], torch.randn(7, device=device), torch.randn(0, 3, device=device),
              torch.randn(17, 1, device=device)[3:]]:
        y = ours(x)
        assert y.shape == x.shape
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            assert y.is_contiguous(memory_format=torch.channels_last)
        assert_close(y, _exact(name, x.double()), torch.float32)
        xg = x.clone().requires_grad_()
        g = torch.randn_like(x)
        (dx,) = torch.autograd.grad(ours(xg), xg, g)
        assert_close(dx, g.double() * _exact_derivative(name, x.double()), torch.float32)


@pytest.mark.parametrize("name", ["hardswish", "hardsigmoid"])
def test_saves_only_input(name):
    """The autograd graph keeps x alone (no output, no mask)."""
    from torch.autograd.graph import saved_tensors_hooks

    saved = []
    x = torch.randn(4, 6, requires_grad=True)
    with saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        getattr(torchcv_ext.ops, name)(x)
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
    with pytest.raises(RuntimeError, match="hardswish: x must be"):
        hardswish(torch.arange(4, device=device))
    with pytest.raises(RuntimeError, match="hardsigmoid: x must be"):
        hardsigmoid(torch.arange(4, device=device))
    if torchcv_ext.extension_loaded():
        x = torch.randn(4, device=device)
        with pytest.raises(RuntimeError, match="_hardswish_backward: grad"):
            torch.ops.torchcv_ext._hardswish_backward(torch.randn(5, device=device), x)
        with pytest.raises(RuntimeError, match="_hardsigmoid_backward: grad has dtype"):
            torch.ops.torchcv_ext._hardsigmoid_backward(x.double(), x)
