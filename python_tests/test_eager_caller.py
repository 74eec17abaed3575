"""The ops' eager caller (torchcv_ext/ops/_common.py: OPS, _eager_caller): in eager calls the
functional ops reach their kernels without torch.library's Python autograd layer, through a plain
autograd.Function made of the same setup_context / backward. It must compute exactly what the op
through the dispatcher computes -- outputs, gradients, double backward -- hand autocast and graph
capture to the op itself, and forward-mode AD and torch.func transforms to the op's reference."""
import pytest
import torch

import torchcv_ext
from torchcv_ext.ops import _common

pytestmark = pytest.mark.skipif(not torchcv_ext.extension_loaded(), reason="needs the compiled extension")


def _leaf(*shape, cl=False):
    t = torch.randn(*shape, dtype=torch.float32)
    if cl:
        t = t.contiguous(memory_format=torch.channels_last)
    return t.requires_grad_()


# op name -> builder of (differentiable leaves, the op's full argument list)
def _activation():
    x = _leaf(2, 5, 3, 3, cl=True)
    return [x], [x, "hardsigmoid"]


def _dwconv_train():
    x, w, bw, bb = _leaf(3, 6, 7, 5), _leaf(6, 1, 3, 3), _leaf(6), _leaf(6)
    return [x, w, bw, bb], [x, w, bw, bb, 1e-5, [2, 1], [1, 1], [1, 1], "hardswish"]


def _dwconv_eval():
    x, w, scale, shift = _leaf(2, 4, 6, 6, cl=True), _leaf(4, 1, 3, 3), _leaf(4), _leaf(4)
    return [x, w, scale, shift], [x, w, scale, shift, [1, 1], [1, 1], [1, 1], "silu"]


def _squeeze_excite():
    x, w1, b1, w2, b2 = _leaf(2, 8, 5, 5), _leaf(3, 8), _leaf(3), _leaf(8, 3), _leaf(8)
    return [x, w1, b1, w2, b2], [x, w1, b1, w2, b2, "relu", "hardsigmoid"]


def _shuffle_cat():
    a, b = _leaf(2, 3, 4, 4), _leaf(2, 3, 4, 4)
    return [a, b], [a, b]


def _channel_shuffle():
    x = _leaf(2, 6, 3, 3, cl=True)
    return [x], [x, 3]


CASES = {"activation": _activation, "dwconv_bn_act_train": _dwconv_train,
         "dwconv_bn_act": _dwconv_eval, "squeeze_excite": _squeeze_excite,
         "shuffle_cat": _shuffle_cat, "channel_shuffle": _channel_shuffle}


def _run(fn, leaves, args, grad_outputs=None):
    outs = fn(*args)
    outs = outs if isinstance(outs, (tuple, list)) else (outs,)
    diff = [o for o in outs if o.requires_grad]
    if grad_outputs is None:
        gen = torch.Generator().manual_seed(1)
        grad_outputs = [torch.randn(o.shape, generator=gen) for o in diff]
    grads = torch.autograd.grad(diff, leaves, grad_outputs, allow_unused=True)
    return outs, grads, grad_outputs


@pytest.mark.parametrize("name", sorted(CASES))
def test_eager_caller_matches_the_op(name):
    torch.manual_seed(0)
    leaves, args = CASES[name]()
    op = getattr(torch.ops.torchcv_ext, name)
    caller = getattr(_common.OPS, name)
    outs, grads, gos = _run(op, leaves, args)
    outs2, grads2, _ = _run(caller, leaves, args, gos)
    for a, b in zip(outs, outs2):
        assert torch.equal(a, b) and a.stride() == b.stride()
    for a, b in zip(grads, grads2):
        assert (a is None and b is None) or torch.equal(a, b)
    # The eager caller's own Function, not torch.library's generated one.
    assert type(outs2[0].grad_fn).__name__ == f"{name}_eagerBackward"
    assert "GeneratedBackwardFor" in type(outs[0].grad_fn).__name__
    # Nothing needs a gradient: the kernel below autograd, same result, no graph.
    with torch.no_grad():
        plain = caller(*args)
    plain = plain if isinstance(plain, (tuple, list)) else (plain,)
    assert all(torch.equal(a, b) and b.grad_fn is None for a, b in zip(outs, plain))


@pytest.mark.parametrize("name", ["activation", "dwconv_bn_act_train"])
def test_eager_caller_double_backward(name):
    """create_graph through the caller's Function: its backward calls the backward ops through the
    caller too, which then take the op (whose autograd is the exact double backward)."""
    torch.manual_seed(0)
    leaves, args = CASES[name]()
    results = []
    for fn in (getattr(torch.ops.torchcv_ext, name), getattr(_common.OPS, name)):
        out = fn(*args)
        y = out[0] if isinstance(out, (tuple, list)) else out
        g = torch.autograd.grad((y * y).sum(), leaves[0], create_graph=True)[0]
        results.append(torch.autograd.grad((g * g).sum(), leaves)[0])
    assert torch.allclose(results[0], results[1], rtol=1e-5, atol=1e-6)


def test_eager_caller_hands_autocast_to_the_op():
    leaves, args = _dwconv_train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = _common.OPS.dwconv_bn_act_train(*args)[0]
        want = torch.ops.torchcv_ext.dwconv_bn_act_train(*args)[0]
    assert y.dtype == torch.bfloat16 and torch.equal(y, want)
    assert "GeneratedBackwardFor" in type(y.grad_fn).__name__


def test_torch_func_transforms_take_the_reference():
    """torch.func.grad / vmap / jvp through the public functions: the reference's math (the op's
    torch.library Function cannot run under functorch), equal to the op's own results."""
    torch.manual_seed(0)
    from torchcv_ext import ops

    x = torch.randn(2, 5, 4, 4)
    g = torch.func.grad(lambda t: (ops.activation(t, "hardsigmoid") * x).sum())(x)
    torch.testing.assert_close(g, x * ((x > -3) & (x < 3)) / 6)
    # Per-sample gradients of a depthwise train layer (vmap of grad), against a loop.
    w, bw, bb = torch.randn(5, 1, 3, 3), torch.rand(5) + 0.5, torch.randn(5)
    xs = torch.randn(3, 2, 5, 6, 6)

    def loss(weight, xb):
        return ops.dwconv_bn_act_train(xb, weight, bw, bb, 1e-5, 1, 1, 1, "silu")[0].square().sum()

    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(w, xs)
    for i in range(xs.shape[0]):
        wi = w.clone().requires_grad_()
        (want,) = torch.autograd.grad(loss(wi, xs[i]), wi)
        torch.testing.assert_close(per_sample[i], want, rtol=1e-4, atol=1e-5)
    # jvp of the SE op against its reference.
    _, args = _squeeze_excite()
    args = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
    t = torch.randn_like(args[0])
    _, got = torch.func.jvp(lambda xx: ops.squeeze_excite(xx, *args[1:]), (args[0],), (t,))
    _, want = torch.func.jvp(lambda xx: _common.REFERENCES["squeeze_excite"](xx, *args[1:]), (args[0],), (t,))
    torch.testing.assert_close(got, want)


def test_eager_caller_under_compile_is_the_op():
    x = torch.randn(2, 4, 3, 3, requires_grad=True)
    y = torch.compile(lambda t: _common.OPS.activation(t, "hardsigmoid"), fullgraph=True, backend="eager")(x)
    assert "eager" not in type(y.grad_fn).__name__
    assert torch.equal(y, torch.ops.torchcv_ext.activation(x, "hardsigmoid"))


@pytest.mark.parametrize("name", ["activation", "dwconv_bn_act_train", "squeeze_excite"])
def test_forward_ad_takes_the_reference(name):
    """The ops have no forward derivative: a dual input gets the reference's tangent, not none."""
    import torch.autograd.forward_ad as fwAD

    _, args = CASES[name]()
    args = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
    x, rest = args[0], args[1:]
    t = torch.randn_like(x)

    def first(out):
        return out[0] if isinstance(out, (tuple, list)) else out

    _, want = torch.func.jvp(lambda xx: first(_common.REFERENCES[name](xx, *rest)), (x,), (t,))
    with fwAD.dual_level():
        got = fwAD.unpack_dual(first(getattr(_common.OPS, name)(fwAD.make_dual(x, t), *rest))).tangent
    assert got is not None
    torch.testing.assert_close(got, want)


def test_torch_func_per_sample_gradients_of_a_model():
    """Per-sample gradients (torch.func.functional_call + vmap(grad), as Opacus-style code does) of
    a torchcv_ext model in eval mode equal torchvision's, and plain calls stay right afterwards."""
    import torchvision

    from torchcv_ext.models import create_model

    torch.manual_seed(0)
    tv = torchvision.models.mobilenet_v3_small(num_classes=4).eval()
    ours = create_model("mobilenet_v3_small", num_classes=4).eval()
    ours.load_state_dict(tv.state_dict())
    x, y = torch.randn(2, 3, 48, 48), torch.tensor([1, 3])

    def per_sample(model):
        params = {k: v.detach() for k, v in model.named_parameters()}
        buffers = dict(model.named_buffers())

        def loss(p, xi, yi):
            out = torch.func.functional_call(model, (p, buffers), (xi[None],))
            return torch.nn.functional.cross_entropy(out, yi[None])

        return torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(params, x, y)

    want, got = per_sample(tv), per_sample(ours)
    assert want.keys() == got.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x), rtol=1e-4, atol=1e-5)
