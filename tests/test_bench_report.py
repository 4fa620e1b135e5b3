"""README.md's performance table is the output of `python -m bench report` on the newest
saved run in bench/results/, so it cannot be edited by hand out of step with a run; and the
generator tabulates any workload a run holds (a new one needs no change here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench import report

ROOT = Path(__file__).resolve().parents[1]


def test_readme_table_is_the_newest_runs() -> None:
    path = report.newest_run()
    body = report.table(json.loads(path.read_text()), path.relative_to(ROOT).as_posix())
    assert report.current((ROOT / "README.md").read_text()) == body, (
        "README.md's performance table is not generated from " + path.name
        + ": run `python -m bench report`")


def test_report_check_runs_as_a_user_would() -> None:
    proc = subprocess.run([sys.executable, "-m", "bench", "report", "--check"], cwd=ROOT,
                          capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "matches" in proc.stdout


def _row(name: str, median: float, **kw: object) -> dict[str, object]:
    return {"name": name, "status": "ok", "reference": False, "median": median,
            "ratio": median, "compile_s": None, **kw}


def test_any_workload_is_tabulated_with_its_single_thread_twin(tmp_path: Path) -> None:
    """A workload the generator has never heard of, with settings, a skipped line and a
    single-thread run beside it, lands in the README between the markers."""
    newest = json.loads(report.newest_run().read_text())
    w = {"workload": "W9-new", "summary": ["closing line"], "rows": [
        _row("ntkflow", 1.0, reference=True),
        _row("jax peer", 4.0, setting="rtol 1e-9", matched=False, compile_s=2.5),
        _row("scipy peer", 5.0, setting=1e-8),  # a bare number, as W5 saved it before
        {"name": "torch peer", "status": "skipped", "detail": "skipped (not installed)",
         "reference": False}]}
    w1 = {"workload": "W9-new", "summary": [], "rows": [
        _row("ntkflow", 2.0, reference=True), _row("jax peer", 3.0)]}
    run = {**newest, "workloads": [w], "single_thread": {
        **newest, "workloads": [w1], "single_thread": None}}
    body = report.table(run, "bench/results/x.json")
    assert "**W9-new**" in body and "- closing line" in body
    assert "| jax peer | rtol 1e-9 | 4 | 4 | 2.5 | 3 | 3 | ok, accuracy NOT matched |" in body
    assert "| torch peer |  | - | - | - | - | - | skipped (not installed) |" in body
    assert "| scipy peer | 1e-08 | 5 | 5 | - | - | - | ok |" in body
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.START}\nold numbers\n{report.END}\nrest\n")
    new = report.splice(readme.read_text(), body)
    assert "old numbers" not in new and new.startswith("intro\n") and new.endswith("rest\n")
    assert report.current(new) == body


def test_newest_run_prefers_a_complete_full_run(tmp_path: Path) -> None:
    """A partial run (interrupted, or --only) is tabulated only when no complete run
    exists, and its table says it is incomplete and what it measured; a complete full run
    comes first."""
    newest = json.loads(report.newest_run().read_text())

    def save(name: str, **kw: object) -> Path:
        path = tmp_path / name
        path.write_text(json.dumps({**newest, **kw}))
        return path

    partial = save("run-20260102T0000-b.json", mode="full", complete=False,
                   workloads=[{"workload": "W1-fixed", "rows": [], "summary": []}])
    assert report.newest_run(tmp_path) == partial  # nothing complete: the record itself
    assert "INCOMPLETE (measured only: W1-fixed)" in report.table(
        json.loads(partial.read_text()), "x.json")
    quick = save("run-20260101T0000-a-quick.json", mode="quick")
    assert report.newest_run(tmp_path) == quick  # complete, though older and quick
    done = save("run-20260101T1200-c.json", mode="full")  # complete and full
    assert report.newest_run(tmp_path) == done
    assert "INCOMPLETE" not in report.table(json.loads(done.read_text()), "x.json")
