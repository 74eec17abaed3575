"""Benchmark: fused squeeze-and-excitation (and hardswish) vs eager torchvision vs torch.compile,
forward and forward+backward, on EfficientNet-B0 and MobileNetV3-Large SE shapes.

    python benchmarks/bench_squeeze_excite.py                   # cuda if available, else cpu
    python benchmarks/bench_squeeze_excite.py --device cpu --quick

Bytes counted (the bandwidth floor of the fused design): forward reads x twice and writes y once
(3 |x|); forward + backward adds one read of x, two of dy and one write of dx (7 |x| in all).
hardswish: 2 |x| forward, 5 |x| forward + backward.
"""
import os
import sys

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common as bc  # noqa: E402

from torchcv_ext import ops  # noqa: E402
from torchcv_ext.nn import SqueezeExcite  # noqa: E402

# (name, C, S, H, activation, gate): the SE blocks of EfficientNet-B0 (SiLU/Sigmoid) and
# MobileNetV3-Large (ReLU/Hardsigmoid) at 224x224 input.
SHAPES = [
    ("B0 s1", 32, 8, 112, nn.SiLU, nn.Sigmoid),
    ("B0 s2", 144, 6, 56, nn.SiLU, nn.Sigmoid),
    ("B0 s3", 240, 10, 28, nn.SiLU, nn.Sigmoid),
    ("B0 s5", 672, 28, 14, nn.SiLU, nn.Sigmoid),
    ("B0 s7", 1152, 48, 7, nn.SiLU, nn.Sigmoid),
    ("MNv3 s3", 120, 32, 28, nn.ReLU, nn.Hardsigmoid),
    ("MNv3 s5", 672, 168, 14, nn.ReLU, nn.Hardsigmoid),
    ("MNv3 s6", 960, 240, 7, nn.ReLU, nn.Hardsigmoid),
]


def cases(args):
    if args.device == "cpu":
        batch = 8
        shapes = [SHAPES[i] for i in ((0, 4, 6) if args.quick else (0, 2, 4, 5, 7))]
        layouts = ("nchw",) if args.quick else ("nchw", "channels_last")
    else:
        batch = 128
        shapes = [SHAPES[i] for i in ((0, 4, 6) if args.quick else range(len(SHAPES)))]
        layouts = ("channels_last",) if args.quick else ("channels_last", "nchw")
    for s in shapes:
        for layout in layouts:
            yield batch, s, layout


def fwd_bwd(m, x, gy):
    def run():
        m(x).backward(gy)
    return run


def main(argv=None):
    args = bc.parse_args(__doc__.splitlines()[0], argv)
    dev, dt = args.device, args.torch_dtype
    rows = []
    for n, (name, c, s, h, act, gate), layout in cases(args):
        mf = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        tv = torchvision.ops.SqueezeExcitation(c, s, act, gate).to(dev, dt)
        ours = SqueezeExcite.from_modules(tv)
        x = torch.randn(n, c, h, h, device=dev, dtype=dt).contiguous(memory_format=mf)
        case = f"{name} N{n} C{c} S{s} {h}x{h} {layout}"
        impls = {"torchcv_ext": lambda: ours(x), "eager": lambda: tv(x)}
        ct = None if args.no_compile else bc.compiled(tv)
        if not args.no_compile:
            impls["torch.compile"] = (lambda: ct(x)) if ct is not None else None
        with torch.no_grad():
            rows += bc.bench_impls("squeeze_excite fwd", case, impls, args, bytes=3 * x.nbytes)

        xg = x.detach().clone().requires_grad_()
        gy = torch.randn_like(x)
        impls = {"torchcv_ext": fwd_bwd(ours, xg, gy), "eager": fwd_bwd(tv, xg, gy)}
        if not args.no_compile:
            impls["torch.compile"] = fwd_bwd(ct, xg, gy) if ct is not None else None
        rows += bc.bench_impls("squeeze_excite fwd+bwd", case, impls, args, bytes=7 * x.nbytes)

    # hardswish / hardsigmoid on a MobileNetV3 activation shape.
    n = 8 if dev == "cpu" else 128
    for fname, ours_f, eager_f in (("hardswish", ops.hardswish, F.hardswish),
                                   ("hardsigmoid", ops.hardsigmoid, F.hardsigmoid)):
        x = torch.randn(n, 240, 28, 28, device=dev, dtype=dt).contiguous(memory_format=torch.channels_last)
        case = f"N{n} C240 28x28 channels_last"
        impls = {"torchcv_ext": lambda: ours_f(x), "eager": lambda: eager_f(x)}
        if not args.no_compile:
            ce = bc.compiled(eager_f)
            impls["torch.compile"] = (lambda: ce(x)) if ce is not None else None
        rows += bc.bench_impls(f"{fname} fwd", case, impls, args, bytes=2 * x.nbytes)
        if args.quick:
            continue
        xg = x.detach().clone().requires_grad_()
        gy = torch.randn_like(x)
        impls = {"torchcv_ext": lambda: ours_f(xg).backward(gy), "eager": lambda: eager_f(xg).backward(gy)}
        rows += bc.bench_impls(f"{fname} fwd+bwd", case, impls, args, bytes=5 * x.nbytes)
    return bc.report("squeeze_excite", rows, args)


if __name__ == "__main__":
    bc.run_main(main, "squeeze_excite")
