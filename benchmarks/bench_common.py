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
    _STATE["load"] = LoadMonitor()
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


#: A row whose spread is wider than this (interquartile range of its per-round speedup over eager,
#: or of its own time for the eager row, relative to the median) is flagged as not to be trusted.
RELIABLE_IQR = 0.10
#: A run during which other processes kept more than this share of the machine's cores busy is
#: flagged too (LoadMonitor): its ratios may be off.
BUSY_MACHINE = 0.10


def _quartiles(xs: List[float]):
    if len(xs) < 2:
        return xs[0], xs[0], xs[0]
    q1, q2, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return q1, q2, q3


def measure(fns: Dict[str, Callable[[], object]], args: argparse.Namespace, warmup: Optional[int] = None,
            reps: Optional[int] = None) -> Dict[str, object]:
    """Milliseconds per call of every function of ``fns``, measured in turn, ``reps`` rounds: A, B,
    C, then B, C, A, then C, A, B, then the reversed order rotated the same way (C, B, A, ...), so
    that a burst of load on the machine hits every implementation alike and each one runs in every
    position and after every other one (what the previous call left behind -- freed memory, a warm
    cache -- changes the next one's time: with rotation alone B always followed A). Each
    measurement is one ``torch.utils.benchmark.Timer.timeit(number)`` (thread count pinned, CUDA
    synchronized), with ``number`` calibrated per function so that a measurement lasts at least a
    few milliseconds.
    Returns {name: [ms per call, one per round]}, or {name: exception} for a function that raised
    (the others are still measured)."""
    from torch.utils.benchmark import Timer

    cuda = args.device.startswith("cuda")
    if warmup is None:
        warmup = 3 if args.quick else (10 if cuda else 5)
    if reps is None:
        reps = (10 if args.quick else 30) if cuda else (7 if args.quick else 15)
    min_block_s = (0.002 if args.quick else 0.005) if cuda else (0.02 if args.quick else 0.05)
    out: Dict[str, object] = {}
    timers = {}
    for name, fn in fns.items():
        try:
            for _ in range(warmup):
                fn()
            sync(args.device)
            t = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
            once = t.timeit(1).mean
            timers[name] = (t, max(1, int(min_block_s / max(once, 1e-9)) + 1) if once < min_block_s else 1)
            out[name] = []
        except Exception as e:  # noqa: BLE001
            out[name] = e
    order = list(timers)
    for r in range(reps):
        n = len(order) or 1
        base = order if (r // n) % 2 == 0 else order[::-1]
        k = r % n
        for name in base[k:] + base[:k]:
            if isinstance(out[name], Exception):
                continue
            t, number = timers[name]
            try:
                out[name].append(t.timeit(number).mean * 1e3)
            except Exception as e:  # noqa: BLE001
                out[name] = e
    return out


def time_fn(fn: Callable[[], object], args: argparse.Namespace, warmup: Optional[int] = None,
            iters: Optional[int] = None) -> float:
    """Median milliseconds per call of ``fn()`` (one function alone: see :func:`measure`)."""
    res = measure({"fn": fn}, args, warmup, iters)["fn"]
    if isinstance(res, Exception):
        raise res
    return statistics.median(res)


class LoadMonitor:
    """The share of the machine's CPU time that *other* processes used between start() and
    stop(): all busy time (/proc/stat, steal included) minus this process's and its children's.
    None where /proc/stat does not exist."""

    def __init__(self):
        self.t0 = self._sample()

    @staticmethod
    def _sample():
        import resource

        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:9]]
        except (OSError, ValueError):
            return None
        tick = os.sysconf("SC_CLK_TCK")
        busy = (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / tick  # user nice system irq softirq steal
        own = sum(getattr(resource.getrusage(w), a) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                  for a in ("ru_utime", "ru_stime"))
        return time.monotonic(), busy, own

    def other_share(self) -> Optional[float]:
        t1 = self._sample()
        if self.t0 is None or t1 is None or t1[0] <= self.t0[0]:
            return None
        wall, busy, own = (b - a for a, b in zip(self.t0, t1))
        return max(0.0, (busy - own) / (wall * (os.cpu_count() or 1)))


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
    """Time every implementation of one case, interleaved (:func:`measure`). Each row holds the
    median time and its spread (min, quartiles, max), and, against the "eager" row of the case,
    the speedup as the median of the per-round ratios with their quartiles; ``unreliable`` when that
    spread exceeds RELIABLE_IQR. A None or failing implementation gives a row with ms=None and the
    error, so a broken path shows up in the table instead of killing the run. With
    ``--only-compile``, only "eager" and "torch.compile*" (cases without the latter: none)."""
    if getattr(args, "only_compile", False):
        if not any(k.startswith("torch.compile") for k in impls):
            return []
        impls = {k: v for k, v in impls.items() if k == "eager" or k.startswith("torch.compile")}
    res = measure({k: fn for k, fn in impls.items() if fn is not None}, args)
    eager = res.get("eager")
    eager = eager if isinstance(eager, list) and eager else None
    rows = []
    for impl in impls:
        r = res.get(impl)
        if r is None:
            rows.append(row(op, case, impl, None, bytes, flops, error="unavailable"))
        elif isinstance(r, Exception):
            rows.append(row(op, case, impl, None, bytes, flops, error=f"{type(r).__name__}: {r}"[:200]))
        else:
            q1, med, q3 = _quartiles(r)
            extra = dict(ms_min=min(r), ms_q1=q1, ms_q3=q3, ms_max=max(r), reps=len(r))
            if eager is not None:
                ratios = [e / t for e, t in zip(eager, r)]
                s1, sm, s3 = _quartiles(ratios)
                extra.update(speedup_vs_eager=sm, speedup_q1=s1, speedup_q3=s3,
                             spread=(s3 - s1) / sm if impl != "eager" else (q3 - q1) / med)
            else:
                extra.update(spread=(q3 - q1) / med)
            extra["unreliable"] = extra["spread"] > RELIABLE_IQR
            rows.append(row(op, case, impl, med, bytes, flops, **extra))
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
        if r.get("speedup_vs_eager") is None:  # rows made without bench_impls
            e = eager_ms.get((r["op"], r["case"]))
            r["speedup_vs_eager"] = e / ms if e and ms else None

    load = _STATE.get("load")
    other = load.other_share() if load is not None else None
    flagged = [r for r in rows if r.get("unreliable")]
    warnings = []
    if other is not None and other > BUSY_MACHINE:
        warnings.append(f"other processes used {100 * other:.0f}% of the CPU during this run: every ratio "
                        "below is suspect; rerun on an idle machine")
    if flagged:
        warnings.append(f"{len(flagged)} of {len(rows)} rows have a spread over {100 * RELIABLE_IQR:.0f}% "
                        "(marked ?): not to be trusted")
    doc = {"name": name, "device": ceil["device"], "dtype": args.dtype, "torch": torch.__version__,
           "ceilings": ceil, "other_load": other, "warnings": warnings, "rows": rows}
    hdr = f"## {name} on {ceil['device']} ({args.dtype}); copy {ceil['copy_GBps']:.0f} GB/s"
    if ceil.get(mm_key):
        hdr += f", matmul {ceil[mm_key]:.1f} TFLOP/s"
    lines = [hdr, ""] + [f"**WARNING**: {w}" for w in warnings] + ([""] if warnings else []) + [
        "Timed interleaved (implementations in turn, each round); ms: median [quartiles]; x eager: "
        "median of the per-round ratios [quartiles]; ? = spread too wide to trust.", "",
        "| op | case | impl | ms | GB/s | % copy BW | TFLOP/s | % matmul | x eager |",
        "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["ms"] is None:
            ms = f"n/a ({r.get('error', '')[:40]})"
        else:
            ms = _fmt(r["ms"]) + (f" [{_fmt(r['ms_q1'])}-{_fmt(r['ms_q3'])}]" if "ms_q1" in r else "")
        sp = _fmt(r["speedup_vs_eager"])
        if r.get("speedup_q1") is not None and r["impl"] != "eager":
            sp += f" [{_fmt(r['speedup_q1'])}-{_fmt(r['speedup_q3'])}]"
        if r.get("unreliable"):
            sp += " ?"
        lines.append(f"| {r['op']} | {r['case']} | {r['impl']} | {ms} | {_fmt(r['GBps'])} | "
                     f"{_fmt(r['pct_copy_bw'], 2)} | {_fmt(r['TFLOPs'])} | {_fmt(r['pct_matmul'], 2)} | {sp} |")
    table = "\n".join(lines)
    print(table)
    for w in warnings:
        print(f"WARNING ({name}): {w}", file=sys.stderr)
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
        xs, ys, lo, hi, hatch = [], [], [], [], []
        for j, c in enumerate(cases):
            for r in rows:
                if r["impl"] == impl and f"{r['op']}\n{r['case']}" == c:
                    xs.append(j + i * width)
                    y = r["speedup_vs_eager"]
                    ys.append(y)
                    lo.append(max(0.0, y - (r.get("speedup_q1") or y)))
                    hi.append(max(0.0, (r.get("speedup_q3") or y) - y))
                    hatch.append("//" if r.get("unreliable") else "")
        bars = ax.bar(xs, ys, width, label=impl, yerr=[lo, hi], capsize=2, error_kw={"lw": 0.8})
        for b, h in zip(bars, hatch):
            b.set_hatch(h)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cases))])
    ax.set_xticklabels(cases, fontsize=6, rotation=30, ha="right")
    ax.set_ylabel("speedup vs eager")
    title = f"{doc['name']} — {doc['device']} ({doc['dtype']}); error bars: quartiles, hatched: spread too wide"
    if doc.get("warnings"):
        title += "\nWARNING: " + "; ".join(doc["warnings"])
    ax.set_title(title, fontsize=7, color="red" if doc.get("warnings") else "black")
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
