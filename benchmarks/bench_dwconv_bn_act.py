"""Benchmark: fused depthwise conv + BatchNorm + activation (DWConvBNAct) vs eager
Sequential(Conv2d(groups=C), BatchNorm2d, act) vs torch.compile of the eager layers, on
MobileNetV3-Large / EfficientNet-B0 depthwise layer shapes; eval forward and train forward+backward.

    python benchmarks/bench_dwconv_bn_act.py                    # cuda if available, else cpu
    python benchmarks/bench_dwconv_bn_act.py --device cpu --quick

Bytes counted (the minimum traffic of the layer): eval = read x + write y; train fwd+bwd = read x,
write y, read dy, read x again, write dx (5 activation-sized passes; the weights are negligible).
GB/s on that basis is compared with the device's measured copy bandwidth by bench_common.
"""
import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common as bc  # noqa: E402

from torchcv_ext.nn import DWConvBNAct  # noqa: E402
from torchcv_ext.ops import config  # noqa: E402

ACT = {"relu": nn.ReLU, "hardswish": nn.Hardswish, "silu": nn.SiLU}

# (name, C, H (input), k, stride, activation)
LAYERS = [
    ("mnv3 b1", 64, 112, 3, 2, "relu"),
    ("mnv3 b3", 72, 56, 5, 2, "relu"),
    ("mnv3 b5", 120, 28, 5, 1, "relu"),
    ("mnv3 b6", 240, 28, 3, 2, "hardswish"),
    ("mnv3 b10", 480, 14, 3, 1, "hardswish"),
    ("mnv3 b12", 672, 14, 5, 2, "hardswish"),
    ("mnv3 b14", 960, 7, 5, 1, "hardswish"),
    ("effb0 s1", 32, 112, 3, 1, "silu"),
    ("effb0 s2", 96, 112, 3, 2, "silu"),
    ("effb0 s3", 144, 56, 5, 2, "silu"),
    ("effb0 s4", 240, 28, 3, 2, "silu"),
    ("effb0 s6", 672, 14, 5, 2, "silu"),
]


def cases(args):
    if args.device == "cpu":
        n = 8
        picked = [LAYERS[i] for i in ((2, 4, 7) if args.quick else (0, 2, 4, 6, 7, 9))]
    else:
        n = 128
        picked = [LAYERS[i] for i in ((0, 4, 7, 9) if args.quick else range(len(LAYERS)))]
    return n, picked


def make_layers(c, k, s, act, dev, dt):
    eager = nn.Sequential(nn.Conv2d(c, c, k, s, (k - 1) // 2, groups=c, bias=False),
                          nn.BatchNorm2d(c), ACT[act]()).to(dev)
    with torch.no_grad():
        eager[1].weight.uniform_(0.5, 1.5)
        eager[1].bias.normal_()
        eager[1].running_mean.normal_()
        eager[1].running_var.uniform_(0.5, 2.0)
    ours = DWConvBNAct(c, k, s, activation=act).to(dev)
    ours.load_state_dict(eager.state_dict())
    # Parameters stay float32 (as in mixed-precision training); activations run in `dt` under
    # autocast for the low-precision dtypes, like a real network.
    return eager, ours


def forced(fn, field, value):
    """fn with ``config.<field> = value`` (DWConvBNAct's CPU path forced, whatever "auto" picks)."""
    def f():
        saved = getattr(config, field)
        setattr(config, field, value)
        try:
            return fn()
        finally:
            setattr(config, field, saved)
    return f


def main(argv=None):
    args = bc.parse_args(__doc__.splitlines()[0], argv)
    dev, dt = args.device, args.torch_dtype
    amp = dt != torch.float32
    n, layers = cases(args)
    rows = []

    def autocast():
        return torch.autocast(device_type=dev, dtype=dt, enabled=amp)

    for name, c, h, k, s, act in layers:
        for layout in ("nchw", "channels_last"):
            mf = torch.channels_last if layout == "channels_last" else torch.contiguous_format
            eager, ours = make_layers(c, k, s, act, dev, dt)
            x = torch.randn(n, c, h, h, device=dev, dtype=dt).contiguous(memory_format=mf)
            ho = (h + 2 * ((k - 1) // 2) - k) // s + 1
            y_bytes = n * c * ho * ho * x.element_size()
            case = f"{name} N{n} C{c} {h}x{h} k{k} s{s} {act} {layout}"

            # ---- eval forward ----
            eager.eval()
            ours.eval()

            def run_eval(m):
                def f():
                    with torch.no_grad(), autocast():
                        return m(x)
                return f

            impls = {"torchcv_ext": run_eval(ours), "eager": run_eval(eager)}
            if dev == "cpu":
                # config.dwconv_cpu_eval_backend="auto" picks oneDNN's fused depthwise conv or
                # eager's modules where they win (ops/dwconv_bn_act.py: backend); this row is
                # always our C++ kernel.
                impls["torchcv_ext (C++ kernel)"] = forced(run_eval(ours), "dwconv_cpu_eval_backend", "kernel")
            if not args.no_compile:
                ce = bc.compiled(eager)
                impls["torch.compile"] = run_eval(ce) if ce else None
            rows += bc.bench_impls("dwconv_bn_act eval", case, impls, args, bytes=x.nbytes + y_bytes)

            # ---- train forward + backward ----
            eager.train()
            ours.train()
            xg = x.detach().clone().requires_grad_(True)
            gy = torch.randn(n, c, ho, ho, device=dev, dtype=dt).contiguous(memory_format=mf)

            def run_train(m):
                def f():
                    with autocast():
                        y = m(xg)
                    y.backward(gy)
                return f

            impls = {"torchcv_ext": run_train(ours), "eager": run_train(eager)}
            if dev == "cpu":  # the same for the train path: always the C++ train kernels
                impls["torchcv_ext (C++ kernels)"] = forced(run_train(ours), "dwconv_cpu_train_backend", "kernels")
            if not args.no_compile:
                ct = bc.compiled(eager)
                impls["torch.compile"] = run_train(ct) if ct else None
            rows += bc.bench_impls("dwconv_bn_act train fwd+bwd", case, impls, args,
                                   bytes=3 * x.nbytes + 2 * y_bytes)
    return bc.report("dwconv_bn_act", rows, args)


if __name__ == "__main__":
    bc.run_main(main, "dwconv_bn_act")
