"""The accuracy ladder (bench/ladder.py) reports a setting only when it matches on every
row, not just on its calibration rows."""

from __future__ import annotations

import numpy as np

from bench.ladder import Line, tune


def test_ladder_goes_on_when_a_row_outside_the_calibration_fails() -> None:
    S, hard = 64, 40  # row 40 is 1000x harder and not among the 4 calibration rows
    ref = np.ones((S, 1, 3))
    target = np.full(S, 1e-6)

    def make(setting: int, rows: np.ndarray):
        def run() -> np.ndarray:
            dev = 10.0 ** (-3 - setting) * np.where(rows == hard, 1e3, 1.0)
            return ref[rows] + dev[:, None, None]
        return run

    line = Line("fake", make, list(range(8)), lambda s: f"s{s}", jit=False)
    tuned = tune(line, np.arange(4), S, ref, target, cap=100.0, max_settings=8,
                 repeats=lambda first: 1)
    # s3 meets 1e-6 on rows 0-3 but leaves row 40 at 1e-3; only s6 meets it everywhere.
    assert tuned.setting == 6 and tuned.met and tuned.full_met
    assert any(e.get("widened_to") == 5 for e in tuned.log)


def test_ladder_reports_not_matched_when_settings_run_out() -> None:
    S = 32
    ref = np.ones((S, 1, 2))
    target = np.full(S, 1e-6)
    line = Line("fake", lambda s, rows: (lambda: ref[rows] + 10.0 ** (-3 - s)
                                        * np.where(rows == 20, 1e6, 1.0)[:, None, None]),
                [0, 1, 2, 3, 4], lambda s: f"s{s}", jit=False)
    tuned = tune(line, np.arange(4), S, ref, target, cap=100.0, max_settings=5,
                 repeats=lambda first: 1)
    assert tuned.setting == 4 and not tuned.full_met
