"""simulate() keeps its bits through refactoring: every record of a few runs, covering both
paths (moments, data, moments through the root of a Dataset) and their options, hashed
and compared with digests recorded by an earlier version of the code.

The bits depend on the build (instruction-set level, compiler, Eigen) and on NumPy (the
Python-side kernel metrics and moment roots), so the digests are kept per build and the
test skips on a build that has none. To record them for this build (only from code whose
results are known to be right, e.g. before a refactor):

    python tests/test_simulate_bits.py --write
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import ntkflow as nf

DIGESTS = Path(__file__).with_name("simulate_bits.json")


def _data(samples: int, dim: int, seed: int, outputs: int = 1, labels: bool = False
          ) -> nf.Dataset:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(samples, dim))
    if labels and outputs == 1:
        return nf.Dataset(X, np.where(X[:, 0] > 0, 1.0, -1.0))
    if labels:
        return nf.Dataset(X, rng.integers(0, outputs, samples), classes=outputs)
    y = X @ rng.normal(size=(dim, outputs)) + 0.1 * rng.normal(size=(samples, outputs))
    return nf.Dataset(X, y[:, 0] if outputs == 1 else y)


def _runs() -> dict[str, Callable[[], nf.Result]]:
    """Small runs through every branch of simulate() and _simulate_data()."""
    flow, T = nf.GradientFlow(t_max=2.0), nf.Record(times=6)
    line = nf.LatentLine(beta=0.7)
    mom = nf.Moments(np.array([[2.0, 0.3, 0.0], [0.3, 1.0, 0.1], [0.0, 0.1, 0.5]]),
                     np.array([1.0, -0.5, 0.2]))
    reg, cls = _data(24, 3, 1), _data(24, 3, 2, labels=True)
    test, multi = _data(10, 3, 3, labels=True), _data(24, 3, 4, outputs=3, labels=True)
    net = nf.TwoLayer(width=16, kappa=0.25)
    relu = nf.TwoLayer(width=16, act="relu", kappa=0.25)
    return {
        "line_dopri5": lambda: nf.simulate(net, line, flow, trajectories=5, seed=3,
                                           record=nf.Record(times=6, loss_below=0.3)),
        "line_rk4_stagewise": lambda: nf.simulate(
            net, line, nf.GradientFlow(t_max=1.0, solver="rk4", dt=0.05), trajectories=3,
            seed=4, record=T, method="stagewise"),
        "line_reduced": lambda: nf.simulate(net, line, flow, trajectories=3, seed=5,
                                            record=T, method="reduced"),
        "moments_params_deltas": lambda: nf.simulate(
            net, mom, nf.GradientFlow(t_max=2.0, lambda_u=0.01, lambda_w=0.02),
            trajectories=3, seed=6, record=nf.Record(times=5, ntk="matrix", params="all",
                                                     deltas=True),
            init=nf.Gaussian(0.5, 1.5, correlation=0.3)),
        "dataset_moments_metrics": lambda: nf.simulate(
            net, reg, flow, trajectories=3, seed=7, record=nf.Record(times=5, ntk="metrics")),
        "descent_scalar_ntk": lambda: nf.simulate(
            net, line, nf.GradientDescent(lr=0.05, steps=40), trajectories=3, seed=8,
            record=nf.Record(times=5, ntk="scalar", params="final")),
        "bias_root_moments": lambda: nf.simulate(
            nf.TwoLayer(width=16, kappa=0.25, bias=True), reg, flow, trajectories=3, seed=9,
            record=nf.Record(times=5, params="final"), init=nf.Gaussian(s_b=0.5)),
        "outputs_root_moments": lambda: nf.simulate(
            net, _data(24, 3, 5, outputs=2), flow, trajectories=3, seed=10, record=T),
        "relu_data_gram_lin_test": lambda: nf.simulate(
            relu, cls, flow, trajectories=3, seed=11,
            record=nf.Record(times=5, gram="train", linearized=True, test=test,
                             params="all", deltas=True, loss_below=0.2)),
        "tanh_probe": lambda: nf.simulate(
            nf.TwoLayer(width=16, act="tanh", kappa=0.25, bias=True), reg,
            nf.GradientFlow(t_max=1.0, solver="rk4", dt=0.05), trajectories=3, seed=12,
            record=nf.Record(times=5, gram="probe", probe=np.ones((4, 3)))),
        "logistic_descent": lambda: nf.simulate(
            relu, cls, nf.GradientDescent(lr=0.1, steps=30, loss="logistic"),
            trajectories=3, seed=13, record=nf.Record(times=4, test=test)),
        "softmax_sgd": lambda: nf.simulate(
            nf.TwoLayer(width=16, act="erf", kappa=0.25), multi,
            nf.SGD(lr=0.1, steps=30, batch_size=5, loss="softmax"),
            trajectories=3, seed=14, record=nf.Record(times=4, params="final")),
        "sgd_replace_linear": lambda: nf.simulate(
            net, reg, nf.SGD(lr=0.05, steps=30, batch_size=20, replace=True, label_noise=0.1),
            trajectories=3, seed=15, record=nf.Record(times=4, linearized=True)),
        "given_params": lambda: nf.simulate(
            net, reg, flow, init=nf.initial_params(net, trajectories=2, seed=16, dim=3),
            path="data", record=nf.Record(times=4, params="final")),
    }


def _digest(res: nf.Result) -> dict[str, str]:
    """Every field of a Result: arrays by dtype, shape and bytes; the rest by repr; plus
    the regenerated initial parameters."""
    out = {}
    for f in dataclasses.fields(res):
        v = getattr(res, f.name)
        if f.name.startswith("_"):
            continue
        if isinstance(v, np.ndarray):
            a = np.ascontiguousarray(v)
            h = hashlib.sha256(f"{a.dtype}{a.shape}".encode() + a.tobytes()).hexdigest()
            out[f.name] = h[:24]
        elif f.name not in ("data", "init") or not dataclasses.is_dataclass(v):
            out[f.name] = repr(v)
    p = res.initial_params()
    out["initial_params"] = hashlib.sha256(b"".join(
        np.ascontiguousarray(a).tobytes() for a in (p.u0, p.W0, p.b0) if a is not None
    )).hexdigest()[:24]
    return out


def _build() -> str:
    info = nf.build_info()
    return f"{info['isa']} | {info['compiler']} | eigen {info['eigen']} | numpy {np.__version__}"


def _recorded() -> dict[str, dict[str, str]]:
    if not DIGESTS.exists():
        return {}
    builds: dict[str, dict[str, dict[str, str]]] = json.loads(DIGESTS.read_text())
    return builds.get(_build(), {})


@pytest.mark.parametrize("name", sorted(_runs()))
def test_simulate_records_keep_their_bits(name: str) -> None:
    want = _recorded()
    if not want:
        pytest.skip(f"no digests recorded for this build ({_build()}); see the docstring")
    got = _digest(_runs()[name]())
    assert got == want[name], {k: (got.get(k), want[name].get(k)) for k in
                               set(got) | set(want[name]) if got.get(k) != want[name].get(k)}


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit(__doc__)
    builds = json.loads(DIGESTS.read_text()) if DIGESTS.exists() else {}
    builds[_build()] = {name: _digest(run()) for name, run in sorted(_runs().items())}
    DIGESTS.write_text(json.dumps(builds, indent=1, sort_keys=True) + "\n")
    print(f"recorded {len(builds[_build()])} runs for {_build()} in {DIGESTS}")
