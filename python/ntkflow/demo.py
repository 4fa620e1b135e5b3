"""``ntkflow demo``: the four regimes of docs/theory.md §E.4 side by side, every
trajectory checked against the exact solution and classified."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import exact
from ._initial import draw_initial
from ._progress import progress as _progress
from ._simulate import simulate
from .mechanisms import (
    REFERENCE_SETTINGS,
    Classification,
    ReferenceSetting,
    agreement,
    classify,
    classify_exact,
)
from .result import Result
from .specs import GradientFlow, Record

if TYPE_CHECKING:  # pragma: no cover
    from ._exact_line import LineSolution

DEMO_SETTINGS: tuple[str, ...] = ("K1", "A1", "D1", "R2")
"""One setting per mechanism (docs/theory.md §E.4)."""


@dataclass(frozen=True)
class Row:
    setting: ReferenceSetting
    result: Result
    solution: LineSolution
    seconds: float
    max_error: float  # worst scaled deviation from the exact solution, all records
    labels: Classification  # from the simulated records
    labels_exact: Classification  # exact extremes at t = inf

    @property
    def correct(self) -> float:
        return self.labels.fractions[self.setting.expected]


def horizon(sol: LineSolution) -> float:
    """Long enough for every trajectory to converge (docs/theory.md §A.5:
    t_esc + 40 / Gamma)."""
    t = np.asarray(sol.escape_time) + 40.0 / np.asarray(sol.rate)
    return float(np.max(t[np.isfinite(t)]))


def scaled_error(sim: np.ndarray, ref: np.ndarray) -> float:
    """max |sim - ref| / max_t |ref| per trajectory: relative to each path's own scale."""
    scale = np.max(np.abs(ref), axis=1, keepdims=True)
    return float(np.max(np.abs(sim - ref) / np.where(scale > 0, scale, 1.0)))


def run_setting(s: ReferenceSetting, trajectories: int, seed: int = 0,
                threads: int | None = None) -> Row:
    net, data, init = s.net(), s.data(), s.init()
    params = draw_initial(init, s.width, 1, trajectories, seed=seed)
    t_max = horizon(exact.line(params, net, data, GradientFlow()))
    # rtol 1e-9: errors vs the closed form stay < 1e-8 (observed 2e-9); 120 log times resolve the dips
    # (each record time is a step landing, so K1's cost is mostly record times)
    train = GradientFlow(t_max=t_max, rtol=1e-9, atol=1e-13)
    t0 = time.perf_counter()
    res = simulate(net, data, train, init=init, trajectories=trajectories, seed=seed,
                   record=Record(times=120, spacing="log"), threads=threads, progress=False)
    seconds = time.perf_counter() - t0
    sol = exact.line(params, net, data, train)
    path = sol.at(res.times)
    assert res.ntk is not None
    err = max(
        scaled_error(res.loss, path.loss),
        scaled_error(res.p, path.C),
        scaled_error(res.norm_u2, path.norm_u2),
        scaled_error(res.norm_w2, path.norm_w2),
        scaled_error(res.ntk, path.ntk),
        float(np.max(np.abs(res.alignment - path.alignment))),
    )
    return Row(s, res, sol, seconds, err, classify(res), classify_exact(sol))


def print_table(rows: list[Row]) -> None:
    head = (f"{'setting':<8}{'expected':<14}{'width':>6}{'traj':>6}{'sim s':>7}"
            f"{'max rel err':>13}{'correct':>9}{'= exact':>9}{'median rho*':>13}"
            f"{'median da':>11}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r.setting.name:<8}{r.setting.expected:<14}{r.setting.width:>6}"
              f"{r.result.trajectories:>6}{r.seconds:>7.2f}{r.max_error:>13.2e}"
              f"{r.correct:>9.3f}{agreement(r.labels, r.labels_exact):>9.3f}"
              f"{r.labels.median('rho_star'):>13.3g}{r.labels.median('delta_a'):>+11.3f}")
    print("max rel err: worst deviation of loss, u.w, |u|^2, |w|^2, NTK (relative to each "
          "path's max) and alignment (absolute) from the closed form; correct: fraction "
          "labelled as expected by classify() on the records (path rule, eps=0.05, "
          "tau=0.1); = exact: agreement with classify_exact at t = inf.")


def make_figure(rows: list[Row], out: Path, dpi: int = 80) -> Path | None:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        print("matplotlib is not installed: no figure (pip install 'ntkflow[plot]')",
              file=sys.stderr)
        return None
    from .plots import LABEL_COLORS

    fig = Figure(figsize=(3.3 * len(rows), 6.6), layout="constrained")
    axes = fig.subplots(3, len(rows), squeeze=False)
    for col, r in enumerate(rows):
        res = r.result
        assert res.ntk is not None
        t = res.times[1:]
        exact_path = r.solution.at(t)
        color = LABEL_COLORS[r.setting.expected]
        series = (
            ("loss", res.loss[:, 1:], exact_path.loss),
            ("K(t) / K(0)", res.ntk[:, 1:] / res.ntk[:, :1],
             exact_path.ntk / r.solution.at(np.array([0.0])).ntk),
            ("alignment a(t)", res.alignment[:, 1:], exact_path.alignment),
        )
        for row, (label, y, ye) in enumerate(series):
            ax = axes[row, col]
            lo, med, hi = np.nanquantile(y, [0.05, 0.5, 0.95], axis=0)
            ax.fill_between(t, lo, hi, color=color, alpha=0.3, lw=0, label="5-95%")
            ax.plot(t, med, color=color, lw=2, label="median")
            ax.plot(t, np.median(ye, axis=0), "k--", lw=0.8, label="exact median")
            ax.set_xscale("log")
            if row == 0 or (row == 1 and np.nanmax(hi) / max(np.nanmin(lo), 1e-300) > 20):
                ax.set_yscale("log")
            ax.set_ylabel(label, fontsize=8)
            ax.tick_params(labelsize=7)
            if row == 2:
                ax.set_xlabel("t", fontsize=8)
        axes[0, col].set_title(
            f"{r.setting.name}: {r.setting.expected}\n{100 * r.correct:.1f}% classified "
            f"correctly", fontsize=9)
    axes[0, 0].legend(fontsize=7, loc="lower left")
    fig.suptitle("ntkflow demo: four mechanisms of feature learning "
                 f"({rows[0].result.trajectories} trajectories each; dashed: exact)",
                 fontsize=10)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "ntkflow_demo.png"
    fig.savefig(path, dpi=dpi)
    return path


def run_demo(out: str = "ntkflow_demo", trajectories: int = 1000, quiet: bool = False,
             plot: bool = True, seed: int = 0, threads: int | None = None) -> int:
    # out defaults to cli.DEMO_OUT (kept there so that `ntkflow --help` imports no core).
    if trajectories < 1:
        raise ValueError(f"trajectories must be >= 1; got {trajectories}")
    t0 = time.perf_counter()
    rows = []
    with _progress(len(DEMO_SETTINGS), "demo", not quiet) as bar:
        for name in DEMO_SETTINGS:
            rows.append(run_setting(REFERENCE_SETTINGS[name], trajectories, seed, threads))
            bar.update(1)
    print_table(rows)
    if plot:
        path = make_figure(rows, Path(out))
        if path is not None:
            print(f"figure: {path}")
    worst = max(r.max_error for r in rows)
    print(f"largest relative deviation from the exact solution: {worst:.2e}")
    print("fraction classified correctly: "
          + ", ".join(f"{r.setting.name} {r.correct:.3f}" for r in rows))
    if not quiet:
        print(f"total {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0
