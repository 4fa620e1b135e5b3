"""The machine a benchmark ran on: CPU, SIMD flags, cores, threads, versions, git hash."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from .peers import version

_SIMD = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512dq", "avx512bw", "avx512vl",
         "avx512_bf16", "amx_tile", "neon", "sve")


def _cpuinfo() -> tuple[str, list[str]]:
    model, flags = platform.processor() or platform.machine(), []
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, val = line.partition(":")
        key = key.strip()
        if key == "model name" and val.strip():
            model = val.strip()
        elif key in ("flags", "Features") and not flags:
            have = set(val.split())
            flags = [f for f in _SIMD if f in have]
    return model, flags


def git_hash() -> str:
    """HEAD of the repository holding bench/, with "-dirty" if files differ."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True,
                               check=True).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def info() -> dict[str, Any]:
    model, flags = _cpuinfo()
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        affinity = os.cpu_count() or 0
    try:
        import ntkflow as nf

        build: Any = nf.build_info()
    except Exception as exc:  # noqa: BLE001 - the harness still reports the machine without ntkflow
        build = f"unavailable ({type(exc).__name__}: {exc})"
    versions = {name: version(name) for name in
                ("numpy", "scipy", "jax", "jaxlib", "diffrax", "torch", "neural-tangents")}
    versions["python"] = platform.python_version()
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = []
    return {
        "cpu": model,
        "loadavg": load,
        "simd": flags,
        "cores": os.cpu_count(),
        "cores_usable": affinity,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "platform": platform.platform(),
        "versions": versions,
        "git": git_hash(),
        "ntkflow_build": build,
    }


def describe(m: dict[str, Any]) -> str:
    v = m["versions"]
    peers = ", ".join(f"{k} {val}" for k, val in v.items() if val and k != "python")
    b = m["ntkflow_build"]
    core = (f"ntkflow {b['version']} ({b['isa']}, {b['compiler']}, Eigen {b['eigen']}, "
            f"{b['max_threads']} threads)" if isinstance(b, dict) else f"ntkflow {b}")
    return (f"machine: {m['cpu']}, {m['cores_usable']}/{m['cores']} cores, SIMD "
            f"{' '.join(m['simd']) or '?'}, OMP_NUM_THREADS={m['OMP_NUM_THREADS'] or 'unset'}, "
            f"load average {' '.join(map(str, m['loadavg'])) or '?'} at start\n"
            f"         python {v['python']}; {peers}\n"
            f"         {core}; git {m['git']}")
