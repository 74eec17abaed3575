#!/usr/bin/env bash
# The GPU suite: everything that needs a GPU, in one call on a lent machine (< 10 minutes).
#
#   bash benchmarks/gpu_suite.sh [--quick]        # from the repo root; report under $OUT
#
# 1. environment (GPU, driver, torch, nvcc)        5. compute-sanitizer memcheck + racecheck over
# 2. build + install from source for this GPU's       benchmarks/sanitize_ops.py (every CUDA op,
#    arch (pip --no-build-isolation: no internet)     fwd + bwd, small shapes)
# 3. python -m torchcv_ext.info --cuda             6. every benchmarks/bench_*.py on the GPU, after
# 4. the CUDA tests (pytest -m cuda)                  measuring copy bandwidth and matmul rates
# 7. $OUT/report.md, $OUT/results.json, $OUT/plots.png, $OUT/suite.log (at most 8 files), and a
#    short summary table printed last. Commit report.md as benchmarks/results/<date>-<gpu>.md.
#
# Every step has its own time limit and a failing step does not stop the others (except a failed
# build), so one call always brings back a report.
set -uo pipefail
QUICK=""
[[ "${1:-}" == "--quick" ]] && QUICK="--quick"
PY="${PYTHON:-python3}"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${OUT:-$REPO/gpu_suite_out}"
WORK="$(mktemp -d)"
mkdir -p "$OUT" "$WORK/bench"
LOG="$OUT/suite.log"
: > "$LOG"
STEPS="$WORK/steps.tsv"
: > "$STEPS"
SUITE_T0=$(date +%s)

# The whole suite must fit in one 10-minute device call: every step's limit is also capped by
# what is left of SUITE_BUDGET_S (default 540 s), keeping REPORT_RESERVE_S for the report.
SUITE_BUDGET_S="${SUITE_BUDGET_S:-540}"
REPORT_RESERVE_S=25

# run_step NAME LIMIT_S CMD...: run with a time limit, log everything, record status and seconds.
run_step() {
  local name="$1" limit="$2"
  shift 2
  local t0 rc left
  t0=$(date +%s)
  left=$(( SUITE_BUDGET_S - REPORT_RESERVE_S - (t0 - SUITE_T0) ))
  if (( left < 15 )); then
    echo "=== $name skipped: suite time budget spent" | tee -a "$LOG"
    printf '%s\t%s\t%s\n' "$name" "skipped (budget)" 0 >> "$STEPS"
    return 1
  fi
  (( limit > left )) && limit=$left
  echo "=== $name (limit ${limit}s, at +$((t0 - SUITE_T0))s)" | tee -a "$LOG"
  timeout --kill-after=10 "$limit" "$@" > "$WORK/$name.log" 2>&1
  rc=$?
  cat "$WORK/$name.log" >> "$LOG"
  tail -n 5 "$WORK/$name.log"
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" >> "$STEPS"
  return $rc
}

cd "$REPO"
run_step env 60 bash -c "nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; \
  $PY -c 'import torch, sys; print(sys.version); print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, torch.cuda.get_device_name(), torch.cuda.get_device_capability())'; \
  nvcc --version | tail -2; nproc"

CC="$($PY -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())' 2>/dev/null || echo 9.0)"
if run_step build 300 env TORCH_CUDA_ARCH_LIST="$CC" MAX_JOBS="$(nproc)" TORCHCV_EXT_CUDA=ON \
     $PY -m pip install --no-build-isolation --no-deps --force-reinstall -v "$REPO"; then
  # Outside the repo, so the installed package (not the source tree) is imported.
  run_step info 60 bash -c "cd /tmp && $PY -m torchcv_ext.info --cuda"
  # -P: do not put the repo root on sys.path (test the installed package).
  run_step tests 150 env TORCHCV_EXT_REQUIRE_EXT=1 $PY -P -m pytest "$REPO/python_tests" -m cuda -q -ra \
    -p no:cacheprovider --junitxml="$WORK/tests.xml"
  if command -v compute-sanitizer > /dev/null; then
    run_step memcheck 90 compute-sanitizer --tool memcheck --error-exitcode 1 $PY -P "$REPO/benchmarks/sanitize_ops.py"
    run_step racecheck 90 compute-sanitizer --tool racecheck --error-exitcode 1 $PY -P "$REPO/benchmarks/sanitize_ops.py"
  else
    echo "compute-sanitizer not found" | tee -a "$LOG"
    printf 'memcheck\tnot found\t0\nracecheck\tnot found\t0\n' >> "$STEPS"
  fi
  # Op benchmarks first, the end-to-end model benchmark last (it gets what is left of the budget).
  for n in bench_channel_shuffle bench_dwconv_bn_act bench_squeeze_excite bench_attention bench_models; do
    b="$REPO/benchmarks/$n.py"
    run_step "$n" 120 $PY -P "$b" --device cuda $QUICK --no-plot --out "$WORK/bench"
  done
fi

$PY -P "$REPO/benchmarks/suite_report.py" --work "$WORK" --out "$OUT" --repo "$REPO"
echo "suite took $(( $(date +%s) - SUITE_T0 ))s; report: $OUT/report.md"
