"""examples/digits.py runs end to end at a tiny size: scikit-learn's bundled digits (no
download), both losses, a width and an init-scale sweep, the kernel twin on the square loss,
the table and (with matplotlib) the figure. Skipped when scikit-learn is not installed
(the ``digits`` extra)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

pytest.importorskip("sklearn")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "digits.py"


def _example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("digits_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_digits_example_tiny(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    digits = _example()
    fig = tmp_path / "digits.png"
    rows = digits.main(["--train", "40", "--test", "30", "--widths", "8", "16",
                        "--scales", "0.5", "--steps", "20", "--trajectories", "2",
                        "--records", "3", "--threads", "1", "--figure", str(fig)])
    out = capsys.readouterr().out
    assert "twin test err" in out and "softmax" in out
    # widths 8, 16 at s = 1, then s = 0.5 at the middle width (16): 3 rows per loss
    assert [(r.loss, r.width, r.scale) for r in rows] == [
        (loss, w, s) for loss in ("square", "softmax")
        for w, s in ((8, 1.0), (16, 1.0), (16, 0.5))]
    for r in rows:
        assert r.test_error.shape == (2,)
        assert np.all((r.test_error >= 0) & (r.test_error <= 1))
        assert np.all(np.isfinite(r.train_loss))
        assert r.lr == pytest.approx(0.2 / r.scale**2)
        if r.loss == "square":  # the twin exists for the square loss only
            assert r.twin_test_error is not None and r.gap is not None
            assert np.all(np.isfinite(r.gap)) and np.all(r.gap >= 0)
        else:
            assert r.twin_test_error is None and r.gap is None
    if importlib.util.find_spec("matplotlib") is not None:
        assert fig.stat().st_size > 0


def test_digits_split_is_standardised_and_stratified() -> None:
    digits = _example()
    data = digits.load(100, 50, seed=1)
    assert data.X.shape == (100, 64) and data.X_test.shape == (50, 64)
    varying = data.X.std(axis=0) > 0
    assert np.allclose(data.X.mean(axis=0), 0.0, atol=1e-12)
    assert np.allclose(data.X.std(axis=0)[varying], 1.0)
    assert np.all(data.X[:, ~varying] == 0)
    assert set(np.unique(data.y)) == set(range(10))  # every class in the training set
