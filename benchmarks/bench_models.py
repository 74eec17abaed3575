"""Benchmark: end-to-end inference and train-step time of MobileNetV3-L, EfficientNet-B0,
ShuffleNetV2 x1.0 and ResNet-50 -- torchcv_ext.models (fused blocks) vs torchvision eager vs
torch.compile of torchvision, the same weights in all three.

    python benchmarks/bench_models.py --device cpu --quick          # CPU-sized (batch 4-8, 160-224 px)
    python benchmarks/bench_models.py --device cuda                 # batch 128 at 224, AMP bf16, channels_last

"eager" is torchvision's model; "x eager" is the speedup over it. Targets from the issue:
CPU fused eager inference >= 1.5x torchvision eager; GPU (AMP bf16, channels_last) train step
>= 1.3x torchvision eager. FLOPs are counted on the torchvision model (same math) with
torch.utils.flop_counter, x3 for a train step.

On the CPU in float32, inference also times "onnxruntime": our model exported by
torchcv_ext.export.to_onnx and run in onnxruntime's CPU provider (when onnxruntime and onnxscript
are installed) -- the deployment alternative to running the fused kernels from PyTorch.

--quick (the CI / GPU-suite setting, ~150 s budget) compiles and exports only the first model:
each torch.compile or ONNX export of a whole network costs tens of seconds.
"""
import contextlib
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common as bc  # noqa: E402

import torchvision.models as tvm  # noqa: E402

from torchcv_ext.models import create_model  # noqa: E402

MODELS = ["mobilenet_v3_large", "efficientnet_b0", "shufflenet_v2_x1_0", "resnet50"]


def _extra(p):
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated model names")
    p.add_argument("--batch", type=int, default=None, help="default 128 (cuda) / 8 (cpu; 4 with --quick)")
    p.add_argument("--size", type=int, default=None, help="image size (default 224; 160 on cpu --quick)")
    p.add_argument("--channels-last", dest="channels_last", action="store_true", default=None)
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--no-train", action="store_true", help="inference only")


def _flops(model, x) -> float:
    try:
        from torch.utils.flop_counter import FlopCounterMode
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            model(x)
        return float(fc.get_total_flops())
    except Exception:  # noqa: BLE001
        return None


def main(argv=None):
    args = bc.parse_args(__doc__.splitlines()[0], argv, extra=_extra)
    dev = args.device
    cuda = dev.startswith("cuda")
    batch = args.batch or ((64 if args.quick else 128) if cuda else (4 if args.quick else 8))
    size = args.size or (224 if cuda or not args.quick else 160)
    channels_last = cuda if args.channels_last is None else args.channels_last
    mf = torch.channels_last if channels_last else torch.contiguous_format
    # Low precision = autocast over float32 weights (AMP), as in training scripts.
    amp = args.torch_dtype != torch.float32

    def autocast():
        return torch.autocast(dev.split(":")[0], dtype=args.torch_dtype) if amp else contextlib.nullcontext()

    rows = []
    layout = "channels_last" if channels_last else "nchw"
    for i, name in enumerate(args.models.split(",")):
        use_compile = not args.no_compile and (i == 0 or not args.quick)
        torch.manual_seed(0)
        tv = getattr(tvm, name)(weights=None).to(dev, memory_format=mf)
        ours = create_model(name).to(dev, memory_format=mf)
        ours.load_state_dict(tv.state_dict())
        x = torch.randn(batch, 3, size, size, device=dev).contiguous(memory_format=mf)
        target = torch.randint(0, 1000, (batch,), device=dev)
        flops = _flops(tv.eval(), x[:1])
        flops = flops * batch if flops else None

        # ---------------------------------------------------------------- inference
        case = f"infer N{batch} {size}px {layout}"
        impls = {}
        for impl, model in (("torchcv_ext", ours), ("eager", tv)):
            model.eval()
            impls[impl] = (lambda m=model: _infer(m, x, autocast))
        if use_compile:
            ctv = bc.compiled(tv.eval())
            impls["torch.compile"] = (lambda: _infer(ctv, x, autocast)) if ctv is not None else None
        if dev == "cpu" and not amp and (i == 0 or not args.quick):
            impls["onnxruntime"] = _onnxruntime(ours.eval(), x)
        rows += bc.bench_impls(name, case, impls, args, flops=flops)

        if args.no_train:
            continue
        # ---------------------------------------------------------------- train step
        case = f"train N{batch} {size}px {layout}"
        impls = {}
        for impl, model in (("torchcv_ext", ours), ("eager", tv)):
            model.train()
            opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
            impls[impl] = (lambda m=model, o=opt: _train_step(m, o, x, target, autocast))
        if use_compile:
            tv.train()
            ctv = bc.compiled(tv)
            opt = torch.optim.SGD(tv.parameters(), lr=1e-4, momentum=0.9)
            impls["torch.compile"] = (lambda: _train_step(ctv, opt, x, target, autocast)) if ctv is not None else None
        rows += bc.bench_impls(name, case, impls, args, flops=3 * flops if flops else None)
        del tv, ours
    return bc.report("models", rows, args)


def _onnxruntime(model, x):
    """A callable running ``model`` exported to ONNX (torchcv_ext.export.to_onnx) in onnxruntime's
    CPU provider on ``x``, or None (an "unavailable" row) without onnxruntime / onnxscript."""
    try:
        import tempfile

        import onnxruntime

        from torchcv_ext.export import to_onnx

        path = os.path.join(tempfile.mkdtemp(), "model.onnx")
        to_onnx(model, x.contiguous(), path)
        sess = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001  (not installed, or the export failed: say so, go on)
        print(f"onnxruntime column unavailable: {type(e).__name__}: {e}"[:300])
        return None
    feed = {sess.get_inputs()[0].name: x.contiguous().numpy()}
    return lambda: sess.run(None, feed)


def _infer(model, x, autocast):
    with torch.inference_mode(), autocast():
        return model(x)


def _train_step(model, opt, x, target, autocast):
    with autocast():
        loss = torch.nn.functional.cross_entropy(model(x), target)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


if __name__ == "__main__":
    bc.run_main(main, "models")
