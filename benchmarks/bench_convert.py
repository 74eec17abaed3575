"""Benchmark: ``torchcv_ext.convert`` on models it has never seen -- hand-written networks
(python_tests/custom_models.py) and timm models -- vs the same model in eager PyTorch, and
converted MobileNetV3 / EfficientNet-B0 / ShuffleNetV2 vs torchcv_ext's own model of the
architecture.

    python benchmarks/bench_convert.py --quick          # CPU, batch 8, float32, fewer iterations

Inference and a train step (SGD, cross-entropy), batch 8, float32, 224 px (the CIFAR-style
networks -- no stem downsampling -- at their 32 px). "eager" is the model before convert(), with
the same weights; "x eager" is the speedup over it, timed by bench_common.bench_impls
(implementations interleaved round by round; median of the per-round ratios, with quartiles).
Targets (issue 22): converted inference >= 1.3x its own eager, train step no slower; converted
MobileNetV3 / EfficientNet / ShuffleNetV2 within 10% of "torchcv_ext model"
(torchcv_ext.models.create_model of that architecture).
"""
import copy
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "python_tests"))
import bench_common as bc  # noqa: E402
import custom_models  # noqa: E402

import torchcv_ext  # noqa: E402
from torchcv_ext.models import create_model  # noqa: E402

# name -> (constructor, image size, torchcv_ext model of the same architecture or None)
MODELS = {
    "hand-written mobilenet_v3_large": (lambda: custom_models.MobileNetV3(1000), 224, "mobilenet_v3_large"),
    "hand-written efficientnet_b0": (lambda: custom_models.EfficientNet(1000), 224, "efficientnet_b0"),
    "hand-written shufflenet_v2_x1_0": (lambda: custom_models.ShuffleNetV2(num_classes=1000), 224,
                                        "shufflenet_v2_x1_0"),
    "hand-written cifar_resnet50": (lambda: custom_models.cifar_resnet50(10), 32, None),
    "hand-written senet18_cifar": (lambda: custom_models.senet18_cifar(10), 32, None),
    "hand-written vit_small": (lambda: custom_models.ViT(img_size=224, patch_size=16, dim=384, depth=12,
                                                         num_heads=6, num_classes=1000), 224, None),
    "timm mobilenetv3_large_100": ("mobilenetv3_large_100", 224, None),
    "timm efficientnet_b0": ("efficientnet_b0", 224, None),
    "timm resnet50": ("resnet50", 224, None),
    "timm vit_small_patch16_224": ("vit_small_patch16_224", 224, None),
}


def _extra(p):
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated names (see MODELS)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--no-train", action="store_true", help="inference only")


def _build(spec):
    if isinstance(spec, str):
        import timm
        return timm.create_model(spec, pretrained=False)
    return spec()


def _infer(model, x):
    with torch.inference_mode():
        return model(x)


def _train_step(model, opt, x, target):
    loss = torch.nn.functional.cross_entropy(model(x), target)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


def main(argv=None):
    args = bc.parse_args(__doc__.splitlines()[0], argv, extra=_extra)
    if args.device != "cpu" or args.torch_dtype != torch.float32:
        raise SystemExit("bench_convert: CPU float32 only (--device cpu --dtype float32)")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows, checks = [], []
    for name in args.models.split(","):
        spec, size, own = MODELS[name]
        torch.manual_seed(0)
        eager = _build(spec)
        converted, summary = torchcv_ext.convert(copy.deepcopy(eager), return_summary=True)
        print(f"{name}: {summary}")
        impls = {"converted": converted, "eager": eager}
        if own is not None:
            ours = create_model(own)
            try:  # the same weights where the hand-written model keeps torchvision's names
                ours.load_state_dict(eager.state_dict())
            except (RuntimeError, KeyError):
                pass  # (EfficientNet-PyTorch's names): same architecture, other random weights
            impls["torchcv_ext model"] = ours
        x = torch.randn(args.batch, 3, size, size)
        target = torch.randint(0, 10, (args.batch,))
        n_fused = sum(summary.values())
        case = f"infer N{args.batch} {size}px"
        for m in impls.values():
            m.eval()
        rows += bc.bench_impls(name, case, {k: (lambda m=m: _infer(m, x)) for k, m in impls.items()}, args)
        if not args.no_train:
            fns = {}
            for k, m in impls.items():
                m.train()
                opt = torch.optim.SGD(m.parameters(), lr=1e-5, momentum=0.9)
                fns[k] = lambda m=m, o=opt: _train_step(m, o, x, target)
            rows += bc.bench_impls(name, f"train N{args.batch} {size}px", fns, args)
        checks.append((name, n_fused, own is not None))
        del impls, eager, converted
    doc = bc.report("convert", rows, args)
    _targets(doc["rows"], checks)
    return doc


def _targets(rows, checks):
    by = {(r["op"], r["case"].split()[0], r["impl"]): r for r in rows}
    print("\n## targets (issue 22)\n| model | fused | inference x eager (>= 1.3) | train x eager (>= 1.0) | "
          "converted / torchcv_ext model, infer | train (<= 1.10) |\n|---|---|---|---|---|---|")
    for name, n, has_own in checks:
        def speedup(kind):  # median of the per-round ratios [quartiles] (bench_common.bench_impls)
            r = by.get((name, kind, "converted"), {})
            if r.get("speedup_vs_eager") is None:
                return "-"
            return f"{r['speedup_vs_eager']:.2f} [{r['speedup_q1']:.2f}-{r['speedup_q3']:.2f}]"

        def ratio(kind):
            x = by.get((name, kind, "converted"), {}).get("ms")
            y = by.get((name, kind, "torchcv_ext model"), {}).get("ms")
            return f"{x / y:.2f}" if x and y else "-"
        own_i, own_t = (ratio("infer"), ratio("train")) if has_own else ("-", "-")
        print(f"| {name} | {n} | {speedup('infer')} | {speedup('train')} | {own_i} | {own_t} |")


if __name__ == "__main__":
    bc.run_main(main, "convert")
