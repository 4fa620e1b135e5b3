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


def test_targets_table_reads_each_number_and_its_bound() -> None:
    # A made-up output: each target's row must find its number and compare it with the
    # issue's bound in the right direction; a stage not run is "not measured" (None).
    out = {"tiny": {"store_ms_per_task": 0.5, "resume_s": 6.0},
           "store_only": {"store_ms_per_task": 1.0},
           "dask_tiny": {"dask1": {"overhead_ms_per_task": 0.2}},
           "long": {"speedup_2_over_1_workers": 1.85}}
    rows = {r["name"]: r for r in s1_sweeps.targets(out)}
    assert rows["store_ms"]["met"] is True and rows["store_ms"]["value"] == 0.5
    assert rows["store_alone_ms"]["met"] is True  # the bound itself passes
    assert rows["resume_s"]["met"] is False
    assert rows["dask1_ms"]["met"] is True
    assert rows["dask2_ms"]["met"] is None and rows["dask2_ms"]["value"] is None
    assert rows["speedup"]["met"] is True
    out["long"]["speedup_2_over_1_workers"] = 1.79
    assert not {r["name"]: r for r in s1_sweeps.targets(out)}["speedup"]["met"]


def test_simulated_commit_rate_from_segment_times(tmp_path) -> None:
    # 10 commits of 100 tasks, one every 0.5 s: 200 tasks/s over the middle 80%.
    import json
    import os

    from bench import s1_simulated

    (tmp_path / "segments").mkdir()
    with open(tmp_path / "index.jsonl", "w") as fh:
        for i in range(10):
            seg = tmp_path / "segments" / f"{i}.zip"
            seg.write_bytes(b"")
            os.utime(seg, ns=(0, int((1000 + 0.5 * i) * 1e9)))
            fh.write(json.dumps({"segment": f"{i}.zip",
                                 "keys": [f"{i}-{k}" for k in range(100)]}) + "\n")
    rate, commits = s1_simulated._commit_rate(tmp_path, 1000)
    assert commits == 10 and abs(rate - 200.0) < 1e-6
