"""Write the GPU suite's report from its work folder (benchmarks/gpu_suite.sh calls it before and
after every phase, so a suite killed at any moment leaves a readable report).

Writes <out>/report.md (commit, environment, every phase's status, build info, tests, sanitizers,
benchmark tables), <out>/results.json (the same as data) and, once a benchmark ran,
<out>/plots.png; each file is replaced by a rename, never left half-written. Prints a short
summary last (the device tool returns the tail of the output).
"""
from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import sys
import xml.etree.ElementTree as ET


SIGNALS = {"124": "TIMEOUT (stopped at its limit)", "130": "TIMEOUT (stopped at its limit)",
           "137": "TIMEOUT (killed at its limit)"}


def _read(path, tail=None):
    if not os.path.exists(path):
        return ""
    with open(path, errors="replace") as f:
        lines = f.read().splitlines()
    return "\n".join(lines[-tail:] if tail else lines)


def phase_status(work: str, finished: bool):
    """[(phase, status, seconds, start offset)] in the suite's order, every planned phase included:
    passed / FAILED (rc N) / TIMEOUT / skipped (why) / CUT / not reached."""
    planned = _read(os.path.join(work, "phases.txt")).split()
    seen = {}
    for line in _read(os.path.join(work, "steps.tsv")).splitlines():
        name, rc, secs, start = line.split("\t")
        if rc == "running":
            status = ("CUT (started, no end recorded: the suite was killed)" if finished else
                      "CUT (started at +%ss, no end recorded: killed then, or still running)" % start)
        elif rc == "0":
            status = "passed"
        elif rc.startswith("skipped"):
            status = rc
        else:
            status = SIGNALS.get(rc, f"FAILED (rc {rc})")
        seen[name] = (name, status, int(secs), int(start))
    rows = [seen.pop(p, (p, "not run" if finished else "not reached", 0, -1)) for p in planned]
    return rows + list(seen.values())


def tests(work: str):
    """(counts, [(test id, first lines of its failure)]) from the junit XML; (None, []) if none.
    A partial file (pytest killed while writing it) counts as one error."""
    path = os.path.join(work, "tests.xml")
    if not os.path.exists(path):
        return None, []
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        return {"tests": 0, "failures": 0, "errors": 1, "skipped": 0}, [("tests.xml", f"unreadable: {e}")]
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        return None, []
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    failed = []
    for c in suite.iter("testcase"):
        bad = c.find("failure") if c.find("failure") is not None else c.find("error")
        if bad is not None:
            msg = (bad.get("message") or bad.text or "").strip().splitlines()
            failed.append((f"{c.get('classname')}::{c.get('name')}", " ".join(msg[:3])[:300]))
    return counts, failed


def _load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--work", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--commit", default="unknown")
    p.add_argument("--budget", type=int, default=0)
    p.add_argument("--elapsed", type=int, default=0)
    p.add_argument("--rehearsal", action="store_true")
    p.add_argument("--finished", action="store_true")
    a = p.parse_args(argv)

    phases = phase_status(a.work, a.finished)
    docs = [d for d in (_load_json(f) for f in sorted(glob.glob(os.path.join(a.work, "bench", "*.json")))
                        if not os.path.basename(f).startswith("ceilings_"))
            if isinstance(d, dict) and "table_md" in d and "rows" in d]
    ceil = {}
    for f in glob.glob(os.path.join(a.work, "bench", "ceilings_*.json")):
        ceil = _load_json(f) or ceil
    counts, failed = tests(a.work)
    env = _read(os.path.join(a.work, "env.log"))
    gpu = ceil.get("device") or next((ln.split(",")[0] for ln in env.splitlines()[2:3] if "," in ln), "gpu")
    if a.rehearsal:
        gpu = "rehearsal (no GPU)"
    date = datetime.date.today().isoformat()
    running = [ph for ph, st, _, _ in phases if st.startswith("CUT")]
    if a.finished:
        state = f"Finished in {a.elapsed} s of a {a.budget} s budget."
    else:
        state = (f"**INCOMPLETE**: written at +{a.elapsed} s of a {a.budget} s budget"
                 + (f", while phase `{running[0]}` ran" if running else "")
                 + ". If no later report replaced it, the suite was killed here.")

    md = [f"# GPU suite report: {gpu}, {date}", "",
          f"`bash benchmarks/gpu_suite.sh`{' (rehearsal)' if a.rehearsal else ''} at commit `{a.commit}`. "
          + state, "", "## Phases", "", "| phase | status | seconds | started at |", "|---|---|---|---|"]
    md += [f"| {n} | {s} | {t} | {'+%ds' % s0 if s0 >= 0 else '-'} |" for n, s, t, s0 in phases]
    md += ["", "## Environment", "", "```", env.strip(), "```", "",
           "## Build", "", "```", _read(os.path.join(a.work, "build.log"), tail=25).strip(), "```", ""]
    ptxas = _read(os.path.join(a.work, "ptxas.md"))
    if ptxas:
        md += ["### Registers and spills (ptxas)", "", ptxas, ""]
    md += ["## Smoke test (every op, forward + backward, per dtype)", "", "```",
           _read(os.path.join(a.work, "smoke.log"), tail=12), "```", "", "## CUDA tests", ""]
    if counts:
        md.append(f"{counts['tests']} tests, {counts['failures']} failures, {counts['errors']} errors, "
                  f"{counts['skipped']} skipped")
        md += [f"- FAILED {t}: {m}" for t, m in failed[:60]]
    else:
        md.append("(no test results)")
    md += ["", "```", _read(os.path.join(a.work, "tests.log"), tail=15), "```", ""]
    for tool in ("sanitizer_probe", "memcheck", "racecheck", "initcheck"):
        log = _read(os.path.join(a.work, f"{tool}.log"), tail=12)
        if log:
            md += [f"## compute-sanitizer {tool}", "", "```", log, "```", ""]
    if ceil:
        md += ["## Device ceilings (measured)", "", "```", json.dumps(ceil, indent=1), "```", ""]
    if docs:
        md += ["## Benchmarks", ""] + [x for d in docs for x in (d["table_md"], "")] + ["![plots](plots.png)", ""]

    os.makedirs(a.out, exist_ok=True)
    _write(os.path.join(a.out, "report.md"), "\n".join(md))
    _write(os.path.join(a.out, "results.json"), json.dumps(
        {"date": date, "gpu": gpu, "commit": a.commit, "rehearsal": a.rehearsal, "finished": a.finished,
         "elapsed_s": a.elapsed, "budget_s": a.budget,
         "phases": [dict(zip(("phase", "status", "seconds", "start_s"), ph)) for ph in phases],
         "tests": counts, "failed_tests": failed, "ceilings": ceil, "benchmarks": docs}, indent=1))
    if docs:
        try:
            sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
            import bench_common  # imports torch: only when there is something to plot

            bench_common.plot_many(docs, os.path.join(a.out, ".plots.png"))
            os.replace(os.path.join(a.out, ".plots.png"), os.path.join(a.out, "plots.png"))
        except Exception as e:  # noqa: BLE001 - report.md and results.json are written already
            print(f"plots.png not written: {e}")

    print(f"\n==== GPU suite summary ({'finished' if a.finished else 'INCOMPLETE'}, +{a.elapsed}s) ====")
    print(f"{gpu}  commit {a.commit[:12]}  copy {ceil.get('copy_GBps', 0):.0f} GB/s  bf16 matmul "
          f"{ceil.get('matmul_TFLOPs_bfloat16', 0):.0f} TFLOP/s")
    for n, s, t, _ in phases:
        print(f"  {n:<10} {s:<40.40} {t:>4}s")
    if counts:
        print(f"  tests: {counts['tests']} run, {counts['failures'] + counts['errors']} failed, "
              f"{counts['skipped']} skipped")
    for t, m in failed[:10]:
        print(f"  FAILED {t}: {m[:120]}")
    for d in docs:
        for r in d["rows"]:
            if r["impl"] in ("torchcv_ext", "torch.compile") and r.get("speedup_vs_eager"):
                print(f"    {r['op'][:18]:<18} {r['case'][:38]:<38} {r['impl'][:11]:<11} x{r['speedup_vs_eager']:.2f}")


if __name__ == "__main__":
    main()
