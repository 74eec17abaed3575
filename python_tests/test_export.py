"""Deployment (torchcv_ext/export.py): torch.export, the decomposition table, ONNX through
onnxruntime and torch.jit.trace, on models that use every forward op. The per-op decomposition
checks run with each op's opcheck samples (testing.opcheck)."""
import zipfile

import pytest
import torch

import torchcv_ext
from torchcv_ext.export import decompositions, library_path, to_onnx
from torch import nn

from torchcv_ext.models import create_model
from torchcv_ext.nn import Hardswish
from torchcv_ext.nn.blocks import ConvBNAct, InvertedResidual, ShuffleV1Unit, ShuffleV2Block, ViTBlock
from torchcv_ext.ops import _common

from testing import randomize_bn, requires_ext, run_python

class EveryOp(nn.Module):
    """One small network of the library's own blocks that calls every forward op: the default
    test set exports it (an export costs 10-30 s per network, most of it independent of the
    network's size). Two real models are the `slow` set: MobileNetV3 (SE, hardswish classifier)
    and ShuffleNetV2 (split pairs passed between blocks); EfficientNet's, ShuffleNetV1's and the
    ViT's blocks are the ones in EveryOp (InvertedResidual with a sigmoid SE, ShuffleV1Unit,
    ViTBlock), so their models are not exported again here."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            ConvBNAct(3, 16, 3, stride=2, activation=nn.Hardswish),
            # dwconv_bn_act + squeeze_excite with a hardsigmoid gate, then with a sigmoid gate
            InvertedResidual(16, 16, 1, 32, activation=nn.Hardswish, squeeze_channels=8,
                             se_scale_activation=nn.Hardsigmoid),
            InvertedResidual(16, 24, 2, 48, activation=nn.SiLU, squeeze_channels=8, se_activation=nn.SiLU),
            ShuffleV1Unit(24, 48, 2, groups=3),  # channel_shuffle
            ShuffleV2Block(48, 48, 1, split_output=True),  # shuffle_cat_split
            ShuffleV2Block(48, 48, 1))  # shuffle_cat
        self.block = ViTBlock(48, num_heads=2)  # attention
        # activation (hardswish; MobileNetV3's classifier)
        self.head = nn.Sequential(nn.Linear(48, 32), Hardswish(), nn.Linear(32, num_classes))

    def forward(self, x):
        tokens = self.features(x).flatten(2).transpose(1, 2)
        return self.head(self.block(tokens).mean(1))


# Every forward op: dwconv_bn_act, squeeze_excite (hardsigmoid and sigmoid gates), activation
# (hardswish), shuffle_cat / shuffle_cat_split (ShuffleNetV2), channel_shuffle (ShuffleNetV1),
# attention (ViT).
OPS_OF = {
    "every_op": {"dwconv_bn_act", "squeeze_excite", "activation", "shuffle_cat", "shuffle_cat_split",
                 "channel_shuffle", "attention"},
    "mobilenet_v3_small": {"dwconv_bn_act", "squeeze_excite", "activation"},
    "shufflenet_v2_x0_5": {"dwconv_bn_act", "shuffle_cat", "shuffle_cat_split"},
}
MODELS = ["every_op"] + [pytest.param(name, marks=pytest.mark.slow) for name in OPS_OF if name != "every_op"]


def _model(name, seed=0):
    torch.manual_seed(seed)
    if name == "every_op":
        m = EveryOp()
    else:
        m = create_model(name, num_classes=10)
    return randomize_bn(m, seed + 1).eval()


def _x(batch=2, seed=0):
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _ours(ep):
    return {str(n.target).split(".")[1] for n in ep.graph.nodes
            if n.op == "call_function" and str(n.target).startswith("torchcv_ext.")}


def _assert_same(got, expected):
    """float32 model outputs: relative to their scale (the decomposed graph and the kernels
    round differently; BN folds reassociate)."""
    got = torch.as_tensor(got)
    err = (got - expected).abs().max().item()
    assert err <= 1e-4 * max(1.0, expected.abs().max().item()), err


@requires_ext
def test_decompositions_cover_every_op():
    assert {op.name().split("::")[1] for op in decompositions()} == set(_common.DEFINED_OPS)


def test_decompositions_empty_without_extension(monkeypatch):
    monkeypatch.setattr(_common, "ops_available", lambda: False)
    assert decompositions() == {}


@pytest.mark.parametrize("name", MODELS)
def test_torch_export_and_decomposed_graph(name):
    """The exported graph calls our ops (with the extension) and gives the model's outputs; after
    run_decompositions(decompositions()) it holds ATen ops only, gives the same outputs, and keeps
    a dynamic batch dimension."""
    m, x = _model(name), _x()
    with torch.no_grad():
        expected = m(x)
    batch = torch.export.Dim("batch")
    ep = torch.export.export(m, (x,), dynamic_shapes=({0: batch},))
    if torchcv_ext.extension_loaded():
        assert _ours(ep) == OPS_OF[name]
    _assert_same(ep.module()(x), expected)
    dec = ep.run_decompositions(decompositions())
    assert _ours(dec) == set()
    _assert_same(dec.module()(x), expected)
    x3 = _x(3, seed=1)
    with torch.no_grad():
        _assert_same(dec.module()(x3), m(x3))


@pytest.mark.parametrize("name", MODELS)
def test_onnx_export_runs_in_onnxruntime(name, tmp_path):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    m = _model(name)
    path = str(tmp_path / f"{name}.onnx")
    program = to_onnx(m, _x(), path)
    assert not [n.op_type for n in program.model_proto.graph.node if n.domain.startswith("torchcv")]
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for batch in (2, 3):  # the batch dimension is dynamic
        x = _x(batch, seed=batch)
        with torch.no_grad():
            expected = m(x)
        (got,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
        _assert_same(got, expected)


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "shufflenet_v2_x0_5", "resnet18"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_jit_trace_reads_the_parameters(name, channels_last):
    """torch.jit.trace works (its default check_trace traces twice and compares), in both layouts
    (channels_last takes oneDNN's fused conv outside a trace). Nothing computed from the weights
    is baked into the trace: new weights loaded into the traced module give that model's outputs."""
    m, x = _model(name), _x()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = m(x)
        traced = torch.jit.trace(m, (x,))
        _assert_same(traced(x), expected)
        other = _model(name, seed=5)
        traced.load_state_dict(other.state_dict())
        _assert_same(traced(x), other(x))


def _run_with_only_the_library(loader: str, artifact: str, x, tmp_path):
    """``loader(artifact)(x)`` in a process that imports torch and loads library_path(), and
    never torchcv_ext; returns the output."""
    torch.save(x, tmp_path / "x.pt")
    code = ("import sys, torch\n"
            "torch.ops.load_library(sys.argv[1])\n"
            f"y = {loader}(sys.argv[2])(torch.load(sys.argv[3]))\n"
            "assert 'torchcv_ext' not in sys.modules\n"
            "torch.save(y, sys.argv[4])\n")
    run_python(["-c", code, library_path(), artifact, str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
               cwd=str(tmp_path))
    return torch.load(tmp_path / "y.pt")


@requires_ext
def test_saved_trace_runs_with_only_the_shared_library(tmp_path):
    """A saved TorchScript trace calls the fused ops; torch + library_path() run it."""
    m, x = _model("shufflenet_v2_x0_5"), _x()
    with torch.no_grad():
        expected = m(x)
        traced = torch.jit.trace(m, (x,))
    assert {"torchcv_ext::dwconv_bn_act", "torchcv_ext::shuffle_cat"} <= {
        n.kind() for n in traced.inlined_graph.nodes()}
    traced.save(str(tmp_path / "m.pt"))
    _assert_same(_run_with_only_the_library("torch.jit.load", str(tmp_path / "m.pt"), x, tmp_path),
                 expected)


@requires_ext
def test_aoti_package_runs_with_only_the_shared_library(tmp_path):
    """AOTInductor compiles the exported (not decomposed) program; its code calls the fused ops,
    and a process that loads only torch and library_path() -- not torchcv_ext -- runs it."""
    m, x = _model("every_op"), _x()
    with torch.no_grad():
        expected = m(x)
    ep = torch.export.export(m, (x,))
    pkg = torch._inductor.aoti_compile_and_package(ep, package_path=str(tmp_path / "m.pt2"))
    _assert_same(_run_with_only_the_library("torch._inductor.aoti_load_package", pkg, x, tmp_path),
                 expected)
    with zipfile.ZipFile(pkg) as z:
        code = "".join(z.read(n).decode() for n in z.namelist() if n.endswith((".cpp", ".json")))
    assert {op for op in OPS_OF["every_op"] if f"torchcv_ext::{op}" not in code} == set()
