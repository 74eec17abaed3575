"""Adversarial input for every op and entry point (issue 26): each case asserts either the eager
PyTorch result or a clear error naming the problem. Tiny tensors; the one 2^28-element reduction
per op uses expanded (stride-0) views the kernels read in place, so nothing large is allocated."""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from torchcv_ext import activations, ops
from testing import DEVICES, assert_same_nonfinite, requires_ext

pytestmark = requires_ext

F64 = torch.float64


def _t(*shape, dtype=F64, grad=True):
    return torch.randn(*shape, dtype=dtype).requires_grad_(grad)


@pytest.fixture
def kernels(monkeypatch):
    """The depthwise train op on its C++ kernels (float64 / autocast inputs otherwise run eager)."""
    monkeypatch.setattr(ops.config, "dwconv_cpu_train_backend", "kernels")


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


# ---- boundary: devices, dtypes, ranks, sizes, types ------------------------------------------

T = torch.ops.torchcv_ext


def _raw_cases():
    """Every raw op (backward ops included) with valid tiny float32 CPU arguments."""
    r = torch.randn
    x, w, c = r(2, 4, 5, 5), r(4, 1, 3, 3), r(4)
    q = r(1, 2, 3, 8)
    out, lse = T.attention(q, q, q, None)
    se = (r(2, 4), r(2), r(4, 2), r(4))
    conv = ([1, 1], [1, 1], [1, 1])
    return {
        "dwconv_bn_act": (x, w, c, c, *conv, "relu"),
        "dwconv_bn_stats": (x, w, *conv),
        "dwconv_bn_act_train": (x, w, c, c, 1e-5, *conv, "relu"),
        "scale_shift_act": (x, c, c, "relu", c),
        "_scale_shift_act_backward": (x, x, c, c, "relu", c, True),
        "_dwconv_bn_stats_backward": (x, c, c, x, x, c, w, *conv, c, c, "relu"),
        "squeeze_excite": (x, *se, "relu", "sigmoid"),
        "_squeeze_excite_backward": (x, x, *se, "relu", "sigmoid"),
        "_activation_backward": (x, x, "hardswish"),
        "shuffle_cat": (x, x),
        "shuffle_cat_split": (x, x),
        "_shuffle_cat_backward": (x, x),
        "attention": (q, q, q, None),
        "_attention_backward": (q, q, q, q, out, lse, None),
    }


RAW = _raw_cases()


@pytest.mark.parametrize("op, pos", [(op, i) for op, args in RAW.items()
                                     for i, a in enumerate(args) if isinstance(a, torch.Tensor)])
def test_raw_op_rejects_a_meta_tensor_among_cpu_tensors(op, pos):
    """The dispatcher sends a call with any meta tensor to the Meta kernel; it must not compute a
    meta result from CPU tensors (backward ops: a gradient on another device)."""
    args = list(RAW[op])
    args[pos] = args[pos].to("meta")
    with pytest.raises(RuntimeError, match=r"is on (meta|cpu) but \w+ is on (cpu|meta)"):
        getattr(T, op)(*args)


@pytest.mark.parametrize("op", sorted(RAW))
def test_raw_op_all_meta_is_fine(op):
    getattr(T, op)(*[a.to("meta") if isinstance(a, torch.Tensor) else a for a in RAW[op]])


@pytest.mark.parametrize("kw, match", [
    (dict(stride="12"), r"stride must be an int or a sequence of 2 ints, got '12' \(str\)"),
    (dict(stride=1.5), r"stride must be .* got 1.5 \(float\)"),
    (dict(padding="x"), r"padding must be .* got 'x' \(str\)"),
    (dict(padding=[1.0, 1]), r"padding must be"),
    (dict(dilation=True), r"dilation must be .* \(bool\)"),
    (dict(padding=(1, 2, 3)), r"padding must be .* got 3 values"),
])
@pytest.mark.parametrize("train", [False, True])
def test_dwconv_size_arguments_are_ints(kw, match, train):
    x, w, c = torch.randn(2, 2, 5, 5), torch.randn(2, 1, 3, 3), torch.randn(2)
    err = ValueError if "values" in match else TypeError
    with pytest.raises(err, match=match):
        if train:
            ops.dwconv_bn_act_train(x, w, c, c, **kw)
        else:
            ops.dwconv_bn_act(x, w, c, c, **kw)


def test_channel_shuffle_groups_is_an_int():
    with pytest.raises(TypeError, match="groups must be an int, got 2.0"):
        ops.channel_shuffle(torch.randn(1, 4, 2), 2.0)
    with pytest.raises(TypeError, match="groups must be an int, got '2'"):
        ops.channel_shuffle(torch.randn(1, 4, 2), "2")


@pytest.mark.parametrize("case, match", [
    ("int_x", "must be float32, float16, bfloat16 or float64"),
    ("rank3_x", "must be 4-D"),
    ("weight_shape", r"weight must have shape \(C, 1, kh, kw\)"),
    ("scale_shape", r"scale must have shape \(4,\)"),
    ("empty_out", "the output would be empty"),
    ("activation", "unknown activation 'mish'"),
    ("weight_dtype", r"weight has dtype (Double|torch.float64) but the input has dtype (Float|torch.float32)"),
])
def test_dwconv_clear_errors(case, match):
    x, w, c = torch.randn(2, 4, 5, 5), torch.randn(4, 1, 3, 3), torch.randn(4)
    args = dict(x=x, weight=w, scale=c, shift=c, padding=1, activation="relu")
    args.update({"int_x": dict(x=x.int()), "rank3_x": dict(x=x[0]), "weight_shape": dict(weight=w[:3]),
                 "scale_shape": dict(scale=c[:3]), "empty_out": dict(x=x[..., :1, :1], padding=0),
                 "activation": dict(activation="mish"), "weight_dtype": dict(weight=w.double())}[case])
    with pytest.raises((RuntimeError, ValueError), match=match):
        ops.dwconv_bn_act(**args)
    if case == "weight_dtype":  # the train op, and the fake kernel (meta tensors, torch.compile)
        with pytest.raises(RuntimeError, match=match):
            ops.dwconv_bn_act_train(x, w.double(), c, c, 1e-5, 1, 1)
        with pytest.raises(RuntimeError, match=match):
            torch.ops.torchcv_ext.dwconv_bn_act(x.to("meta"), w.double().to("meta"), c.to("meta"),
                                                c.to("meta"), [1, 1], [1, 1], [1, 1], "relu")


@pytest.mark.parametrize("case, match", [
    ("int_x", "x must be float32, float16, bfloat16 or float64"),
    ("rank2_x", "x must have at least 3 dims"),
    ("w1_shape", r"w1 must have shape \(S, C\)"),
    ("b2_dtype", r"b2 has dtype (Double|torch.float64) but the input has dtype (Float|torch.float32)"),
])
def test_squeeze_excite_clear_errors(case, match):
    x, w1, b1, w2, b2 = torch.randn(2, 4, 3, 3), torch.randn(2, 4), torch.randn(2), torch.randn(4, 2), torch.randn(4)
    a = dict(x=x, w1=w1, b1=b1, w2=w2, b2=b2)
    a.update({"int_x": dict(x=x.int()), "rank2_x": dict(x=x[:, :, 0, 0]), "w1_shape": dict(w1=w1.t()),
              "b2_dtype": dict(b2=b2.double())}[case])
    with pytest.raises(RuntimeError, match=match):
        ops.squeeze_excite(**a)


@pytest.mark.parametrize("case, match", [
    ("rank3", "must be 4-D"), ("dtype", "k has dtype (Double|torch.float64)"), ("seq", "same seq_len"),
    ("head_dim", "does not match q"),
])
def test_attention_clear_errors(case, match):
    q = torch.randn(1, 2, 3, 8)
    args = {"rank3": (q[0], q, q), "dtype": (q, q.double(), q), "seq": (q, q, q[:, :, :2]),
            "head_dim": (q, q[..., :4], q)}[case]
    with pytest.raises(RuntimeError, match=match):
        ops.attention(*args)


# ---- training CLI: each failure says what is wrong, nothing is lost ---------------------------

@pytest.mark.parametrize("argv, match", [
    (["--limit", "0"], "--limit: must be at least 1, got 0"),
    (["--val-split", "1"], "--val-split: must be between 0 and 1"),
    (["--val-split", "0"], "--val-split: must be between 0 and 1"),
])
def test_cli_rejects_bad_arguments(capsys, argv, match):
    from torchcv_ext import train
    with pytest.raises(SystemExit):
        train.parse_args(argv)
    assert match in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without a GPU")
def test_cli_device_cuda_without_gpu():
    from torchcv_ext import train
    with pytest.raises(SystemExit, match="--device cuda: no CUDA GPU is available.*use --device cpu"):
        train.main(["--device", "cuda", "--no-progress"])
    with pytest.raises(SystemExit, match="--device gpu0: not a device name"):
        train.main(["--device", "gpu0", "--no-progress"])


@pytest.mark.parametrize("kind, match", [
    ("missing", "no such file"),
    ("truncated", r"not a readable checkpoint \(corrupt or truncated\?"),
    ("garbage", r"not a readable checkpoint \(corrupt or truncated\?"),
    ("state_dict", "plain state_dict .* --weights"),
    ("other", "not a checkpoint of this script"),
])
def test_cli_resume_bad_checkpoint_keeps_existing_checkpoints(tmp_path, kind, match):
    from torchcv_ext import train
    out = tmp_path / "run"
    out.mkdir()
    last = out / "last.pt"
    train.save_atomic({"model": {"w": torch.ones(2)}, "epoch": 3}, str(last))
    before = last.read_bytes()
    bad = tmp_path / "bad.pt"
    if kind == "truncated":
        bad.write_bytes(before[: len(before) // 2])
    elif kind == "garbage":
        bad.write_bytes(b"not a checkpoint at all")
    elif kind == "state_dict":
        torch.save(torch.nn.Linear(2, 2).state_dict(), bad)
    elif kind == "other":
        torch.save({"epoch": 1}, bad)
    with pytest.raises(SystemExit, match=match):
        train.main(["--resume", str(bad), "--out", str(out), "--no-progress"])
    assert last.read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["last.pt"]


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    """A crash while writing leaves the previous last.pt intact and no temporary file behind."""
    from torchcv_ext import train
    path = tmp_path / "last.pt"
    train.save_atomic({"epoch": 1}, str(path))

    def crash(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"half a check")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        train.save_atomic({"epoch": 2}, str(path))
    monkeypatch.undo()
    assert torch.load(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


# ---- modules: constructor sizes and forward shapes -------------------------------------------

@pytest.mark.parametrize("build, err, match", [
    ("MultiheadSelfAttention(-4, 2)", ValueError, "MultiheadSelfAttention: dim must be >= 1, got -4"),
    ("MultiheadSelfAttention(0, 2)", ValueError, "dim must be >= 1, got 0"),
    ("MultiheadSelfAttention(8, 0)", ValueError, "num_heads must be >= 1, got 0"),
    ("MultiheadSelfAttention(8.0, 2)", TypeError, "dim must be an int"),
    ("DWConvBNAct(4, kernel_size=-1)", ValueError, r"DWConvBNAct: kernel_size must be >= 1, got \(-1, -1\)"),
    ("DWConvBNAct(4, stride=0)", ValueError, r"stride must be >= 1, got \(0, 0\)"),
    ("DWConvBNAct(4, dilation=(1, 0))", ValueError, r"dilation must be >= 1"),
    ("DWConvBNAct(4, stride='2')", TypeError, "stride must be an int or a sequence of 2 ints"),
    ("DWConvBNAct(0)", ValueError, "channels must be >= 1"),
    ("SqueezeExcite(4, -1)", ValueError, "squeeze_channels must be >= 1"),
    ("ChannelShuffle(0)", ValueError, "groups must be >= 1"),
    ("blocks.PatchEmbed(32, 8, 3, -1)", ValueError, "PatchEmbed: embed_dim must be >= 1, got -1"),
    ("blocks.PatchEmbed(32, 0)", ValueError, "patch_size must be >= 1"),
])
def test_module_constructor_sizes(build, err, match):
    from torchcv_ext import nn as tnn
    from torchcv_ext.nn import blocks  # noqa: F401
    with pytest.raises(err, match=match):
        eval(build, {**vars(tnn), "blocks": blocks})


@pytest.mark.parametrize("train", [True, False])
def test_module_forward_wrong_channels(train):
    from torchcv_ext import nn as tnn
    m = tnn.DWConvBNAct(4).train(train)
    with pytest.raises(ValueError, match=r"DWConvBNAct: expected \(N, 4, H, W\) input, got shape \(1, 5, 8, 8\)"):
        m(torch.randn(1, 5, 8, 8))
    with pytest.raises(RuntimeError, match=r"squeeze_excite: w1 must have shape \(S, C\) = \(S, 5\)"):
        tnn.SqueezeExcite(4, 2)(torch.randn(1, 5, 3, 3))


def test_attention_modules_embed_dim_mismatch():
    from torchcv_ext import nn as tnn
    x = torch.randn(1, 3, 6)
    with pytest.raises(ValueError, match=r"expected input of shape \(B, N, 8\), got \(1, 3, 6\)"):
        tnn.MultiheadSelfAttention(8, 2)(x)
    with pytest.raises(AssertionError, match="expecting embedding dimension of 8, but got 6"):
        tnn.FusedMultiheadAttention(8, 2, batch_first=True)(x, x, x, need_weights=False)


# ---- NaN and +-Inf propagate as in eager PyTorch ----------------------------------------------
# "As eager", per op: the same composition of eager PyTorch ops on the same dtype and device
# (an Inf / NaN weight: see _dw_eval) -- depthwise: F.conv2d,
# then BatchNorm -- train mode by its definition (z - mean) / sqrt(var + eps) * gamma + beta, which
# eager computes on CUDA; eager's CPU kernel folds it into z * a + b and can turn a +-Inf into NaN
# -- then the activation; SE: torchvision's SqueezeExcitation; attention: eager SDPA, whose CPU
# flash kernel the op runs on the CPU (it gives finite rows for some NaN / Inf scores, where the
# math composition gives NaN; the CUDA kernels follow the math composition: attention.h, checked
# by test_attention.py::test_cuda_nonfinite_as_eager and the CUDA emulator's cases)).
# Equal: NaN at the same positions, +-Inf at the same positions with the same signs.

ACTS = activations.NAMES


def _act(name, t):
    # In float64: eager's float32 vectorized GELU turns gelu(+inf) into NaN, float64 (and the
    # kernels) give +inf.
    return activations.forward(name, t.double()).to(t.dtype)


def _dw_eval(x, w, sc, sh, act):
    y = ops.dwconv_bn_act(x, w, sc, sh, 1, 1, 1, act)
    e = _act(act, F.conv2d(x, w, None, 1, 1, 1, x.shape[1]) * sc[:, None, None] + sh[:, None, None])
    if not w.isfinite().all():
        # A padding tap times an Inf / NaN weight: NaN in eager's im2col / float64 / cuDNN paths,
        # skipped (finite) by eager's float32 CPU depthwise kernel -- eager itself differs, and
        # so do our kernels' paths; the outputs whose window lies inside the input must agree.
        return y[..., 1:-1, 1:-1], e[..., 1:-1, 1:-1]
    return y, e


def _dw_train(x, w, g, b, act):
    y, mean, var = ops.dwconv_bn_act_train(x, w, g, b, 1e-5, 1, 1, 1, act)
    z = F.conv2d(x, w, None, 1, 1, 1, x.shape[1])
    m, v = z.mean((0, 2, 3)), z.var((0, 2, 3), unbiased=False)
    e = (z - m[:, None, None]) / (v[:, None, None] + 1e-5).sqrt() * g[:, None, None] + b[:, None, None]
    return (y, mean, var), (_act(act, e), m, v)


def _se(x, w1, b1, w2, b2, act):
    p = x.double().mean((2, 3))
    s = torch.sigmoid(F.linear(_act(act, F.linear(p, w1.double(), b1.double())), w2.double(), b2.double()))
    return ops.squeeze_excite(x, w1, b1, w2, b2, act, "sigmoid"), x.double() * s[:, :, None, None]


def _attention(q, k, v, act):
    return ops.attention(q, k, v), F.scaled_dot_product_attention(q, k, v)


NONFINITE = {
    "dwconv_bn_act": (_dw_eval, lambda: (torch.randn(2, 3, 5, 5), torch.randn(3, 1, 3, 3), torch.randn(3),
                                         torch.randn(3)), ACTS),
    "dwconv_bn_act_train": (_dw_train, lambda: (torch.randn(2, 3, 5, 5), torch.randn(3, 1, 3, 3),
                                                torch.randn(3), torch.randn(3)), ACTS),
    "dwconv_bn_act[channels_last, 16 channels]": (
        _dw_eval, lambda: (torch.randn(2, 16, 4, 4).to(memory_format=torch.channels_last),
                           torch.randn(16, 1, 3, 3), torch.randn(16), torch.randn(16)), ("relu", "silu")),
    "dwconv_bn_act_train[channels_last, 16 channels]": (
        _dw_train, lambda: (torch.randn(2, 16, 4, 4).to(memory_format=torch.channels_last),
                            torch.randn(16, 1, 3, 3), torch.randn(16), torch.randn(16)), ("relu", "silu")),
    "squeeze_excite": (_se, lambda: (torch.randn(2, 4, 3, 3), torch.randn(2, 4), torch.randn(2),
                                     torch.randn(4, 2), torch.randn(4)), ("relu", "silu", "hardswish")),
    "attention": (_attention, lambda: (torch.randn(1, 2, 3, 8), torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8)),
                  ("identity",)),
    "activation": (lambda x, act: (ops.activation(x.detach().requires_grad_(), act),  # the op, not eager inference
                                   activations.forward(act, x.double())),
                   lambda: (torch.randn(2, 3, 4),), ACTS),
    "channel_shuffle": (lambda x, act: (ops.channel_shuffle(x, 3), F.channel_shuffle(x.double(), 3)),
                        lambda: (torch.randn(2, 6, 4),), ("identity",)),
}


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("op", sorted(NONFINITE))
def test_nonfinite_propagate_as_eager(kernels, op, value):
    fn, make, acts = NONFINITE[op]
    n_inputs = len(make())
    for act in acts:
        for pos in range(n_inputs):
            for where in (0, -1):  # a corner (padding reaches it) and the last element
                torch.manual_seed(pos)
                args = list(make())
                t = args[pos]
                t.as_strided((t.numel(),), (1,))[where] = value  # dense storage, any layout
                got, want = fn(*args, act)
                for g, w in zip(*((got, want) if isinstance(got, tuple) else ((got,), (want,)))):
                    try:
                        assert_same_nonfinite(g, w)
                    except AssertionError as e:
                        raise AssertionError(f"{op} act={act} input {pos} [{where}] = {value}: {e}") from None


# ---- huge reductions: a constant 3.0 plane of 2^28 pixels has mean 3.0 ------------------------
# The kernels copy stride-0 inputs to a dense layout, so this allocates the plane (1 GiB per
# tensor): one slow case per op and layout. NCHW: one 2^28-pixel plane; channels_last: 16 channels
# of 2^24 pixels (SE's channels_last sums run per chunk of pixels across channels). On a GPU: the
# CUDA kernels' Welford partials and chunked sums.

@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels, layout", [(1, torch.contiguous_format), (16, torch.channels_last)],
                         ids=["nchw", "channels_last"])
def test_huge_plane_mean_is_exact(kernels, device, channels, layout):
    side = 2 ** 14 // int(channels ** 0.5)
    x = torch.full((1, channels, side, side), 3.0, device=device).contiguous(memory_format=layout)
    one = torch.ones(channels, device=device)
    w = torch.ones(channels, 1, 1, 1, device=device)
    y, mean, var = ops.dwconv_bn_act_train(x, w, one, one * 0, 1e-5, 1, 0, 1, "identity")
    assert torch.allclose(mean.cpu(), torch.full((channels,), 3.0), rtol=1e-6, atol=0), mean
    assert var.abs().max().item() < 1e-6, var
    del y
    # SE with identity MLP: y = x * (mean_hw(x) - 3), zero exactly when the pooled mean is 3.
    eye = torch.eye(channels, device=device)
    y = ops.squeeze_excite(x, eye, one * 0, eye, one * -3, "identity", "identity")
    assert y.abs().max().item() < 1e-4


# ---- models: an input the network cannot take is named in the user's terms --------------------
# ClassifierModel.__call__ translates the error of an eager forward (explain_bad_input): the model,
# the input's shape and what it expects. The sweep runs on meta-device models (no weights, no
# compute; the smallest size is searched on meta tensors too): about 10 s for every model.

from torchcv_ext.models import create_model, list_models  # noqa: E402
from torchcv_ext.models._base import ClassifierModel  # noqa: E402

#: Smallest H = W each model accepts (1: any non-empty image). ViT and HybridSN take one size only.
MIN_SIZE = {"alexnet": 63, "zfnet": 53, "googlenet": 15, "inception_v3": 75, "lenet": 16,
            "vit_tiny_patch16": 224, "vit_small_patch16": 224, "hybridsn": 25,
            **{n: 32 for n in list_models("vgg*")}}
CHANNELS = {"hybridsn": 30}  # HybridSN's channels are its spectral bands


def _meta_model(name):
    with torch.device("meta"):
        return create_model(name, num_classes=2).eval()


@pytest.mark.parametrize("name", list_models())
def test_model_bad_input_is_named(name):
    model, s, c = _meta_model(name), MIN_SIZE.get(name, 1), CHANNELS.get(name, 3)
    meta = dict(device="meta")
    model(torch.empty(1, c, s, s, **meta))  # the smallest input runs
    who = "HybridSN" if name == "hybridsn" else name
    for shape in ((1, c, s - 1, s + 3), (1, c, s + 3, s - 1)):
        with pytest.raises(ValueError) as info:
            model(torch.empty(shape, **meta))
        msg = str(info.value)
        assert who in msg and str(shape) in msg and str(s) in msg, msg
    with pytest.raises(ValueError) as info:
        model(torch.empty(1, c + 1, s, s, **meta))
    msg = str(info.value)
    assert who in msg and str((1, c + 1, s, s)) in msg, msg
    if name != "hybridsn":
        assert f"expected {c} input channels (the in_chans it was built with), got {c + 1}" in msg
    with pytest.raises(ValueError) as info:
        model(torch.empty(c, s, s, **meta))
    msg = str(info.value)
    assert who in msg and str((c, s, s)) in msg, msg
    if name != "hybridsn":
        assert f"expected a 4-D input (N, {c}, H, W), got a 3-D tensor" in msg


def test_model_too_small_message():
    with pytest.raises(ValueError, match=re.escape(
            "VGG (vgg11_cifar): input of shape (1, 3, 16, 40) is too small: H and W must each be >= 32 "
            "(the smallest input it accepts is (1, 3, 32, 32))")) as info:
        _meta_model("vgg11_cifar")(torch.empty(1, 3, 16, 40, device="meta"))
    assert isinstance(info.value.__cause__, RuntimeError)  # torch's error, chained


@pytest.mark.parametrize("name", ["lenet", "googlenet", "alexnet", "resnet18"])
def test_model_minimum_size_runs_on_cpu(name):
    """The sizes of MIN_SIZE on real CPU kernels: the smallest runs, one pixel less is the
    ValueError."""
    torch.manual_seed(0)
    model, s = create_model(name, num_classes=2).eval(), MIN_SIZE.get(name, 1)
    with torch.no_grad():
        assert model(torch.randn(1, 3, s, s)).shape == (1, 2)
        with pytest.raises(ValueError, match=rf"input of shape \(1, 3, {s - 1}, {s}\) is too small: "
                                             rf"H and W must each be >= {s}"):
            model(torch.randn(1, 3, s - 1, s))


def test_model_wrong_in_chans():
    model = create_model("resnet18", num_classes=2, in_chans=1).eval()
    with pytest.raises(ValueError, match=re.escape(
            "ResNet (resnet18): expected 1 input channels (the in_chans it was built with), got 3: "
            "input of shape (2, 3, 8, 8)")):
        model(torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match=re.escape(
            "expected a 4-D input (N, 1, H, W), got a 3-D tensor of shape (1, 8, 8); add the batch dimension")):
        model(torch.randn(1, 8, 8))


def test_model_other_errors_pass_through():
    """Only the input's shape is translated: any other failure keeps torch's own error."""
    model = create_model("lenet", num_classes=2).eval()
    with pytest.raises(RuntimeError, match="should be the same|expected.*dtype|same dtype"):
        model(torch.randn(1, 3, 32, 32, dtype=torch.float64))


def test_every_registered_model_explains_bad_input():
    """The translation lives in ClassifierModel.__call__: every registered model derives from it."""
    for name in list_models():
        assert isinstance(_meta_model(name), ClassifierModel), name


def test_model_graph_capture_unchanged():
    """The error path leaves graph capture as it was: fx traces the model and a model nested in a
    traced module; torch.compile(fullgraph=True) captures it in one graph. (vgg11_cifar: most
    models do not fx-trace whole, with or without this, since their fused blocks branch on the input.)"""
    torch.manual_seed(0)
    model = create_model("vgg11_cifar", num_classes=2).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        for traced in (torch.fx.symbolic_trace(model), torch.fx.symbolic_trace(torch.nn.Sequential(model)),
                       torch.compile(model, fullgraph=True, backend="aot_eager")):
            torch.testing.assert_close(traced(x), expected)
