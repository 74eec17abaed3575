"""Model zoo: every registered model builds, runs forward + backward at a small resolution and
gives every parameter a gradient; registry defaults and errors; ``in_chans`` for every model;
transfer-learning API (features / head / reset_classifier / freeze_backbone trains only the new
head); AlexNet / Inception v3 load torchvision state_dicts; the no-extension (reference) path;
channels_last + AMP."""
import pytest
import torch
from torch import nn

import torchcv_ext
from torchcv_ext.models import create_model, list_models
from torchcv_ext.ops import _common

from testing import randomize_bn

# The largest variants run in the `slow` set (CI runs it too).
SLOW = {"efficientnet_b5", "efficientnet_b6", "efficientnet_b7", "resnet101", "resnet152", "vgg16", "vgg16_bn",
        "vgg19", "vgg19_bn", "vgg13", "vgg13_bn", "inception_v3",
        *[f"vgg{d}{bn}_cifar" for d in (13, 16, 19) for bn in ("", "_bn")]}
REQUIRED = {
    "lenet", "alexnet", "zfnet", "inception_v3",
    *[f"vgg{d}{bn}_cifar" for d in (11, 13, 16, 19) for bn in ("", "_bn")], "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn", "googlenet",
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


# Input sizes where 32x32 is too small (inception_v3's auxiliary head needs 299x299; eval: 75x75).
SIZE = {"alexnet": 64, "zfnet": 64, "inception_v3": 299}


def _input(name, batch=2, in_chans=3, size=None):
    if name == "hybridsn":
        return torch.randn(batch, 1, 16, 11, 11)
    size = size or SIZE.get(name, 32)
    return torch.randn(batch, in_chans, size, size)


def _main(out):
    return out if isinstance(out, torch.Tensor) else out[0]


def _all_params(exclude=()):
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in list_models() if n not in exclude]


def test_registry_has_every_required_model():
    assert REQUIRED <= set(list_models())
    assert list_models("resnet*") == ["resnet101", "resnet152", "resnet18", "resnet34", "resnet50"]
    assert list_models("no_such*") == []


def test_registry_errors():
    with pytest.raises(ValueError, match="unknown model 'resnet19'.*resnet18"):
        create_model("resnet19")
    with pytest.raises(ValueError, match="no weight downloads"):
        create_model("resnet18", pretrained=True)
    for bad in (None, 3, nn.Linear):
        with pytest.raises(TypeError, match="create_model: name must be a model name"):
            create_model(bad)
    for key in ("num_classes", "in_chans"):
        for bad in (0, -1, 2.5, True, "10"):
            with pytest.raises(ValueError, match=f"create_model: {key} must be a positive int, got {bad!r}"):
                create_model("lenet", **{key: bad})
    with pytest.raises(ValueError, match="in_chans is the number of spectral bands"):
        create_model("hybridsn", in_chans=20, in_bands=30)
    for name in ("googlenet", "inception_v3"):
        with pytest.raises(ValueError, match="transform_input=True .* needs in_chans=3, got 1"):
            create_model(name, in_chans=1, transform_input=True)
    with pytest.raises(ValueError, match="VGG: head must be"):
        torchcv_ext.models.VGG("A", head="tiny")
    with pytest.raises(ValueError, match="already registered"):
        torchcv_ext.models.register_model(torchcv_ext.models.resnet.resnet18)


# inception_v3 (299x299 in train mode): test_inception_v3_train_mode_matches_torchvision_and_trains.
@pytest.mark.parametrize("name", _all_params(exclude=("inception_v3",)))
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


def test_registry_default_num_classes_is_the_builders():
    for name, want in {"hybridsn": 16, "senet18_cifar": 10, "lenet": 10, "vgg11_cifar": 10, "resnet50": 1000}.items():
        assert create_model(name).num_classes == want, name
    assert create_model("lenet", num_classes=3).num_classes == 3
    assert create_model("resnet18", num_classes=5).num_classes == 5
    assert create_model("hybridsn", num_classes=9, in_bands=16, patch_size=11).num_classes == 9


# Smallest inputs the models take in eval mode (the in_chans sweep runs batch 1 there).
EVAL_SIZE = {"alexnet": 63, "zfnet": 64, "inception_v3": 75, "lenet": 16}


@pytest.mark.parametrize("name", _all_params())
def test_in_chans_and_freeze_backbone_trains_only_the_new_head(name):
    """Every model takes ``in_chans`` (HybridSN: its number of bands); after ``reset_classifier(k)``
    and ``freeze_backbone()`` exactly the replaced layers are trainable."""
    if name == "hybridsn":
        model, x = _build(name, in_chans=16), torch.randn(1, 16, 11, 11)
    else:
        model, x = _build(name, in_chans=1), _input(name, batch=1, in_chans=1, size=EVAL_SIZE.get(name, 32))
    with torch.no_grad():
        assert model.eval()(x).shape == (1, NUM_CLASSES)
    model.reset_classifier(2)
    model.freeze_backbone()
    names = model.classifier_layer_names()
    layers = [model.get_submodule(n) for n in names]
    assert all(isinstance(m, nn.Linear) and m.out_features == 2 for m in layers)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert set(trainable) == {f"{n}.{p}" for n in names for p in ("weight", "bias")}
    assert sum(p.numel() for p in trainable.values()) == sum(m.in_features * 2 + 2 for m in layers)
    model.freeze_backbone(False)
    assert all(p.requires_grad for p in model.parameters())


def test_vgg16_freeze_backbone_trains_only_the_last_layer():
    model = create_model("vgg16")
    model.reset_classifier(2)
    model.freeze_backbone()
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 4096 * 2 + 2 == 8194


def test_classic_lenet_is_sigmoid_and_average_pooling():
    def types(m):
        return {type(x) for x in m.modules()}

    assert {nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d} <= types(create_model("lenet"))  # the default is unchanged
    model = create_model("lenet", classic=True, in_chans=1)
    assert {nn.Sigmoid, nn.AvgPool2d} <= types(model)
    assert not types(model) & {nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d}
    assert nn.Tanh in types(create_model("lenet", classic=True, activation=nn.Tanh))
    out = model(torch.randn(4, 1, 28, 28))
    assert out.shape == (4, 10)
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_zfnet_and_vgg_cifar_shapes():
    """ZFNet: 7x7/2 first conv with 96 filters; a 224x224 input gives the paper's 110, 26, 13, 13,
    13 conv maps and 6x6 at the end. VGG-CIFAR: 32x32 -> 512 x 1 x 1 -> Linear(512, 10)."""
    model = create_model("zfnet").eval()
    first = model.features[0]
    assert (first.out_channels, first.kernel_size, first.stride) == (96, (7, 7), (2, 2))
    x, sizes = torch.randn(1, 3, 224, 224), []
    with torch.no_grad():
        for m in model.features:
            x = m(x)
            if isinstance(m, nn.Conv2d):
                sizes.append(x.shape[-1])
    assert sizes == [110, 26, 13, 13, 13] and x.shape == (1, 256, 6, 6)
    bn = create_model("alexnet", batch_norm=True, num_classes=4).eval()  # conv + BN + ReLU, fused in eval
    assert sum(isinstance(m, nn.BatchNorm2d) for m in bn.features) == 5
    with torch.no_grad():
        assert bn(torch.randn(1, 3, 63, 63)).shape == (1, 4)
    vgg = create_model("vgg11_bn_cifar").eval()
    assert isinstance(vgg.classifier, nn.Linear) and (vgg.classifier.in_features, vgg.num_classes) == (512, 10)
    with torch.no_grad():
        assert vgg.features(torch.randn(1, 3, 32, 32)).shape == (1, 512, 1, 1)


@pytest.mark.parametrize("name,size", [("alexnet", 224), ("inception_v3", 299)])
def test_loads_torchvision_state_dict_and_matches_in_eval(name, size):
    tvm = pytest.importorskip("torchvision.models")
    kwargs = dict(init_weights=False, aux_logits=True, transform_input=True) if name == "inception_v3" else {}
    tv = randomize_bn(getattr(tvm, name)(num_classes=10, **kwargs)).eval()
    ours = create_model(name, num_classes=10, **{k: v for k, v in kwargs.items() if k != "init_weights"}).eval()
    ours.load_state_dict(tv.state_dict())  # strict
    assert list(ours.state_dict()) == list(tv.state_dict())
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        ref = tv(x)
        torch.testing.assert_close(ours(x), ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())


@pytest.mark.slow
def test_inception_v3_train_mode_matches_torchvision_and_trains():
    """Train mode returns (logits, aux_logits) as torchvision's InceptionOutputs; the training
    example's loss adds the auxiliary one (weight 0.3); every parameter gets a gradient."""
    tvm = pytest.importorskip("torchvision.models")
    from torchcv_ext.train import _loss

    tv = tvm.inception_v3(num_classes=10, init_weights=False, aux_logits=True).train()
    ours = create_model("inception_v3", num_classes=10).train()
    ours.load_state_dict(tv.state_dict())
    x = torch.randn(2, 3, 299, 299)
    torch.manual_seed(1)  # same dropout mask
    with torch.no_grad():
        ref = tv(x)
    torch.manual_seed(1)
    out = ours(x)
    assert isinstance(out, torchcv_ext.models.InceptionOutputs) and out._fields == ref._fields
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * b.abs().max().item())
    target = torch.tensor([1, 7])
    loss, logits = _loss(out, target, nn.CrossEntropyLoss())
    assert logits is out.logits
    ce = nn.functional.cross_entropy
    torch.testing.assert_close(loss, ce(out.logits, target) + 0.3 * ce(out.aux_logits, target))
    loss.backward()
    assert all(p.grad is not None for p in ours.parameters())


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
