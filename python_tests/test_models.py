"""Model zoo: every registered model builds, runs forward + backward at a small resolution and
gives every parameter a gradient; registry errors; transfer-learning API (features / head /
reset_classifier / freeze_backbone); the no-extension (reference) path; channels_last + AMP."""
import pytest
import torch

import torchcv_ext
from torchcv_ext.models import create_model, list_models
from torchcv_ext.ops import _common

# The largest variants run in the `slow` set (CI runs it too).
SLOW = {"efficientnet_b5", "efficientnet_b6", "efficientnet_b7", "resnet101", "resnet152", "vgg16", "vgg16_bn",
        "vgg19", "vgg19_bn", "vgg13", "vgg13_bn"}
REQUIRED = {
    "lenet", "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn", "googlenet",
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "seresnet18", "seresnet50", "senet18_cifar",
    "mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
    *[f"shufflenet_v1_g{g}" for g in (1, 2, 3, 4, 8)],
    *[f"shufflenet_v2_x{s}" for s in ("0_5", "1_0", "1_5", "2_0")],
    *[f"efficientnet_b{i}" for i in range(8)], "hybridsn", "vit_tiny_patch16", "vit_small_patch16",
}
NUM_CLASSES = 7


def _build(name, **kwargs):
    if name.startswith("vit"):
        kwargs.setdefault("img_size", 32)
    if name == "hybridsn":
        kwargs.setdefault("in_bands", 16)
        kwargs.setdefault("patch_size", 11)
    return create_model(name, num_classes=NUM_CLASSES, **kwargs)


def _input(name, batch=2):
    if name == "hybridsn":
        return torch.randn(batch, 1, 16, 11, 11)
    return torch.randn(batch, 3, 32, 32)


def _main(out):
    return out if isinstance(out, torch.Tensor) else out[0]


def _all_params():
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in list_models()]


def test_registry_has_every_required_model():
    assert REQUIRED <= set(list_models())
    assert list_models("resnet*") == ["resnet101", "resnet152", "resnet18", "resnet34", "resnet50"]
    assert list_models("no_such*") == []


def test_registry_errors():
    with pytest.raises(ValueError, match="unknown model 'resnet19'.*resnet18"):
        create_model("resnet19")
    with pytest.raises(ValueError, match="no weight downloads"):
        create_model("resnet18", pretrained=True)
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        create_model("resnet18", num_classes=0)
    with pytest.raises(ValueError, match="already registered"):
        torchcv_ext.models.register_model(torchcv_ext.models.resnet.resnet18)


@pytest.mark.parametrize("name", _all_params())
def test_forward_backward_every_parameter_gets_a_gradient(name):
    model = _build(name)
    x = _input(name)
    model.train()
    out = model(x)
    logits = _main(out)
    assert logits.shape == (2, NUM_CLASSES)
    loss = logits.square().mean() if isinstance(out, torch.Tensor) else sum(o.square().mean() for o in out)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"{name}: parameters without a gradient: {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    with torch.no_grad():
        y = model(x)
    assert isinstance(y, torch.Tensor) and y.shape == (2, NUM_CLASSES) and torch.isfinite(y).all()


@pytest.mark.parametrize("name", ["resnet18", "seresnet18", "mobilenet_v3_small", "shufflenet_v2_x0_5",
                                  "shufflenet_v1_g3", "efficientnet_b0", "googlenet", "vgg11_bn",
                                  "vit_tiny_patch16", "lenet", "hybridsn", "mobilenet_v1"])
def test_transfer_learning_features_and_head(name):
    model = _build(name)
    head = model.get_classifier()
    assert head is getattr(model, {"ResNet": "fc", "GoogLeNet": "fc", "ShuffleNetV2": "fc",
                                   "VisionTransformer": "head"}.get(type(model).__name__, "classifier"))
    feats = model.features
    feat_ids = {id(p) for p in feats.parameters()}
    head_ids = {id(p) for p in head.parameters()}
    all_ids = {id(p) for p in model.parameters()}
    assert feat_ids and feat_ids <= all_ids and not (feat_ids & head_ids)
    # The backbone view does not add entries to the state_dict (torchvision names stay intact).
    if isinstance(getattr(type(model), "features", None), property):
        assert not any(k.startswith("features.") for k in model.state_dict())

    model.reset_classifier(3)
    model.freeze_backbone()
    assert model.num_classes == 3
    model.train()
    model.features.eval()
    out = _main(model(_input(name)))
    assert out.shape == (2, 3)
    out.sum().backward()
    for n, p in model.named_parameters():
        if id(p) in feat_ids:
            assert not p.requires_grad and p.grad is None, n
    new_head = [p for p in model.get_classifier().parameters() if p.requires_grad]
    assert new_head and all(p.grad is not None for p in new_head)
    model.freeze_backbone(False)
    assert all(p.requires_grad for p in model.parameters())


def test_features_output_is_the_backbone_map():
    model = _build("resnet18").eval()
    x = _input("resnet18")
    with torch.no_grad():
        f = model.features(x)
        assert f.shape == (2, 512, 1, 1)
        torch.testing.assert_close(model.fc(torch.flatten(model.avgpool(f), 1)), model(x))


def test_shufflenet_v2_fuses_the_split_into_the_previous_unit():
    model = _build("shufflenet_v2_x0_5")
    for stage in (model.stage2, model.stage3, model.stage4):
        flags = [u.split_output for u in stage]
        assert flags == [True] * (len(stage) - 1) + [False]


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "shufflenet_v2_x0_5", "efficientnet_b0", "vit_tiny_patch16"])
def test_reference_path_without_extension(name, monkeypatch):
    """With the compiled ops unavailable every public op runs its reference: same results."""
    model = _build(name)
    x = _input(name)
    model.eval()
    with torch.no_grad():
        y_ext = model(x)
    monkeypatch.setattr(_common, "ops_available", lambda: False)
    with torch.no_grad():
        y_ref = model(x)
    torch.testing.assert_close(y_ref, y_ext, rtol=1e-4, atol=1e-5)
    model.train()
    _main(model(x)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", ["mobilenet_v2", "shufflenet_v2_x0_5", "vit_tiny_patch16", "mobilenet_v3_small",
                                  "efficientnet_b0", "seresnet18"])
def test_channels_last_and_bf16_autocast(name):
    model = _build(name).eval()
    x = _input(name)
    with torch.no_grad():
        ref = model(x)
    model_cl = model.to(memory_format=torch.channels_last)
    xc = x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
    with torch.no_grad():
        torch.testing.assert_close(model_cl(xc), ref, rtol=1e-4, atol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = model_cl(xc)
    torch.testing.assert_close(y.float(), ref, rtol=0.1, atol=0.1 * ref.abs().max().item())
    model_cl.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model_cl(xc).float().square().mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model_cl.parameters())


def test_bad_inputs_have_clear_errors():
    with pytest.raises(ValueError, match="PatchEmbed: expected 32x32 images"):
        _build("vit_tiny_patch16")(torch.randn(1, 3, 48, 48))
    with pytest.raises(ValueError, match="HybridSN: expected"):
        _build("hybridsn")(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="ShuffleNetV1: groups must be one of"):
        torchcv_ext.models.ShuffleNetV1(groups=5)
    with pytest.raises(ValueError, match="reset_classifier: num_classes must be >= 1"):
        _build("resnet18").reset_classifier(0)


def test_stochastic_depth_matches_torchvision_semantics():
    tvops = pytest.importorskip("torchvision.ops")
    x = torch.randn(8, 4, 3, 3)
    for mode in ("row", "batch"):
        torch.manual_seed(5)
        ref = tvops.stochastic_depth(x, 0.3, mode, True)
        torch.manual_seed(5)
        out = torchcv_ext.nn.stochastic_depth(x, 0.3, mode, True)
        torch.testing.assert_close(out, ref)
    assert torchcv_ext.nn.stochastic_depth(x, 0.3, "row", training=False) is x


@pytest.mark.slow
def test_torch_compile_fullgraph():
    model = _build("shufflenet_v2_x0_5").eval()
    x = _input("shufflenet_v2_x0_5")
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("ours_name,timm_name", [("vit_tiny_patch16", "vit_tiny_patch16_224"),
                                                 ("vit_small_patch16", "vit_small_patch16_224")])
def test_vit_loads_timm_state_dict_and_matches(ours_name, timm_name):
    """Our ViT uses timm's names and math: a timm ViT state_dict loads strictly and gives timm's
    outputs (fused attention vs timm's attention)."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    t = timm.create_model(timm_name, pretrained=False, num_classes=10, img_size=64).eval()
    with torch.no_grad():  # timm zero-inits these: make every parameter matter
        for p in (t.cls_token, t.pos_embed, *t.head.parameters()):
            p.normal_(0, 0.3)
    ours = create_model(ours_name, num_classes=10, img_size=64).eval()
    ours.load_state_dict(t.state_dict())  # strict
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = t(x)
        torch.testing.assert_close(ours(x), want, atol=1e-4 * want.abs().max().item(), rtol=1e-4)


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["mobilenet_v3_small", "efficientnet_b0", "shufflenet_v2_x0_5", "seresnet18",
                                  "vit_tiny_patch16"])
def test_cuda_model_matches_cpu_and_trains_with_amp(name):
    """The fused CUDA kernels inside whole networks: eval outputs and a train step's loss and
    gradients equal the CPU model's (float32; cuDNN's TF32 is off in conftest), then an AMP bf16
    channels_last train step gives every parameter a finite gradient."""
    torch.manual_seed(0)
    cpu = _build(name)
    gpu = _build(name).cuda()
    gpu.load_state_dict(cpu.state_dict())
    x = _input(name, batch=4)
    cpu.eval(), gpu.eval()
    with torch.no_grad():
        torch.testing.assert_close(gpu(x.cuda()).cpu(), cpu(x), rtol=1e-3, atol=1e-4)
    for m in (cpu, gpu):  # train mode, but deterministic: no dropout / stochastic depth masks
        m.train()
        for mod in m.modules():
            if isinstance(mod, (torch.nn.Dropout, torchcv_ext.nn.blocks.StochasticDepth)):
                mod.eval()
    losses = [_main(m(t)).square().mean() for m, t in ((cpu, x), (gpu, x.cuda()))]
    for loss in losses:
        loss.backward()
    torch.testing.assert_close(losses[1].cpu(), losses[0], rtol=1e-3, atol=1e-5)
    for (n, pc), pg in zip(cpu.named_parameters(), gpu.parameters()):
        scale = pc.grad.abs().max().item() + 1e-12
        torch.testing.assert_close(pg.grad.cpu(), pc.grad, rtol=1e-2, atol=1e-3 * scale, msg=n)
    for (n, bc), bg in zip(cpu.named_buffers(), gpu.buffers()):
        if bc.is_floating_point():
            torch.testing.assert_close(bg.cpu(), bc, rtol=1e-3, atol=1e-4, msg=n)

    gpu.zero_grad(set_to_none=True)
    gpu = gpu.to(memory_format=torch.channels_last)
    xc = x.cuda().contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x.cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = _main(gpu(xc)).float().square().mean()
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in gpu.parameters())
