#!/usr/bin/env bash
# Build ntkflow with AddressSanitizer + UndefinedBehaviorSanitizer (baseline level only) into
# a private virtual environment and run the tests that drive the C++ core under it.
# Usage: tools/sanitize.sh [pytest args...]   (default: the core-heavy test files)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${NTKFLOW_SAN_VENV:-/tmp/ntkflow-asan-venv}"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
"$venv/bin/pip" install --quiet numpy scipy pytest hypothesis mpmath scikit-build-core pybind11 \
  cmeel-eigen ninja cmake
"$venv/bin/pip" install --quiet --no-build-isolation \
  -C build-dir=build/asan -C cmake.build-type=RelWithDebInfo \
  -C cmake.define.NTKFLOW_SANITIZE=ON -C cmake.define.NTKFLOW_ISA_LEVELS=baseline .
libasan=$(g++ -print-file-name=libasan.so)
libubsan=$(g++ -print-file-name=libubsan.so)
# CPython itself is not built with ASan: preload the runtime, ignore its leaks (interned
# objects live until exit), but stop at the first memory error or undefined behaviour.
export LD_PRELOAD="$libasan:$libubsan"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:allocator_may_return_null=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export NTKFLOW_ISA=baseline
if [ $# -eq 0 ]; then
  set -- tests/test_core_linear.py tests/test_reproducibility.py tests/test_simulate_exact.py \
    tests/test_validation.py tests/test_interrupt.py tests/test_nonlinear.py tests/test_ntk.py \
    tests/test_fuzz.py
fi
start=$(date +%s)
"$venv/bin/python" -m pytest -q -p no:cacheprovider "$@"
echo "sanitize: tests took $(( $(date +%s) - start )) s"
