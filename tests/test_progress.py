"""simulate's progress bar: the core counts finished trajectories and hands the count to
a hook; the bar (tqdm, replaced here by a fake) never changes a result. No assertion
depends on timing: the bar's delay is set to 0 and only the final count is certain."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

import ntkflow as nf
from ntkflow import _progress

RNG = np.random.default_rng(1)
DATASET = nf.Dataset(X=RNG.normal(size=(6, 2)), y=RNG.normal(size=6))

# (id, net, data, train): the lane path (groups of trajectories per item), the one-at-a-time
# fused path, stagewise, and the dataset path.
RUNS = [
    ("lanes", nf.TwoLayer(width=5), nf.LatentLine(), nf.GradientDescent(lr=0.1, steps=50), {}),
    ("fused", nf.TwoLayer(width=5), nf.LatentLine(), nf.GradientFlow(t_max=2.0), {}),
    ("stagewise", nf.TwoLayer(width=5), nf.LatentLine(), nf.GradientFlow(t_max=2.0),
     {"method": "stagewise"}),
    ("data", nf.TwoLayer(width=5, act="tanh"), DATASET,
     nf.GradientFlow(t_max=1.0, solver="rk4", dt=0.05), {}),
]


class FakeTqdm:
    instances: list[FakeTqdm] = []

    def __init__(self, total: int, **kw: object) -> None:
        self.total = total
        self.n = 0
        self.steps: list[int] = []
        self.closed = False
        FakeTqdm.instances.append(self)

    def update(self, k: int) -> None:
        self.steps.append(k)
        self.n += k

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def fake_tqdm(monkeypatch):
    FakeTqdm.instances = []
    monkeypatch.setitem(sys.modules, "tqdm", types.SimpleNamespace(tqdm=FakeTqdm))
    monkeypatch.setattr(_progress.TrajectoryProgress, "DELAY_S", 0.0)
    return FakeTqdm


@pytest.fixture
def counts(monkeypatch):
    """Every count the core hands to the hook, in order."""
    seen: list[int] = []
    update = _progress.TrajectoryProgress.update

    def spy(self, done: int) -> None:
        seen.append(done)
        update(self, done)

    monkeypatch.setattr(_progress.TrajectoryProgress, "update", spy)
    return seen


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("run", RUNS, ids=[r[0] for r in RUNS])
def test_bar_counts_every_trajectory_and_changes_no_bits(run, threads, fake_tqdm,
                                                         counts) -> None:
    _, net, data, train, kw = run
    n = 19
    common = dict(trajectories=n, seed=4, threads=threads, record=nf.Record(times=5), **kw)
    res = nf.simulate(net, data, train, progress=True, **common)
    assert counts and counts[-1] == n
    assert counts == sorted(counts) and all(0 <= c <= n for c in counts)
    (bar,) = fake_tqdm.instances
    assert bar.total == n and bar.n == n and bar.closed
    assert all(k > 0 for k in bar.steps)
    quiet = nf.simulate(net, data, train, progress=False, **common)
    for name in ("loss", "p", "alignment", "delta_drift", "steps"):
        np.testing.assert_array_equal(getattr(res, name), getattr(quiet, name), name)


def test_false_and_a_non_terminal_stderr_show_nothing(fake_tqdm, counts) -> None:
    _, net, data, train, _ = RUNS[0]
    nf.simulate(net, data, train, trajectories=3, progress=False)
    nf.simulate(net, data, train, trajectories=3)  # None: stderr is captured by pytest
    assert not fake_tqdm.instances and not counts


def test_missing_tqdm_is_silent(monkeypatch, counts) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm raises ImportError
    monkeypatch.setattr(_progress.TrajectoryProgress, "DELAY_S", 0.0)
    _, net, data, train, _ = RUNS[1]
    res = nf.simulate(net, data, train, trajectories=4, progress=True)
    assert res.ok.all() and counts[-1] == 4


def test_an_error_in_the_hook_reaches_the_caller(monkeypatch) -> None:
    def boom(self, done: int) -> None:
        raise RuntimeError("hook failed")

    monkeypatch.setattr(_progress.TrajectoryProgress, "update", boom)
    _, net, data, train, _ = RUNS[1]
    with pytest.raises(RuntimeError, match="hook failed"):
        nf.simulate(net, data, train, trajectories=2, progress=True)


def test_bad_progress_value_is_refused() -> None:
    _, net, data, train, _ = RUNS[0]
    with pytest.raises(ValueError, match="progress"):
        nf.simulate(net, data, train, progress="yes")  # type: ignore[arg-type]


def test_bar_appears_only_after_the_delay(monkeypatch, fake_tqdm) -> None:
    monkeypatch.setattr(_progress.TrajectoryProgress, "DELAY_S", 2.0)
    clock = [100.0]
    monkeypatch.setattr(_progress.time, "monotonic", lambda: clock[0])
    with _progress.TrajectoryProgress(10, True) as hook:
        assert hook is not None
        hook(3)  # t = 0 s: too early, nothing shown
        clock[0] += 1.9
        hook(5)
        assert not fake_tqdm.instances
        clock[0] += 0.2  # 2.1 s: the bar appears with everything finished so far
        hook(6)
        (bar,) = fake_tqdm.instances
        assert bar.n == 6
        hook(10)
        assert bar.n == 10 and not bar.closed
    assert bar.closed
    with _progress.TrajectoryProgress(10, False) as hook:
        assert hook is None  # no hook: the core skips the callback altogether
