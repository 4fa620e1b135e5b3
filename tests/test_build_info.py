"""build_info tells how the core was built; a serial build (no OpenMP) runs threads=N on one
thread with the same bits and says so once per process instead of failing."""

from __future__ import annotations

import warnings
from types import ModuleType
from typing import Any

import numpy as np
import pytest

import ntkflow as nf
from ntkflow import _core

NET = nf.TwoLayer(width=16, kappa=0.25)


def test_build_info_reports_openmp() -> None:
    info = nf.build_info()
    assert isinstance(info["openmp"], bool)
    assert isinstance(info["max_threads"], int) and info["max_threads"] >= 1
    if not info["openmp"]:
        assert info["max_threads"] == 1


class _SerialCore:
    """The loaded core as a serial build would answer: no OpenMP."""

    def __init__(self, real: ModuleType) -> None:
        self._real = real

    def openmp(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def _run(threads: int | None) -> nf.Result:
    return nf.simulate(NET, nf.LatentLine(), nf.GradientFlow(t_max=1.0, solver="rk4", dt=0.1),
                       trajectories=9, seed=5, threads=threads)


def test_threads_on_a_serial_build_warn_once_and_give_the_same_bits(
        monkeypatch: pytest.MonkeyPatch) -> None:
    reference = _run(None)
    monkeypatch.setattr(_core, "_module", _SerialCore(_core._module))
    monkeypatch.setattr(_core, "_serial_warned", False)
    assert _core.team(0) == 0 and _core.team(1) == 1  # the default and one thread: silent
    with pytest.warns(nf.SerialBuildWarning, match="threads=4: .*built without OpenMP") as rec:
        res = _run(4)
    assert len(rec) == 1 and rec[0].filename == __file__  # names the user's call
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second time is silent
        again = _run(2)
        u = np.random.default_rng(0).normal(size=(3, 8))
        W = np.random.default_rng(1).normal(size=(3, 8, 2))
        X = np.random.default_rng(2).normal(size=(5, 2))
        gram = {"act": "tanh", "kappa": 0.5}
        np.testing.assert_array_equal(nf.ntk_gram(u, W, X, **gram, threads=3),
                                      nf.ntk_gram(u, W, X, **gram))
    for name in ("loss", "p", "ntk"):
        np.testing.assert_array_equal(getattr(res, name), getattr(reference, name))
        np.testing.assert_array_equal(getattr(again, name), getattr(reference, name))
