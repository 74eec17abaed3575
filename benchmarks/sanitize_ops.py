"""Run every CUDA op once, forward and backward, on small inputs in several layouts and dtypes,
and check it against the reference. Meant to run under compute-sanitizer (memcheck, racecheck)
in benchmarks/gpu_suite.sh, so it is short and touches every kernel.

    compute-sanitizer --tool memcheck --error-exitcode 1 python3 benchmarks/sanitize_ops.py
"""
import os
import sys

import torch

import torchcv_ext
from torchcv_ext import ops

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
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


def case_attention(dev):
    import sanitize_attention  # benchmarks/sanitize_attention.py (runnable on its own too)

    sanitize_attention.run_cases()
    FAILURES.extend(sanitize_attention.FAILURES)


def _grads_vs_reference(name, fn, ref_fn, inputs, tol):
    """Forward and every input gradient of fn vs ref_fn run in float64 on the same inputs."""
    ins = [t.detach().requires_grad_() for t in inputs]
    out = fn(*ins)
    go = torch.randn_like(out)
    grads = torch.autograd.grad(out, ins, go)
    ins64 = [t.detach().double().requires_grad_() for t in inputs]
    out64 = ref_fn(*ins64)
    grads64 = torch.autograd.grad(out64, ins64, go.double())
    check(name, (out, *grads), (out64, *grads64), atol=tol, rtol=tol)


def case_squeeze_excite(dev):
    from torchcv_ext.ops.reference import squeeze_excite as ref

    for dt, tol in ((torch.float32, 1e-4), (torch.float16, 2e-2), (torch.bfloat16, 1e-1)):
        for mf in (torch.contiguous_format, torch.channels_last):
            for n, c, sq, h, w in ((2, 16, 4, 7, 7), (1, 13, 3, 1, 1), (3, 40, 10, 5, 9)):
                for act, gate in (("relu", "sigmoid"), ("silu", "hardsigmoid")):
                    x = torch.randn(n, c, h, w, device=dev, dtype=dt).contiguous(memory_format=mf)
                    w1 = torch.randn(sq, c, device=dev, dtype=dt) * 0.3
                    b1 = torch.randn(sq, device=dev, dtype=dt) * 0.1
                    w2 = torch.randn(c, sq, device=dev, dtype=dt) * 0.3
                    b2 = torch.randn(c, device=dev, dtype=dt) * 0.1
                    _grads_vs_reference(
                        f"squeeze_excite {dt} {mf} {(n, c, sq, h, w)} {act}/{gate}",
                        lambda *t: ops.squeeze_excite(*t, act, gate),
                        lambda *t: ref.squeeze_excite(*t, act, gate), (x, w1, b1, w2, b2), tol)


def case_hardswish(dev):
    from torchcv_ext.ops.reference import hardswish as ref

    for dt, tol in ((torch.float32, 1e-5), (torch.float16, 2e-3), (torch.bfloat16, 2e-2)):
        for shape in ((2, 8, 5, 7), (3, 1001), (1,)):
            x = torch.randn(shape, device=dev, dtype=dt) * 4
            _grads_vs_reference(f"hardswish {dt} {shape}", ops.hardswish, ref.hardswish, (x,), tol)
            _grads_vs_reference(f"hardsigmoid {dt} {shape}", ops.hardsigmoid, ref.hardsigmoid, (x,), tol)


def case_dwconv_bn_act(dev):
    import torch.nn.functional as F

    from torchcv_ext.ops._common import apply_activation

    def eager_eval(x, w, scale, shift, s, act):
        z = F.conv2d(x, w, None, s, w.shape[-1] // 2, 1, x.shape[1])
        return apply_activation(act, z * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1))

    def eager_train(x, w, g, b, s, act):
        z = F.conv2d(x, w, None, s, w.shape[-1] // 2, 1, x.shape[1])
        return apply_activation(act, F.batch_norm(z, None, None, g, b, True, 0.0, 1e-5))

    for dt, tol in ((torch.float32, 1e-3), (torch.float16, 3e-2), (torch.bfloat16, 2e-1)):
        for mf in (torch.contiguous_format, torch.channels_last):
            for n, c, h, w_, k, s, act in ((2, 8, 9, 11, 3, 1, "relu6"), (1, 5, 7, 7, 5, 2, "hardswish"),
                                          (3, 16, 1, 6, 7, 1, "silu"), (2, 24, 14, 14, 3, 2, "identity")):
                x = torch.randn(n, c, h, w_, device=dev, dtype=dt).contiguous(memory_format=mf)
                w = torch.randn(c, 1, k, k, device=dev, dtype=dt) * 0.3
                scale = torch.rand(c, device=dev, dtype=dt) + 0.5
                shift = torch.randn(c, device=dev, dtype=dt) * 0.1
                tag = f"{dt} {mf} {(n, c, h, w_)} k{k} s{s} {act}"
                _grads_vs_reference(f"dwconv_bn_act eval {tag}",
                                    lambda *t: ops.dwconv_bn_act(*t, s, None, 1, act),
                                    lambda *t: eager_eval(*t, s, act), (x, w, scale, shift), tol)
                _grads_vs_reference(f"dwconv_bn_act train {tag}",
                                    lambda *t: ops.dwconv_bn_act_train(t[0], t[1], t[2], t[3], 1e-5, s,
                                                                       None, 1, act)[0],
                                    lambda *t: eager_train(*t, s, act), (x, w, scale, shift), tol)


CASES = {
    "channel_shuffle": case_channel_shuffle,
    "dwconv_bn_act": case_dwconv_bn_act,
    "squeeze_excite": case_squeeze_excite,
    "hardswish": case_hardswish,
    "attention": case_attention,
}


def cuda_unusable() -> str:
    """Why the CUDA kernels cannot be exercised here ('' when they can)."""
    if not torch.cuda.is_available():
        return "no CUDA device"
    if not torchcv_ext.cuda_kernels_compiled():
        return "CUDA kernels not compiled"
    return ""


def main() -> int:
    if cuda_unusable():
        print(cuda_unusable())
        return 2
    for name, fn in CASES.items():
        fn("cuda")
    torch.cuda.synchronize()
    print(f"{len(FAILURES)} mismatches")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
