"""Assemble the GPU suite's report from its work directory (see benchmarks/gpu_suite.sh).

Writes <out>/report.md (environment, build, step status, tests, sanitizers, every benchmark
table), <out>/results.json (all benchmark documents) and <out>/plots.png (one panel per
benchmark), then prints a short summary table last.
"""
import argparse
import datetime
import glob
import json
import os
import sys
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common as bc  # noqa: E402


def _read(path, tail=None):
    if not os.path.exists(path):
        return ""
    with open(path, errors="replace") as f:
        lines = f.read().splitlines()
    return "\n".join(lines[-tail:] if tail else lines)


def _tests(work):
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
    except (OSError, ValueError) as e:
        print(f"skipping {path}: {e}")
        return None


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--work", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--repo", required=True)
    a = p.parse_args()

    steps = []
    for line in _read(os.path.join(a.work, "steps.tsv")).splitlines():
        name, rc, secs = line.split("\t")
        status = "ok" if rc == "0" else ("TIMEOUT" if rc in ("124", "137", "130") else (
            rc if not rc.lstrip("-").isdigit() else f"FAIL (rc {rc})"))
        steps.append((name, status, secs))
    docs = []
    for path in sorted(glob.glob(os.path.join(a.work, "bench", "*.json"))):
        if os.path.basename(path).startswith("ceilings_"):
            continue
        d = _load_json(path)
        if isinstance(d, dict) and "table_md" in d and "rows" in d:
            docs.append(d)
    ceil = {}
    for path in glob.glob(os.path.join(a.work, "bench", "ceilings_*.json")):
        ceil = _load_json(path) or ceil
    counts, failed = _tests(a.work)
    env = _read(os.path.join(a.work, "env.log"))
    gpu = ceil.get("device") or (env.splitlines()[1].split(",")[0] if len(env.splitlines()) > 1 else "gpu")
    date = datetime.date.today().isoformat()

    md = [f"# GPU suite report: {gpu}, {date}", "",
          "Produced by `bash benchmarks/gpu_suite.sh` (build from source, CUDA tests, "
          "compute-sanitizer, all benchmarks).", "", "## Environment", "", "```", env.strip(), "```", "",
          "## Steps", "", "| step | status | seconds |", "|---|---|---|"]
    md += [f"| {n} | {s} | {t} |" for n, s, t in steps]
    md += ["", "## Build info", "", "```", _read(os.path.join(a.work, "info.log")).strip(), "```", ""]
    md += ["## CUDA tests", ""]
    if counts:
        md.append(f"{counts['tests']} tests, {counts['failures']} failures, {counts['errors']} errors, "
                  f"{counts['skipped']} skipped")
        md += [f"- FAILED {t}: {m}" for t, m in failed[:60]]
    else:
        md.append("(no test results)")
    md += ["", "```", _read(os.path.join(a.work, "tests.log"), tail=15), "```", ""]
    for tool in ("memcheck", "memcheck-nofilter", "racecheck", "racecheck-nofilter"):
        if tool.endswith("nofilter") and not os.path.exists(os.path.join(a.work, f"{tool}.log")):
            continue
        md += [f"## compute-sanitizer {tool}", "", "```", _read(os.path.join(a.work, f"{tool}.log"), tail=12),
               "```", ""]
    if ceil:
        md += ["## Device ceilings (measured)", "", "```", json.dumps(ceil, indent=1), "```", ""]
    md += ["## Benchmarks", ""]
    for d in docs:
        md += [d["table_md"], ""]
    md += ["![plots](plots.png)", ""]

    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "report.md"), "w") as f:
        f.write("\n".join(md))
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump({"date": date, "gpu": gpu, "steps": steps, "tests": counts, "failed_tests": failed,
                   "ceilings": ceil, "benchmarks": docs}, f, indent=1)
    try:
        bc.plot_many(docs, os.path.join(a.out, "plots.png"))
    except Exception as e:  # noqa: BLE001 - report.md and results.json are written already
        print(f"plots.png not written: {e}")

    # Short summary, printed last (the device tool returns the tail of the output).
    print("\n==== GPU suite summary ====")
    print(f"{gpu}  copy {ceil.get('copy_GBps', 0):.0f} GB/s  bf16 matmul "
          f"{ceil.get('matmul_TFLOPs_bfloat16', 0):.0f} TFLOP/s")
    for n, s, t in steps:
        print(f"  {n:<28} {s:<14} {t:>4}s")
    if counts:
        print(f"  tests: {counts['tests']} run, {counts['failures'] + counts['errors']} failed, "
              f"{counts['skipped']} skipped")
    for t, m in failed[:10]:
        print(f"  FAILED {t}: {m[:120]}")
    print("  speedup vs eager per benchmark case (ours; torch.compile from the second pass):")
    for d in docs:
        for r in d["rows"]:
            if r["impl"] in ("torchcv_ext", "torch.compile") and r.get("speedup_vs_eager"):
                bw = f"{r['pct_copy_bw']:.0f}% copy BW" if r.get("pct_copy_bw") else (
                    f"{r['TFLOPs']:.0f} TFLOP/s" if r.get("TFLOPs") else "")
                print(f"    {r['op'][:18]:<18} {r['case'][:38]:<38} {r['impl'][:11]:<11} "
                      f"x{r['speedup_vs_eager']:.2f} {bw}")


if __name__ == "__main__":
    main()
