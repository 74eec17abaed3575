"""Run every CUDA op once, forward and backward, on small inputs in several layouts and dtypes,
and check it against the reference. Meant to run under compute-sanitizer (memcheck, racecheck)
in benchmarks/gpu_suite.sh, so it is short and touches every kernel.

    compute-sanitizer --tool memcheck --error-exitcode 1 python3 benchmarks/sanitize_ops.py
"""
import sys

import torch

import torchcv_ext
from torchcv_ext import ops

FAILURES = []


def check(name, got, exp, atol=0.0, rtol=0.0):
    got, exp = (got,) if torch.is_tensor(got) else got, (exp,) if torch.is_tensor(exp) else exp
    for g, e in zip(got, exp):
        if not torch.allclose(g.float(), e.float(), atol=atol, rtol=rtol):
            FAILURES.append(name)
            print(f"MISMATCH {name}: max err {(g.float() - e.float()).abs().max().item():.3g}")
            return
    print(f"ok {name}")


def case_channel_shuffle(dev):
    from torchcv_ext.ops.reference import channel_shuffle as ref

    for dt in (torch.float32, torch.float16, torch.bfloat16):
        for mf in (torch.contiguous_format, torch.channels_last):
            for shape, g in [((2, 12, 5, 7), 3), ((3, 8, 1, 1), 2), ((2, 16, 8, 8), 4)]:
                x = torch.randn(shape, device=dev, dtype=dt).contiguous(memory_format=mf).requires_grad_()
                y = ops.channel_shuffle(x, g)
                (gx,) = torch.autograd.grad(y, x, torch.ones_like(y) * 2)
                check(f"channel_shuffle {dt} {mf} {shape}", (y, gx),
                      (ref.channel_shuffle(x.detach(), g), torch.full_like(x, 2)))
                half = shape[1] // 2
                a = x.detach()[:, :half].contiguous(memory_format=mf).requires_grad_()
                b = x.detach()[:, half:].contiguous(memory_format=mf).requires_grad_()
                lo, hi = ops.shuffle_cat_split(a, b)
                ga, gb = torch.autograd.grad((lo.float().sum() + 2 * hi.float().sum()), (a, b))
                rlo, rhi = ref.shuffle_cat_split(a.detach(), b.detach())
                check(f"shuffle_cat_split {dt} {mf} {shape}", (lo, hi), (rlo, rhi))
                ra, rb = torch.autograd.grad(
                    sum(t.float().sum() * w for t, w in zip(ref.shuffle_cat_split(a, b), (1, 2))), (a, b))
                check(f"shuffle_cat backward {dt} {mf} {shape}", (ga, gb), (ra, rb))
                check(f"shuffle_cat {dt} {mf}", ops.shuffle_cat(a, b), ref.shuffle_cat(a.detach(), b.detach()))


CASES = {"channel_shuffle": case_channel_shuffle}


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 2
    if not torchcv_ext.cuda_kernels_compiled():
        print("CUDA kernels not compiled")
        return 2
    for name, fn in CASES.items():
        fn("cuda")
    torch.cuda.synchronize()
    print(f"{len(FAILURES)} mismatches")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
