"""Same seed, same bits: whatever the thread count, the chunking or the process."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import ntkflow as nf

NET = nf.TwoLayer(width=32, kappa=1 / 8)
DATA = nf.LatentLine(beta=0.7)
FIELDS = ("loss", "p", "norm_u2", "norm_w2", "alignment", "ntk", "balance_drift", "steps")


def run(train: nf.GradientFlow, n: int, first: int = 0, threads: int | None = None):
    return nf.simulate(NET, DATA, train, trajectories=n, seed=1234, first_trajectory=first,
                       threads=threads, record=nf.Record(times=21))


def assert_same(a, b) -> None:
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


@pytest.mark.parametrize("solver", ["dopri5", "rk4"])
def test_same_bits_for_any_thread_count(solver: str) -> None:
    train = nf.GradientFlow(t_max=5.0, solver=solver, dt=0.05)
    one = run(train, 257, threads=1)
    assert_same(run(train, 257, threads=2), one)
    assert_same(run(train, 257, threads=3), one)


def test_one_ensemble_equals_two_chunks() -> None:
    train = nf.GradientFlow(t_max=5.0)
    whole = run(train, 4096)
    a, b = run(train, 2048), run(train, 2048, first=2048)
    for name in FIELDS:
        np.testing.assert_array_equal(
            np.concatenate([getattr(a, name), getattr(b, name)]), getattr(whole, name), name
        )


def test_same_bits_across_omp_num_threads_in_fresh_processes() -> None:
    code = (
        "import numpy as np, ntkflow as nf, sys\n"
        "r = nf.simulate(nf.TwoLayer(width=64, kappa=0.125), nf.LatentLine(), "
        "nf.GradientFlow(t_max=3.0), trajectories=64, seed=9)\n"
        "sys.stdout.write(r.loss.tobytes().hex() + r.p.tobytes().hex())\n"
    )
    outs = []
    for threads in ("1", "2"):
        env = dict(os.environ, OMP_NUM_THREADS=threads)
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, check=True)
        outs.append(proc.stdout)
    assert outs[0] == outs[1] and len(outs[0]) > 1000
