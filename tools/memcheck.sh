#!/usr/bin/env bash
# Run a short ntkflow workload under valgrind memcheck and fail if any reported error has a
# frame in ntkflow's compiled core. CPython builds without valgrind support report their own
# uninitialised-value errors in the garbage collector; those are listed, not counted.
# Usage: tools/memcheck.sh [python]   (valgrind runs the level it emulates: no AVX-512)
set -euo pipefail
cd "$(dirname "$0")/.."
python="${1:-python3}"
log=$(mktemp)
PYTHONMALLOC=malloc valgrind --tool=memcheck --leak-check=no --num-callers=40 \
  "$python" tools/memcheck_workload.py > "$log" 2>&1 || true
grep -q "ok$" "$log" || { cat "$log"; echo "memcheck: the workload did not finish"; exit 1; }
ours=$(grep -cE "_core_(v3|v4|baseline)|ntkflow::" "$log" || true)
echo "memcheck: $(grep 'ERROR SUMMARY' "$log" | sed 's/^==[0-9]*== //')"
echo "memcheck: error frames in ntkflow's core: $ours"
echo "memcheck: full report in $log"
[ "$ours" -eq 0 ]
