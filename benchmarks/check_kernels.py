"""Run the kernel case matrix (python_tests/kernel_cases.py) through the public ops on one device,
forward and backward, against float64 references computed on the CPU. Not timed.

    python benchmarks/check_kernels.py --device cuda            # every case, every dtype
    python benchmarks/check_kernels.py --device cuda --smoke    # one case per op and dtype
    compute-sanitizer --tool memcheck --error-exitcode 86 python benchmarks/check_kernels.py

The GPU suite (benchmarks/gpu_suite.sh) runs ``--smoke`` under CUDA_LAUNCH_BLOCKING=1 first, then
the whole matrix under compute-sanitizer (memcheck, racecheck, initcheck); its rehearsal runs
``--smoke --device cpu`` (the CPU kernels). The references run on the CPU so that a sanitizer
instruments only our kernels. Exit status: 0 all match, 1 mismatches, 2 the device's kernels
cannot run here.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys

import torch

import torchcv_ext
from torchcv_ext import ops
from torchcv_ext import activations
from torchcv_ext.ops.reference import attention as ref_attn
from torchcv_ext.ops.reference import channel_shuffle as ref_cs

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python_tests"))
import kernel_cases as kc  # noqa: E402

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
#: Allowed max error / max(1, max |reference|), per dtype (float32 sums of up to a few thousand
#: terms; half types: a few units of their last place on O(1) values).
TOL = {torch.float32: 2e-4, torch.float16: 5e-3, torch.bfloat16: 4e-2}
FAILURES: list = []
PASSED = [0]


def check(name, got, exp, tol):
    """Every tensor of ``got`` (device) against ``exp`` (float64, CPU)."""
    for i, (g, e) in enumerate(zip(got, exp)):
        g = g.detach().double().cpu()
        bad = g.shape != e.shape
        err = float("inf") if bad else ((g - e).abs().max().item() if e.numel() else 0.0)
        scale = max(1.0, e.abs().max().item()) if e.numel() else 1.0
        if bad or not err <= tol * scale:
            FAILURES.append(name)
            print(f"MISMATCH {name} [output {i}]: max err {err:.3g} (allowed {tol * scale:.3g})", flush=True)
            return
    PASSED[0] += 1
    print(f"ok {name}", flush=True)


def fwd_bwd(name, fn, ref_fn, inputs, tol, seed=0):
    """fn(*inputs) on the device and its input gradients for a random output gradient, vs ref_fn
    in float64 on the CPU (autograd through the reference)."""
    ins = [t.detach().requires_grad_(t.is_floating_point()) for t in inputs]
    out = fn(*ins)
    go = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out.device, out.dtype)
    diff = [t for t in ins if t.requires_grad]
    grads = torch.autograd.grad(out, diff, go) if out.numel() else [torch.zeros_like(t) for t in diff]
    ins64 = [t.detach().cpu().double().requires_grad_(t.is_floating_point()) for t in inputs]
    out64 = ref_fn(*ins64)
    grads64 = (torch.autograd.grad(out64, [t for t in ins64 if t.requires_grad], go.cpu().double())
               if out64.numel() else [torch.zeros_like(t) for t in ins64 if t.requires_grad])
    check(name, (out, *grads), (out64.detach(), *grads64), tol)


# ---- one function per op: all its cases, or the first (smoke) --------------------------------------

def _eager_dw_eval(x, w, scale, shift, conv, act):
    z = torch.nn.functional.conv2d(x, w, None, conv[0], conv[1], conv[2], x.shape[1])
    return activations.forward(act, z * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1))


def _eager_dw_train(x, w, g, b, conv, act):
    z = torch.nn.functional.conv2d(x, w, None, conv[0], conv[1], conv[2], x.shape[1])
    return activations.forward(act, torch.nn.functional.batch_norm(z, None, None, g, b, True, 0.0, 1e-5))


def dwconv_bn_act(dev, dtype, smoke):
    acts = ("silu", "hardswish", "relu6", "identity")
    for i, case in enumerate(kc.DW_CASES[:1] if smoke else kc.DW_CASES):
        x, w, conv = kc.dw_inputs(case, dtype, seed=i, device=dev)
        c, act = x.shape[1], acts[i % len(acts)]
        g = torch.Generator().manual_seed(100 + i)
        scale = (torch.rand(c, generator=g) + 0.5).to(dev, dtype)
        shift = (torch.randn(c, generator=g) * 0.1).to(dev, dtype)
        tag = f"{kc.DW_IDS[i]} {act} {dtype}"
        tol = TOL[dtype] * 5  # BatchNorm's gradient sums over the batch and plane
        fwd_bwd(f"dwconv_bn_act eval {tag}", lambda *t: ops.dwconv_bn_act(*t, *conv, act),
                lambda *t: _eager_dw_eval(*t, conv, act), (x, w, scale, shift), tol)
        if x.shape[0] * (x.shape[2] * x.shape[3]) > 1:
            fwd_bwd(f"dwconv_bn_act train {tag}",
                    lambda *t: ops.dwconv_bn_act_train(*t, 1e-5, *conv, act)[0],
                    lambda *t: _eager_dw_train(*t, conv, act), (x, w, scale, shift), tol)


def squeeze_excite(dev, dtype, smoke):
    from torchcv_ext.ops.reference import squeeze_excite as ref

    pairs = (("relu", "hardsigmoid"), ("silu", "sigmoid"))
    for i, case in enumerate(kc.SE_CASES[:1] if smoke else kc.SE_CASES):
        act, gate = pairs[i % 2]
        fwd_bwd(f"squeeze_excite {kc.SE_IDS[i]} {act}/{gate} {dtype}",
                lambda *t: ops.squeeze_excite(*t, act, gate), lambda *t: ref.squeeze_excite(*t, act, gate),
                kc.se_inputs(case, dtype, seed=i, device=dev), TOL[dtype] * 4)


def channel_shuffle(dev, dtype, smoke):
    for shape, groups, layout in kc.SHUFFLE_CASES[:1] if smoke else kc.SHUFFLE_CASES:
        x = torch.randn(shape).to(dev, dtype)
        if x.dim() == 4:
            x = x.contiguous(memory_format=layout)
        fwd_bwd(f"channel_shuffle {tuple(shape)} g{groups} {dtype}", lambda t: ops.channel_shuffle(t, groups),
                lambda t: ref_cs.channel_shuffle(t, groups), (x,), 0.0)
        if x.dim() == 4 and shape[1] % 2 == 0:
            h = shape[1] // 2
            a, b = (t.contiguous(memory_format=layout) for t in (x[:, :h], x[:, h:]))
            fwd_bwd(f"shuffle_cat {tuple(shape)} {dtype}", ops.shuffle_cat, ref_cs.shuffle_cat, (a, b), 0.0)
            fwd_bwd(f"shuffle_cat_split {tuple(shape)} {dtype}",
                    lambda u, v: torch.cat(ops.shuffle_cat_split(u, v), 1),
                    lambda u, v: torch.cat(ref_cs.shuffle_cat_split(u, v), 1), (a, b), 0.0)


def activation(dev, dtype, smoke):
    from torchcv_ext.ops.reference import activation as ref

    for n, mis in kc.ACTIVATION_CASES[:1] if smoke else kc.ACTIVATION_CASES:
        x = (torch.randn(n) * 4).to(dev, dtype)
        if mis:
            x = kc.misaligned(x)
        for act in activations.NAMES:
            fwd_bwd(f"activation {act} n{n}{' misaligned' if mis else ''} {dtype}",
                    lambda t, act=act: ops.activation(t, act), lambda t, act=act: ref.activation(t, act),
                    (x,), TOL[dtype])


@contextlib.contextmanager
def _atomic_dq():
    """The CUDA fp16 / bf16 backward with dQ from float32 atomics in the dK/dV pass."""
    from torchcv_ext.ops import config

    old, config.cuda_attention_dq = config.cuda_attention_dq, "atomic"
    try:
        yield
    finally:
        config.cuda_attention_dq = old


def attention(dev, dtype, smoke):
    def ref(q, k, v):
        return ref_attn.attention(q, k, v)[0]

    shapes = kc.ATTN_SHAPES[1:2] if smoke else kc.ATTN_SHAPES
    for i, shape in enumerate(shapes):
        q, k, v, _ = kc.attn_inputs(shape, dtype, seed=i, layout="bnhd" if i % 2 else "bhnd", device=dev)
        tol = TOL[dtype] * (1 if dtype == torch.float32 else 2)
        fwd_bwd(f"attention {'x'.join(map(str, shape))} {dtype}", ops.attention, ref, (q, k, v), tol)
        if dev == "cuda" and dtype != torch.float32 and not smoke:
            # The opt-in backward with dQ from float32 atomics in the dK/dV pass.
            with _atomic_dq():
                fwd_bwd(f"attention atomic dQ {'x'.join(map(str, shape))} {dtype}", ops.attention, ref,
                        (q, k, v), tol)
    if not smoke:
        q = kc.misaligned(torch.randn(1, 2, 40, 64).to(dev, dtype))
        fwd_bwd(f"attention misaligned {dtype}", ops.attention, ref, (q, q, q), TOL[dtype] * 2)


OPS = {"channel_shuffle": channel_shuffle, "activation": activation, "dwconv_bn_act": dwconv_bn_act,
       "squeeze_excite": squeeze_excite, "attention": attention}


def unusable(dev: str) -> str:
    """Why the kernels of ``dev`` cannot be exercised here ('' when they can)."""
    if not torchcv_ext.extension_loaded():
        return "the compiled extension is not loaded"
    if dev == "cuda":
        if not torch.cuda.is_available():
            return "no CUDA device"
        if not torchcv_ext.cuda_kernels_compiled():
            return "CUDA kernels not compiled"
    return ""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--smoke", action="store_true", help="one case per op and dtype (seconds)")
    p.add_argument("--ops", default=",".join(OPS), help="comma-separated subset of " + ", ".join(OPS))
    a = p.parse_args(argv)
    why = unusable(a.device)
    if why:
        print(why)
        return 2
    for name in a.ops.split(","):
        if name not in OPS:
            p.error(f"--ops: unknown op {name!r}; choose from {', '.join(OPS)}")
        for dtype in DTYPES:
            OPS[name](a.device, dtype, a.smoke)
    if a.device == "cuda":
        torch.cuda.synchronize()
    print(f"check_kernels: {PASSED[0]} cases match, {len(FAILURES)} mismatch")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
