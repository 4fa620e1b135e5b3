"""``ntkflow demo``: the four regimes of THEORY §E.4 side by side, every trajectory checked
against the exact solution."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from . import exact
from ._simulate import simulate
from .result import Result
from .specs import Gaussian, GradientFlow, LatentLine, Record, TwoLayer


@dataclass(frozen=True)
class Setting:
    """One row of THEORY §E.4 (Sigma = 1)."""

    name: str
    expected: str
    width: int
    kappa: float
    s_u: float
    s_w: float
    correlation: float | Literal["copy"]
    beta: float


SETTINGS: tuple[Setting, ...] = (
    Setting("K1", "kernel", 4096, 1 / 64, 1.0, 1.0, 0.0, 1.0),
    Setting("A1", "alignment", 256, 1 / 16, 0.01, 0.01, 0.0, 1.0),
    Setting("D1", "disalignment", 256, 1 / 256, 1.0, 1.0, 0.9, 0.05),
    Setting("R2", "rescaling", 256, 1 / 16, 0.01, 0.01, "copy", 1.0),
)


@dataclass(frozen=True)
class Row:
    setting: Setting
    result: Result
    seconds: float
    max_error: float  # worst scaled deviation from the exact solution, all records
    rho_star: float  # median path maximum of |K_t / K_0 - 1|
    delta_align: float  # median a_T - a_0


def horizon(sol: exact.LineSolution) -> float:
    """Long enough for every trajectory to converge (THEORY §A.5: t_esc + 40 / Gamma)."""
    t = np.asarray(sol.escape_time) + 40.0 / np.asarray(sol.rate)
    return float(np.max(t[np.isfinite(t)]))


def scaled_error(sim: np.ndarray, ref: np.ndarray) -> float:
    scale = np.max(np.abs(ref), axis=1, keepdims=True)
    return float(np.max(np.abs(sim - ref) / np.where(scale > 0, scale, 1.0)))


def run_setting(s: Setting, trajectories: int, seed: int = 0) -> Row:
    net = TwoLayer(width=s.width, kappa=s.kappa)
    data = LatentLine(beta=s.beta)
    init = Gaussian(s.s_u, s.s_w, correlation=s.correlation)
    probe = GradientFlow()
    from ._simulate import draw_initial

    params = draw_initial(init, s.width, 1, trajectories, seed=seed)
    t_max = horizon(exact.line(params, net, data, probe))
    train = GradientFlow(t_max=t_max, rtol=1e-10, atol=1e-14)
    record = Record(times=200, spacing="log")
    t0 = time.perf_counter()
    res = simulate(net, data, train, init=init, trajectories=trajectories, seed=seed,
                   record=record)
    seconds = time.perf_counter() - t0
    path = exact.line(params, net, data, train).at(res.times)
    err = max(
        scaled_error(res.loss, path.loss),
        scaled_error(res.p, path.C),
        scaled_error(res.norm_u2, path.norm_u2),
        scaled_error(res.norm_w2, path.norm_w2),
        scaled_error(res.ntk, path.ntk),
        float(np.max(np.abs(res.alignment - path.alignment))),
    )
    rho = np.max(np.abs(res.ntk / res.ntk[:, :1] - 1.0), axis=1)
    return Row(s, res, seconds, err, float(np.median(rho)),
               float(np.median(res.alignment[:, -1] - res.alignment[:, 0])))


def print_table(rows: list[Row]) -> None:
    head = (f"{'setting':<8}{'expected':<14}{'width':>6}{'traj':>6}{'time s':>8}"
            f"{'max err vs exact':>18}{'median rho*':>13}{'median da':>11}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r.setting.name:<8}{r.setting.expected:<14}{r.setting.width:>6}"
              f"{r.result.trajectories:>6}{r.seconds:>8.2f}{r.max_error:>18.2e}"
              f"{r.rho_star:>13.3g}{r.delta_align:>+11.3f}")


def make_figure(rows: list[Row], out: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no figure (pip install 'ntkflow[plot]')",
              file=sys.stderr)
        return None
    fig, axes = plt.subplots(2, len(rows), figsize=(4 * len(rows), 6.5), squeeze=False)
    for col, r in enumerate(rows):
        t = r.result.times[1:]
        ratio = r.result.ntk[:, 1:] / r.result.ntk[:, :1]
        for ax, y, label in ((axes[0, col], ratio, "K(t) / K(0)"),
                             (axes[1, col], r.result.alignment[:, 1:], "alignment a(t)")):
            lo, med, hi = np.nanquantile(y, [0.05, 0.5, 0.95], axis=0)
            ax.fill_between(t, lo, hi, alpha=0.3, label="5-95%")
            ax.plot(t, med, lw=2, label="median")
            ax.set_xscale("log")
            ax.set_xlabel("t")
            ax.set_ylabel(label)
        axes[0, col].set_title(f"{r.setting.name}: {r.setting.expected}")
        axes[0, col].legend(loc="best", fontsize=8)
    fig.suptitle("ntkflow demo: NTK and layer alignment along gradient flow "
                 f"({rows[0].result.trajectories} trajectories per setting)")
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "ntkflow_demo.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_demo(out: str = ".", trajectories: int = 1000, quiet: bool = False,
             plot: bool = True) -> int:
    if trajectories < 1:
        raise ValueError(f"trajectories must be >= 1; got {trajectories}")
    rows = []
    for s in SETTINGS:
        if not quiet:
            print(f"simulating {s.name} ({s.expected}) ...", file=sys.stderr, flush=True)
        rows.append(run_setting(s, trajectories))
    print_table(rows)
    if plot:
        path = make_figure(rows, Path(out))
        if path is not None:
            print(f"figure: {path}")
    worst = max(r.max_error for r in rows)
    print(f"largest deviation from the exact solution: {worst:.2e}")
    return 0
