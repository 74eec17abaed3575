"""conv_bn_act_forward / FusedSequential / ConvBNAct (torchcv_ext/nn/conv_bn.py): every path
(training = eager modules, eval with autograd = differentiable fold + F.conv2d, eval inference on
the CPU = one pre-packed oneDNN call, and its F.conv2d fallback) against the eager
Conv2d -> BatchNorm2d -> activation (+ residual) modules."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from torchcv_ext.nn import FusedSequential, conv_bn_act_forward, fold_conv_bn
from torchcv_ext.nn.blocks import ConvBNAct
from torchcv_ext.ops import config

from testing import DEVICES

ACTS = {"identity": None, "relu": nn.ReLU, "relu6": nn.ReLU6, "hardswish": nn.Hardswish,
        "silu": nn.SiLU, "sigmoid": nn.Sigmoid, "hardsigmoid": nn.Hardsigmoid, "gelu": nn.GELU}


@pytest.fixture(params=[True, False], ids=["onednn", "conv2d"])
def onednn(request, monkeypatch):
    monkeypatch.setattr(config, "cpu_onednn_conv_bn", request.param)
    return request.param


def _layers(cin=12, cout=20, k=3, stride=1, groups=1, bias=False, device="cpu"):
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=bias).to(device)
    bn = nn.BatchNorm2d(cout).to(device)
    with torch.no_grad():  # non-trivial statistics and affine parameters
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    return conv, bn


def _eager(conv, bn, act, x, residual=None):
    y = bn(conv(x))
    if residual is not None:
        y = y + residual
    return act(y) if act is not None else y


@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("residual", [False, True])
def test_eval_inference_matches_eager(act, channels_last, residual, onednn):
    conv, bn = _layers()
    conv.eval(), bn.eval()
    a = ACTS[act]() if ACTS[act] else None
    x = torch.randn(3, 12, 9, 7)
    r = torch.randn(3, 20, 9, 7) if residual else None
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        want = _eager(conv, bn, a, x, r)
        got = conv_bn_act_forward(conv, bn, a, x, residual=r)
        again = conv_bn_act_forward(conv, bn, a, x, residual=r)  # cached fold / packed weight
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(again, got, atol=0, rtol=0)


@pytest.mark.parametrize("geom", [dict(k=1), dict(k=3, stride=2), dict(k=3, groups=4), dict(k=5, bias=True),
                                  dict(k=3, groups=12, cout=12)])  # last: depthwise -> fused dw op
@pytest.mark.parametrize("device", DEVICES)
def test_eval_geometries_and_devices(geom, device, onednn):
    conv, bn = _layers(device=device, **geom)
    conv.eval(), bn.eval()
    x = torch.randn(2, 12, 11, 10, device=device)
    with torch.no_grad():
        want = _eager(conv, bn, nn.ReLU(), x)
        got = conv_bn_act_forward(conv, bn, "relu", x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("hw", [(1, 1), (2, 1)])
@pytest.mark.parametrize("residual", [False, True])
def test_eval_tiny_spatial_with_residual(hw, residual, onednn):
    """1x1 outputs (EfficientNet/ResNet tails at small resolutions): torch 2.11's oneDNN binary
    conv raises on them; the fused path must fall back, not fail."""
    conv, bn = _layers(k=1)
    conv.eval(), bn.eval()
    x = torch.randn(2, 12, *hw)
    r = torch.randn(2, 20, *hw) if residual else None
    with torch.no_grad():
        want = _eager(conv, bn, nn.SiLU(), x, r)
        got = conv_bn_act_forward(conv, bn, nn.SiLU(), x, residual=r)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_onednn_rejection_falls_back_once(monkeypatch):
    """A oneDNN call that raises gives the plain conv's result, and that problem is not retried."""
    from torchcv_ext.nn import _fold
    monkeypatch.setattr(config, "cpu_onednn_conv_bn", True)
    monkeypatch.setattr(_fold, "_onednn_rejected", set())
    calls = []

    def reject(*args):
        calls.append(1)
        raise RuntimeError("could not create a memory")

    monkeypatch.setattr(_fold, "_onednn_conv", reject)
    conv, bn = _layers()
    conv.eval(), bn.eval()
    x, r = torch.randn(2, 12, 5, 5), torch.randn(2, 20, 5, 5)
    with torch.no_grad():
        want = _eager(conv, bn, nn.ReLU(), x, r)
        for _ in range(3):
            torch.testing.assert_close(conv_bn_act_forward(conv, bn, "relu", x, residual=r), want,
                                       atol=1e-5, rtol=1e-4)
    assert len(calls) == (1 if _fold._onednn_available() else 0)


def test_eval_with_autograd_gives_eager_gradients():
    conv, bn = _layers(bias=True)
    conv.eval(), bn.eval()
    x = torch.randn(2, 12, 8, 8, requires_grad=True)
    r = torch.randn(2, 20, 8, 8, requires_grad=True)
    want = _eager(conv, bn, nn.SiLU(), x, r)
    g = torch.randn_like(want)
    grads_want = torch.autograd.grad(want, [x, r, conv.weight, conv.bias, bn.weight, bn.bias], g)
    got = conv_bn_act_forward(conv, bn, nn.SiLU(), x, residual=r)
    grads_got = torch.autograd.grad(got, [x, r, conv.weight, conv.bias, bn.weight, bn.bias], g)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    for a, b in zip(grads_got, grads_want):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_frozen_backbone_in_eval_still_trains_the_head():
    """Transfer learning with a frozen, eval-mode backbone: no grad needed for the frozen conv,
    but the input may require grad (a trainable layer before it)."""
    conv, bn = _layers()
    for p in list(conv.parameters()) + list(bn.parameters()):
        p.requires_grad_(False)
    conv.eval(), bn.eval()
    x = torch.randn(2, 12, 6, 6, requires_grad=True)
    y = conv_bn_act_forward(conv, bn, "relu", x)
    y.sum().backward()
    want = torch.autograd.grad(_eager(conv, bn, nn.ReLU(), x).sum(), x)[0]
    torch.testing.assert_close(x.grad, want)


def test_training_mode_is_exactly_eager_and_updates_running_stats():
    conv, bn = _layers()
    conv2, bn2 = copy.deepcopy(conv), copy.deepcopy(bn)
    x = torch.randn(4, 12, 7, 7)
    r = torch.randn(4, 20, 7, 7)
    for _ in range(3):
        got = conv_bn_act_forward(conv, bn, nn.ReLU(), x, residual=r)
        want = _eager(conv2, bn2, nn.ReLU(), x, r)
        torch.testing.assert_close(got, want, atol=0, rtol=0)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(bn, name), getattr(bn2, name), atol=0, rtol=0)


def test_fold_cache_follows_parameter_and_statistics_updates(onednn):
    conv, bn = _layers()
    conv.eval(), bn.eval()
    x = torch.randn(2, 12, 8, 8)
    with torch.no_grad():
        conv_bn_act_forward(conv, bn, "relu", x)
        bn.running_mean.add_(0.25)                 # in place (as a train step would)
        conv.weight.mul_(1.5)                      # in place (as an optimizer step would)
        got = conv_bn_act_forward(conv, bn, "relu", x)
        want = _eager(conv, bn, nn.ReLU(), x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    # load_state_dict copies in place, too.
    sd = {k: v * 0.5 if v.is_floating_point() else v for k, v in bn.state_dict().items()}
    bn.load_state_dict(sd)
    with torch.no_grad():
        torch.testing.assert_close(conv_bn_act_forward(conv, bn, "relu", x), _eager(conv, bn, nn.ReLU(), x),
                                   atol=1e-5, rtol=1e-4)
    # A different input shape (new packed weight) and an empty batch.
    with torch.no_grad():
        x2 = torch.randn(1, 12, 5, 13)
        torch.testing.assert_close(conv_bn_act_forward(conv, bn, "relu", x2), _eager(conv, bn, nn.ReLU(), x2),
                                   atol=1e-5, rtol=1e-4)
        assert conv_bn_act_forward(conv, bn, "relu", torch.randn(0, 12, 5, 5)).shape == (0, 20, 5, 5)


def test_fold_conv_bn_is_the_eval_conv():
    conv, bn = _layers(bias=True)
    bn.eval()
    w, b = fold_conv_bn(conv, bn)
    x = torch.randn(2, 12, 6, 6)
    torch.testing.assert_close(torch.nn.functional.conv2d(x, w, b, padding=1), bn(conv(x)), atol=1e-5, rtol=1e-4)


def test_fused_sequential_keeps_the_sequential_layout_and_function():
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
              nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8),      # dw, no act
              nn.MaxPool2d(2), nn.Conv2d(8, 4, 1), nn.GELU(),                             # no BN: as is
              nn.Conv2d(4, 6, 1, bias=False), nn.BatchNorm2d(6), nn.Mish()]                # unfused act
    plain = nn.Sequential(*layers)
    fused = FusedSequential(*copy.deepcopy(layers))
    assert list(fused.state_dict()) == list(plain.state_dict())
    fused.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 10, 10)
    for mode in ("train", "eval"):
        getattr(plain, mode)(), getattr(fused, mode)()
        with torch.no_grad():
            torch.testing.assert_close(fused(x), plain(x), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(fused.state_dict()["1.running_mean"], plain.state_dict()["1.running_mean"])
    # Replacing a child is picked up (the run plan is rebuilt).
    fused[2] = nn.Hardswish()
    plain[2] = nn.Hardswish()
    with torch.no_grad():
        torch.testing.assert_close(fused(x), plain(x), atol=1e-5, rtol=1e-4)


def test_conv_bn_act_is_a_fused_sequential_with_torchvision_keys():
    from torchvision.ops import Conv2dNormActivation
    tv = Conv2dNormActivation(8, 16, 3, activation_layer=nn.Hardswish).eval()
    ours = ConvBNAct(8, 16, 3, activation=nn.Hardswish).eval()
    ours.load_state_dict(tv.state_dict())
    x = torch.randn(2, 8, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x), atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_torch_compile_fullgraph_eval():
    m = ConvBNAct(8, 16, 3, activation=nn.SiLU).eval()
    x = torch.randn(2, 8, 9, 9)
    with torch.no_grad():
        want = m(x)
        got = torch.compile(m, fullgraph=True)(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_onednn_path_is_available_on_this_build():
    """The fused CPU path uses torch's private oneDNN ops; notice when a torch release drops them."""
    from torchcv_ext.nn import _fold
    if not torch.backends.mkldnn.is_available():
        pytest.skip("torch built without oneDNN")
    assert _fold._onednn_available()
