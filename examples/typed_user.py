"""A small script written as a user would, with type annotations: the public API from
simulation to studies. tests/test_typing.py runs ``mypy --strict`` on it against the
installed package (py.typed and the compiled core's stub ship with it) and runs it.

    python examples/typed_user.py [OUTDIR]      # a few seconds
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

import ntkflow as nf
from ntkflow import exact


def linear_ensemble() -> tuple[nf.Result, float]:
    """Model A (a linear network on a latent line) against its closed form."""
    net = nf.TwoLayer(width=64, act="linear", kappa=1 / 8)
    data = nf.LatentLine(beta=1.0)
    train = nf.GradientFlow(eta_u=1.0, eta_w=1.0, t_max=10.0, rtol=1e-10)
    res: nf.Result = nf.simulate(net, data, train, init=nf.Gaussian(1.0, 1.0),
                                 trajectories=16, seed=0, record=nf.Record(times=21))
    loss: NDArray[np.float64] = res.loss  # (trajectories, times)
    assert loss.shape == (16, 21) and res.ntk is not None
    path = exact.line(res, net, data, train).at(res.times)
    deviation = float(np.max(np.abs(res.ntk - path.ntk)) / np.max(path.ntk))
    return res, deviation


def relu_on_a_dataset() -> nf.Result:
    """A relu network on arrays, with a held-out set and its linearised twin."""
    rng = np.random.default_rng(0)
    X, X_test = rng.normal(size=(40, 3)), rng.normal(size=(60, 3))
    train_set = nf.Dataset(X, np.sign(X[:, 0]))
    test_set = nf.Dataset(X_test, np.sign(X_test[:, 0]))
    res = nf.simulate(nf.TwoLayer(width=32, act="relu", kappa=32**-0.5), train_set,
                      nf.GradientDescent(lr=0.5, steps=200), trajectories=4,
                      record=nf.Record(times=11, linearized=True, params="final",
                                       test=test_set))
    assert res.test_loss is not None and res.test_loss_lin is not None
    gap: NDArray[np.float64] = res.test_loss[:, -1] - res.test_loss_lin[:, -1]
    predictions: NDArray[np.float64] = res.predict(X_test)
    assert gap.shape == (4,) and predictions.shape == (4, 60)
    return res


def mechanisms(res: nf.Result) -> dict[str, float]:
    labels: nf.Classification = nf.classify(res)
    counts: dict[str, int] = labels.counts
    assert sum(counts.values()) == res.trajectories
    print(labels.summary())
    return labels.fractions


def studies(out: Path) -> tuple[str, str]:
    study: nf.WidthStudy = nf.width_study([16, 64], "ntk", trajectories=20, exact=True,
                                          n_boot=20)
    table: nf.Table = study.table
    widths: NDArray[np.int64] = table["width"]
    assert widths.tolist() == [16, 64] and len(study.to_long()) == 2 * 20
    table.to_csv(out / "widths.csv")
    grid: nf.PhaseDiagram = nf.phase_diagram(("alpha", [0.5, 1.0]), ("c_w", [0.0]),
                                             width=32, trajectories=10, exact=True)
    dominant = str(grid.dominant[0, 0])
    rows = grid.table().rows()
    assert grid.shape == (1, 2) and len(rows) == 2
    return study.summary(), dominant


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else Path(tempfile.mkdtemp(prefix="ntkflow_typed_"))
    out.mkdir(parents=True, exist_ok=True)
    res, deviation = linear_ensemble()
    print(res.summary())
    print(f"largest relative NTK deviation from the closed form: {deviation:.1e}")
    relu = relu_on_a_dataset()
    fractions = mechanisms(relu)
    print({label: round(f, 3) for label, f in fractions.items()})
    summary, dominant = studies(out)
    print(summary)
    print(f"phase diagram cell (c_w = 0, alpha = 0.5): {dominant}")
    K: NDArray[np.float64] = nf.ntk_gram(res.initial_params().u0[:2],
                                         res.initial_params().W0[:2],
                                         np.ones((3, 1)), act="linear",
                                         kappa=res.net.kappa)
    assert K.shape == (2, 3, 3)
    info: dict[str, object] = nf.build_info()
    print(f"core: {info['isa']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
