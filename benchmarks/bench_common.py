"""Shared benchmark harness: timing, the device's measured ceilings, and the report.

Every benchmarks/bench_<op>.py compares implementations side by side in one run (ours vs eager
PyTorch vs torch.compile of the eager code, vs SDPA for attention) and reports achieved GB/s or
TFLOP/s against the device's *measured* copy bandwidth and matmul rate. Output: a table on stdout,
``<out>/<name>.json`` and ``<out>/<name>.png``.

Typical use::

    args = bench_common.parse_args("channel shuffle")
    rows = []
    for case ...:
        for impl, fn in {"torchcv_ext": ..., "eager": ..., "compile": bench_common.compiled(eager)}.items():
            rows.append(bench_common.row(op="channel_shuffle", case="N64 C232 14x14", impl=impl,
                                         ms=bench_common.time_fn(fn, args), bytes=2 * x.nbytes))
    bench_common.report("channel_shuffle", rows, args)
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def parse_args(description: str, argv: Optional[List[str]] = None,
               extra: Optional[Callable[[argparse.ArgumentParser], None]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--dtype", default=None, choices=sorted(DTYPES),
                   help="default: bfloat16 on cuda, float32 on cpu")
    p.add_argument("--quick", action="store_true", help="fewer shapes and iterations")
    p.add_argument("--out", default=os.environ.get("TORCHCV_BENCH_OUT", "bench_out"),
                   help="directory for <name>.json and <name>.png")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile column")
    p.add_argument("--only-compile", action="store_true",
                   help="time only eager and torch.compile (the GPU suite's second pass); writes "
                        "<out>/<name>_compile.json")
    p.add_argument("--no-plot", action="store_true")
    if extra is not None:
        extra(p)
    args = p.parse_args(argv)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.dtype is None:
        args.dtype = "bfloat16" if args.device == "cuda" else "float32"
    args.torch_dtype = DTYPES[args.dtype]
    _STATE["args"] = args
    return args


# The current run's arguments and the rows timed so far, for run_main's report when a run is cut
# short (the GPU suite stops a step at its time limit with SIGINT).
_STATE: Dict = {"args": None, "rows": []}


def run_main(main: Callable[[], object], name: str) -> None:
    """Run a benchmark's ``main()``; on SIGINT or SIGTERM still report (table, JSON) the rows timed
    so far under ``name``, then exit with status 130."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        main()
    except KeyboardInterrupt:
        rows, args = _STATE["rows"], _STATE["args"]
        print(f"interrupted: reporting the {len(rows)} rows timed so far", file=sys.stderr)
        if args is not None and rows:
            report(name, rows, args)
        sys.exit(130)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_fn(fn: Callable[[], object], args: argparse.Namespace, warmup: Optional[int] = None,
            iters: Optional[int] = None) -> float:
    """Median wall time of ``fn()`` in milliseconds (CUDA events on GPU, perf_counter on CPU)."""
    cuda = args.device.startswith("cuda")
    if warmup is None:
        warmup = 3 if args.quick else (10 if cuda else 5)
    if iters is None:
        iters = (10 if args.quick else 50) if cuda else (5 if args.quick else 20)
    for _ in range(warmup):
        fn()
    sync(args.device)
    times = []
    if cuda:
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def compiled(fn: Callable, **kwargs) -> Optional[Callable]:
    """torch.compile(fn), or None when compilation is unavailable (reported as a skipped row).

    Every compiled module of one class shares one code object (``forward``), which dynamo
    recompiles for each new instance; past its recompile limit (8) it silently runs eager, and the
    "torch.compile" column would time eager code. The limits are raised so that it never does."""
    import torch._dynamo

    for knob in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                 "accumulated_cache_size_limit"):
        if hasattr(torch._dynamo.config, knob):
            setattr(torch._dynamo.config, knob, max(getattr(torch._dynamo.config, knob), 1024))
    try:
        return torch.compile(fn, **kwargs)
    except Exception as e:  # noqa: BLE001
        print(f"torch.compile unavailable: {e}")
        return None


def row(op: str, case: str, impl: str, ms: Optional[float], bytes: Optional[float] = None,
        flops: Optional[float] = None, **extra) -> Dict:
    r = dict(op=op, case=case, impl=impl, ms=ms, bytes=bytes, flops=flops)
    r.update(extra)
    return r


def bench_impls(op: str, case: str, impls: Dict[str, Optional[Callable]], args: argparse.Namespace,
                bytes: Optional[float] = None, flops: Optional[float] = None) -> List[Dict]:
    """Time every implementation of one case; a None or failing implementation gives a row with
    ms=None and the error, so a broken path shows up in the table instead of killing the run.
    With ``--only-compile``, only "eager" and "torch.compile*" (cases without the latter: none)."""
    if getattr(args, "only_compile", False):
        if not any(k.startswith("torch.compile") for k in impls):
            return []
        impls = {k: v for k, v in impls.items() if k == "eager" or k.startswith("torch.compile")}
    rows = []
    for impl, fn in impls.items():
        if fn is None:
            rows.append(row(op, case, impl, None, bytes, flops, error="unavailable"))
        else:
            try:
                rows.append(row(op, case, impl, time_fn(fn, args), bytes, flops))
            except Exception as e:  # noqa: BLE001
                rows.append(row(op, case, impl, None, bytes, flops, error=f"{type(e).__name__}: {e}"[:200]))
        _STATE["rows"].append(rows[-1])
    return rows


# ---------------------------------------------------------------------------------------------
# Device ceilings, measured once per device (cached in <out>/ceilings_<device>.json).
# ---------------------------------------------------------------------------------------------
def _measure_ceilings(args: argparse.Namespace) -> Dict:
    dev = args.device
    cuda = dev.startswith("cuda")
    q = argparse.Namespace(**{**vars(args), "quick": True})
    n_bytes = (1 << 30) if cuda else (1 << 27)
    src = torch.empty(n_bytes // 4, dtype=torch.float32, device=dev).uniform_()
    dst = torch.empty_like(src)
    ms = time_fn(lambda: dst.copy_(src), q, iters=20 if cuda else 5)
    out = {"device": device_name(dev), "copy_GBps": 2 * n_bytes / ms / 1e6}
    src = dst = None  # free before the matmuls
    sizes = {torch.bfloat16: 8192 if cuda else 1024, torch.float32: 8192 if cuda else 1024}
    if cuda:
        sizes[torch.float16] = 8192
    for dt, n in sizes.items():
        a = torch.randn(n, n, device=dev, dtype=dt)
        b = torch.randn(n, n, device=dev, dtype=dt)
        ms = time_fn(lambda: a @ b, q, iters=10 if cuda else 3)
        out[f"matmul_TFLOPs_{str(dt).split('.')[-1]}"] = 2 * n**3 / ms / 1e9
    if cuda:
        out["tf32_matmul_allowed"] = torch.backends.cuda.matmul.allow_tf32
    return out


def device_name(dev: str) -> str:
    if dev.startswith("cuda"):
        return torch.cuda.get_device_name()
    import platform

    return f"CPU {platform.processor() or platform.machine()} x{os.cpu_count()} (torch threads {torch.get_num_threads()})"


def ceilings(args: argparse.Namespace) -> Dict:
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"ceilings_{args.device.split(':')[0]}.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    c = _measure_ceilings(args)
    with open(path, "w") as f:
        json.dump(c, f, indent=1)
    return c


def _fmt(v, nd=3):
    return "-" if v is None else f"{v:.{nd}g}"


def report(name: str, rows: List[Dict], args: argparse.Namespace) -> Dict:
    """Add GB/s, TFLOP/s, % of ceiling and speedup vs eager to every row; print a table; write
    <out>/<name>.json and (unless --no-plot) <out>/<name>.png. Returns the JSON document.
    ``--only-compile`` runs report as ``<name>_compile``."""
    if getattr(args, "only_compile", False) and not name.endswith("_compile"):
        name += "_compile"
    ceil = ceilings(args)
    mm_key = f"matmul_TFLOPs_{args.dtype}"
    eager_ms = {(r["op"], r["case"]): r["ms"] for r in rows if r["impl"] == "eager" and r["ms"]}
    for r in rows:
        ms = r["ms"]
        r["GBps"] = r["bytes"] / ms / 1e6 if ms and r.get("bytes") else None
        r["TFLOPs"] = r["flops"] / ms / 1e9 if ms and r.get("flops") else None
        r["pct_copy_bw"] = 100 * r["GBps"] / ceil["copy_GBps"] if r["GBps"] else None
        r["pct_matmul"] = 100 * r["TFLOPs"] / ceil[mm_key] if r["TFLOPs"] and ceil.get(mm_key) else None
        e = eager_ms.get((r["op"], r["case"]))
        r["speedup_vs_eager"] = e / ms if e and ms else None

    doc = {"name": name, "device": ceil["device"], "dtype": args.dtype, "torch": torch.__version__,
           "ceilings": ceil, "rows": rows}
    hdr = f"## {name} on {ceil['device']} ({args.dtype}); copy {ceil['copy_GBps']:.0f} GB/s"
    if ceil.get(mm_key):
        hdr += f", matmul {ceil[mm_key]:.1f} TFLOP/s"
    lines = [hdr, "", "| op | case | impl | ms | GB/s | % copy BW | TFLOP/s | % matmul | x eager |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ms = _fmt(r["ms"]) if r["ms"] is not None else f"n/a ({r.get('error', '')[:40]})"
        lines.append(f"| {r['op']} | {r['case']} | {r['impl']} | {ms} | {_fmt(r['GBps'])} | "
                     f"{_fmt(r['pct_copy_bw'], 2)} | {_fmt(r['TFLOPs'])} | {_fmt(r['pct_matmul'], 2)} | "
                     f"{_fmt(r['speedup_vs_eager'])} |")
    table = "\n".join(lines)
    print(table)
    doc["table_md"] = table
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"{name}.json"), "w") as f:
        json.dump(doc, f, indent=1)
    if not args.no_plot:
        plot(doc, os.path.join(args.out, f"{name}.png"))
    return doc


def plot_ax(doc: Dict, ax) -> bool:
    """Grouped bars on ``ax``: one group per case, one bar per implementation (speedup vs eager)."""
    rows = [r for r in doc["rows"] if r.get("speedup_vs_eager")]
    if not rows:
        return False
    cases = list(dict.fromkeys(f"{r['op']}\n{r['case']}" for r in rows))
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    width = 0.8 / len(impls)
    for i, impl in enumerate(impls):
        xs, ys = [], []
        for j, c in enumerate(cases):
            for r in rows:
                if r["impl"] == impl and f"{r['op']}\n{r['case']}" == c:
                    xs.append(j + i * width)
                    ys.append(r["speedup_vs_eager"])
        ax.bar(xs, ys, width, label=impl)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cases))])
    ax.set_xticklabels(cases, fontsize=6, rotation=30, ha="right")
    ax.set_ylabel("speedup vs eager")
    ax.set_title(f"{doc['name']} — {doc['device']} ({doc['dtype']})", fontsize=8)
    ax.legend(fontsize=6)
    return True


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        return plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return None


def plot(doc: Dict, path: str) -> Optional[str]:
    plt = _pyplot()
    if plt is None:
        return None
    n_cases = len({(r["op"], r["case"]) for r in doc["rows"]})
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * n_cases), 4))
    ok = plot_ax(doc, ax)
    if ok:
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return path if ok else None


def plot_many(docs: List[Dict], path: str) -> Optional[str]:
    """One PNG with a panel per benchmark (the GPU suite's combined plot)."""
    plt = _pyplot()
    docs = [d for d in docs if any(r.get("speedup_vs_eager") for r in d["rows"])]
    if plt is None or not docs:
        return None
    fig, axes = plt.subplots(len(docs), 1, figsize=(12, 3.6 * len(docs)), squeeze=False)
    for d, ax in zip(docs, axes[:, 0]):
        plot_ax(d, ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
