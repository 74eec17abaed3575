"""squeeze_excite (fused SE block) and torchcv_ext.nn.SqueezeExcite vs torchvision's
SqueezeExcitation: forward and every gradient, float64 gradcheck, opcheck, torch.compile,
autocast, odd shapes, layouts and bad input."""
import functools

import pytest
import torch
import torchvision
from torch import nn

import torchcv_ext
from torchcv_ext.nn import SqueezeExcite
from torchcv_ext.ops import squeeze_excite
from torchcv_ext.ops.reference import squeeze_excite as ref
from testing import DEVICES, DTYPES, assert_close, opcheck, requires_ext

ACT_PAIRS = [(nn.ReLU, nn.Sigmoid, "relu", "sigmoid"), (nn.SiLU, nn.Sigmoid, "silu", "sigmoid"),
             (nn.ReLU, nn.Hardsigmoid, "relu", "hardsigmoid"),
             (nn.Hardswish, nn.Hardsigmoid, "hardswish", "hardsigmoid")]
LAYOUTS = [torch.contiguous_format, torch.channels_last]


def _grad_tol(*names):
    # PyTorch's hardsigmoid backward uses the float constant 1/6 even for float64 (relative error
    # 3e-8), so autograd through F.hardsigmoid is only float32-exact; our kernels use the exact
    # value (checked by gradcheck).
    return torch.float32 if "hardsigmoid" in names else torch.float64


def _params(c, s, dtype=torch.float64, device="cpu", scale=1.0):
    w1 = torch.randn(s, c, dtype=dtype, device=device) * scale / c ** 0.5
    b1 = torch.randn(s, dtype=dtype, device=device)
    w2 = torch.randn(c, s, dtype=dtype, device=device) * scale / s ** 0.5
    b2 = torch.randn(c, dtype=dtype, device=device)
    return w1, b1, w2, b2


def _tv_pair(c, s, act_cls, gate_cls, device, dtype=torch.float64):
    tv = torchvision.ops.SqueezeExcitation(c, s, act_cls, gate_cls).to(device, dtype)
    ours = SqueezeExcite(c, s, act_cls, gate_cls).to(device, dtype)
    ours.load_state_dict(tv.state_dict())
    return tv, ours


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("act_cls,gate_cls,act,gate", ACT_PAIRS)
def test_module_matches_torchvision_forward_and_grads(device, layout, act_cls, gate_cls, act, gate):
    tv, ours = _tv_pair(24, 6, act_cls, gate_cls, device)
    x = (torch.randn(3, 24, 5, 7, dtype=torch.float64, device=device) * 2).contiguous(memory_format=layout)
    xa = x.clone().requires_grad_()
    xb = x.clone().requires_grad_()
    ya, yb = tv(xa), ours(xb)
    assert yb.is_contiguous(memory_format=layout)
    assert_close(yb, ya, torch.float64)
    g = torch.randn_like(ya)
    ga = torch.autograd.grad(ya, [xa, *tv.parameters()], g)
    gb = torch.autograd.grad(yb, [xb, *ours.parameters()], g)
    names = ["x"] + [n for n, _ in tv.named_parameters()]
    for name, a, b in zip(names, ga, gb):
        assert b.shape == a.shape, name
        assert_close(b, a, _grad_tol(gate))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_dtypes_vs_float64_reference(device, dtype, layout):
    n, c, s, h, w = 2, 40, 10, 9, 11
    x64 = torch.randn(n, c, h, w, dtype=torch.float64, device=device)
    p64 = _params(c, s, device=device)
    # Round the inputs to the tested dtype first so only the computation's error is measured.
    x = x64.to(dtype).contiguous(memory_format=layout)
    p = [t.to(dtype) for t in p64]
    x64, p64 = x.double(), [t.double() for t in p]
    y = squeeze_excite(x, *p, "silu", "sigmoid")
    assert y.dtype == dtype and y.is_contiguous(memory_format=layout)
    assert_close(y, ref.squeeze_excite(x64, *p64, "silu", "sigmoid"), dtype)
    g = torch.randn(n, c, h, w, dtype=dtype, device=device)
    got = torch.ops.torchcv_ext._squeeze_excite_backward(g, x, *p, "silu", "sigmoid") \
        if torchcv_ext.extension_loaded() else ref.squeeze_excite_backward(g, x, *p, "silu", "sigmoid")
    want = ref.squeeze_excite_backward(g.double(), x64, *p64, "silu", "sigmoid")
    for name, a, b in zip(["dx", "dw1", "db1", "dw2", "db2"], got, want):
        assert a.dtype == dtype, name
        # dw/db sum over N*H*W products: allow for the final rounding of a large value.
        assert_close(a, b, dtype, scale=1.0 if name == "dx" else 4.0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout,act,gate", [(torch.contiguous_format, "relu", "sigmoid"),
                                             (torch.channels_last, "silu", "hardsigmoid")])
def test_gradcheck_float64(device, layout, act, gate):
    x = torch.randn(2, 5, 3, 3, dtype=torch.float64, device=device).contiguous(memory_format=layout)
    params = [t.requires_grad_() for t in _params(5, 2, device=device)]
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda *a: squeeze_excite(*a, act, gate), (x, *params))


@pytest.mark.parametrize("act", ["relu", "relu6", "hardswish", "silu", "identity", "sigmoid"])
@pytest.mark.parametrize("gate", ["sigmoid", "hardsigmoid", "identity"])
def test_reference_backward_matches_autograd(act, gate):
    x = torch.randn(3, 7, 4, 5, dtype=torch.float64, requires_grad=True)
    params = [t.requires_grad_() for t in _params(7, 3, scale=3.0)]
    y = ref.squeeze_excite(x, *params, act, gate)
    g = torch.randn_like(y)
    want = torch.autograd.grad(y, [x, *params], g)
    got = ref.squeeze_excite_backward(g, x.detach(), *[t.detach() for t in params], act, gate)
    for a, b in zip(got, want):
        assert_close(a, b, _grad_tol(act, gate))


@requires_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_opcheck(device, layout):
    x = torch.randn(2, 8, 5, 3, device=device).contiguous(memory_format=layout).requires_grad_()
    params = [t.requires_grad_() for t in _params(8, 4, dtype=torch.float32, device=device)]
    opcheck(torch.ops.torchcv_ext.squeeze_excite.default, (x, *params, "relu", "hardsigmoid"))
    g = torch.randn_like(x)
    opcheck(torch.ops.torchcv_ext._squeeze_excite_backward.default,
                          (g, x.detach(), *[t.detach() for t in params], "silu", "sigmoid"))


@requires_ext
@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    torch._dynamo.reset()
    tv, ours = _tv_pair(16, 4, nn.SiLU, nn.Sigmoid, device, torch.float32)
    compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 16, 6, 6, device=device).contiguous(memory_format=torch.channels_last)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = tv(xa), compiled(xb)
    assert_close(yb, ya, torch.float32)
    ya.sum().backward()
    yb.sum().backward()
    assert_close(xb.grad, xa.grad, torch.float32)
    assert_close(ours.fc1.weight.grad, tv.fc1.weight.grad, torch.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape,s", [((1, 13, 1, 1), 3),     # batch 1, 1x1 spatial, C % 4 != 0
                                     ((5, 3, 7, 7), 1),      # C = 3, S = 1
                                     ((2, 12, 1, 9), 5),     # C % 8 != 0, 1xW
                                     ((1, 33, 14, 14), 8),   # HW % 16 != 0
                                     ((4, 8, 2, 3), 2)])
def test_odd_shapes(device, layout, shape, s):
    x = torch.randn(*shape, dtype=torch.float64, device=device).contiguous(memory_format=layout)
    p = _params(shape[1], s, device=device)
    xr = x.clone().requires_grad_()
    pr = [t.clone().requires_grad_() for t in p]
    y = squeeze_excite(x, *p, "relu", "sigmoid")
    yr = ref.squeeze_excite(xr, *pr, "relu", "sigmoid")
    assert_close(y, yr, torch.float64)
    x2 = x.clone().requires_grad_()
    p2 = [t.clone().requires_grad_() for t in p]
    g = torch.randn_like(yr)
    got = torch.autograd.grad(squeeze_excite(x2, *p2, "relu", "sigmoid"), [x2, *p2], g)
    want = torch.autograd.grad(yr, [xr, *pr], g)
    for a, b in zip(got, want):
        assert_close(a, b, torch.float64)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(1, 64, 33, 31), (9, 24, 40, 40)])
def test_cpu_parallel_paths(layout, shape):
    """Batch 1 with a large image (channels_last: pixel chunks combined in order) and a batch
    larger than the thread count (per-sample fusion or plane-parallel, by sample size)."""
    x = torch.randn(*shape, dtype=torch.float64).contiguous(memory_format=layout)
    p = _params(shape[1], 6)
    assert_close(squeeze_excite(x, *p, "silu", "sigmoid"), ref.squeeze_excite(x, *p, "silu", "sigmoid"),
                 torch.float64)
    if torchcv_ext.extension_loaded():
        g = torch.randn_like(x)
        got = torch.ops.torchcv_ext._squeeze_excite_backward(g, x, *p, "silu", "sigmoid")
        want = ref.squeeze_excite_backward(g, x, *p, "silu", "sigmoid")
        for a, b in zip(got, want):
            assert_close(a, b, torch.float64)


@pytest.mark.parametrize("c", [1, 3, 7, 8, 15, 16, 17, 33, 40, 63, 64, 65, 100, 136])
def test_cpu_float32_channels_last_pool_channel_counts(c):
    """The float32 channels_last pooling kernel: 64-channel register blocks, then the remaining
    channels in one pass with whole vectors, a partial vector reading into the next pixel, and
    the last pixels of a chunk channel by channel (C < 16 included); one image large enough to
    be split into pixel chunks."""
    for shape in [(2, c, 5, 3), (1, c, 64, 64), (3, c, 1, 1)]:
        x = torch.randn(*shape).contiguous(memory_format=torch.channels_last)
        p = _params(c, max(1, c // 4), dtype=torch.float32)
        y = squeeze_excite(x, *p, "relu", "sigmoid")
        want = ref.squeeze_excite(x.double(), *(t.double() for t in p), "relu", "sigmoid")
        assert_close(y, want, torch.float32)


@pytest.mark.parametrize("device", DEVICES)
def test_3d_and_5d_inputs(device):
    for shape in [(2, 6, 10), (2, 6, 3, 2, 4)]:
        x = torch.randn(*shape, dtype=torch.float64, device=device)
        p = _params(6, 2, device=device)
        assert_close(squeeze_excite(x, *p, "silu", "sigmoid"), ref.squeeze_excite(x, *p, "silu", "sigmoid"),
                     torch.float64)


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs(device):
    base = torch.randn(2, 20, 9, 12, dtype=torch.float64, device=device)
    p = _params(10, 4, device=device)
    cases = [base[:, ::2],                                                    # strided channels
             base[:, :10, :, 1:8],                                            # cropped rows
             base.contiguous(memory_format=torch.channels_last)[:, 3:13],     # channels_last slice
             base.transpose(2, 3)[:, :10]]                                    # transposed spatial
    for x in cases:
        y = squeeze_excite(x, *p, "relu", "hardsigmoid")
        assert_close(y, ref.squeeze_excite(x, *p, "relu", "hardsigmoid"), torch.float64)
        xg = x.clone().requires_grad_()
        got = torch.autograd.grad(squeeze_excite(xg, *p, "relu", "hardsigmoid").square().sum(), xg)[0]
        xr = x.clone().requires_grad_()
        want = torch.autograd.grad(ref.squeeze_excite(xr, *p, "relu", "hardsigmoid").square().sum(), xr)[0]
        assert_close(got, want, _grad_tol("hardsigmoid"))
    # non-contiguous parameters (a transposed view)
    w1t = p[0].t().contiguous().t()
    assert_close(squeeze_excite(base[:, :10], w1t, *p[1:], "relu", "sigmoid"),
                 ref.squeeze_excite(base[:, :10], *p, "relu", "sigmoid"), torch.float64)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch(device):
    x = torch.randn(0, 8, 4, 4, device=device, requires_grad=True)
    p = [t.requires_grad_() for t in _params(8, 2, dtype=torch.float32, device=device)]
    y = squeeze_excite(x, *p, "relu", "sigmoid")
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad.shape == x.shape and float(p[0].grad.abs().sum()) == 0.0


@pytest.mark.parametrize("device,dtype", [("cpu", torch.bfloat16),
                                          pytest.param("cuda", torch.float16, marks=pytest.mark.cuda),
                                          pytest.param("cuda", torch.bfloat16, marks=pytest.mark.cuda)])
def test_autocast(device, dtype):
    """Same output dtype as eager torchvision under autocast (x's dtype: the convs run in the
    autocast dtype, the final multiply in x's), parameter grads in float32."""
    tv, ours = _tv_pair(16, 4, nn.SiLU, nn.Hardsigmoid, device, torch.float32)
    for x_dtype in (torch.float32, dtype):
        x = torch.randn(2, 16, 8, 8, device=device).to(x_dtype)
        with torch.autocast(device, dtype=dtype):
            y = ours(x)
            ya = tv(x)
        assert y.dtype == ya.dtype == x_dtype
        assert_close(y, ya.float(), dtype, scale=2.0)
        xg = x.clone().requires_grad_()
        ours.zero_grad()
        with torch.autocast(device, dtype=dtype):
            out = ours(xg)
        out.float().sum().backward()
        assert xg.grad.dtype == x_dtype and ours.fc1.weight.grad.dtype == torch.float32
        assert torch.isfinite(ours.fc1.weight.grad).all()


@pytest.mark.cuda
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_large_shapes_match_cpu(layout, dtype):
    """Many chunks per plane, vector and scalar paths, unaligned storage offsets."""
    # Many chunks per plane; B0/MNv3 sizes; scalar paths (C, S not multiples of 8); MLP column
    # sums over several passes (C / 8 > 256) and > 48 KB of shared memory (C = 8192).
    for (n, c, h, w, s) in [(8, 32, 112, 112, 8), (16, 1152, 7, 7, 48), (3, 120, 28, 28, 32),
                            (2, 18, 57, 33, 5), (4, 960, 7, 7, 240), (2, 600, 3, 3, 37),
                            (1, 4104, 1, 1, 8), (1, 8192, 2, 2, 16)]:
        x64 = torch.randn(n, c, h, w, dtype=torch.float64)
        p64 = [t.to(dtype).double() for t in _params(c, s)]
        x = x64.to(dtype).cuda().contiguous(memory_format=layout)
        x64 = x.double().cpu()
        p = [t.to(dtype).cuda() for t in p64]
        y = squeeze_excite(x, *p, "silu", "sigmoid")
        assert_close(y, ref.squeeze_excite(x64, *p64, "silu", "sigmoid"), dtype)
        g = torch.randn_like(x)
        got = torch.ops.torchcv_ext._squeeze_excite_backward(g, x, *p, "silu", "sigmoid")
        want = ref.squeeze_excite_backward(g.double().cpu(), x64, *p64, "silu", "sigmoid")
        for i, (a, b) in enumerate(zip(got, want)):
            assert_close(a, b, dtype, scale=1.0 if i == 0 else 8.0)
    # storage offset of one element: misaligned vectors
    buf = torch.randn(2 * 24 * 9 * 9 + 1, device="cuda", dtype=dtype)
    x = buf[1:].view(2, 24, 9, 9)
    p = [t.to(dtype).cuda() for t in _params(24, 6)]
    assert_close(squeeze_excite(x, *p, "relu", "sigmoid"),
                 ref.squeeze_excite(x.double(), *[t.double() for t in p], "relu", "sigmoid"), dtype)


@pytest.mark.cuda
@requires_ext
def test_cuda_deterministic_parameter_grads():
    """Parameter gradients: cuBLAS by default, the fixed-order kernel under
    torch.use_deterministic_algorithms(True) (bitwise reproducible, same values)."""
    x = torch.randn(32, 240, 14, 14, device="cuda")
    p = [t.cuda() for t in _params(240, 60)]
    g = torch.randn_like(x)
    bwd = torch.ops.torchcv_ext._squeeze_excite_backward
    fast = bwd(g, x, *p, "silu", "sigmoid")
    torch.use_deterministic_algorithms(True)
    try:
        det = [bwd(g, x, *p, "silu", "sigmoid") for _ in range(2)]
    finally:
        torch.use_deterministic_algorithms(False)
    for a, b, c in zip(det[0], det[1], fast):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, c, atol=1e-4, rtol=1e-4)


def test_module_interface():
    tv = torchvision.ops.SqueezeExcitation(32, 8)
    m = SqueezeExcite(32, 8)
    assert list(m.state_dict().keys()) == list(tv.state_dict().keys()) == \
        ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert all(a.shape == b.shape for a, b in zip(m.state_dict().values(), tv.state_dict().values()))
    m.load_state_dict(tv.state_dict())
    x = torch.randn(2, 32, 6, 6)
    assert_close(m(x), tv(x), torch.float32)
    # names, classes and factories
    s = SqueezeExcite(32, 8, activation="silu", scale_activation="hardsigmoid")
    assert isinstance(s.activation, nn.SiLU) and isinstance(s.scale_activation, nn.Hardsigmoid)
    s = SqueezeExcite(32, 8, functools.partial(nn.ReLU, inplace=True), torchcv_ext.nn.Hardsigmoid)
    assert "fused=True" in repr(s)
    # wrapping keeps (shares) the torchvision weights
    w = SqueezeExcite.from_modules(tv)
    assert w.fc1.weight is tv.fc1.weight
    assert_close(w(x), tv(x), torch.float32)
    # an activation the op cannot express falls back to the eager composition
    e = SqueezeExcite(32, 8, nn.Mish)
    e.load_state_dict(tv.state_dict())
    tv_mish = torchvision.ops.SqueezeExcitation(32, 8, nn.Mish)
    tv_mish.load_state_dict(tv.state_dict())
    assert "fused=False" in repr(e)
    assert_close(e(x), tv_mish(x), torch.float32)
    # GELU is one of the fused activations (torchcv_ext.activations)
    g = SqueezeExcite(32, 8, nn.GELU)
    g.load_state_dict(tv.state_dict())
    tv_gelu = torchvision.ops.SqueezeExcitation(32, 8, nn.GELU)
    tv_gelu.load_state_dict(tv.state_dict())
    assert "fused=True" in repr(g)
    assert_close(g(x), tv_gelu(x), torch.float32)


def test_module_bad_arguments():
    with pytest.raises(ValueError, match="unknown activation 'gelu2'"):
        SqueezeExcite(8, 2, activation="gelu2")
    with pytest.raises(ValueError, match="must be >= 1"):
        SqueezeExcite(0, 2)
    with pytest.raises(TypeError, match="has no 'fc1'"):
        SqueezeExcite.from_modules(nn.ReLU())


@pytest.mark.parametrize("device", DEVICES)
def test_bad_input(device):
    x = torch.randn(2, 8, 4, 4, device=device)
    w1, b1, w2, b2 = _params(8, 2, dtype=torch.float32, device=device)
    with pytest.raises(RuntimeError, match="x must have at least 3 dims"):
        squeeze_excite(x[0, 0], w1, b1, w2, b2)
    with pytest.raises(RuntimeError, match=r"w1 must have shape \(S, C\)"):
        squeeze_excite(x, w1[:, :5], b1, w2, b2)
    with pytest.raises(RuntimeError, match=r"w2 must have shape \(C, S\)"):
        squeeze_excite(x, w1, b1, w2[:, :1], b2)
    with pytest.raises(RuntimeError, match=r"b1 must have shape \(S,\)"):
        squeeze_excite(x, w1, b1[:1], w2, b2)
    with pytest.raises(RuntimeError, match=r"b2 must have shape \(C,\)"):
        squeeze_excite(x, w1, b1, w2, b2[:3])
    with pytest.raises(RuntimeError, match="w2 has dtype"):
        squeeze_excite(x, w1, b1, w2.double(), b2)
    with pytest.raises((RuntimeError, ValueError), match="unknown activation"):
        squeeze_excite(x, w1, b1, w2, b2, "swish", "sigmoid")
    with pytest.raises((RuntimeError, ValueError), match="unknown activation"):
        squeeze_excite(x, w1, b1, w2, b2, "relu", "tanh")
    with pytest.raises(ValueError, match="1x1 conv weight"):
        squeeze_excite(x, w1.view(2, 8, 1, 1).expand(2, 8, 3, 3), b1, w2, b2)
    with pytest.raises(RuntimeError, match="floating|float32, float16"):
        squeeze_excite(x.int(), w1.int(), b1.int(), w2.int(), b2.int())


@requires_ext
def test_bad_grad_shape():
    x = torch.randn(2, 8, 4, 4)
    g = torch.randn(2, 8, 4, 5)
    w1, b1, w2, b2 = _params(8, 2, dtype=torch.float32)
    with pytest.raises(RuntimeError, match="grad has shape"):
        torch.ops.torchcv_ext._squeeze_excite_backward(g, x, w1, b1, w2, b2, "relu", "sigmoid")


@pytest.mark.cuda
def test_bad_device_mix():
    x = torch.randn(2, 8, 4, 4, device="cuda")
    w1, b1, w2, b2 = _params(8, 2, dtype=torch.float32, device="cuda")
    with pytest.raises(RuntimeError, match="w1 is on cpu"):
        squeeze_excite(x, w1.cpu(), b1, w2, b2)


@pytest.mark.parametrize("builder", ["efficientnet_b0", "mobilenet_v3_small"])
def test_torchvision_models_with_fused_se(builder):
    """Swapping every SqueezeExcitation of a torchvision model for SqueezeExcite (from_modules)
    leaves the model's output unchanged."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, builder)(num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = model(x)
        swapped = 0
        for module in list(model.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, torchvision.ops.SqueezeExcitation):
                    setattr(module, name, SqueezeExcite.from_modules(child))
                    swapped += 1
        assert swapped > 0
        got = model(x)
    assert_close(got, want, torch.float32, scale=10.0)
