"""Is this machine quiet enough for the benchmark ratios to mean anything? The main job
(`bash .ci/run main`) runs it before and after the benchmarks.

    python benchmarks/load_check.py start             # before: other processes' CPU use right now
    python benchmarks/load_check.py end bench_out     # after: what each benchmark run measured

``start`` samples the CPU time all processes use over a few seconds (nothing of ours runs then);
``end`` reads every ``<out>/*.json`` that bench_common wrote: the share of the CPU that other
processes used during each run (``other_load``) and the rows whose spread was too wide. Both print a
clear WARNING when the ratios are unreliable; the exit status is 0 either way (a warning, not a
failure).
"""
from __future__ import annotations

import glob
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import BUSY_MACHINE, RELIABLE_IQR, LoadMonitor  # noqa: E402


def start(seconds: float = 3.0) -> str:
    mon = LoadMonitor()
    time.sleep(seconds)
    other = mon.other_share()
    if other is None:
        return "load check: /proc/stat not available; cannot tell how busy the machine is"
    msg = f"load check (start): other processes use {100 * other:.0f}% of the {os.cpu_count()} CPUs"
    if other > BUSY_MACHINE:
        msg += (f"\nWARNING: the machine is busy (over {100 * BUSY_MACHINE:.0f}%): benchmark ratios will be "
                "unreliable; rerun on an idle machine")
    return msg


def end(out: str) -> str:
    lines, bad = [], []
    for path in sorted(glob.glob(os.path.join(out, "*.json"))):
        try:
            with open(path) as f:
                doc = json.load(f)
        except (OSError, ValueError):
            continue
        if not isinstance(doc, dict) or "rows" not in doc:
            continue
        other = doc.get("other_load")
        flagged = sum(1 for r in doc["rows"] if r.get("unreliable"))
        lines.append(f"  {doc.get('name', path):<28} other processes "
                     f"{'?' if other is None else f'{100 * other:.0f}%'} of the CPU, "
                     f"{flagged}/{len(doc['rows'])} rows with a spread over {100 * RELIABLE_IQR:.0f}%")
        if (other or 0) > BUSY_MACHINE or flagged:
            bad.append(doc.get("name", path))
    msg = "load check (end), per benchmark:\n" + ("\n".join(lines) or "  (no benchmark results)")
    if bad:
        msg += (f"\nWARNING: the ratios of {', '.join(bad)} are unreliable (a busy machine or a wide spread; "
                "see the rows marked ? and the plots' hatched bars): rerun on an idle machine before "
                "drawing conclusions")
    return msg


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "start":
        print(start())
    elif len(sys.argv) == 3 and sys.argv[1] == "end":
        print(end(sys.argv[2]))
    else:
        sys.exit(__doc__)
