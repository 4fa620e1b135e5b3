"""S1 (bench/s1_sweeps.py) at smoke-test size: every stage runs and its checks hold (the
store's arrays equal the in-process run's, a finished sweep resumes without computing, a
lost commit is recomputed, nothing else)."""

from __future__ import annotations

import pytest

from bench import s1_sweeps


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_s1_runs_at_smoke_size() -> None:
    out = s1_sweeps.measure(60, 0, 0, 300)
    tiny, alone = out["tiny"], out["store_only"]
    assert tiny["identical"] and tiny["store_layout"]["version"] == 2
    assert 1 <= tiny["lost_commit_tasks"] <= 60
    assert alone["tasks"] == 300 and alone["commits"] >= 1 and alone["resume_s"] < 5
