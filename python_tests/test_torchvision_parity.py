"""Parity with torchvision: our models load torchvision's state_dict with strict=True and give the
same outputs (eval) and the same gradients and BN statistics (train); ``torchcv_ext.convert``
keeps a torchvision model's function and state_dict. Random init only, no downloads."""
import copy

import pytest
import torch
from torch import nn

import torchcv_ext
from torchcv_ext.models import create_model

from testing import randomize_bn

tvm = pytest.importorskip("torchvision.models")

# Full parity (eval outputs + float64 train-mode gradients and BN statistics): one or two models per
# family in the default run, the rest in the `slow` set (CI runs both).
FAST = ["resnet18", "googlenet", "mobilenet_v2", "mobilenet_v3_small", "shufflenet_v2_x0_5", "efficientnet_b0"]
SLOW = ["resnet34", "resnet50", "resnet101", "vgg11", "vgg11_bn", "mobilenet_v3_large", "shufflenet_v2_x1_0",
        "shufflenet_v2_x1_5", "shufflenet_v2_x2_0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3",
        "efficientnet_b4"]
# Eval parity only: deeper / wider variants of a family whose blocks and train path the models above
# cover (VGG13-19 differ from VGG11 in the stage config only; their float64 train steps alone took
# 4 CI minutes).
EVAL_ONLY = ["resnet152", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn", "efficientnet_b5",
             "efficientnet_b6", "efficientnet_b7"]
# Eval-only parity (strict state_dict load + float32 outputs) for every model but the largest.
HUGE = {"resnet152", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn", "efficientnet_b5", "efficientnet_b6",
        "efficientnet_b7"}
NUM_CLASSES = 10


def _tv_model(name):
    kwargs = dict(weights=None, num_classes=NUM_CLASSES)
    if name == "googlenet":
        kwargs.update(aux_logits=True, init_weights=True)
    return getattr(tvm, name)(**kwargs)


def _input(name, batch=4):
    # Train-mode BatchNorm over a 1x1 map of 2 samples is ill-conditioned (var ~ 0 amplifies
    # rounding differences); 48x48 and 4 samples keep >= 16 values per channel in the last stage.
    return torch.randn(batch, 3, 48, 48)


def _logits(out):
    return out if isinstance(out, torch.Tensor) else out[0] + 0.3 * (out[1] + out[2])


def _train_step(model, x, w, seed):
    torch.manual_seed(seed)  # same dropout / stochastic-depth masks in both models
    model.train()
    model.zero_grad(set_to_none=True)
    out = _logits(model(x))
    (out * w).sum().backward()
    return out, {n: p.grad for n, p in model.named_parameters()}


def _check_parity(ours, tv, x):
    # Eval, float32: the deployed precision.
    tv.eval(), ours.eval()
    with torch.no_grad():
        ref = tv(x)
        torch.testing.assert_close(ours(x), ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())
    # Train, float64: gradients through ReLU/ReLU6 masks are discontinuous, so float32 rounding
    # differences (fused ops sum in another order) can flip single mask bits; in float64 they
    # cannot, and the comparison can be tight.
    tv.double(), ours.double()
    x = x.double()
    w = torch.randn(x.shape[0], NUM_CLASSES, dtype=torch.float64)
    out_tv, g_tv = _train_step(tv, x, w, seed=3)
    out_ours, g_ours = _train_step(ours, x, w, seed=3)
    torch.testing.assert_close(out_ours, out_tv, rtol=1e-7, atol=1e-9 * out_tv.abs().max().item())
    assert g_ours.keys() == g_tv.keys()
    # Some gradients are zero in exact arithmetic (a BN shift followed only by train-mode BN):
    # absolute tolerance relative to the largest gradient of the model.
    scale = max(g.abs().max().item() for g in g_tv.values())
    for name, g in g_tv.items():
        assert g_ours[name] is not None, f"{name}: no gradient"
        torch.testing.assert_close(g_ours[name], g, rtol=1e-5, atol=1e-8 * scale, msg=lambda m: f"{name}: {m}")
    # The train step updated the BN running statistics identically.
    for (n1, b1), (n2, b2) in zip(ours.state_dict().items(), tv.state_dict().items()):
        assert n1 == n2
        if b2.is_floating_point():
            torch.testing.assert_close(b1, b2, rtol=1e-7, atol=1e-9, msg=lambda m: f"{n1}: {m}")
        else:
            assert torch.equal(b1, b2), n1


def _load(name):
    tv = _tv_model(name)
    randomize_bn(tv)
    ours = create_model(name, num_classes=NUM_CLASSES)
    ours.load_state_dict(tv.state_dict(), strict=True)
    assert list(ours.state_dict()) == list(tv.state_dict())
    return ours, tv


def _parity(name):
    ours, tv = _load(name)
    _check_parity(ours, tv, _input(name))


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in HUGE else n
                                  for n in sorted(FAST + SLOW + EVAL_ONLY)])
def test_loads_torchvision_state_dict_and_matches_in_eval(name):
    ours, tv = _load(name)
    x = torch.randn(2, 3, 32, 32)
    tv.eval(), ours.eval()
    with torch.no_grad():
        ref = tv(x)
        torch.testing.assert_close(ours(x), ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())


@pytest.mark.parametrize("name", FAST)
def test_outputs_gradients_and_bn_stats_match_torchvision(name):
    _parity(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_outputs_gradients_and_bn_stats_match_torchvision_large(name):
    _parity(name)


# Torchvision-backed models whose state_dict parity is tested in test_models.py
# (test_loads_torchvision_state_dict_and_matches_in_eval: at the input sizes they need).
COVERED_IN_TEST_MODELS = {"alexnet", "inception_v3"}


def test_every_torchvision_backed_model_is_covered():
    tv_names = set(tvm.list_models(module=tvm))
    ours = set(torchcv_ext.models.list_models())
    assert (tv_names & ours) == set(FAST + SLOW + EVAL_ONLY) | COVERED_IN_TEST_MODELS


@pytest.mark.parametrize("name,expected", [
    ("mobilenet_v3_small", {"DWConvBNAct": 11, "SqueezeExcite": 9, "Hardswish": 2, "FusedSequential": 20}),
    ("efficientnet_b0", {"DWConvBNAct": 16, "SqueezeExcite": 16, "FusedSequential": 33}),
    ("mobilenet_v2", {"DWConvBNAct": 17, "FusedSequential": 35}),
    ("shufflenet_v2_x0_5", {"ShuffleV2Block": 16, "FusedSequential": 2}),
    ("resnet18", {"BasicBlock": 8, "FusedSequential": 3}),
    ("resnet50", {"Bottleneck": 16, "FusedSequential": 4}),
    ("googlenet", {"BasicConv2d": 57}),
])
def test_convert_keeps_function_and_state_dict(name, expected):
    tv = _tv_model(name)
    randomize_bn(tv)
    converted = copy.deepcopy(tv)
    assert torchcv_ext.convert(converted) is converted
    counts = converted._torchcv_ext_converted
    for k, v in expected.items():
        assert counts.get(k, 0) >= v, counts
    assert list(converted.state_dict()) == list(tv.state_dict())
    fused = [m for m in converted.modules() if isinstance(m, torchcv_ext.nn.DWConvBNAct)]
    assert len(fused) == counts.get("DWConvBNAct", 0)
    inner = {id(m) for f in fused for m in f.modules()}
    assert not any(type(m) in (nn.Hardswish, nn.Hardsigmoid) for m in converted.modules() if id(m) not in inner)
    _check_parity(converted, tv, _input(name))
    # Idempotent: a second conversion finds nothing left to swap.
    assert torchcv_ext.convert(converted)._torchcv_ext_converted == {}


def test_converted_shufflenet_fuses_splits():
    m = torchcv_ext.convert(tvm.shufflenet_v2_x0_5(weights=None))
    flags = [u.split_output for u in m.stage2]
    assert flags == [True, True, True, False]


def test_convert_rejects_non_modules():
    with pytest.raises(TypeError, match="convert: expected an nn.Module"):
        torchcv_ext.convert("resnet18")
