"""Benchmark: fused flash-style attention (torchcv_ext.ops.attention) vs F.scaled_dot_product_attention
with each backend forced separately (flash, efficient, math) vs eager matmul-softmax vs
torch.compile of the eager code, forward and backward, in TFLOP/s.

    python benchmarks/bench_attention.py                    # cuda if available (bf16), else cpu (fp32)
    python benchmarks/bench_attention.py --device cpu --quick

FLOPs counted: forward 4 * B * H * N^2 * D (the two matmuls); backward 2.5x that (five matmuls,
one of which recomputes S). "bwd" rows time the backward alone (autograd.grad of a retained
graph), "fwd+bwd" rows both (a train step's cost, 3.5x the forward's FLOPs; not in the GPU
suite's --quick pass); on a GPU, "torchcv_ext (atomic dQ)" is the backward with ops.config.cuda_attention_dq = "atomic".
Shapes: ViT-S/16 and ViT-B/16 at 224 (B=64, N=197, H=6/12, D=64), ViT-L/16 at 384 (N=577, D=64),
and long sequences (N=1024 D=128, N=4096 D=64); small CPU-sized shapes on cpu.
Target on a GPU: forward at parity with SDPA's best backend at N=197, backward within 1.3x.
"""
import os
import sys

import torch
import torch._functorch.config
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common as bc  # noqa: E402

from torchcv_ext import ops  # noqa: E402

# The "bwd" rows call autograd.grad(retain_graph=True) repeatedly on one graph; compiled graphs may
# donate saved buffers to the backward, which forbids that, so keep them.
torch._functorch.config.donated_buffer = False


def shapes(args):
    # (label, B, H, N, D)
    if args.device == "cpu":
        s = [("ViT-S N197", 4, 6, 197, 64), ("N1024", 1, 4, 1024, 64)]
        return s[:1] if args.quick else s
    s = [("ViT-S/16 224", 64, 6, 197, 64), ("ViT-B/16 224", 64, 12, 197, 64),
         ("ViT-L/16 384", 16, 16, 577, 64), ("N1024 D128", 8, 8, 1024, 128),
         ("N4096", 4, 12, 4096, 64)]
    return s[:2] if args.quick else s


def eager(q, k, v):
    return torch.softmax((q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5), dim=-1) @ v


def sdpa(backend):
    def f(q, k, v):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v)
    return f


def with_config(fn, key, value):
    """fn() with torchcv_ext.ops.config.<key> = value, restored afterwards."""
    from torchcv_ext.ops import config

    def g():
        old = getattr(config, key)
        setattr(config, key, value)
        try:
            return fn()
        finally:
            setattr(config, key, old)
    return g


def main(argv=None):
    args = bc.parse_args(__doc__.splitlines()[0], argv)
    dev, dt = args.device, args.torch_dtype
    impls = {
        "torchcv_ext": ops.attention,
        "sdpa flash": sdpa(SDPBackend.FLASH_ATTENTION),
        "sdpa efficient": sdpa(SDPBackend.EFFICIENT_ATTENTION),
        "sdpa math": sdpa(SDPBackend.MATH),
        "eager": eager,
    }
    if not args.no_compile:
        # dynamic=True: one graph for every shape (keeps compile time inside the suite's limit).
        impls["torch.compile"] = bc.compiled(eager, dynamic=True)
    rows = []
    for label, b, h, n, d in shapes(args):
        case = f"{label} B{b} H{h} N{n} D{d}"
        g = torch.Generator(device=dev).manual_seed(0)
        q, k, v = (torch.randn(b, h, n, d, device=dev, dtype=dt, generator=g) for _ in range(3))
        go = torch.randn(b, h, n, d, device=dev, dtype=dt, generator=g)
        flops = 4.0 * b * h * n * n * d
        fwd, bwd, step = {}, {}, {}
        for name, fn in impls.items():
            if fn is None:
                fwd[name] = bwd[name] = step[name] = None
                continue
            fwd[name] = (lambda fn=fn: fn(q, k, v))
            qg, kg, vg = (t.detach().requires_grad_(True) for t in (q, k, v))
            step[name] = (lambda fn=fn, qg=qg, kg=kg, vg=vg: torch.autograd.grad(
                fn(qg, kg, vg), (qg, kg, vg), go))
            try:
                out = fn(qg, kg, vg)
                bwd[name] = (lambda out=out, qg=qg, kg=kg, vg=vg: torch.autograd.grad(
                    out, (qg, kg, vg), go, retain_graph=True))
            except Exception as e:  # noqa: BLE001  (e.g. a backend that does not support the case)
                err = f"{type(e).__name__}: {e}"[:200]
                bwd[name] = (lambda err=err: (_ for _ in ()).throw(RuntimeError(err)))
        if dev == "cuda" and dt != torch.float32 and bwd.get("torchcv_ext") is not None:
            # The other backward: dQ from the dK/dV pass with float32 atomics (opt-in until
            # measured faster than the default separate dQ pass).
            bwd["torchcv_ext (atomic dQ)"] = with_config(bwd["torchcv_ext"], "cuda_attention_dq", "atomic")
        with torch.no_grad():
            rows += bc.bench_impls("attention fwd", case, fwd, args, flops=flops)
        rows += bc.bench_impls("attention bwd", case, bwd, args, flops=2.5 * flops)
        if dev == "cpu" or not args.quick:
            # A train step's cost: a flash backward recomputes the probabilities that eager and
            # SDPA's math backend saved in their forward (5 matmuls instead of 4), so the backward
            # alone is only half of the trade (the GPU suite's --quick pass leaves this row out).
            rows += bc.bench_impls("attention fwd+bwd", case, step, args, flops=3.5 * flops)
        del q, k, v, go, fwd, bwd, step
        if dev == "cuda":
            torch.cuda.empty_cache()
    return bc.report("attention", rows, args)


if __name__ == "__main__":
    bc.run_main(main, "attention")
