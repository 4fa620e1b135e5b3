"""Sample complexity: test loss against the number of training samples, lazy and rich.

A teacher-student recipe (no download, no extra dependency; matplotlib for the figure):

    python examples/sample_complexity.py            # ~15 s on 2 cores; a table and
                                                    # sample_complexity.png
    python examples/sample_complexity.py --help

The teacher is a relu network with a few units, ``y = sum_k a_k relu(v_k . x)`` on inputs
``x ~ N(0, I_d / d)``; the students are relu networks of one width trained by gradient
descent on n samples, for n on a log grid, from two initialisation scales: s = 1 (the NTK
parametrization, lazy: the student stays close to its linearised twin) and a small s (rich:
the first layer has to grow, and it grows along the teacher's directions). Every run
carries a held-out set and its linearised twin (``Record(test=..., linearized=True)``), so
the table shows, for each n and s, the network's test loss, the twin's (the kernel
predictor of the initial NTK) and the twin distance ``delta_lin`` that decides the kernel
label (docs/theory.md §E.5). The student's output scale is kappa = 1/sqrt(width) and the
learning rate is scaled with 1/s^2 so that both scales cover comparable kernel time.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

import ntkflow as nf


def teacher(d: int, units: int, rng: np.random.Generator):
    """A relu teacher with unit-norm directions and +-1 output weights."""
    V = rng.normal(size=(units, d))
    V /= np.linalg.norm(V, axis=1, keepdims=True)
    a = np.where(np.arange(units) % 2 == 0, 1.0, -1.0)
    return lambda X: np.maximum(X @ V.T, 0.0) @ a


def inputs(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    return rng.normal(size=(n, d)) / np.sqrt(d)


def run(ns: Sequence[int], scales: Sequence[float], *, d: int, width: int, units: int,
        steps: int, lr: float, trajectories: int, n_test: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    f = teacher(d, units, rng)
    X_all, X_test = inputs(max(ns), d, rng), inputs(n_test, d, rng)
    test = nf.Dataset(X_test, f(X_test))
    net = nf.TwoLayer(width=width, act="relu", kappa=width ** -0.5)
    rows = []
    for s in scales:
        for n in ns:
            X = X_all[:n]  # nested training sets: n grows, the first samples stay
            res = nf.simulate(net, nf.Dataset(X, f(X)),
                              nf.GradientDescent(lr=lr / s**2, steps=steps),
                              init=nf.Gaussian(s, s), trajectories=trajectories, seed=seed,
                              record=nf.Record(times=21, test=test, linearized=True))
            ok = res.ok
            c = nf.classify(res)
            rows.append({
                "s": s, "n": n,
                "train_loss": float(np.median(res.loss[ok, -1])),
                "test_loss": float(np.median(res.test_loss[ok, -1])),
                "test_loss_twin": float(np.median(res.test_loss_lin[ok, -1])),
                "delta_lin": float(np.median(res.delta_lin()[ok, -1])),
                "kernel": c.fractions["kernel"],
            })
    return rows


def table(rows: list[dict]) -> str:
    head = (f"{'s':>6}{'n':>6}{'train loss':>12}{'test loss':>11}{'twin test':>11}"
            f"{'delta_lin':>11}{'kernel':>8}")
    lines = [head]
    for r in rows:
        lines.append(f"{r['s']:>6g}{r['n']:>6d}{r['train_loss']:>12.3g}{r['test_loss']:>11.3g}"
                     f"{r['test_loss_twin']:>11.3g}{r['delta_lin']:>11.3g}"
                     f"{r['kernel']:>8.2f}")
    return "\n".join(lines)


def figure(rows: list[dict], path: Path) -> Path | None:
    try:
        import matplotlib
        import matplotlib.ticker

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for i, s in enumerate(sorted({r["s"] for r in rows})):
        rs = [r for r in rows if r["s"] == s]
        n = [r["n"] for r in rs]
        ax.loglog(n, [r["test_loss"] for r in rs], "o-", color=f"C{i}",
                  label=f"network, s = {s:g}")
        ax.loglog(n, [r["test_loss_twin"] for r in rs], "^--", color=f"C{i}", alpha=0.7,
                  label=f"kernel twin, s = {s:g}")
    ns = sorted({r["n"] for r in rows})
    ax.set_xticks(ns, [str(v) for v in ns])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("training samples n")
    ax.set_ylabel("test loss (median over initialisations)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ns", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    p.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.1])
    p.add_argument("--dim", type=int, default=8)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--units", type=int, default=2, help="teacher units")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--lr", type=float, default=1.0, help="learning rate at s = 1")
    p.add_argument("--trajectories", type=int, default=8)
    p.add_argument("--test", type=int, default=1000, help="held-out samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("sample_complexity.png"))
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    rows = run(a.ns, a.scales, d=a.dim, width=a.width, units=a.units, steps=a.steps,
               lr=a.lr, trajectories=a.trajectories, n_test=a.test, seed=a.seed)
    print(f"teacher: relu, {a.units} units, d = {a.dim}; students: relu width {a.width}, "
          f"kappa = 1/sqrt(width), descent {a.steps} steps, lr {a.lr:g}/s^2; "
          f"{a.trajectories} initialisations per row (medians)")
    print(table(rows))
    print(f"({time.perf_counter() - t0:.0f} s)")
    written = figure(rows, a.out)
    if written:
        print(f"wrote {written}")
    return rows


if __name__ == "__main__":
    main()
