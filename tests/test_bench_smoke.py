"""The benchmark harness runs end to end: W1 at tiny sizes, in a subprocess (as a user
runs it), exits 0, and every implementation that ran agrees with ntkflow. Peers are
optional: with none installed the NumPy references alone must pass. No timing is
checked: unit tests never assert on time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_tiny_w1_runs_and_agrees(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--tiny", "--only", "W1", "--json", str(out)],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "agree with their reference" in proc.stdout
    report = json.loads(out.read_text())
    assert report["mode"] == "tiny" and report["git"]
    names = [w["workload"] for w in report["workloads"]]
    assert names == ["W1-fixed", "W1-adaptive"]
    rows = [r for w in report["workloads"] for r in w["rows"]]
    ran = [r for r in rows if r["status"] == "ok"]
    # ntkflow full, stagewise and reduced, and the NumPy rk4, whatever else is installed
    assert {"ntkflow (full parameters, rk4)", "numpy rk4 (vectorised)"} <= {
        r["name"] for r in ran}
    assert all(r["status"] in ("ok", "skipped") for r in rows), rows
    for r in ran:
        if not r["reference"]:
            assert r["max_rel_diff"] <= r["tol"], r
    assert report["workloads"][0]["exact_max_rel_diff"] < 1e-6


def test_bench_runs_without_peers(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--tiny", "--only", "W1-fixed", "--peers", "none"],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "skipped (excluded by --peers)" in proc.stdout
