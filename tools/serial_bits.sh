#!/usr/bin/env bash
# A serial build (NTKFLOW_OPENMP=OFF: no OpenMP) gives the same bits as the OpenMP build.
# Builds the serial core of this checkout into a fresh venv with the reference's numpy,
# compares tools/bits_digest.py in both at every instruction-set level that both have and
# the CPU runs, then runs a few test files on the serial build.
# Usage: tools/serial_bits.sh REF_PYTHON
#   REF_PYTHON: the python of an environment where this checkout is installed with OpenMP
#   (tools/build_wheel.sh --serial-check passes its wheel's venv).
#   NTKFLOW_SERIAL_LEVELS=baseline builds one level only (quicker); default: auto.
# Needs a compiler; run it under `nice -n 10` on a shared machine.
set -euo pipefail
cd "$(dirname "$0")/.."
ref=$1
work=$(mktemp -d /tmp/ntkflow-serial.XXXXXX)
trap 'rm -rf "$work"' EXIT

"$ref" -c "import ntkflow as nf, sys; sys.exit(0 if nf.build_info()['openmp'] else 'serial_bits: the reference has no OpenMP')"
numpy=$("$ref" -c "import numpy; print(numpy.__version__)")

python3 -m venv "$work/venv"
py="$work/venv/bin/python"
"$py" -m pip install --quiet --upgrade pip
"$py" -m pip install --quiet "numpy==$numpy" "pytest>=7" "hypothesis>=6.80" "scipy>=1.10" \
  "mpmath>=1.3"
start=$(date +%s)
"$py" -m pip install --quiet -C build-dir="$work/build" -C cmake.define.NTKFLOW_OPENMP=OFF \
  -C cmake.define.NTKFLOW_ISA_LEVELS="${NTKFLOW_SERIAL_LEVELS:-auto}" .
echo "serial_bits: serial build took $(( $(date +%s) - start )) s"
rm -rf "$work/build"
"$py" -c "
import ntkflow as nf
info = nf.build_info(); print('serial_bits:', info)
assert not info['openmp'] and info['max_threads'] == 1, info"

compared=0
for level in baseline x86-64-v3 x86-64-v4; do
  NTKFLOW_ISA=$level "$ref" -c "import ntkflow" 2>/dev/null || continue
  NTKFLOW_ISA=$level "$py" -c "import ntkflow" 2>/dev/null || continue
  NTKFLOW_ISA=$level "$ref" tools/bits_digest.py tests > "$work/openmp-$level.json"
  NTKFLOW_ISA=$level "$py" tools/bits_digest.py tests > "$work/serial-$level.json"
  "$py" - "$work/openmp-$level.json" "$work/serial-$level.json" "$level" <<'EOF'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
assert a["build"]["openmp"] and not b["build"]["openmp"]
assert a["build"]["isa"] == b["build"]["isa"] == sys.argv[3], (a["build"], b["build"])
differ = sorted(k for k in a["digests"].keys() | b["digests"].keys()
                if a["digests"].get(k) != b["digests"].get(k))
print(f"serial_bits: {sys.argv[3]}: {len(a['digests']) - len(differ)} of "
      f"{len(a['digests'])} runs have the same bits" + (f"; DIFFERENT: {differ}" if differ else ""))
sys.exit(1 if differ else 0)
EOF
  compared=$((compared + 1))
done
if [ "$compared" = 0 ]; then
  echo "serial_bits: no instruction-set level in common to compare" >&2
  exit 1
fi

# ntkflow from site-packages: the checkout's root has no importable ntkflow (python/).
"$py" -m pytest -q -p no:cacheprovider tests/test_core_linear.py tests/test_reproducibility.py \
  tests/test_build_info.py tests/test_ntk.py
