"""examples/sample_complexity.py at a small size: the rich start (small s) learns the
two-unit teacher from fewer samples than its kernel twin, the lazy start (s = 1) tracks its
twin (docs/theory.md §E.5)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np


def _example():
    path = Path(__file__).resolve().parents[1] / "examples" / "sample_complexity.py"
    spec = importlib.util.spec_from_file_location("sample_complexity", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def test_sample_complexity_example(tmp_path, capsys) -> None:
    rows = _example().main(["--ns", "16", "64", "--width", "256", "--steps", "2000",
                            "--trajectories", "4", "--test", "200",
                            "--out", str(tmp_path / "sc.png")])
    assert "delta_lin" in capsys.readouterr().out
    by = {(r["s"], r["n"]): r for r in rows}
    lazy, rich = by[(1.0, 64)], by[(0.1, 64)]
    # The rich network beats its twin by far (2e-5 against 5e-3 at the time of writing);
    # the lazy one stays within a factor 2 of its twin (4.5e-3 against 6.0e-3).
    assert rich["test_loss"] < 0.05 * rich["test_loss_twin"]
    assert 0.5 < lazy["test_loss"] / lazy["test_loss_twin"] < 2.0
    assert lazy["delta_lin"] < rich["delta_lin"]
    # More samples, lower test loss, in both regimes.
    for s in (1.0, 0.1):
        assert by[(s, 64)]["test_loss"] < by[(s, 16)]["test_loss"]
    assert all(np.isfinite(r["test_loss"]) for r in rows)
