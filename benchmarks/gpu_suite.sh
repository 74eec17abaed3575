#!/usr/bin/env bash
# The GPU suite: everything that needs a GPU, in one command on a lent machine, within
# SUITE_BUDGET_S seconds (default 450: one call plus a machine start fits twice in 15 minutes).
#
#   OUT=/some/dir TORCHCV_EXT_GIT_COMMIT=<sha> bash benchmarks/gpu_suite.sh [--full]
#   GPU_SUITE_REHEARSAL=1 bash benchmarks/gpu_suite.sh       # the same script on a CPU machine
#
# Phases, in order of value; each has a time limit, capped by what is left of the budget:
#   env        GPU, driver, torch, nvcc, cores, git commit, compute-sanitizer
#   build      pip install from source, $(nproc) jobs, TORCH_CUDA_ARCH_LIST=9.0, the git commit in
#              the build info; ptxas registers/spills; python -m torchcv_ext.info --cuda
#   smoke      every op forward + backward once per dtype vs its float64 reference
#              (benchmarks/check_kernels.py --smoke), CUDA_LAUNCH_BLOCKING=1
#   tests      pytest -m cuda, in parallel (pytest-xdist)
#   bench      quick benchmarks: dwconv, SE, attention, channel shuffle, models (MobileNetV3-L and
#              EfficientNet-B0, inference and train step); ours vs eager (and SDPA), no compile
#   sanitize   compute-sanitizer memcheck, racecheck and initcheck (at once) over the whole kernel
#              case matrix (check_kernels.py: python_tests/kernel_cases.py reaches every launch
#              path); skipped within seconds when compute-sanitizer refuses the device
#   compile    the benchmarks' torch.compile column, only with time left over
#
# Saved as it goes: before and after every phase, $OUT/report.md and $OUT/results.json are
# rewritten (atomically) and every log so far is packed into $OUT/logs.tar.gz (+ plots.png once a
# benchmark ran): 4 files. A command killed at any moment leaves a readable report that names the
# phases that passed, failed, were skipped, were cut, or were not reached.
#
# Rehearsal (GPU_SUITE_REHEARSAL=1, no GPU needed): the same phases and report; GPU phases are
# recorded as skipped, the smoke test runs the CPU kernels, the build is skipped when the package is
# already installed, and OUT defaults to a fresh folder. python_tests/test_gpu_suite.py runs it.
#
# A step stopped at its limit gets SIGINT first (pytest still writes its junit XML, a benchmark the
# rows it timed), then SIGKILL. A failing phase does not stop the next ones, except a failed build.
set -uo pipefail
QUICK="--quick"
[[ "${1:-}" == "--full" ]] && QUICK=""
REHEARSAL="${GPU_SUITE_REHEARSAL:-0}"
[[ "$REHEARSAL" == "0" ]] && REHEARSAL=""
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
REPO="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/gpu_suite_out.XXXXXX")}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_suite_work.XXXXXX")"
mkdir -p "$OUT" "$WORK/bench"
SUITE_BUDGET_S="${SUITE_BUDGET_S:-450}"
SUITE_T0=$(date +%s)
STEPS="$WORK/steps.tsv"   # name, status (running / 0 / rc / skipped (why)), seconds, start offset
PHASES="env build smoke tests bench sanitize compile"
printf '%s\n' $PHASES > "$WORK/phases.txt"
: > "$STEPS"

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
COMMIT="${TORCHCV_EXT_GIT_COMMIT:-$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)}"
export TORCHCV_EXT_GIT_COMMIT="$COMMIT"

elapsed() { echo $(( $(date +%s) - SUITE_T0 )); }

# save: the report and the logs so far, into $OUT (each file replaced by a rename: never half-written).
save() {
  tar czf "$OUT/.logs.tar.gz" -C "$WORK" . 2>/dev/null && mv -f "$OUT/.logs.tar.gz" "$OUT/logs.tar.gz"
  $PY -P "$REPO/benchmarks/suite_report.py" --work "$WORK" --out "$OUT" --commit "$COMMIT" \
    --budget "$SUITE_BUDGET_S" --elapsed "$(elapsed)" ${REHEARSAL:+--rehearsal} "$@" > "$WORK/report.log" 2>&1
}

record() {  # record NAME STATUS SECONDS START: replace NAME's line in $STEPS
  local tmp="$STEPS.tmp"
  grep -v -P "^\Q$1\E\t" "$STEPS" > "$tmp"
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$tmp"
  mv -f "$tmp" "$STEPS"
}

skip() {  # skip NAME WHY
  echo "=== $1 skipped: $2"
  record "$1" "skipped ($2)" 0 "$(elapsed)"
  save
}

# run_step NAME LIMIT_S CMD...: run with a time limit, output in $WORK/NAME.log; 0 when it passed.
run_step() {
  local name="$1" limit="$2" t0 rc left
  shift 2
  t0=$(elapsed)
  left=$(( SUITE_BUDGET_S - t0 - 5 ))
  if (( left < 10 )); then
    skip "$name" "budget spent"
    return 1
  fi
  (( limit > left )) && limit=$left
  echo "=== $name (limit ${limit}s, at +${t0}s)"
  record "$name" running 0 "$t0"
  save
  timeout --signal=INT --kill-after=10 "$limit" "$@" > "$WORK/$name.log" 2>&1
  rc=$?
  echo "--- $name: rc $rc after $(( $(elapsed) - t0 ))s"
  tail -n 3 "$WORK/$name.log"
  record "$name" "$rc" "$(( $(elapsed) - t0 ))" "$t0"
  save
  return $rc
}

cd "$REPO"
# ---- env -------------------------------------------------------------------------------------------
run_step env 30 bash -c "echo git commit: $COMMIT; \
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || echo 'nvidia-smi: no GPU'; \
  $PY -c 'import sys, torch; print(sys.version.split()[0], \"torch\", torch.__version__, \"cuda\", torch.version.cuda, \
    torch.cuda.get_device_name() if torch.cuda.is_available() else \"(no GPU)\")'; \
  nvcc --version 2>/dev/null | tail -1; echo cores: \$(nproc); echo compute-sanitizer: ${SANITIZER:-not found}"

# ---- build -----------------------------------------------------------------------------------------
installed() { (cd /tmp && $PY -c "import torchcv_ext, sys; sys.exit(not torchcv_ext.extension_loaded())") 2>/dev/null; }
if [[ -n "$REHEARSAL" ]] && installed; then
  skip build "rehearsal: package already installed"
  built=1
else
  run_step build 240 env TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="$(nproc)" \
    TORCHCV_EXT_CUDA="$([[ -n "$REHEARSAL" ]] && echo AUTO || echo ON)" TORCHCV_EXT_PTXAS_LOG="$WORK/ptxas" \
    bash -c "$PY -m pip install --no-build-isolation --no-deps --no-index --force-reinstall '$REPO' && \
      { [[ ! -d '$WORK/ptxas' ]] || $PY '$REPO/.ci/ptxas_check.py' '$WORK/ptxas' --out '$WORK/ptxas.md'; } ; \
      cd /tmp && $PY -m torchcv_ext.info ${REHEARSAL:---cuda}"
  built=$(( $? == 0 ))
fi

if (( built )); then
  export TORCHCV_EXT_REQUIRE_EXT=1  # no silent fallback to the reference ops
  # ---- smoke -------------------------------------------------------------------------------------
  if [[ -n "$REHEARSAL" ]]; then
    run_step smoke 60 $PY -P "$REPO/benchmarks/check_kernels.py" --smoke --device cpu
  else
    run_step smoke 60 env CUDA_LAUNCH_BLOCKING=1 $PY -P "$REPO/benchmarks/check_kernels.py" --smoke --device cuda
  fi
  # ---- tests -------------------------------------------------------------------------------------
  if [[ -n "$REHEARSAL" ]]; then
    skip tests "rehearsal: no GPU"
  else
    # -P: the installed package is tested, not the source tree; -n: pytest-xdist workers.
    workers=$(( $(nproc) < 8 ? $(nproc) : 8 ))
    run_step tests 150 $PY -P -m pytest "$REPO/python_tests" -m cuda -n "$workers" -q -rfE \
      -p no:cacheprovider --junitxml="$WORK/tests.xml"
  fi
  # ---- bench -------------------------------------------------------------------------------------
  # bench_pass FLAG: a script that runs every benchmark once with FLAG (--no-compile / --only-compile)
  bench_pass() {
    local n extra
    for n in bench_dwconv_bn_act bench_squeeze_excite bench_attention bench_channel_shuffle bench_models; do
      extra=""
      [[ "$n" == bench_models ]] && extra="--models mobilenet_v3_large,efficientnet_b0"
      echo "echo '--- $n'; $PY -P '$REPO/benchmarks/$n.py' --device cuda $QUICK --no-plot --out '$WORK/bench' $1 $extra || { echo '$n failed'; rc=1; }"
    done > "$WORK/bench$1.sh"
    echo 'exit ${rc:-0}' >> "$WORK/bench$1.sh"
    echo "$WORK/bench$1.sh"
  }
  if [[ -n "$REHEARSAL" ]]; then
    skip bench "rehearsal: no GPU"
  else
    run_step bench 110 bash "$(bench_pass --no-compile)"
  fi
  # ---- sanitize ----------------------------------------------------------------------------------
  if [[ -n "$REHEARSAL" ]]; then
    skip sanitize "rehearsal: no GPU"
  elif [[ -z "$SANITIZER" ]]; then
    skip sanitize "compute-sanitizer not found"
  elif ! timeout 60 "$SANITIZER" --tool memcheck --error-exitcode 86 $PY -c \
      "import torch; torch.ones(4, device='cuda').add_(1); torch.cuda.synchronize()" > "$WORK/sanitizer_probe.log" 2>&1; then
    skip sanitize "compute-sanitizer refused the device: $(grep -m1 -iE 'not supported|error' "$WORK/sanitizer_probe.log" | tr -d '\t' | cut -c1-120)"
  else
    # Instrument only our kernels where this compute-sanitizer has kernel filters (torch's own kernels
    # are not under test and slow it down a lot); memcheck without the caching allocator, so an
    # access just past a tensor is past its allocation. 86 = sanitizer errors, 1 = mismatches.
    filter=""
    "$SANITIZER" --help 2>&1 | grep -q -- '--kernel-name ' && filter="--kernel-name kns=torchcv_ext"
    run_step sanitize 150 bash -c "
      for tool in memcheck racecheck initcheck; do
        env \$([[ \$tool == memcheck ]] && echo PYTORCH_NO_CUDA_MEMORY_CACHING=1) '$SANITIZER' --tool \$tool \
          --error-exitcode 86 $filter $PY -P '$REPO/benchmarks/check_kernels.py' --device cuda \
          > '$WORK/'\$tool.log 2>&1 &
      done
      rc=0; for job in \$(jobs -p); do wait \$job || rc=\$?; done
      for tool in memcheck racecheck initcheck; do echo \"== \$tool\"; tail -n 5 '$WORK/'\$tool.log; done
      exit \$rc"
  fi
  # ---- compile (time left over) ------------------------------------------------------------------
  if [[ -n "$REHEARSAL" ]]; then
    skip compile "rehearsal: no GPU"
  else
    run_step compile 120 bash "$(bench_pass --only-compile)"
  fi
fi

save --finished
cat "$WORK/report.log"
echo "suite took $(elapsed)s; report: $OUT/report.md"
