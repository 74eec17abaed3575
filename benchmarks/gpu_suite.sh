#!/usr/bin/env bash
# The GPU suite: everything that needs a GPU, in one call on a lent machine (< 10 minutes).
#
#   bash benchmarks/gpu_suite.sh [--full]        # from the repo root; report under $OUT
#
# 1. environment (GPU, driver, torch, nvcc)
# 2. build + install from source for this GPU's arch (pip --no-build-isolation --no-index: no internet)
# 3. python -m torchcv_ext.info --cuda
# 4. correctness, three processes at once (none of them is timed):
#      the CUDA tests (pytest -m cuda) | compute-sanitizer memcheck | racecheck, the sanitizers over
#      benchmarks/sanitize_ops.py (every CUDA op, fwd + bwd, small shapes, checked vs float64)
# 5. benchmarks, pass 1: every benchmarks/bench_*.py with --no-compile (ours vs eager, SDPA for
#    attention) after measuring the copy bandwidth and matmul rates -- the numbers the issues'
#    targets are about come first
# 6. benchmarks, pass 2: the torch.compile column (--only-compile: eager + torch.compile), with
#    whatever time is left; compiling costs tens of seconds per model
# 7. $OUT/report.md, results.json, plots.png, suite.log, work.tgz (raw step logs and JSON), and a
#    short summary table printed last. Commit report.md as benchmarks/results/<date>-<gpu>.md.
#
# Benchmarks run CPU/GPU-"quick" settings by default (the full sweep does not fit in one call);
# --full runs the full sweep (give it SUITE_BUDGET_S=... and several calls' time).
# Every step has its own time limit, capped by what is left of the suite's budget; a step stopped at
# its limit gets SIGINT first, so pytest still writes its junit XML and a benchmark the rows it timed;
# a failing step does not stop the others (except a failed build), so one call always brings back a
# report.
set -uo pipefail
QUICK="--quick"
[[ "${1:-}" == "--full" ]] && QUICK=""
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1  # a step stopped at its limit keeps everything it printed
export PIP_DISABLE_PIP_VERSION_CHECK=1
# nvcc and compute-sanitizer live in the toolkit's bin/, which need not be on PATH.
for d in "${CUDA_HOME:-}" /usr/local/cuda /usr/local/cuda-*; do
  if [[ -n "$d" && -x "$d/bin/nvcc" ]]; then
    export CUDA_HOME="$d" PATH="$PATH:$d/bin"
    break
  fi
done
SANITIZER="$(command -v compute-sanitizer || true)"
if [[ -z "$SANITIZER" && -x "${CUDA_HOME:-/usr/local/cuda}/compute-sanitizer/compute-sanitizer" ]]; then
  SANITIZER="${CUDA_HOME:-/usr/local/cuda}/compute-sanitizer/compute-sanitizer"
fi
REPO="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${OUT:-$REPO/gpu_suite_out}"
WORK="$(mktemp -d)"
mkdir -p "$OUT" "$WORK/bench"
LOG="$OUT/suite.log"
: > "$LOG"
STEPS="$WORK/steps.tsv"
: > "$STEPS"
SUITE_T0=$(date +%s)

# The whole suite must fit in one 10-minute device call (run it with timeout_s=600): every step's
# limit is capped by what is left of SUITE_BUDGET_S, keeping REPORT_RESERVE_S for the report.
SUITE_BUDGET_S="${SUITE_BUDGET_S:-570}"
REPORT_RESERVE_S=25

# run_step NAME LIMIT_S CMD...: run with a time limit, log to $WORK/NAME.log, record status and
# seconds in $STEPS. Safe to run several at once in the background (each writes its own log;
# suite.log gets the logs in order at the end of the step).
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
  echo "=== $name (limit ${limit}s, at +$((t0 - SUITE_T0))s)"
  # SIGINT first: pytest writes its junit XML and summary, a benchmark the rows timed so far
  # (bench_common.run_main). A process stuck inside a CUDA call only dies of the SIGKILL.
  timeout --signal=INT --kill-after=15 "$limit" "$@" > "$WORK/$name.log" 2>&1
  rc=$?
  { echo "=== $name (limit ${limit}s, from +$((t0 - SUITE_T0))s, rc $rc)"; cat "$WORK/$name.log"; } >> "$LOG"
  echo "--- $name: rc $rc after $(( $(date +%s) - t0 ))s"; tail -n 4 "$WORK/$name.log"
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" >> "$STEPS"
  return $rc
}

# sanitize TOOL: compute-sanitizer over sanitize_ops.py, instrumenting only our kernels when this
# compute-sanitizer has kernel filters (torch's own kernels are not under test and slow it down a
# lot). Exit code 86 = sanitizer errors (1 is sanitize_ops.py's own "mismatches").
sanitize() {
  local tool="$1" filter=() extra=()
  if "$SANITIZER" --help 2>&1 | grep -q -- '--kernel-name '; then
    filter=(--kernel-name kns=torchcv_ext)
  fi
  # memcheck: no caching allocator, so an access just past a tensor is past its allocation.
  [[ "$tool" == memcheck ]] && extra=(env PYTORCH_NO_CUDA_MEMORY_CACHING=1)
  run_step "$tool" 200 "${extra[@]}" "$SANITIZER" --tool "$tool" --error-exitcode 86 "${filter[@]}" \
    $PY -P "$REPO/benchmarks/sanitize_ops.py"
  local rc=$?
  # A compute-sanitizer that rejects the filter option fails at once: run again without it.
  if (( rc != 0 && rc != 1 && rc != 86 && ${#filter[@]} )) && grep -qiE "unrecognized|unknown option|invalid" "$WORK/$tool.log"; then
    run_step "$tool-nofilter" 200 "${extra[@]}" "$SANITIZER" --tool "$tool" --error-exitcode 86 \
      $PY -P "$REPO/benchmarks/sanitize_ops.py"
  fi
}

cd "$REPO"
run_step env 60 bash -c "nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; \
  $PY -c 'import torch, sys; print(sys.version); print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, torch.cuda.get_device_name(), torch.cuda.get_device_capability())'; \
  nvcc --version | tail -2; nproc; echo compute-sanitizer: ${SANITIZER:-not found}"

CC="$($PY -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())' 2>/dev/null || echo 9.0)"
if run_step build 300 env TORCH_CUDA_ARCH_LIST="$CC" MAX_JOBS="$(nproc)" TORCHCV_EXT_CUDA=ON \
     TORCHCV_EXT_PTXAS_LOG="$WORK/ptxas" \
     $PY -m pip install --no-build-isolation --no-deps --no-index --force-reinstall -v "$REPO"; then
  # Registers and spills of every kernel for this GPU's arch (the table lands in work.tgz).
  run_step ptxas 30 $PY "$REPO/.ci/ptxas_check.py" "$WORK/ptxas" --out "$WORK/ptxas.md"
  export TORCHCV_EXT_REQUIRE_EXT=1  # tests, sanitizers and benchmarks must not fall back to the reference
  # Outside the repo, so the installed package (not the source tree) is imported.
  run_step info 60 bash -c "cd /tmp && $PY -m torchcv_ext.info --cuda"

  # Correctness, three processes at once. -P: the repo root is not on sys.path (the installed
  # package is tested); -v: a test that hangs is named in the log.
  run_step tests 200 $PY -P -m pytest "$REPO/python_tests" -m cuda -v -rfE -p no:cacheprovider \
    --junitxml="$WORK/tests.xml" &
  if [[ -n "$SANITIZER" ]]; then
    sanitize memcheck &
    sanitize racecheck &
  else
    echo "compute-sanitizer not found" | tee -a "$LOG"
    printf 'memcheck\tnot found\t0\nracecheck\tnot found\t0\n' >> "$STEPS"
  fi
  wait

  # Benchmarks. Pass 1: ours vs eager (and SDPA); the op benchmarks first, the model benchmark last.
  declare -A LIMIT=([bench_dwconv_bn_act]=70 [bench_squeeze_excite]=50 [bench_attention]=60
                    [bench_channel_shuffle]=30 [bench_models]=100)
  ORDER="bench_dwconv_bn_act bench_squeeze_excite bench_attention bench_channel_shuffle bench_models"
  for n in $ORDER; do
    run_step "$n" "${LIMIT[$n]}" $PY -P "$REPO/benchmarks/$n.py" --device cuda $QUICK --no-compile \
      --no-plot --out "$WORK/bench"
  done
  # Pass 2: the torch.compile column, with what is left.
  for n in $ORDER; do
    run_step "$n-compile" 90 $PY -P "$REPO/benchmarks/$n.py" --device cuda $QUICK --only-compile \
      --no-plot --out "$WORK/bench"
  done
fi

# The raw inputs too (one file), in case the report generator fails.
tar czf "$OUT/work.tgz" -C "$WORK" . 2>/dev/null
$PY -P "$REPO/benchmarks/suite_report.py" --work "$WORK" --out "$OUT" --repo "$REPO"
echo "suite took $(( $(date +%s) - SUITE_T0 ))s; report: $OUT/report.md"
