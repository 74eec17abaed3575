"""Run every attention CUDA kernel once (forward, Delta preprocess, dK/dV and dQ passes, and the
opt-in atomic-dQ dK/dV pass + convert) for each dtype (fp16 / bf16 tensor cores, fp32 SIMT) and
head dim (32, 64, 128), on small shapes with partial tiles, multiple tiles (so the double-buffered
pipelines wrap) and strided / misaligned inputs, checking against the float64 reference. Meant for
compute-sanitizer:

    compute-sanitizer --tool memcheck  --error-exitcode 1 python3 benchmarks/sanitize_attention.py
    compute-sanitizer --tool racecheck --error-exitcode 1 python3 benchmarks/sanitize_attention.py

(the same checks as a case of benchmarks/sanitize_ops.py would do; kept next to the op's
benchmark so it runs on its own).
"""
import os
import sys

import torch

from torchcv_ext.ops import attention
from torchcv_ext.ops.reference import attention as ref

FAILURES = []


def check(name, q, k, v):
    q, k, v = (t.detach().requires_grad_(True) for t in (q, k, v))
    out = attention(q, k, v)
    go = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), go)
    qd, kd, vd = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    r_out = ref.attention(qd, kd, vd)[0]
    r_grads = torch.autograd.grad(r_out, (qd, kd, vd), go.double())
    tol = 2e-4 if q.dtype == torch.float32 else (5e-3 if q.dtype == torch.float16 else 4e-2)
    for what, a, b in zip(("out", "dq", "dk", "dv"), (out, *grads), (r_out, *r_grads)):
        err = (a.double() - b).abs().max().item()
        scale = max(1.0, b.abs().max().item())
        if not (err <= tol * scale) or not torch.isfinite(a).all():
            FAILURES.append(f"{name} {what}")
            print(f"MISMATCH {name} {what}: max err {err:.3g} (allowed {tol * scale:.3g})")
            return
    print(f"ok {name}")


def run_cases() -> None:
    """Every case; mismatches are appended to FAILURES (also used by sanitize_ops.py)."""
    torch.manual_seed(0)
    for dt in (torch.float16, torch.bfloat16, torch.float32):
        for d in (32, 64, 128):
            for b, h, nq, nk in ((1, 2, 1, 1), (2, 1, 70, 135), (1, 1, 130, 7)):
                q = torch.randn(b, h, nq, d, device="cuda", dtype=dt)
                k = torch.randn(b, h, nk, d, device="cuda", dtype=dt)
                v = torch.randn(b, h, nk, d, device="cuda", dtype=dt)
                check(f"{dt} D{d} B{b} H{h} Nq{nq} Nk{nk}", q, k, v)
        if dt != torch.float32:  # the opt-in atomic-dQ backward (its dS tile in shared memory)
            os.environ["TORCHCV_EXT_ATTENTION_DQ"] = "atomic"
            try:
                for d in (32, 64, 128):
                    q, k, v = (torch.randn(2, 1, n, d, device="cuda", dtype=dt) for n in (70, 135, 135))
                    check(f"{dt} D{d} atomic dQ Nq70 Nk135", q, k, v)
            finally:
                del os.environ["TORCHCV_EXT_ATTENTION_DQ"]
        # Strided qkv views (direct path) and a misaligned base (copy path).
        qkv = torch.randn(2, 77, 3, 2, 64, device="cuda", dtype=dt)
        check(f"{dt} qkv views", *qkv.permute(2, 0, 3, 1, 4).unbind(0))
        base = torch.randn(1 + 2 * 40 * 64, device="cuda", dtype=dt)
        x = base[1:].view(1, 2, 40, 64)
        check(f"{dt} misaligned", x, x, x)
    torch.cuda.synchronize()


def main() -> int:
    from sanitize_ops import cuda_unusable  # same folder

    if cuda_unusable():
        print(cuda_unusable())
        return 2
    run_cases()
    print(f"{len(FAILURES)} mismatches")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
