"""ptxas's resource report of every CUDA kernel (registers, stack, spills), checked against spill
budgets: a performance check that needs no GPU. Register spills go to local memory (L1 / L2 /
HBM traffic inside the kernel's loop), so a change that makes a kernel spill shows here, in CI,
long before a GPU session times it.

    TORCHCV_EXT_PTXAS_LOG=$PWD/build/ptxas pip install .     # CUDA build keeps the report
    python .ci/ptxas_check.py build/ptxas [--out report.md]

The report files come from cmake/ptxas_log.sh (one per compiled .cu object). Exit status 1 when
a kernel spills more than its budget (SPILL_BUDGETS, else DEFAULT_BUDGET bytes of spill stores
plus loads per thread).
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys

# Tensor-core attention kernels: no spills at all (their accumulators must stay in registers).
# dkdv_f32_kernel<128>: the fp32 SIMT path keeps dK and dV rows (2 x 128 floats) per thread;
# ptxas keeps most of them in registers (255) and spills a few hundred bytes. float32 attention
# is the correctness path; fp16 / bf16 are the fast ones.
# mlp_kernel: squeeze-excite's per-sample MLP (one block per sample, a few microseconds next to
# the passes over x); ptxas spills some bytes around its activation calls.
# grad_nchw_kernel / grad_cl_kernel in float64 (depthwise conv backward: the gradcheck path, not
# a fast one) spill a few 8-byte values; their float / half instantiations do not.
# (The patterns also match mangled names, for machines without c++filt.)
SPILL_BUDGETS = [
    (re.compile(r"_mma_kernel"), 0),
    (re.compile(r"dkdv_f32_kernel(<128>|ILi128E)"), 1024),
    (re.compile(r"\bmlp_kernel|\dmlp_kernel"), 256),
    (re.compile(r"grad_(nchw|cl)_kernel(<double>|IdE)"), 128),
]
DEFAULT_BUDGET = 32

_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\w+)'")
_PROPS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")


def parse(path: str):
    """[(mangled, arch, regs, stack, spill_stores, spill_loads)] of one ptxas -v log."""
    rows, cur = [], None
    with open(path, errors="replace") as f:
        for line in f:
            m = _ENTRY.search(line)
            if m:
                cur = {"name": m.group(1), "arch": m.group(2)}
                continue
            if cur is None:
                continue
            m = _PROPS.search(line)
            if m:
                cur["stack"], cur["stores"], cur["loads"] = map(int, m.groups())
                continue
            m = _USED.search(line)
            if m and "stack" in cur:
                rows.append((cur["name"], cur["arch"], int(m.group(1)), cur["stack"], cur["stores"],
                             cur["loads"]))
                cur = None
    return rows


def demangle(names):
    if not names or shutil.which("c++filt") is None:
        return {n: n for n in names}
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout
    return dict(zip(names, out.splitlines())) if out else {n: n for n in names}


def short(name: str) -> str:
    """`void torchcv_ext::attn::fwd_mma_kernel<__half, 64>(...)` -> `attn::fwd_mma_kernel<__half, 64>`."""
    s = re.sub(r"^void ", "", name)
    s = s.replace("(anonymous namespace)::", "").replace("torchcv_ext::", "")
    s = re.sub(r"at::OpMathType<[^<>]*>::type", "acc", s)
    depth, cut = 0, len(s)
    for i, ch in enumerate(s):  # drop the parameter list: the first '(' outside template brackets
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0:
            cut = i
            break
    return s[:cut]


def budget(name: str) -> int:
    for pattern, b in SPILL_BUDGETS:
        if pattern.search(name):
            return b
    return DEFAULT_BUDGET


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("logdir")
    ap.add_argument("--out", help="also write the markdown report here")
    args = ap.parse_args()
    logs = sorted(glob.glob(os.path.join(args.logdir, "*.log")))
    rows = []
    for path in logs:
        obj = os.path.basename(path)[: -len(".log")]
        rows += [(obj.split(".")[0], *r) for r in parse(path)]
    if not rows:
        print(f"ptxas_check: no ptxas reports in {args.logdir} (was the CUDA build made with "
              "TORCHCV_EXT_PTXAS_LOG set?)", file=sys.stderr)
        return 1
    names = demangle(sorted({r[1] for r in rows}))
    table, bad = [], []
    for src, mangled, arch, regs, stack, stores, loads in rows:
        name = short(names[mangled])
        b = budget(name)
        over = stores + loads > b
        table.append((src, name, arch, regs, stack, stores, loads, b, over))
        if over:
            bad.append(f"{name} ({arch}): {stores} + {loads} bytes spilled, budget {b}")
    table.sort(key=lambda r: (r[0], r[1], r[2]))
    spilling = [r for r in table if r[5] + r[6] > 0]
    lines = [f"# ptxas resource report: {len(table)} kernels ({', '.join(sorted({r[2] for r in table}))})",
             "", f"Kernels that spill: {len(spilling)}; over budget: {len(bad)}. Max registers: "
             f"{max(r[3] for r in table)}.", "",
             "| file | kernel | arch | registers | stack (B) | spill stores (B) | spill loads (B) | budget (B) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for src, name, arch, regs, stack, stores, loads, b, over in table:
        flag = " **over**" if over else ""
        lines.append(f"| {src} | `{name}` | {arch} | {regs} | {stack} | {stores} | {loads} | {b}{flag} |")
    report = "\n".join(lines) + "\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(report)
    print(f"ptxas_check: {len(table)} kernels from {len(logs)} objects; {len(spilling)} spill, "
          f"{len(bad)} over budget; max {max(r[3] for r in table)} registers")
    for r in spilling:
        print(f"  spills: {r[1]} ({r[2]}): {r[3]} registers, {r[5]} B stores / {r[6]} B loads "
              f"(budget {r[7]})")
    for line in bad:
        print(f"  OVER BUDGET: {line}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
