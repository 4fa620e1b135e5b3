"""Handwritten digits: test error against width and initialisation scale, with the kernel twin.

A recipe on a real dataset: scikit-learn's bundled 8x8 digits (1797 images, 10 classes;
``load_digits`` reads it from the scikit-learn package, nothing is downloaded).

    pip install "ntkflow[digits]"             # scikit-learn (and matplotlib for the figure:
                                              # "ntkflow[digits,plot]")
    python examples/digits.py                 # ~1 min on 2 cores; prints a table,
                                              # writes digits.png when matplotlib is there
    python examples/digits.py --help          # sizes, sweeps, SGD, output paths

What it does:

1. Data. A stratified train/test split (``--train`` 200 and ``--test`` 500 images by
   default), each pixel standardised with the training set's mean and standard deviation
   (constant pixels are left at 0), so ``||x||^2`` is about the 64 pixels, the scale
   ``Gaussian`` assumes (``W_ik ~ N(0, s^2/dim)``).
2. Network. ``TwoLayer(width, act="relu", kappa=1/sqrt(width), bias=True)`` with 10 outputs
   (the targets are one-hot rows: ``Dataset(X, labels, classes=10)``), initialised by
   ``Gaussian(s_u=s, s_w=s)`` (biases start at 0 and are trained).
3. Training. Full-batch gradient descent (``--batch-size B`` for minibatch SGD) on two
   losses: the square loss on the one-hot rows and softmax cross-entropy. The NTK scales as
   ``s^2``, so the learning rate is ``--lr / s^2`` (about half the stability limit
   ``2 / (largest eigenvalue of K_0 / n)`` at s = 1): every run covers the same kernel time.
4. Records. Training loss and error, test loss and error (argmax of the 10 outputs) at
   ``--records`` times; for the square loss also the linearised (kernel) twin trained from
   the same initialisation (``Record(linearized=True)``, exact): its test error and the gap
   ``max_t ||f_t - f_lin,t|| / ||f_0 - y||`` on the training inputs (``delta_lin``) and on the
   test inputs. The twin is solved for the square loss only: softmax rows show "-".
   It diagonalises the (10 n) x (10 n) initial Gram matrix once per trajectory, which is
   most of the run time at the default sizes: ``--no-twin`` skips it. With SGD the twin
   takes the run's own batches instead, stepped along (docs/theory.md §I.3).
5. Sweeps. Widths (``--widths``) at s = 1, then init scales (``--scales``) at the middle width:
   the gap to the twin shrinks as the width or s grows (lazier training), and a large s
   also starts from a noisy initial function, ``f_0 ~ s^2``.

The table reports means over ``--trajectories`` networks (different initialisations) with
their standard deviation; the figure shows test error and twin gap against width and s.
The numbers depend on the split (``--split-seed``) and the initial draws (``--seed``). At
the defaults (one run, 2 cores, ~1 min, most of it the twin): softmax reaches 8 % test
error at every width; the square loss 14-16 % at s = 1, 8 % at s = 0.5 and 61 % at s = 2,
its twin always a little worse. The square loss fits the one-hot rows from an initial
function of size ~s^2 that the kernel regime never forgets, so a larger s (lazier: the gap
falls) costs test error; the gap also falls with width, about as width^-0.6 here.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import ntkflow as nf

LOSSES = ("square", "softmax")


@dataclass(frozen=True)
class Digits:
    """Standardised train and test splits: X (samples, 64), labels (samples,) in 0..9."""

    X: np.ndarray
    y: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray

    @property
    def classes(self) -> int:
        return 10


def load(train: int, test: int, seed: int = 0) -> Digits:
    """scikit-learn's digits, a stratified split, pixels standardised on the training set."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, train_size=train, test_size=test,
                                              stratify=y, random_state=seed)
    mean, sd = X_tr.mean(axis=0), X_tr.std(axis=0)
    sd[sd == 0] = 1.0  # pixels constant on the training set (the image borders): stay 0
    return Digits((X_tr - mean) / sd, y_tr, (X_te - mean) / sd, y_te)


@dataclass(frozen=True)
class Row:
    loss: str
    width: int
    scale: float
    lr: float
    train_loss: np.ndarray  # one value per trajectory, at the last record
    train_error: np.ndarray
    test_error: np.ndarray
    twin_test_error: np.ndarray | None
    gap: np.ndarray | None  # delta_lin: max over the run of lin_gap (training inputs)
    test_gap: np.ndarray | None  # the same on the test inputs
    seconds: float


def run_one(data: Digits, loss: str, width: int, scale: float, *, lr: float, steps: int,
            batch_size: int | None, trajectories: int, records: int, seed: int,
            twin: bool, threads: int | None = None) -> Row:
    """One configuration: an ensemble of networks trained from independent initialisations."""
    net = nf.TwoLayer(width=width, act="relu", kappa=1.0 / math.sqrt(width), bias=True)
    rate = lr / scale**2
    if batch_size is None:
        train: Any = nf.GradientDescent(lr=rate, steps=steps, loss=loss)
    else:
        train = nf.SGD(lr=rate, steps=steps, batch_size=batch_size, loss=loss)
    with_twin = twin and loss == "square"
    record = nf.Record(times=records, ntk="none", linearized=with_twin,
                       test=nf.Dataset(data.X_test, data.y_test, classes=data.classes))
    t0 = time.perf_counter()
    res = nf.simulate(net, nf.Dataset(data.X, data.y, classes=data.classes), train,
                      init=nf.Gaussian(s_u=scale, s_w=scale), trajectories=trajectories,
                      seed=seed, record=record, threads=threads)
    seconds = time.perf_counter() - t0
    assert res.error is not None and res.test_error is not None  # labels: errors recorded
    return Row(loss, width, scale, rate, res.loss[:, -1], res.error[:, -1],
               res.test_error[:, -1],
               res.test_error_lin[:, -1] if with_twin and res.test_error_lin is not None
               else None,
               res.delta_lin()[:, -1] if with_twin else None,
               res.delta_lin(test=True)[:, -1] if with_twin else None, seconds)


def sweep(data: Digits, *, widths: Sequence[int], scales: Sequence[float],
          losses: Sequence[str] = LOSSES, lr: float = 0.2, steps: int = 1000,
          batch_size: int | None = None, trajectories: int = 4, records: int = 11,
          seed: int = 0, twin: bool = True, threads: int | None = None,
          progress: bool = False) -> list[Row]:
    """The width sweep at s = 1, then the init-scale sweep at the middle width, per loss."""
    mid = sorted(widths)[len(widths) // 2]
    configs = [(w, 1.0) for w in widths]
    configs += [(mid, s) for s in scales if (mid, s) not in configs]
    rows = []
    for loss in losses:
        for width, scale in configs:
            row = run_one(data, loss, width, scale, lr=lr, steps=steps, batch_size=batch_size,
                          trajectories=trajectories, records=records, seed=seed, twin=twin,
                          threads=threads)
            if progress:
                print(f"  {loss:<8} width {width:<5} s {scale:<5g} {row.seconds:6.1f} s",
                      flush=True)
            rows.append(row)
    return rows


def _sd(x: np.ndarray) -> float:
    return float(np.std(x, ddof=1)) if len(x) > 1 else 0.0


def _pm(x: np.ndarray | None, pct: bool = False) -> str:
    if x is None:
        return "-"
    k = 100.0 if pct else 1.0
    mean, sd = k * float(np.mean(x)), k * _sd(x)
    return f"{mean:.1f} ± {sd:.1f}" if pct else f"{mean:.3g} ± {sd:.2g}"


def table(rows: Sequence[Row]) -> str:
    """The rows as a fixed-width text table (errors in %)."""
    head = (f"{'loss':<8} {'width':>5} {'s':>5} {'lr':>7}  {'train loss':>19} "
            f"{'train err %':>11} {'test err %':>11} {'twin test err %':>15} "
            f"{'twin gap (train)':>17} {'twin gap (test)':>17}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.loss:<8} {r.width:>5} {r.scale:>5g} {r.lr:>7.3g}  "
                     f"{_pm(r.train_loss):>19} {_pm(r.train_error, True):>11} "
                     f"{_pm(r.test_error, True):>11} {_pm(r.twin_test_error, True):>15} "
                     f"{_pm(r.gap):>17} {_pm(r.test_gap):>17}")
    return "\n".join(lines)


def figure(rows: Sequence[Row], path: Path, widths: Sequence[int]) -> Path | None:
    """Test error (top) and the twin gap on the training inputs (bottom) against width
    (s = 1, left) and against s (middle width, right); None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    mid = sorted(widths)[len(widths) // 2]
    fig, axes = plt.subplots(2, 2, figsize=(9, 6.4), sharex="col", constrained_layout=True)
    panels = (("width", lambda r: r.scale == 1.0, "width (s = 1)"),
              ("scale", lambda r: r.width == mid, f"init scale s (width {mid})"))
    for col, (key, sel, label) in enumerate(panels):
        top, bottom = axes[0, col], axes[1, col]
        for loss, style in (("square", "o-"), ("softmax", "s-")):
            sub = sorted((r for r in rows if r.loss == loss and sel(r)),
                         key=lambda r: getattr(r, key))
            if not sub:
                continue
            xs = [getattr(r, key) for r in sub]
            top.errorbar(xs, [100 * r.test_error.mean() for r in sub],
                         yerr=[100 * _sd(r.test_error) for r in sub], fmt=style,
                         label=f"network, {loss} loss", capsize=3)
            twin = [r for r in sub if r.twin_test_error is not None and r.gap is not None]
            if twin:
                tx = [getattr(r, key) for r in twin]
                top.errorbar(tx, [100 * r.twin_test_error.mean() for r in twin],
                             yerr=[100 * _sd(r.twin_test_error) for r in twin], fmt="^--",
                             label="kernel twin (square loss)", capsize=3)
                bottom.errorbar(tx, [r.gap.mean() for r in twin],
                                yerr=[_sd(r.gap) for r in twin], fmt="o-", capsize=3,
                                label="train inputs")
                bottom.errorbar(tx, [r.test_gap.mean() for r in twin if r.test_gap is not None],
                                yerr=[_sd(r.test_gap) for r in twin if r.test_gap is not None],
                                fmt="s--", capsize=3, label="test inputs")
        for ax in (top, bottom):
            ax.set_xscale("log", base=2)
            ax.grid(alpha=0.3)
        bottom.set_yscale("log")
        bottom.set_xlabel(label)
        top.set_ylabel("test error (%)")
        bottom.set_ylabel("twin gap max_t ||f - f_lin|| / ||f_0 - y||")
    axes[0, 0].legend(fontsize=8)
    if axes[1, 0].has_data():
        axes[1, 0].legend(fontsize=8, title="square loss", title_fontsize=8)
    fig.suptitle("digits: mean ± sd over initialisations")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> list[Row]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train", type=int, default=200, help="training images (default 200)")
    p.add_argument("--test", type=int, default=500, help="test images (default 500)")
    p.add_argument("--widths", type=int, nargs="+", default=[64, 256, 1024])
    p.add_argument("--scales", type=float, nargs="+", default=[0.5, 1.0, 2.0],
                   help="init scales s (s_u = s_w = s) at the middle width")
    p.add_argument("--losses", nargs="+", choices=LOSSES, default=list(LOSSES))
    p.add_argument("--lr", type=float, default=0.2, help="learning rate at s = 1 (lr/s^2)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=None,
                   help="minibatch SGD with this batch (default: full-batch descent)")
    p.add_argument("--trajectories", type=int, default=4, help="networks per configuration")
    p.add_argument("--records", type=int, default=11, help="record times over the run")
    p.add_argument("--seed", type=int, default=0, help="initialisation (and SGD) seed")
    p.add_argument("--split-seed", type=int, default=0, help="train/test split seed")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-twin", action="store_true", help="skip the kernel twin")
    p.add_argument("--figure", type=Path, default=Path("digits.png"),
                   help="figure path (default digits.png; needs matplotlib)")
    p.add_argument("--no-figure", action="store_true")
    args = p.parse_args(argv)

    data = load(args.train, args.test, args.split_seed)
    how = ("full-batch descent" if args.batch_size is None
           else f"SGD, batch {args.batch_size}")
    print(f"digits: {len(data.y)} training and {len(data.y_test)} test images, 64 pixels "
          f"standardised, 10 classes; relu networks with bias, kappa = 1/sqrt(width); "
          f"{how}, lr {args.lr:g}/s^2, {args.steps} steps; {args.trajectories} "
          f"initialisations per row")
    t0 = time.perf_counter()
    rows = sweep(data, widths=args.widths, scales=args.scales, losses=args.losses,
                 lr=args.lr, steps=args.steps, batch_size=args.batch_size,
                 trajectories=args.trajectories, records=args.records, seed=args.seed,
                 twin=not args.no_twin, threads=args.threads, progress=True)
    print()
    print(table(rows))
    print(f"\n(mean ± sd over initialisations; twin = the linearised network from the same "
          f"initialisation, square loss only; {time.perf_counter() - t0:.0f} s in all)")
    if not args.no_figure:
        path = figure(rows, args.figure, args.widths)
        print(f"wrote {path}" if path else "no figure: matplotlib is not installed "
              '(pip install "ntkflow[plot]")')
    return rows


if __name__ == "__main__":
    main()
