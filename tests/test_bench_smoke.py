"""The benchmark harness runs end to end: W1 and W4 at tiny sizes, in a subprocess (as a user
runs it), exits 0, and every implementation that ran agrees with ntkflow. Peers are
optional: with none installed the NumPy references alone must pass. No timing is
checked: unit tests never assert on time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m bench --tiny ARGS`` from the checkout, as a user runs it; it must exit 0."""
    proc = subprocess.run([sys.executable, "-m", "bench", "--tiny", *args], check=False,
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_bench_tiny_w1_runs_and_agrees(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = _bench("--only", "W1", "--json", str(out))
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
    proc = _bench("--only", "W1-fixed", "--peers", "none")
    assert "skipped (excluded by --peers)" in proc.stdout


def test_bench_tiny_w4_runs_and_checks(tmp_path: Path) -> None:
    """W4 at tiny sizes: the reference, ntkflow default and every installed peer's
    accuracy ladder run, each answer is sane, and the row says whether it matched."""
    out = tmp_path / "w4.json"
    proc = _bench("--only", "W4", "--json", str(out), timeout=180)
    assert "W4 at matched accuracy" in proc.stdout
    (w4,) = json.loads(out.read_text())["workloads"]
    assert w4["workload"] == "W4"
    rows = {r["name"]: r for r in w4["rows"]}
    assert rows["ntkflow dopri5 (reference)"]["reference"]
    default = rows["ntkflow default (dopri5, located switches)"]
    assert default["status"] == "ok" and default["matched"]
    assert rows["ntkflow rk4 (fixed dt)"]["status"] == "ok"
    for r in w4["rows"]:
        assert r["status"] in ("ok", "skipped"), r
        if r["status"] == "ok" and not r["reference"]:
            assert r["max_rel_diff"] <= r["tol"], r
            assert isinstance(r["matched"], bool)
    if w4["with_test"]:
        assert all(r["dev_test"] is not None for r in w4["rows"]
                   if r["status"] == "ok" and not r["reference"])
    else:
        assert "test loss: not available in this build" in proc.stdout


def test_bench_w4_without_peers() -> None:
    proc = _bench("--only", "W4", "--peers", "none")
    assert "skipped (excluded by --peers)" in proc.stdout
    assert "ntkflow rk4 (fixed dt)" in proc.stdout


def test_bench_tiny_w3_sgd_runs_and_checks(tmp_path: Path) -> None:
    """W3-SGD at tiny sizes: ntkflow's SGD, the NumPy reference on its exact batches
    (agreeing to 1e-10) and every installed peer, checked by its final-loss distribution."""
    out = tmp_path / "w3sgd.json"
    proc = _bench("--only", "W3-SGD", "--json", str(out), timeout=180)
    (w,) = json.loads(out.read_text())["workloads"]
    assert w["workload"] == "W3-SGD" and w["batch"] == 32
    rows = {r["name"]: r for r in w["rows"]}
    assert rows["ntkflow simulate (relu, SGD)"]["reference"]
    exact = [r for r in w["rows"] if r["name"].startswith("numpy, ntkflow's batches")]
    assert len(exact) == 1 and exact[0]["status"] == "ok"
    assert exact[0]["max_rel_diff"] <= 1e-10
    for r in w["rows"]:
        assert r["status"] in ("ok", "skipped"), r
        if r["status"] == "ok" and r["name"].startswith(("jax", "torch")):
            assert "KS p" in r["note"] and "paired t" in r["note"], r


def test_bench_single_thread_table_runs_at_one_thread(tmp_path: Path) -> None:
    """The single-thread twin: a child run at --threads 1, pinned, every library observed
    on one busy thread, its rows in the parent's JSON."""
    out = tmp_path / "single.json"
    _bench("--only", "W1-fixed", "--peers", "none", "--single-thread", "yes", "--json", str(out))
    report = json.loads(out.read_text())
    if report["threads"] == 1:
        pytest.skip("ntkflow already runs on one thread here: no second run")
    single = report["single_thread"]
    assert single["threads"] == 1 and single["returncode"] == 0
    observed = single["machine"]["peer_threads"]["observed"]
    assert observed and all(v in (1, -1) for v in observed.values()), observed
    assert [w["workload"] for w in single["workloads"]] == ["W1-fixed"]


def test_bench_registry_entries_resolve() -> None:
    """Every workload in the registry names a function the runner can call."""
    import importlib

    from bench.__main__ import REGISTRY

    for name, target in REGISTRY.items():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(f"bench.{module}"), func)), name
