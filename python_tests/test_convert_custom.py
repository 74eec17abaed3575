"""``torchcv_ext.convert`` on models it has never seen: hand-written networks in the style of
tutorials (python_tests/custom_models.py) and timm models. For each: the fused patterns found
(exact counts), the state_dict (same keys and values, strict round trip), eval outputs, and a
train step (float64: outputs, every gradient and the BN running statistics; float32: the fused
train kernels, within rounding)."""
import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchcv_ext
from torchcv_ext import _convert_fx

from custom_models import MODELS, ViT
from test_torchvision_parity import NUM_CLASSES, _check_parity
from testing import randomize_bn

# name -> (expected summary counts, input size). Every conv + BN of these models is fused.
CUSTOM = {
    # 15 blocks: 14 expand 1x1 + stem + last 1x1 + 5 projections without residual; 10 residual.
    "mobilenet_v3_large": ({"conv_bn_act": 21, "dwconv_bn_act": 15, "conv_bn_add_act": 10,
                            "squeeze_excite": 8, "Hardswish": 21}, 64),
    # branch Sequentials (plain nn.Sequential) by class; cat + channel_shuffle(2) in every unit.
    "shufflenet_v2_x1_0": ({"FusedSequential": 21, "shuffle_cat": 16}, 64),
    "efficientnet_b0": ({"conv_bn_act": 24, "dwconv_bn_act": 16, "conv_bn_add_act": 9, "squeeze_excite": 16}, 64),
    # stem + 8 x conv1; 8 x (conv2 + bn2 + shortcut add + relu); 3 shortcut Sequentials.
    "cifar_resnet18": ({"conv_bn_act": 9, "conv_bn_add_act": 8, "FusedSequential": 3}, 16),
    # SE sits between bn2 and the add: conv2 + bn2 fuse without the residual.
    "senet18_cifar": ({"conv_bn_act": 17, "squeeze_excite": 8, "FusedSequential": 3}, 16),
    "vit_tiny_cifar": ({"attention": 4}, 32),
}


def _converted(model):
    randomize_bn(model)
    ref = copy.deepcopy(model)
    out, summary = torchcv_ext.convert(model, return_summary=True)
    assert out is model and model._torchcv_ext_converted is summary
    return model, ref, summary


def _check_state_dict(conv, ref):
    sd, sd_ref = conv.state_dict(), ref.state_dict()
    assert list(sd) == list(sd_ref)
    for k, v in sd_ref.items():
        assert torch.equal(sd[k], v), k
    conv.load_state_dict(sd_ref, strict=True)
    ref.load_state_dict(conv.state_dict(), strict=True)


def _check_float32_train_step(conv, ref, x):
    """One float32 train step (the fused depthwise train kernels run here): same BN running
    statistics and gradients within float32 rounding (ReLU masks may flip on ties)."""
    grads = []
    for m in (ref, conv):
        m.train()
        m.zero_grad(set_to_none=True)
        torch.manual_seed(5)
        (m(x) * torch.linspace(-1, 1, NUM_CLASSES)).sum().backward()
        grads.append({n: p.grad for n, p in m.named_parameters()})
    # Some gradients are zero in exact arithmetic (a BN shift followed only by train-mode BN):
    # their rounding noise is measured against the model's largest gradient.
    scale = max(g.norm().item() for g in grads[0].values())
    for n, g in grads[0].items():
        assert (grads[1][n] - g).norm().item() <= 2e-3 * g.norm().item() + 1e-5 * scale, n
    for (n, a), b in zip(conv.state_dict().items(), ref.state_dict().values()):
        if "running" in n:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m: f"{n}: {m}")
        elif n.endswith("num_batches_tracked"):
            assert torch.equal(a, b), n


def _check_model(model, expected, size, batch=2, fixed_size=False):
    torch.manual_seed(0)
    conv, ref, summary = _converted(model)
    assert dict(summary) == expected, str(summary)
    assert summary.left == [], str(summary)
    assert sum(summary.values()) == len(summary.fused)
    _check_state_dict(conv, ref)
    x = torch.randn(batch, 3, size, size)
    _check_float32_train_step(copy.deepcopy(conv), copy.deepcopy(ref), x)
    # float32 eval outputs; float64 train step (outputs, every gradient, BN statistics) on a
    # smaller input (float64 convolutions are slow on the CPU).
    _check_parity(conv, ref, x if fixed_size else x[:, :, :size // 2, :size // 2])
    # Converting again finds nothing new.
    assert torchcv_ext.convert(conv)._torchcv_ext_converted == {}


@pytest.mark.parametrize("name", sorted(CUSTOM))
def test_convert_hand_written(name):
    torch.manual_seed(0)
    expected, size = CUSTOM[name]
    _check_model(MODELS[name](NUM_CLASSES), expected, size, fixed_size=name.startswith("vit"))


timm = pytest.importorskip("timm")
TIMM = {
    # Every BatchNormAct2d fused: 21 + 15 + 10 = 46; SE in 8 blocks (hard-sigmoid gate).
    "mobilenetv3_large_100": ({"conv_bn_act": 21, "dwconv_bn_act": 15, "conv_bn_add_act": 10,
                               "squeeze_excite": 8, "Hardswish": 21, "Hardsigmoid": 8}, {}),
    "efficientnet_b0": ({"conv_bn_act": 24, "dwconv_bn_act": 16, "conv_bn_add_act": 9, "squeeze_excite": 16}, {}),
    # 53 conv + BN: stem + 32 in blocks + 16 with the residual add + 4 downsample Sequentials.
    "resnet50": ({"conv_bn_act": 33, "conv_bn_add_act": 16, "FusedSequential": 4}, {}),
    # timm's Attention (F.scaled_dot_product_attention); 64 px instead of 224 (same layers).
    "vit_small_patch16_224": ({"attention": 12}, {"img_size": 64}),
}


@pytest.mark.parametrize("name", sorted(TIMM))
def test_convert_timm(name):
    expected, kwargs = TIMM[name]
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES, **kwargs)
    _check_model(model, expected, 64, fixed_size=name.startswith("vit"))


# ---------------------------------------------------------------------------------------------
# Behaviour of the rewritten blocks
# ---------------------------------------------------------------------------------------------
class _DataDependent(nn.Module):
    """Not traceable (branches on a tensor value); its Sequential child still converts."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.conv = nn.Conv2d(8, 8, 1, bias=False)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x):
        y = self.body(x)
        if y.mean() > 0:
            y = y * 2
        return self.bn(self.conv(y))


def test_untraceable_block_converts_by_structure_and_reports():
    torch.manual_seed(0)
    conv, ref, summary = _converted(_DataDependent())
    assert dict(summary) == {"FusedSequential": 1}
    reasons = dict(summary.left)
    assert "not traced" in reasons["(model)"] and "TraceError" in reasons["(model)"]
    assert "bn" in reasons and "not reached" in reasons["bn"]
    _check_state_dict(conv, ref)
    x = torch.randn(2, 3, 8, 8)
    conv.eval(), ref.eval()
    torch.testing.assert_close(conv(x), ref(x), rtol=1e-5, atol=1e-6)


class _ModeDependent(nn.Module):
    """Python branches on self.training: traced once per mode."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x, scale: float = 2.0):
        y = self.bn(self.conv(x))
        return F.relu(y) * scale if self.training else torch.sigmoid(y)


def test_training_branches_and_optional_arguments():
    torch.manual_seed(0)
    conv, ref, summary = _converted(_ModeDependent())
    assert dict(summary) == {"conv_bn_act": 1}
    x = torch.randn(2, 3, 8, 8)
    for mode in (True, False):
        conv.train(mode), ref.train(mode)
        torch.testing.assert_close(conv(x), ref(x), rtol=1e-5, atol=1e-6)
        # A non-default optional argument runs the original forward.
        torch.testing.assert_close(conv(x, scale=3.0), ref(x, scale=3.0), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(conv(x, 2.0), ref(x, 2.0), rtol=1e-5, atol=1e-6)
    assert isinstance(conv, _ModeDependent)


def test_bn_left_with_reason():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.bn = nn.BatchNorm2d(4)
            self.lin = nn.Linear(4, 4)
            self.bn2 = nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y, self.bn2(x.new_zeros(1, 4, 1, 1))

    _, _, summary = _converted(M())
    assert dict(summary) == {}
    reasons = dict(summary.left)
    assert "other users" in reasons["bn"] and "not an nn.Conv2d output" in reasons["bn2"]


def test_attention_dropout_and_masks_keep_the_original_math():
    torch.manual_seed(0)
    conv, ref, summary = _converted(ViT(attn_drop=0.1))
    assert dict(summary) == {"attention": 4}
    x = torch.randn(2, 3, 32, 32)
    for m in (conv, ref):
        m.train()
        torch.manual_seed(1)
        m.out = m(x)
        m.out.sum().backward()
    torch.testing.assert_close(conv.out, ref.out, rtol=1e-5, atol=1e-5)
    for (n, a), b in zip(conv.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5, msg=lambda m: f"{n}: {m}")
    # timm's Attention takes attn_mask: a mask runs timm's own forward.
    attn = timm.layers.Attention(64, num_heads=4)
    ref_attn = copy.deepcopy(attn)
    assert dict(torchcv_ext.convert(attn, return_summary=True)[1]) == {"attention": 1}
    t = torch.randn(2, 5, 64)
    mask = torch.zeros(5, 5, dtype=torch.bool)
    mask[:, 0] = True
    torch.testing.assert_close(attn(t), ref_attn(t), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(attn(t, attn_mask=mask), ref_attn(t, attn_mask=mask), rtol=1e-5, atol=1e-6)


def test_converted_model_copies_pickles_and_prints(capsys):
    torch.manual_seed(0)
    model = MODELS["cifar_resnet18"](NUM_CLASSES)
    randomize_bn(model)
    assert torchcv_ext.convert(model, verbose=True) is model
    printed = capsys.readouterr().out
    assert "8 x conv_bn_add_act" in printed and "9 x conv_bn_act" in printed
    x = torch.randn(2, 3, 16, 16)
    model.eval()
    want = model(x)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        block = clone.layer1[0]
        assert getattr(type(block), _convert_fx.FLAG) is type(model.layer1[0]).__mro__[1]
        assert type(block).__name__ == "CifarBasicBlock"
        torch.testing.assert_close(clone(x), want, rtol=1e-5, atol=1e-6)


def test_converted_model_exports_with_fused_ops():
    torch.manual_seed(0)
    model = torchcv_ext.convert(MODELS["mobilenet_v3_large"](NUM_CLASSES)).eval()
    x = torch.randn(1, 3, 32, 32)
    ep = torch.export.export(model, (x,))
    ops = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert {"torchcv_ext.dwconv_bn_act.default", "torchcv_ext.squeeze_excite.default"} <= ops
    torch.testing.assert_close(ep.module()(x), model(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("groups", [8, 1], ids=["depthwise", "dense"])
def test_timm_sync_batchnorm_act_after_convert_normalizes_once(groups, monkeypatch):
    """timm's convert_sync_batchnorm turns a BatchNormAct2d that convert() fused into a
    SyncBatchNormAct (an nn.SyncBatchNorm subclass): where the fused block calls the module for
    its statistics (the eager train path, as in multi-process training), it must still apply the
    activation once, with the synced module's statistics (single process here: local ones)."""
    timm_layers = pytest.importorskip("timm.layers")
    monkeypatch.setattr(torchcv_ext.ops.config, "dwconv_cpu_train_backend", "eager")

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(8, 8, 3, padding=1, groups=groups, bias=False)
            self.bn = timm_layers.BatchNormAct2d(8, act_layer=nn.SiLU)

        def forward(self, x):
            return self.bn(self.conv(x))

    torch.manual_seed(0)
    ref = nn.Sequential(Block(), nn.Conv2d(8, 4, 1))
    ours = copy.deepcopy(ref)
    _, summary = torchcv_ext.convert(ours, return_summary=True)
    assert summary.fused, summary
    ref, ours = (timm_layers.convert_sync_batchnorm(m) for m in (ref, ours))
    assert type(ours[0].bn).__name__ == "SyncBatchNormAct"
    x = torch.randn(2, 8, 9, 9)
    torch.testing.assert_close(ours.train()(x), ref.train()(x), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours[0].bn.running_var, ref[0].bn.running_var)


def test_batch_norm_only_skips_the_activation_of_norm_act_modules():
    """The fused paths normalize through batch_norm_only and apply the activation themselves: for
    timm's BatchNormAct2d and SyncBatchNormAct alike only the normalization runs."""
    timm_layers = pytest.importorskip("timm.layers")
    from torchcv_ext.nn.dwconv_bn_act import batch_norm_only

    y = torch.randn(2, 8, 5, 5)
    plain = nn.BatchNorm2d(8).train()
    norm_act = timm_layers.BatchNormAct2d(8, act_layer=nn.SiLU)
    for bn in (norm_act, timm_layers.convert_sync_batchnorm(copy.deepcopy(norm_act))):
        bn.train()
        assert hasattr(bn, "act") and type(bn).__name__ in ("BatchNormAct2d", "SyncBatchNormAct")
        torch.testing.assert_close(batch_norm_only(bn, y), plain(y))
        torch.testing.assert_close(bn.running_mean, plain.running_mean)
        plain.reset_running_stats()
