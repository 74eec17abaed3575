"""Data-parallel training step: N processes (DistributedDataParallel) against one.

Each configuration runs in fresh processes (torch.multiprocessing.spawn): a torchcv_ext model,
SGD, a fixed batch per process (``--batch`` images: weak scaling, as torchrun runs the training
example), the median step time (forward, backward with DDP's gradient all-reduce, optimizer step)
of the slowest rank. Throughput is images per second over all processes.

    python benchmarks/bench_distributed.py                  # CPU: 1 process (all cores, 1 core), 2 processes, gloo
    python benchmarks/bench_distributed.py --device cuda    # 1 .. all GPUs, one process each, NCCL

On the CPU the processes share the machine's cores: N processes get ``cores // N`` threads each,
so the comparison is "the same CPU used by 1 process or by N". ``--sync-bn`` rows add
``convert_sync_batchnorm`` (statistics all-gathered in every BatchNorm's forward, gradient sums
all-reduced in its backward). Output: a table on stdout, ``<out>/distributed.json`` and
``<out>/distributed.png``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Dict, List

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common as bc  # noqa: E402


def _extra(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="mobilenet_v3_small", help="a torchcv_ext.models name")
    p.add_argument("--batch", type=int, default=None, help="images per process (default 16 CPU / 64 CUDA)")
    p.add_argument("--img-size", type=int, default=None, help="default 224 (128 with --quick on the CPU)")
    p.add_argument("--world-sizes", default=None,
                   help="comma-separated process counts (default: 1,2 on the CPU, 1..#GPUs on CUDA)")
    p.add_argument("--rounds", type=int, default=None,
                   help="times every configuration runs, in turn (default 3, 1 with --quick): the median "
                        "round counts, so a burst of load elsewhere on the machine hits one round")


def _rank_main(rank: int, world_size: int, cfg: Dict, store: str, result: str) -> None:
    import torchcv_ext
    from torchcv_ext.nn import convert_sync_batchnorm

    cuda = cfg["device"] == "cuda"
    if not cuda:
        torch.set_num_threads(cfg["threads"])
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world_size > 1:
        dist.init_process_group("nccl" if cuda else "gloo", init_method=f"file://{store}", rank=rank,
                                world_size=world_size)
    torch.manual_seed(0)
    model = torchcv_ext.models.create_model(cfg["model"], num_classes=1000).to(device)
    if cfg["sync_bn"]:
        model = convert_sync_batchnorm(model)
    net = nn.parallel.DistributedDataParallel(model, device_ids=[rank] if cuda else None) \
        if world_size > 1 else model
    g = torch.Generator().manual_seed(rank)
    x = torch.randn(cfg["batch"], 3, cfg["img_size"], cfg["img_size"], generator=g).to(device)
    y = torch.randint(0, 1000, (cfg["batch"],), generator=g).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    amp = cuda and cfg["dtype"] != "float32"

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=bc.DTYPES[cfg["dtype"]], enabled=amp):
            loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()

    # Every rank runs the same number of steps (each step holds collectives), timed one by one.
    warmup, iters = (3, 5) if cfg["quick"] else (5, 15)
    times = []
    for i in range(warmup + iters):
        bc.sync(cfg["device"])
        t0 = time.perf_counter()
        step()
        bc.sync(cfg["device"])
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    ms = statistics.median(times)
    if world_size > 1:
        t = torch.tensor([ms], dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)  # the step is as slow as its slowest rank
        ms = t.item()
        dist.destroy_process_group()
    if rank == 0:
        with open(result, "w") as f:
            json.dump({"ms": ms}, f)


def run_config(cfg: Dict, world_size: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        result = os.path.join(tmp, "result.json")
        mp.spawn(_rank_main, args=(world_size, cfg, os.path.join(tmp, "store"), result), nprocs=world_size)
        with open(result) as f:
            return json.load(f)["ms"]


def main(argv=None) -> Dict:
    args = bc.parse_args("DDP training step: N processes vs 1", argv, extra=_extra)
    cuda = args.device.startswith("cuda")
    device = "cuda" if cuda else "cpu"
    cores = os.cpu_count() or 1
    if args.world_sizes:
        sizes = [int(s) for s in args.world_sizes.split(",")]
    else:
        sizes = list(range(1, torch.cuda.device_count() + 1)) if cuda else [1, 2]
    if cuda and max(sizes) > torch.cuda.device_count():
        raise SystemExit(f"--world-sizes {args.world_sizes}: this machine has {torch.cuda.device_count()} GPU(s)")
    batch = args.batch or (64 if cuda else 16)
    img = args.img_size or (128 if args.quick and not cuda else 224)
    base = dict(device=device, model=args.model, batch=batch, img_size=img, dtype=args.dtype, quick=args.quick)

    configs = []  # (label, world size, threads per process, sync BN)
    for n in sizes:
        threads = max(1, cores // n)
        configs.append((f"{n} process{'es' if n > 1 else ''}" + ("" if cuda else f" x {threads} thread(s)"),
                        n, threads, False))
        if n > 1:
            configs.append((configs[-1][0] + ", sync BN", n, threads, True))
    if not cuda and cores > 1 and 1 in sizes:
        configs.insert(1, ("1 process x 1 thread", 1, 1, False))

    rounds = args.rounds or (1 if args.quick else 3)
    times: Dict[str, List[float]] = {c[0]: [] for c in configs}
    load = bc.LoadMonitor()
    for r in range(rounds):
        for label, n, threads, sync in configs:
            ms = run_config({**base, "threads": threads, "sync_bn": sync}, n)
            times[label].append(ms)
            print(f"round {r + 1}/{rounds}, {label}: {ms:.1f} ms/step", flush=True)
    other_load = load.other_share()
    rows: List[Dict] = []
    for label, n, threads, sync in configs:
        ms = statistics.median(times[label])
        rows.append(dict(config=label, world_size=n, threads=threads, sync_bn=sync, ms=ms,
                         ms_rounds=times[label], images_per_s=n * batch / ms * 1e3))
    ref = rows[0]["images_per_s"]
    for r in rows:
        r["throughput_vs_first"] = r["images_per_s"] / ref

    dev_name = bc.device_name(device)
    title = (f"DDP train step, {args.model} {img}px, {batch} images per process, "
             f"{'autocast ' + args.dtype if cuda and args.dtype != 'float32' else 'float32'}, {dev_name}")
    lines = [f"## {title}", "",
             f"| configuration | step ms (median of {rounds} round(s)) | rounds | images/s (all processes) "
             f"| x {rows[0]['config']} |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['config']} | {r['ms']:.1f} | {', '.join(f'{t:.0f}' for t in r['ms_rounds'])} | "
                     f"{r['images_per_s']:.1f} | {r['throughput_vs_first']:.2f} |")
    if other_load is not None:
        lines += ["", f"Other processes used {100 * other_load:.0f}% of the machine's CPU time during the run"
                      f"{' (busy: the ratios may be off)' if other_load > 0.10 else ''}."]
    table = "\n".join(lines)
    print(table)
    doc = {"name": "distributed", "device": dev_name, "torch": torch.__version__, "config": base,
           "rounds": rounds, "other_load": other_load, "rows": rows, "table_md": table}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "distributed.json"), "w") as f:
        json.dump(doc, f, indent=1)
    if not args.no_plot:
        plot(doc, os.path.join(args.out, "distributed.png"))
    return doc


def plot(doc: Dict, path: str) -> None:
    """Images per second of every configuration, as horizontal bars."""
    plt = bc._pyplot()
    if plt is None:
        return
    rows = doc["rows"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.barh([r["config"] for r in rows][::-1], [r["images_per_s"] for r in rows][::-1])
    ax.set_xlabel("images/s (all processes)")
    ax.set_title(doc["table_md"].splitlines()[0].lstrip("# ").replace(", CPU", ",\nCPU"), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
