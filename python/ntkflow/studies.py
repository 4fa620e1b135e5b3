"""Width studies and phase diagrams: many ensembles, each scored by ``classify``.

Every ensemble's seed is derived from the study seed and what the ensemble *is* (its width,
or its grid values), never from loop order, so a grid point gives the same numbers
whether it is run alone, in a larger grid or in another order.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np
from numpy.typing import NDArray

from ._table import Table
from ._validate import integer, real, require
from .mechanisms import FAILED, LABELS, SCORE_NAMES, Classification
from .parametrization import EXPONENTS, Hyper, Parametrization
from .specs import Data, Gaussian, GradientFlow, LatentLine, Record, TwoLayer
from .sweeps import Task, TaskOutput, sweep
from .sweeps import _exact_t_hit as _exact_t_hit  # noqa: F401 - kept importable
from .sweeps import _horizon as _horizon  # noqa: F401

if TYPE_CHECKING:  # pragma: no cover
    from .store import Store

TMax = float | Literal["auto"] | None


def derive_seed(seed: int, *keys: float | str) -> int:
    """A 64-bit seed from the study seed and the keys that identify an ensemble.

    Floats enter by their bit pattern, strings by CRC-32: the same keys always give the
    same seed, different keys independent streams (NumPy's SeedSequence hashing).
    """
    words: list[int] = [integer(seed, "seed", minimum=0)]
    for k in keys:
        if isinstance(k, str):
            words.append(zlib.crc32(k.encode()))
        elif isinstance(k, (int, np.integer)) and not isinstance(k, bool):
            words.append(int(k))
        else:
            words.append(int(np.float64(k).view(np.uint64)))
    state = np.random.SeedSequence(words).generate_state(2, dtype=np.uint32)
    return int(state[0]) | (int(state[1]) << 32)


@dataclass(frozen=True)
class Ensemble:
    """One scored ensemble (a width of a study, a cell of a phase diagram)."""

    hyper: Hyper
    seed: int
    classification: Classification
    final_loss: NDArray[np.float64]  # (trajectories,) at t_max (exact: at t_max or t = inf)
    t_hit: NDArray[np.float64]  # (trajectories,) first time loss <= loss_below; NaN if never
    t_max: float
    seconds: float
    source: str  # "simulate" or "exact"


def _is_line(data: Data) -> bool:
    return int(data.dim) == 1


def ensemble_task(
    hyper: Hyper,
    *,
    correlation: float | Literal["copy"],
    data: Data,
    trajectories: int,
    seed: int,
    exact: bool,
    t_max: TMax,
    solver: str = "dopri5",
    rtol: float = 1e-10,
    atol: float = 1e-14,
    dt: float = 0.01,
    times: int = 200,
    loss_below: float = 1e-6,
    eps: float = 0.05,
    tau: float = 0.1,
) -> Task:
    """The sweep task of one ensemble of a study (see ``run_ensemble``)."""
    auto = t_max is None or t_max == "auto"
    horizon = 1.0 if auto else real(t_max, "t_max", low=0.0, low_open=True)
    train = GradientFlow(eta_u=hyper.eta_u, eta_w=hyper.eta_w, t_max=horizon,
                         solver=solver, rtol=rtol, atol=atol, dt=dt)  # type: ignore[arg-type]
    return Task(net=TwoLayer(width=hyper.width, kappa=hyper.kappa), data=data, train=train,
                init=Gaussian(hyper.s_u, hyper.s_w, correlation=correlation),
                trajectories=trajectories, seed=seed,
                record=Record(times=times, spacing="log", loss_below=loss_below),
                compute="exact" if exact else "classify",
                horizon="auto" if auto else "train", eps=eps, tau=tau)


def _ensemble(hyper: Hyper, out: TaskOutput) -> Ensemble:
    return Ensemble(hyper, out.task.seed, out.classification(), out["final_loss"],
                    out["t_hit"], float(out["t_max"]), out.seconds, str(out["source"]))


def run_ensemble(
    hyper: Hyper,
    *,
    correlation: float | Literal["copy"],
    data: Data,
    trajectories: int,
    seed: int,
    exact: bool,
    t_max: TMax,
    solver: str = "dopri5",
    rtol: float = 1e-10,
    atol: float = 1e-14,
    dt: float = 0.01,
    times: int = 200,
    loss_below: float = 1e-6,
    eps: float = 0.05,
    tau: float = 0.1,
    threads: int | None = None,
) -> Ensemble:
    """Simulate (or solve exactly) one ensemble and classify it.

    ``exact=True`` (linear, dim 1): no integration; labels from ``classify_exact`` at
    t = inf, the final loss at ``t_max`` (at t = inf if ``t_max`` is "auto"/None) and the
    threshold time from the closed form. ``exact=False``: ``simulate`` on ``times``
    log-spaced record times up to ``t_max`` ("auto": t_esc + 40/Gamma from the closed form,
    dim 1 only), then ``classify`` on the records. The work is ``ensemble_task(...)``,
    the task a sweep runs.
    """
    task = ensemble_task(hyper, correlation=correlation, data=data,
                         trajectories=trajectories, seed=seed, exact=exact, t_max=t_max,
                         solver=solver, rtol=rtol, atol=atol, dt=dt, times=times,
                         loss_below=loss_below, eps=eps, tau=tau)
    return _ensemble(hyper, task.run(threads))


# --------------------------------------------------------------------------- width study


class ScalingFit(NamedTuple):
    """``median(score) ~ prefactor * width^exponent`` with a bootstrap interval."""

    score: str
    exponent: float
    low: float
    high: float
    prefactor: float
    predicted: float  # docs/theory.md §D at t = inf (NaN when it makes no statement)


FIT_SCORES: tuple[str, ...] = ("rho_star", "rho_T", "abs_delta_a", "t_hit")


def _score_columns(e: Ensemble) -> dict[str, NDArray[np.float64]]:
    s = dict(e.classification.scores)
    s["abs_delta_a"] = np.abs(s["delta_a"])
    s["final_loss"] = np.where(e.classification.ok, e.final_loss, np.nan)
    s["t_hit"] = np.where(e.classification.ok, e.t_hit, np.nan)
    return s


def _fit_line(x: NDArray[np.float64], Y: NDArray[np.float64]) -> tuple[NDArray[np.float64],
                                                                         NDArray[np.float64]]:
    """Least-squares slopes and intercepts of each row of Y (..., n) against x (n,)."""
    xc = x - x.mean()
    slope = (Y - Y.mean(axis=-1, keepdims=True)) @ xc / (xc @ xc)
    icept = Y.mean(axis=-1) - slope * x.mean()
    return slope, icept


def fit_scaling(
    widths: Sequence[int],
    samples: Sequence[NDArray[np.float64]],
    *,
    score: str = "",
    n_boot: int = 1000,
    boot_seed: int = 0,
    predicted: float = math.nan,
) -> ScalingFit:
    """Fit ``log median = log prefactor + exponent log width`` and a 95% percentile
    bootstrap interval (trajectories resampled within each width, ``n_boot`` refits,
    NumPy generator seeded with ``boot_seed``). NaN where a median is not > 0."""
    x = np.log(np.asarray(widths, dtype=np.float64))
    vals = [np.asarray(s, dtype=np.float64) for s in samples]
    vals = [v[np.isfinite(v)] for v in vals]
    med = np.array([np.median(v) if v.size else np.nan for v in vals])
    if x.size < 2 or not np.all(med > 0):
        return ScalingFit(score, math.nan, math.nan, math.nan, math.nan, predicted)
    slope, icept = _fit_line(x, np.log(med))
    rng = np.random.default_rng(boot_seed)
    boot = np.empty((n_boot, x.size))
    for j, v in enumerate(vals):
        idx = rng.integers(0, v.size, size=(n_boot, v.size))
        boot[:, j] = np.median(v[idx], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        bs, _ = _fit_line(x, np.log(boot))
    bs = bs[np.isfinite(bs)]
    lo, hi = (np.percentile(bs, [2.5, 97.5]) if bs.size else (math.nan, math.nan))
    return ScalingFit(score, float(slope), float(lo), float(hi), float(np.exp(icept)),
                      predicted)


@dataclass(frozen=True, eq=False)
class WidthStudy:
    """Result of ``width_study``.

    Attributes
    ----------
    table : Table
        One row per width: hyperparameters, seed, counts, label fractions, medians of the
        scores (``median_<score>``), final loss and threshold time, seconds.
    trajectories : Table or None
        One row per (width, trajectory) when ``per_trajectory=True``.
    fits : dict of score -> ScalingFit
    ensembles : list of Ensemble
    """

    table: Table
    trajectories: Table | None
    fits: dict[str, ScalingFit]
    parametrization: Parametrization
    exact: bool
    ensembles: list[Ensemble] = field(repr=False)

    def fits_table(self) -> Table:
        return Table({
            "score": np.array([f.score for f in self.fits.values()]),
            "exponent": np.array([f.exponent for f in self.fits.values()]),
            "low": np.array([f.low for f in self.fits.values()]),
            "high": np.array([f.high for f in self.fits.values()]),
            "prefactor": np.array([f.prefactor for f in self.fits.values()]),
            "predicted": np.array([f.predicted for f in self.fits.values()]),
        })

    def summary(self) -> str:
        t = self.table
        head = (f"{'width':>7}{'ok':>6}{'kernel':>8}{'align':>7}{'disal':>7}{'rescl':>7}"
                f"{'med rho*':>11}{'med |da|':>10}{'med t_hit':>11}")
        lines = [f"width study: {self.parametrization.name} "
                 f"({'exact, t = inf' if self.exact else 'simulated'})", head]
        for i in range(len(t)):
            lines.append(
                f"{int(t['width'][i]):>7}{int(t['ok'][i]):>6}"
                f"{t['frac_kernel'][i]:>8.2f}{t['frac_alignment'][i]:>7.2f}"
                f"{t['frac_disalignment'][i]:>7.2f}{t['frac_rescaling'][i]:>7.2f}"
                f"{t['median_rho_star'][i]:>11.3g}{t['median_abs_delta_a'][i]:>10.3g}"
                f"{t['median_t_hit'][i]:>11.3g}")
        lines.append("scaling of the median with width (95% bootstrap interval):")
        for f in self.fits.values():
            pred = ("" if math.isnan(f.predicted)
                    else f"   docs/theory.md §D: {f.predicted:+.3g}")
            lines.append(f"  {f.score:<12} {f.exponent:+.3f}  [{f.low:+.3f}, {f.high:+.3f}]"
                         f"{pred}")
        return "\n".join(lines)


def _parametrization(p: Parametrization | str) -> Parametrization:
    if isinstance(p, str):
        return Parametrization.named(p)
    require(isinstance(p, Parametrization), "parametrization",
            "must be a Parametrization or a preset name", p)
    return p


def width_study(
    widths: Sequence[int],
    parametrization: Parametrization | str = "ntk",
    trajectories: int = 200,
    seed: int = 0,
    *,
    data: Data | None = None,
    t_max: TMax = "auto",
    solver: str = "dopri5",
    rtol: float = 1e-10,
    atol: float = 1e-14,
    dt: float = 0.01,
    times: int = 200,
    exact: bool = False,
    per_trajectory: bool = False,
    loss_below: float = 1e-6,
    eps: float = 0.05,
    tau: float = 0.1,
    fit: Sequence[str] = FIT_SCORES,
    n_boot: int = 1000,
    boot_seed: int = 0,
    threads: int | None = None,
    progress: bool = False,
    store: str | Path | Store | None = None,
    client: Any = None,
    resume: bool = True,
) -> WidthStudy:
    """An ensemble per width, classified, with scaling exponents of the score medians.

    Parameters
    ----------
    widths : sequence of int
        Distinct widths >= 1 (at least two for a fit).
    parametrization : Parametrization or preset name
        Maps each width to (kappa, s_u, s_w, eta_u, eta_w) (docs/theory.md §D).
    trajectories : int
        Per width.
    seed : int
        The ensemble of width m uses ``derive_seed(seed, m)``: independent of the order
        and of the other widths.
    data : default ``LatentLine()`` (beta* = 1, Sigma = 1)
    t_max : float or "auto"
        "auto"/None: t_esc + 40/Gamma from the closed form (dim 1).
    solver, rtol, atol, dt, times
        GradientFlow settings and the number of log-spaced record times.
    exact : bool
        Linear, dim 1: t = inf scores from the closed form (``classify_exact``), no
        integration. Much faster; the path extremes are exact.
    per_trajectory : bool
        Also return one row per trajectory.
    loss_below : float
        Loss level whose first passage time is reported (``t_hit``).
    eps, tau : float
        Classification thresholds.
    fit : sequence of str
        Scores whose median is fitted against width: any score name, "abs_delta_a",
        "final_loss", "t_hit".
    n_boot, boot_seed : int
        Bootstrap refits and the seed of their generator.
    progress : bool
        A progress bar on stderr (tqdm, when installed and stderr is a terminal).
    store, client, resume
        As in ``sweep``: each width is one task, written to ``store`` as it finishes
        and run on the Dask cluster ``client`` when given; without them the widths run
        one after the other in this process. The numbers are the same either way.
    """
    p = _parametrization(parametrization)
    ws = [integer(w, "widths", minimum=1) for w in widths]
    require(len(ws) >= 1 and len(set(ws)) == len(ws), "widths",
            "must be a non-empty sequence of distinct integers", list(widths))
    trajectories = integer(trajectories, "trajectories", minimum=1)
    n_boot = integer(n_boot, "n_boot", minimum=1)
    loss_below = real(loss_below, "loss_below", low=0.0)
    data = LatentLine() if data is None else data
    known = set(SCORE_NAMES) | {"abs_delta_a", "final_loss", "t_hit"}
    for f in fit:
        require(f in known, "fit", f"entries must be among {tuple(sorted(known))}", f)
    hypers = [p.at(w) for w in ws]
    tasks = [ensemble_task(h, correlation=p.correlation, data=data,
                           trajectories=trajectories, seed=derive_seed(seed, w), exact=exact,
                           t_max=t_max, solver=solver, rtol=rtol, atol=atol, dt=dt,
                           times=times, loss_below=loss_below, eps=eps, tau=tau)
             for h, w in zip(hypers, ws, strict=True)]
    done = sweep(tasks, store=store, client=client, resume=resume, threads=threads,
                 progress=progress, desc=f"width study ({p.name})")
    ensembles = [_ensemble(h, out) for h, out in zip(hypers, done, strict=True)]
    cols: dict[str, list[Any]] = {k: [] for k in (
        "width", "kappa", "s_u", "s_w", "eta_u", "eta_w", "seed", "trajectories", "ok",
        "failed", "t_max")}
    for lab in LABELS:
        cols[f"frac_{lab}"] = []
    score_cols = [*SCORE_NAMES, "abs_delta_a", "final_loss", "t_hit"]
    for s in score_cols:
        cols[f"median_{s}"] = []
    cols["seconds"] = []
    per: dict[str, list[Any]] = {k: [] for k in ("width", "trajectory", "label", *score_cols)}
    for e in ensembles:
        c = e.classification
        h = e.hyper
        for k in ("width", "kappa", "s_u", "s_w", "eta_u", "eta_w"):
            cols[k].append(getattr(h, k))
        cols["seed"].append(e.seed)
        cols["trajectories"].append(c.trajectories)
        cols["ok"].append(int(np.sum(c.ok)))
        cols["failed"].append(c.failed)
        cols["t_max"].append(e.t_max)
        for lab, frac in c.fractions.items():
            cols[f"frac_{lab}"].append(frac)
        sc = _score_columns(e)
        for s in score_cols:
            v = sc[s][c.ok]
            cols[f"median_{s}"].append(float(np.median(v)) if v.size else math.nan)
        cols["seconds"].append(e.seconds)
        if per_trajectory:
            per["width"].extend([h.width] * c.trajectories)
            per["trajectory"].extend(range(c.trajectories))
            per["label"].extend(c.labels.tolist())
            for s in score_cols:
                per[s].extend(sc[s].tolist())
    table = Table({k: np.asarray(v) for k, v in cols.items()})
    per_table = Table({k: np.asarray(v) for k, v in per.items()}) if per_trajectory else None
    pred = p.predicted_exponents()
    predicted = {"rho_star": pred["rho"], "rho_T": pred["rho"],
                 "abs_delta_a": pred["delta_cos"]}
    fits = {}
    for f in fit:
        samples = [_score_columns(e)[f][e.classification.ok] for e in ensembles]
        fits[f] = fit_scaling(ws, samples, score=f, n_boot=n_boot, boot_seed=boot_seed,
                              predicted=predicted.get(f, math.nan) if exact else math.nan)
    return WidthStudy(table, per_table, fits, p, exact, ensembles)


# --------------------------------------------------------------------------- phase diagram

AXES: tuple[str, ...] = (*EXPONENTS, "correlation", "width", "beta", "sigma", "kappa",
                         "s_u", "s_w", "eta_u", "eta_w")
"""Names a phase-diagram axis can vary: Parametrization fields (exponents, prefactors,
correlation), the width, the target slope ``beta`` and input moment ``sigma`` of a
LatentLine, or a concrete hyperparameter overriding the parametrization's value."""


@dataclass(frozen=True, eq=False)
class PhaseDiagram:
    """Result of ``phase_diagram``: arrays of shape (ny, nx), row i is ``y_values[i]``.

    Attributes
    ----------
    fractions : dict label -> (ny, nx)
        Fraction of each label among the cell's ok trajectories.
    mean, median : dict score -> (ny, nx)
        Mean and median of each score over ok trajectories.
    dominant : (ny, nx) str
        Most frequent label ("failed" if no trajectory of the cell is ok).
    dominant_fraction : (ny, nx)
    ok : (ny, nx) int
        Trajectories counted per cell.
    """

    x_name: str
    x_values: NDArray[np.float64]
    y_name: str
    y_values: NDArray[np.float64]
    fractions: dict[str, NDArray[np.float64]]
    mean: dict[str, NDArray[np.float64]]
    median: dict[str, NDArray[np.float64]]
    dominant: NDArray[np.str_]
    dominant_fraction: NDArray[np.float64]
    ok: NDArray[np.int64]
    trajectories: int
    exact: bool
    seconds: float

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.y_values.size), int(self.x_values.size))

    def table(self) -> Table:
        """One row per cell (tidy form of every array)."""
        yy, xx = np.meshgrid(self.y_values, self.x_values, indexing="ij")
        cols: dict[str, NDArray[Any]] = {self.y_name: yy.ravel(), self.x_name: xx.ravel()}
        if self.y_name == self.x_name:  # pragma: no cover - refused by phase_diagram
            cols = {"y": yy.ravel(), "x": xx.ravel()}
        cols["ok"] = self.ok.ravel()
        cols["dominant"] = self.dominant.ravel()
        cols["dominant_fraction"] = self.dominant_fraction.ravel()
        for k, v in self.fractions.items():
            cols[f"frac_{k}"] = v.ravel()
        for k, v in self.mean.items():
            cols[f"mean_{k}"] = v.ravel()
        for k, v in self.median.items():
            cols[f"median_{k}"] = v.ravel()
        return Table(cols)

    def to_npz(self, path: Any) -> None:
        """All arrays in one ``.npz`` (readable with plain NumPy)."""
        arrays: dict[str, Any] = {
            "x_name": np.array(self.x_name), "x_values": self.x_values,
            "y_name": np.array(self.y_name), "y_values": self.y_values,
            "dominant": self.dominant, "dominant_fraction": self.dominant_fraction,
            "ok": self.ok,
        }
        arrays.update({f"frac_{k}": v for k, v in self.fractions.items()})
        arrays.update({f"mean_{k}": v for k, v in self.mean.items()})
        arrays.update({f"median_{k}": v for k, v in self.median.items()})
        np.savez(path, **arrays)

    def summary(self) -> str:
        w = max(8, max(len(f"{v:g}") for v in self.x_values) + 2)
        lines = [f"dominant label (fraction); rows {self.y_name}, columns {self.x_name}",
                 " " * 10 + "".join(f"{v:>{w + 6}g}" for v in self.x_values)]
        short = {"kernel": "K", "alignment": "A", "disalignment": "D", "rescaling": "R",
                 FAILED: "F"}
        for i, yv in enumerate(self.y_values):
            cells = "".join(f"{short[self.dominant[i, j]]:>{w}} {self.dominant_fraction[i, j]:4.2f} "
                            for j in range(self.x_values.size))
            lines.append(f"{yv:>10g}{cells}")
        lines.append("K kernel, A alignment, D disalignment, R rescaling, F failed")
        return "\n".join(lines)


def _cell_setting(
    base: Parametrization, width: int, data: Data, values: dict[str, float]
) -> tuple[Hyper, float | Literal["copy"], Data]:
    p_changes = {k: v for k, v in values.items() if k in (*EXPONENTS, "correlation")}
    p = base.replace(**p_changes) if p_changes else base
    if "width" in values:
        require(float(values["width"]).is_integer() and values["width"] >= 1, "width",
                "axis values must be positive integers", values["width"])
        width = int(values["width"])
    h = p.at(width)
    direct = {k: float(v) for k, v in values.items() if k in Hyper._fields and k != "width"}
    if direct:
        h = h._replace(**direct)  # type: ignore[arg-type]
    if "beta" in values or "sigma" in values:
        require(isinstance(data, LatentLine), "data", "must be a LatentLine to vary beta or "
                "sigma", data)
        assert isinstance(data, LatentLine)
        data = LatentLine(beta=float(values.get("beta", data.beta)),
                          sigma=float(values.get("sigma", data.sigma)),
                          loss_min=data.loss_min)
    return h, p.correlation, data


def phase_diagram(
    x: tuple[str, Sequence[float]],
    y: tuple[str, Sequence[float]],
    base: Parametrization | str = "ntk",
    width: int = 256,
    trajectories: int = 200,
    seed: int = 0,
    *,
    data: Data | None = None,
    exact: bool = False,
    t_max: TMax = "auto",
    solver: str = "dopri5",
    rtol: float = 1e-10,
    atol: float = 1e-14,
    dt: float = 0.01,
    times: int = 200,
    loss_below: float = 1e-6,
    eps: float = 0.05,
    tau: float = 0.1,
    threads: int | None = None,
    progress: bool = False,
    store: str | Path | Store | None = None,
    client: Any = None,
    resume: bool = True,
) -> PhaseDiagram:
    """Label fractions and mean scores over a grid of two hyperparameters.

    Parameters
    ----------
    x, y : (name, values)
        Axis names from ``AXES`` (e.g. ``("alpha", [0.5, 0.75, 1])``, ``("c_w", ...)``,
        ``("correlation", ...)``, ``("beta", ...)``); two different names.
    base : Parametrization or preset name
        Everything not on an axis.
    width : int
        Width of every cell (unless "width" is an axis).
    trajectories, seed : int
        Per cell; the cell seed is ``derive_seed(seed, x_name, x, y_name, y)``.
    exact : bool
        Linear, dim 1: each cell from the closed form at t = inf (``classify_exact``),
        no integration: the infinite-precision phase diagram.
    store, client, resume
        As in ``sweep``: each cell is one task (see ``width_study``).
    Other parameters as in ``width_study``.
    """
    p = _parametrization(base)
    width = integer(width, "width", minimum=1)
    trajectories = integer(trajectories, "trajectories", minimum=1)
    data = LatentLine() if data is None else data
    names = []
    axes = []
    for label, ax in (("x", x), ("y", y)):
        require(isinstance(ax, (tuple, list)) and len(ax) == 2, label,
                "must be a pair (name, values)", ax)
        name, vals = ax
        require(name in AXES, f"{label} name", f"must be one of {AXES}", name)
        v = np.asarray(vals, dtype=np.float64).reshape(-1)
        require(v.size >= 1 and bool(np.all(np.isfinite(v))), f"{label} values",
                "must be a non-empty list of finite numbers", vals)
        names.append(str(name))
        axes.append(v)
    require(names[0] != names[1], "y name", "must differ from the x name", names[1])
    xv, yv = axes
    ny, nx = yv.size, xv.size
    frac = {lab: np.full((ny, nx), np.nan) for lab in LABELS}
    score_names = [*SCORE_NAMES, "abs_delta_a", "final_loss", "t_hit"]
    mean = {s: np.full((ny, nx), np.nan) for s in score_names}
    med = {s: np.full((ny, nx), np.nan) for s in score_names}
    dom = np.full((ny, nx), FAILED, dtype="<U12")
    domf = np.full((ny, nx), np.nan)
    okc = np.zeros((ny, nx), dtype=np.int64)
    t0 = time.perf_counter()
    cells = [(i, j) for i in range(ny) for j in range(nx)]
    hypers = []
    tasks = []
    for i, j in cells:
        cell = {names[0]: float(xv[j]), names[1]: float(yv[i])}
        h, corr, d = _cell_setting(p, width, data, cell)
        hypers.append(h)
        tasks.append(ensemble_task(
            h, correlation=corr, data=d, trajectories=trajectories,
            seed=derive_seed(seed, names[0], xv[j], names[1], yv[i]), exact=exact,
            t_max=t_max, solver=solver, rtol=rtol, atol=atol, dt=dt, times=times,
            loss_below=loss_below, eps=eps, tau=tau))
    done = sweep(tasks, store=store, client=client, resume=resume, threads=threads,
                 progress=progress, desc="phase diagram")
    for (i, j), h, out in zip(cells, hypers, done, strict=True):
        e = _ensemble(h, out)
        c = e.classification
        okc[i, j] = int(np.sum(c.ok))
        for lab, f in c.fractions.items():
            frac[lab][i, j] = f
        dom[i, j] = c.dominant
        if dom[i, j] != FAILED:
            domf[i, j] = c.fractions[dom[i, j]]
        sc = _score_columns(e)
        for s in score_names:
            v = sc[s][c.ok]
            v = v[np.isfinite(v)]
            if v.size:
                mean[s][i, j] = float(np.mean(v))
                med[s][i, j] = float(np.median(v))
    return PhaseDiagram(names[0], xv, names[1], yv, frac, mean, med, dom, domf, okc,
                        trajectories, exact, time.perf_counter() - t0)
