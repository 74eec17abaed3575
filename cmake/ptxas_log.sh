#!/usr/bin/env bash
# CUDA compiler launcher for TORCHCV_EXT_PTXAS_LOG=DIR (CMakeLists.txt): runs the nvcc command
# (built with -Xptxas=-v), passes its output through, and keeps ptxas's per-kernel report
# (registers, spills, stack) in DIR/<object>.log, one file per object so that an incremental
# build updates only the changed ones. .ci/ptxas_check.py reads DIR.
#   ptxas_log.sh DIR nvcc ARGS...
set -u
dir="$1"
shift
obj="unknown"
prev=""
for a in "$@"; do
  [[ "$prev" == "-o" ]] && obj="$a"
  prev="$a"
done
mkdir -p "$dir"
out="$dir/$(basename "$obj").log"
"$@" 2> "$out.tmp"
rc=$?
cat "$out.tmp" >&2
mv "$out.tmp" "$out"
exit $rc
