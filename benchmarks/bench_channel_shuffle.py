"""Benchmark: channel_shuffle and ShuffleNetV2's fused concat+shuffle(+split) vs eager PyTorch vs
torch.compile, with achieved GB/s against the device's measured copy bandwidth.

    python benchmarks/bench_channel_shuffle.py                 # cuda if available, else cpu
    python benchmarks/bench_channel_shuffle.py --device cpu --quick

Bytes counted: the minimum, one read and one write of every element (a plain copy of the same
bytes is the ceiling, reported as % copy BW).
"""
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common as bc  # noqa: E402

from torchcv_ext import ops  # noqa: E402


def shapes(args):
    # (N, C, H, W, groups): ShuffleNetV2 x1.0 stages (C = 116/232/464) and ShuffleNetV1 g=3.
    if args.device == "cpu":
        s = [(16, 116, 28, 28, 2), (16, 232, 14, 14, 2), (16, 240, 28, 28, 3)]
        return s[:2] if args.quick else s
    s = [(128, 116, 28, 28, 2), (128, 232, 14, 14, 2), (128, 464, 7, 7, 2), (128, 240, 28, 28, 3)]
    return s[:2] if args.quick else s


def eager_shuffle_cat_split(a, b):
    return F.channel_shuffle(torch.cat([a, b], 1), 2).chunk(2, 1)


def main(argv=None):
    args = bc.parse_args(__doc__.splitlines()[0], argv)
    dev, dt = args.device, args.torch_dtype
    rows = []
    for n, c, h, w, g in shapes(args):
        for layout in ("nchw", "channels_last"):
            mf = torch.channels_last if layout == "channels_last" else torch.contiguous_format
            x = torch.randn(n, c, h, w, device=dev, dtype=dt).contiguous(memory_format=mf)
            case = f"N{n} C{c} {h}x{w} g{g} {layout}"
            eager = lambda: F.channel_shuffle(x, g)  # noqa: E731
            impls = {
                "torchcv_ext": lambda: ops.channel_shuffle(x, g),
                "eager": eager,
                "copy (ceiling)": lambda: x.clone(),
            }
            if layout == "nchw":  # the classic ShuffleNet idiom (5-D, so NCHW only)
                impls["eager view/transpose"] = lambda: (
                    x.view(n, g, c // g, h, w).transpose(1, 2).contiguous().view(n, c, h, w))
            if not args.no_compile:
                cf = bc.compiled(lambda t: F.channel_shuffle(t, g))
                impls["torch.compile"] = (lambda: cf(x)) if cf else None
            rows += bc.bench_impls("channel_shuffle", case, impls, args, bytes=2 * x.nbytes)

            # ShuffleNetV2 block tail + next block's split: cat -> shuffle -> chunk.
            half = c // 2 if c % 2 == 0 else c
            a = torch.randn(n, half, h, w, device=dev, dtype=dt).contiguous(memory_format=mf)
            b = torch.randn_like(a)
            impls = {
                "torchcv_ext": lambda: ops.shuffle_cat_split(a, b),
                "eager": lambda: eager_shuffle_cat_split(a, b),
            }
            if not args.no_compile:
                cs = bc.compiled(eager_shuffle_cat_split)
                impls["torch.compile"] = (lambda: cs(a, b)) if cs else None
            rows += bc.bench_impls("shuffle_cat_split", f"N{n} 2x{half} {h}x{w} {layout}", impls,
                                   args, bytes=4 * a.nbytes)
    return bc.report("channel_shuffle", rows, args)


if __name__ == "__main__":
    bc.run_main(main, "channel_shuffle")
