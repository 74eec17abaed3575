"""Test helpers shared by the op tests: devices, dtypes and the per-dtype tolerance table."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import torchcv_ext
from torchcv_ext.ops.reference import attention as ref_attention

#: Devices every op test runs on; CUDA cases carry the `cuda` marker (skipped without a GPU).
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]

#: Forward/backward tolerance vs the float64 reference, per dtype of the computation.
TOL = {
    torch.float64: dict(atol=1e-10, rtol=1e-8),
    torch.float32: dict(atol=1e-5, rtol=1e-4),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2),
}

requires_ext = pytest.mark.skipif(not torchcv_ext.extension_loaded(),
                                  reason="compiled extension not loaded")


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, scale: float = 1.0):
    """Compare ``actual`` with a (float64) ``expected`` under the tolerance of ``dtype``,
    optionally widened by ``scale`` for reductions over many terms."""
    tol = TOL[dtype]
    torch.testing.assert_close(actual.double().cpu(), expected.double().cpu(),
                               atol=tol["atol"] * scale, rtol=tol["rtol"] * scale)


def eager_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale=None) -> torch.Tensor:
    """Plain matmul-softmax in the inputs' own precision (flash-attention's `attention_ref` with
    upcast=False): the error baseline of flash-attention's test rule."""
    s = ref_attention.default_scale(q.shape[-1], scale)
    return torch.softmax(torch.matmul(q, k.transpose(-2, -1)) * s, dim=-1).matmul(v)


def assert_same_nonfinite(got: torch.Tensor, want: torch.Tensor, what: str = ""):
    """NaN at the same positions, +-Inf at the same positions with the same signs: the test of
    "NaN and Inf propagate as in eager PyTorch"."""
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    where = f"{what}: " if what else ""
    assert torch.equal(got.isnan(), want.isnan()), \
        f"{where}NaN at {got.isnan().nonzero().tolist()} vs {want.isnan().nonzero().tolist()}"
    assert torch.equal(got.isinf(), want.isinf()), \
        f"{where}Inf at {got.isinf().nonzero().tolist()} vs {want.isinf().nonzero().tolist()}"
    assert torch.equal(got[got.isinf()].sign(), want[want.isinf()].sign()), f"{where}signs of Inf differ"


def check_attention_nonfinite(run, shape, dtype, device="cpu"):
    """run(q, k, v, grad_out) -> (out, dq, dk, dv) of an attention kernel, for every case of
    kernel_cases.attn_nonfinite_inputs: NaN and Inf where float64 eager attention has them."""
    from kernel_cases import attn_nonfinite_inputs

    for what, q, k, v, go in attn_nonfinite_inputs(shape, dtype, device):
        got = run(q, k, v, go)
        q64, k64, v64 = (t.detach().double().requires_grad_(True) for t in (q, k, v))
        out = eager_attention(q64, k64, v64)
        want = (out, *torch.autograd.grad(out, (q64, k64, v64), go.double()))
        for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
            assert_same_nonfinite(g, w, f"{dtype} {shape} {what}, {name}")


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def assert_flash_rule(got: torch.Tensor, eager: torch.Tensor, exact: torch.Tensor, name: str = ""):
    """flash-attention's rule for reduced precision: the error of `got` vs the `exact` (float64)
    result is at most twice that of `eager` (the same computation in eager PyTorch, same dtype)."""
    err, base = max_err(got, exact), max_err(eager, exact)
    assert err <= 2 * base + 1e-5, f"{name}: error {err:.3g} > 2 x eager error {base:.3g}"


def randomize_bn(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Non-trivial BN statistics and affine parameters, so eval mode is not the identity (a fresh
    model's eval outputs are tiny, and a wrong fold would go unseen)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


def opcheck(op, args) -> None:
    """``torch.library.opcheck`` (schema, fake kernel, autograd registration, torch.compile)
    plus :func:`check_decomposition`: every op test sample is also an export test."""
    torch.library.opcheck(op, args)
    check_decomposition(op, args)


def check_decomposition(op, args) -> None:
    """The op's entry in ``torchcv_ext.export.decompositions()`` (its reference): a graph calling
    ``op(*args)``, exported by ``torch.export`` and decomposed with that table, holds no
    torchcv_ext op and computes what the op computes (within the tolerance of its dtype)."""
    from torchcv_ext.export import decompositions

    op = getattr(op, "default", op)
    table = decompositions()
    assert op in table, f"{op} has no entry in torchcv_ext.export.decompositions()"
    pos = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
    inputs = tuple(args[i].detach() for i in pos)

    class Call(torch.nn.Module):
        def forward(self, *tensors):
            full = list(args)
            for i, t in zip(pos, tensors):
                full[i] = t
            return op(*full)

    ep = torch.export.export(Call(), inputs).run_decompositions(table)
    left = [str(n.target) for n in ep.graph.nodes
            if n.op == "call_function" and str(n.target).startswith("torchcv_ext.")]
    assert not left, f"{op}: still in the decomposed graph: {left}"
    got, expected = ep.module()(*inputs), Call()(*inputs)
    got = got if isinstance(got, (tuple, list)) else (got,)
    expected = expected if isinstance(expected, (tuple, list)) else (expected,)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape and g.dtype == e.dtype, (op, g.shape, e.shape, g.dtype, e.dtype)
        assert_close(g, e, e.dtype, scale=4.0)


def run_python(args, cwd) -> str:
    """Run ``python *args`` in ``cwd`` (not the repo root, whose source tree would shadow an
    installed package), importing the same torchcv_ext this test process imported; returns stdout."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(torchcv_ext.__file__)))
    env = dict(os.environ, PYTHONPATH=root)
    r = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=env,
                       timeout=300)
    assert r.returncode == 0, f"python {' '.join(args)} failed:\n{r.stderr[-3000:]}"
    return r.stdout
