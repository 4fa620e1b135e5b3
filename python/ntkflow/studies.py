"""Width studies and phase diagrams: many ensembles, each scored by ``classify``.

Every ensemble's seed is derived from the study seed and what the ensemble *is* (its width,
or its grid values), never from loop order, so a grid point gives the same numbers
whether it is run alone, in a larger grid or in another order.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np
from numpy.typing import NDArray

from . import _axes
from ._axes import AXES as AXES  # noqa: F401 - the axis names, importable from here
from ._table import Table
from ._validate import integer, real, require
from .mechanisms import FAILED, LABELS, SCORE_NAMES, Classification
from .parametrization import Hyper, Parametrization
from .specs import (
    SGD,
    Data,
    Dataset,
    Gaussian,
    GradientDescent,
    GradientFlow,
    LatentLine,
    Record,
    Training,
    TwoLayer,
)
from .sweeps import FINAL_RECORDS, Sweep, Task, TaskOutput, sweep
from .sweeps import _exact_t_hit as _exact_t_hit  # noqa: F401 - kept importable
from .sweeps import _horizon as _horizon  # noqa: F401

if TYPE_CHECKING:  # pragma: no cover
    import xarray

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
    t_max: float  # the horizon: a time, or a number of steps (descent, SGD)
    seconds: float
    source: str  # "simulate" or "exact"
    outputs: int = 1  # the network's outputs c (the data's target columns)
    # Final values of the records in FINAL_RECORDS (test_loss, test_error, error), those
    # the runs recorded: (trajectories,) each.
    finals: dict[str, NDArray[np.float64]] = field(default_factory=dict)


def _is_line(data: Data) -> bool:
    return int(data.dim) == 1


# The gradient-flow settings of a study without a train template, and their defaults.
FLOW_SETTINGS: dict[str, Any] = {"solver": "dopri5", "rtol": 1e-10, "atol": 1e-14,
                                 "dt": 0.01, "loss": "square"}


@dataclass(frozen=True, kw_only=True, eq=False)
class StudySettings:
    """What every ensemble of a study shares, and how the study's sweep runs.

    ``width_study`` and ``phase_diagram`` take these as keywords and check them here, in
    one place, before any ensemble runs.

    Parameters
    ----------
    trajectories : int
        Per ensemble (a width, a cell).
    seed : int
        The study seed: each ensemble's seed is ``derive_seed(seed, *keys)`` of the keys
        that identify it, independent of the order and of the other ensembles.
    data : default ``LatentLine()`` (beta* = 1, Sigma = 1)
        A ``Dataset`` with targets Y of shape (samples, c) (or ``classes=k``) trains
        networks with c outputs.
    train : GradientFlow, GradientDescent or SGD, optional
        The template of every ensemble's training. Each ensemble trains with its lr,
        steps, batch size, solver, loss, decay etc., at per-layer rates ``train.eta_u *
        eta_u`` and ``train.eta_w * eta_w``, where ``eta_u``, ``eta_w`` are the
        ensemble's (``Hyper``, from the parametrization and the axes). The horizon is
        the template's: ``train.t_max`` for a GradientFlow (or ``t_max="auto"``, the
        closed form's), ``train.steps`` for descent and SGD, whose records are at step
        numbers. ``solver``, ``rtol``, ``atol``, ``dt`` and ``loss`` belong to the
        template then and are refused beside it, as is a numeric ``t_max``. Default
        (None): gradient flow with the settings below, as ``GradientFlow(t_max=t_max,
        solver=solver, rtol=rtol, atol=atol, dt=dt, loss=loss)`` with unit rates.
    exact : bool
        Linear, dim 1, gradient flow: t = inf scores from the closed form
        (``classify_exact``), no integration; the final loss at ``t_max`` (at t = inf if
        "auto") and the threshold time from the closed form. Much faster; the path
        extremes are exact. Refused with a descent or SGD template.
    t_max : float or "auto", optional
        Without a template: the horizon; "auto"/None (default): t_esc + 40/Gamma from the
        closed form (dim 1). With a GradientFlow template: None (its ``t_max``) or "auto";
        with descent or SGD: None only.
    solver, rtol, atol, dt
        Gradient-flow settings without a template (default dopri5, 1e-10, 1e-14, 0.01).
    times : int
        Number of log-spaced record times (0 and ``times - 1`` from ``t_max * 1e-4``;
        for descent and SGD rounded to whole steps, repeats dropped, so there may be
        fewer; every step when ``times > steps``).
    loss_below : float
        Loss level whose first passage time is reported (``t_hit``; a step number for
        descent). SGD never evaluates the full-data loss between records, so with an
        SGD template ``t_hit`` is NaN (the level is not asked for).
    eps, tau : float
        Classification thresholds.
    act, bias, loss : network and objective
        The activation ("linear" by default), a first-layer bias, and the loss (default
        "square"; a template's loss otherwise), as in ``TwoLayer`` and ``Objective``.
        Anything but a linear network with one output on the square loss needs a
        ``Dataset`` (``data``) and a numeric horizon, and has no exact mode.
    linearized : bool, optional
        Record the linearised twin (default: for networks with an activation on the
        square loss, whose kernel label is then decided by it, docs/theory.md §E.5; the
        twin is solved for the square loss only). With descent the twin is descent at the
        same lr; with SGD it is trained on the run's own batches and label noise, so batch
        noise is not counted as distance from it (``delta_lin``; docs/theory.md §I.3).
    test : Dataset, optional
        A held-out set evaluated along every run (test loss and error, the twin's).
    threads : int, optional
        OpenMP threads per ensemble (never changes a number).
    progress : bool
        A progress bar on stderr (tqdm, when installed and stderr is a terminal).
    store, client, resume
        As in ``sweep``: each ensemble is one task, written to ``store`` as it finishes
        and run on the Dask cluster ``client`` when given; without them the ensembles run
        one after the other in this process. The numbers are the same either way.
    """

    trajectories: int = 200
    seed: int = 0
    data: Data = field(default_factory=LatentLine)  # None is taken as the default too
    train: Training | None = None
    exact: bool = False
    t_max: TMax = None
    solver: str | None = None  # None: FLOW_SETTINGS (without a template)
    rtol: float | None = None
    atol: float | None = None
    dt: float | None = None
    times: int = 200
    loss_below: float = 1e-6
    eps: float = 0.05
    tau: float = 0.1
    act: str = "linear"
    bias: bool = False
    loss: str | None = None
    linearized: bool | None = None
    test: Dataset | None = None
    threads: int | None = None
    progress: bool = False
    store: str | Path | Store | None = None
    client: Any = None
    resume: bool = True

    def __post_init__(self) -> None:
        def s(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        s("trajectories", integer(self.trajectories, "trajectories", minimum=1))
        s("seed", integer(self.seed, "seed", minimum=0))
        s("loss_below", real(self.loss_below, "loss_below", low=0.0))
        if self.data is None:
            s("data", LatentLine())
        self._check_train()
        if self.train is None:
            for name, default in FLOW_SETTINGS.items():
                if getattr(self, name) is None:
                    s(name, default)
        else:
            s("loss", self.train.loss)
        self.template()  # checks solver, rtol, atol, dt and the loss name
        TwoLayer(width=1, act=self.act, bias=self.bias)  # type: ignore[arg-type]  # checks
        self._check_network()

    def _check_train(self) -> None:
        """The template, and the settings it owns or excludes."""
        t = self.train
        if t is None:
            return
        require(isinstance(t, (GradientFlow, GradientDescent, SGD)), "train",
                "must be None or a GradientFlow, GradientDescent or SGD (the template of "
                "every ensemble's training)", t)
        kind = {GradientFlow: "a GradientFlow", GradientDescent: "a GradientDescent",
                SGD: "an SGD"}[type(t)]
        for name in FLOW_SETTINGS:
            require(getattr(self, name) is None, name,
                    f"must not be given with {kind} template: set train.{name} on it",
                    getattr(self, name))
        flow = isinstance(t, GradientFlow)
        horizon = "train.t_max" if flow else "train.steps"
        allowed = 'None or "auto"' if flow else "None"
        require(self.t_max is None or (flow and self.t_max == "auto"), "t_max",
                f"must be {allowed} with {kind} template: the horizon is {horizon}",
                self.t_max)
        require(flow or not self.exact, "exact",
                f"must be False with {kind} template: the closed form is of gradient "
                "flow", self.exact)
        require(not isinstance(t, SGD) or isinstance(self.data, Dataset), "data",
                "must be a Dataset with an SGD template (batches are drawn from the "
                "samples)", type(self.data).__name__)

    def _check_network(self) -> None:
        """What any network but model A and its relatives needs: the samples, a horizon
        and no exact mode; and a twin only where it is solved (the square loss)."""
        outputs = int(getattr(self.data, "outputs", 1))
        if self.linearized is None:
            object.__setattr__(self, "linearized",
                               self.act != "linear" and self.loss == "square")
        require(not self.linearized or self.loss == "square", "linearized",
                f'must be False with loss="{self.loss}": the linearised twin is solved for '
                "the square loss only", self.linearized)
        kind = (f'act="{self.act}"' if self.act != "linear" else "bias=True" if self.bias
                else f'loss="{self.loss}"' if self.loss != "square"
                else f"{outputs} outputs" if outputs > 1 else None)
        if kind is not None:  # not model A and its relatives: no closed form
            require(isinstance(self.data, Dataset), "data",
                    f"must be a Dataset for {kind} (the network needs the samples)",
                    type(self.data).__name__)
            require(not self.exact, "exact",
                    f"must be False for {kind}: the closed form is of linear networks "
                    "with one output on the square loss", self.exact)
            require(not self.auto_horizon, "t_max",
                    f'must be a number for {kind}: "auto" takes the horizon from the '
                    "closed form of a linear network", self.t_max)
        require(self.test is None or isinstance(self.test, Dataset), "test",
                "must be a Dataset or None", type(self.test).__name__)

    @property
    def auto_horizon(self) -> bool:
        """Whether each ensemble's horizon comes from the closed form (t_esc + 40/Gamma)."""
        return self.t_max == "auto" or (self.t_max is None and self.train is None)

    def template(self) -> Training:
        """The training every ensemble starts from: ``train``, or the gradient flow of
        the settings (unit rates; horizon 1 when it is "auto", which ignores it)."""
        if self.train is not None:
            return self.train
        horizon = 1.0 if self.auto_horizon else real(self.t_max, "t_max", low=0.0,
                                                     low_open=True)
        return GradientFlow(t_max=horizon, solver=self.solver, rtol=self.rtol,  # type: ignore[arg-type]
                            atol=self.atol, dt=self.dt, loss=self.loss)  # type: ignore[arg-type]

    def seed_for(self, *keys: float | str) -> int:
        """The seed of the ensemble these keys identify (``derive_seed``)."""
        return derive_seed(self.seed, *keys)

    def task(self, hyper: Hyper, correlation: float | Literal["copy"], seed: int,
             data: Data | None = None) -> Task:
        """The sweep task of one ensemble (on ``data``, default the settings' data)."""
        data = self.data if data is None else data
        t = self.template()
        # Unit template rates give the ensemble's own rates exactly (1.0 * x == x), so
        # a study without a template describes the tasks it always did.
        train = dataclasses.replace(t, eta_u=t.eta_u * hyper.eta_u,
                                    eta_w=t.eta_w * hyper.eta_w)
        if isinstance(t, SGD) and isinstance(data, Dataset):
            require(t.replace or t.batch_size <= data.samples, "train.batch_size",
                    f"must be <= the {data.samples} training samples without replacement "
                    "(or replace=True)", t.batch_size)
        net = TwoLayer(width=hyper.width, kappa=hyper.kappa, act=self.act,  # type: ignore[arg-type]
                       bias=self.bias)
        return Task(net=net, data=data, train=train,
                    init=Gaussian(hyper.s_u, hyper.s_w, correlation=correlation),
                    trajectories=self.trajectories, seed=seed,
                    record=Record(times=self.times, spacing="log",
                                  loss_below=None if isinstance(t, SGD) else self.loss_below,
                                  linearized=bool(self.linearized), test=self.test),
                    compute="exact" if self.exact else "classify",
                    horizon="auto" if self.auto_horizon else "train", eps=self.eps,
                    tau=self.tau)

    def run(self, tasks: Sequence[Task], desc: str) -> Sweep:
        """``sweep`` the tasks with these settings' store, client, threads, progress."""
        return sweep(tasks, store=self.store, client=self.client, resume=self.resume,
                     threads=self.threads, progress=self.progress, desc=desc)


SETTINGS: tuple[str, ...] = tuple(f.name for f in fields(StudySettings))
"""The keywords every study takes (``StudySettings``)."""


def _settings(caller: str, given: dict[str, Any]) -> StudySettings:
    unknown = [k for k in given if k not in SETTINGS]
    if unknown:
        raise TypeError(f"{caller}() got an unexpected keyword argument {unknown[0]!r} "
                        f"(study settings: {', '.join(SETTINGS)})")
    return StudySettings(**given)


def ensemble_task(hyper: Hyper, *, correlation: float | Literal["copy"], seed: int,
                  **settings: Any) -> Task:
    """The sweep task of one ensemble of a study, seeded ``seed`` (see ``run_ensemble``);
    ``settings`` as in ``StudySettings``."""
    return _settings("ensemble_task", settings).task(hyper, correlation, seed)


def _ensemble(hyper: Hyper, out: TaskOutput) -> Ensemble:
    # Stores written before the final records were kept have none (NaN in the tables).
    finals = {k: out.arrays[f"final_{k}"] for k in FINAL_RECORDS
              if f"final_{k}" in out.arrays}
    return Ensemble(hyper, out.task.seed, out.classification(), out["final_loss"],
                    out["t_hit"], float(out["t_max"]), out.seconds, str(out["source"]),
                    int(getattr(out.task.data, "outputs", 1)), finals)


def run_ensemble(hyper: Hyper, *, correlation: float | Literal["copy"], seed: int,
                 **settings: Any) -> Ensemble:
    """Simulate (or solve exactly) one ensemble, seeded ``seed``, and classify it.

    ``exact=True`` (linear, dim 1): no integration; labels from ``classify_exact`` at
    t = inf, the final loss at ``t_max`` (at t = inf if ``t_max`` is "auto"/None) and the
    threshold time from the closed form. ``exact=False``: ``simulate`` on ``times``
    log-spaced record times up to the horizon ("auto": t_esc + 40/Gamma from the closed
    form, dim 1 only; with a ``train`` template its t_max or steps), then ``classify`` on
    the records. ``settings`` as in ``StudySettings``; the work is
    ``ensemble_task(...)``, the task a sweep runs.
    """
    st = _settings("run_ensemble", settings)
    return _ensemble(hyper, st.task(hyper, correlation, seed).run(st.threads))


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
# The linearised twin's scores (docs/theory.md §E.5): NaN where the twin was not recorded.
TWIN_SCORES: tuple[str, ...] = ("delta_lin", "delta_lin_T", "test_delta_lin", "test_loss_gap")
SCORE_COLUMNS: tuple[str, ...] = (*SCORE_NAMES, "abs_delta_a", "final_loss", "t_hit",
                                  *TWIN_SCORES, *FINAL_RECORDS)
"""Per-trajectory numbers of a study: the classification's scores, ``|delta_a|``, the
final loss, the threshold time, the twin's scores and the final ``test_loss``,
``test_error`` (with a test set) and training ``error`` (targets that are labels); NaN
where a trajectory is not ok or the number was not recorded."""


def _score_columns(e: Ensemble) -> dict[str, NDArray[np.float64]]:
    s = dict(e.classification.scores)
    s["abs_delta_a"] = np.abs(s["delta_a"])
    for name in TWIN_SCORES:
        s.setdefault(name, np.full(e.classification.trajectories, np.nan))
    s["final_loss"] = np.where(e.classification.ok, e.final_loss, np.nan)
    s["t_hit"] = np.where(e.classification.ok, e.t_hit, np.nan)
    for name in FINAL_RECORDS:
        v = e.finals.get(name)
        s[name] = (np.where(e.classification.ok, v, np.nan) if v is not None
                   else np.full(e.classification.trajectories, np.nan))
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


@dataclass(frozen=True, eq=False, repr=False)
class WidthStudy:
    """Result of ``width_study``; its repr is ``summary()``.

    Attributes
    ----------
    table : Table
        One row per width: hyperparameters, seed, counts, label fractions, medians of the
        scores (``median_<score>``), final loss and threshold time, seconds.
    trajectories : Table or None
        One row per (width, trajectory) when ``per_trajectory=True``.
    fits : dict of score -> ScalingFit
    ensembles : list of Ensemble
    notes : tuple of str
        What the study could not do (e.g. fit a single width), also shown by
        ``summary()`` and warned about when the study ran.
    """

    table: Table
    trajectories: Table | None
    fits: dict[str, ScalingFit]
    parametrization: Parametrization
    exact: bool
    ensembles: list[Ensemble]
    notes: tuple[str, ...] = ()

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
        twin = bool(np.any(np.isfinite(t["median_delta_lin"])))
        head = (f"{'width':>7}{'ok':>6}{'kernel':>8}{'align':>7}{'disal':>7}{'rescl':>7}"
                f"{'med rho*':>11}{'med |da|':>10}{'med t_hit':>11}"
                + (f"{'med d_lin':>11}" if twin else ""))
        lines = [f"width study: {self.parametrization.name} "
                 f"({'exact, t = inf' if self.exact else 'simulated'})", head]
        for i in range(len(t)):
            lines.append(
                f"{int(t['width'][i]):>7}{int(t['ok'][i]):>6}"
                f"{t['frac_kernel'][i]:>8.2f}{t['frac_alignment'][i]:>7.2f}"
                f"{t['frac_disalignment'][i]:>7.2f}{t['frac_rescaling'][i]:>7.2f}"
                f"{t['median_rho_star'][i]:>11.3g}{t['median_abs_delta_a'][i]:>10.3g}"
                f"{t['median_t_hit'][i]:>11.3g}"
                + (f"{t['median_delta_lin'][i]:>11.3g}" if twin else ""))
        if self.fits:
            lines.append("scaling of the median with width (95% bootstrap interval):")
        for f in self.fits.values():
            pred = ("" if math.isnan(f.predicted)
                    else f"   docs/theory.md §D: {f.predicted:+.3g}")
            fitted = (f"{f.exponent:+.3f}  [{f.low:+.3f}, {f.high:+.3f}]"
                      if math.isfinite(f.exponent) else "no fit")
            lines.append(f"  {f.score:<12} {fitted}{pred}")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.summary()

    def to_long(self) -> Table:
        """One row per (width, trajectory): the width's hyperparameters and seed, then the
        trajectory's index, label, ok flag and scores (``SCORE_COLUMNS``); the tidy form
        for plotting and grouping (``.to_pandas()`` for a DataFrame)."""
        return _long_table(self.ensembles, [_setting(e) for e in self.ensembles])

    def to_xarray(self) -> xarray.Dataset:
        """``to_long()`` as an ``xarray.Dataset`` of dims ("width", "trajectory"): label,
        ok and every score per trajectory; hyperparameters and seed (uint64) as
        coordinates and t_max, seconds, source per width (needs the ``xarray`` extra)."""
        from ._study_outputs import study_dataset

        return study_dataset("WidthStudy.to_xarray", self.to_long(), self.ensembles,
                             [("width", len(self.ensembles))], ("label", "ok", *SCORE_COLUMNS),
                             {"parametrization": self.parametrization.name,
                              "exact": self.exact})


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
    per_trajectory: bool = False,
    fit: Sequence[str] = FIT_SCORES,
    n_boot: int = 1000,
    boot_seed: int = 0,
    **settings: Any,
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
    per_trajectory : bool
        Also return one row per trajectory.
    fit : sequence of str
        Scores whose median is fitted against width: any of ``SCORE_COLUMNS`` (a score
        name, "abs_delta_a", "final_loss", "t_hit", a twin score, "test_loss",
        "test_error", "error").
    n_boot, boot_seed : int
        Bootstrap refits and the seed of their generator.
    **settings
        The study settings (``StudySettings``): data, train, exact, t_max, solver, rtol,
        atol, dt, times, loss_below, eps, tau, act, bias, loss, linearized, test,
        threads, progress, store, client, resume. ``exact=True`` (linear, dim 1) takes
        the t = inf scores from the closed form and fits against the exponents
        docs/theory.md §D predicts. ``train=nf.SGD(...)`` (or ``GradientDescent``,
        ``GradientFlow``) trains every width as that template, at the width's rates.

    Returns
    -------
    WidthStudy
        ``table`` has one row per width, with ``outputs`` (the network's outputs) and
        ``source`` ("exact" or "simulate") beside the medians of ``SCORE_COLUMNS``.
    """
    p = _parametrization(parametrization)
    ws = _distinct_widths(widths)
    st = _settings("width_study", dict(settings, trajectories=trajectories, seed=seed))
    n_boot = integer(n_boot, "n_boot", minimum=1)
    for f in fit:
        require(f in SCORE_COLUMNS, "fit",
                f"entries must be among {tuple(sorted(SCORE_COLUMNS))}", f)
    notes = _fit_notes(ws, fit)
    for note in notes:
        warnings.warn(note, UserWarning, stacklevel=2)
    hypers = [p.at(w) for w in ws]
    tasks = [st.task(h, p.correlation, st.seed_for(w)) for h, w in zip(hypers, ws, strict=True)]
    done = st.run(tasks, desc=f"width study ({p.name})")
    ensembles = [_ensemble(h, out) for h, out in zip(hypers, done, strict=True)]
    per_table = (_long_table(ensembles, [{"width": w} for w in ws],
                             ("width", "trajectory", "label", *SCORE_COLUMNS))
                 if per_trajectory else None)
    predicted = _predicted(p) if st.exact else {}
    if fit is FIT_SCORES and st.linearized:  # the twin's distance decides the label
        fit = (*FIT_SCORES, "delta_lin")
    fits = {f: fit_scaling(ws, [_score_columns(e)[f][e.classification.ok] for e in ensembles],
                           score=f, n_boot=n_boot, boot_seed=boot_seed,
                           predicted=predicted.get(f, math.nan))
            for f in fit}
    return WidthStudy(_width_table(ensembles), per_table, fits, p, st.exact, ensembles,
                      notes)


def _distinct_widths(widths: Sequence[int]) -> list[int]:
    ws = [integer(w, "widths", minimum=1) for w in widths]
    require(len(ws) >= 1 and len(set(ws)) == len(ws), "widths",
            "must be a non-empty sequence of distinct integers", list(widths))
    return ws


def _fit_notes(ws: Sequence[int], fit: Sequence[str]) -> tuple[str, ...]:
    if len(ws) < 2 and len(fit) > 0:
        return (f"one width ({ws[0]}): no scaling fit, which needs at least two widths; "
                "the exponents are NaN",)
    return ()


def _predicted(p: Parametrization) -> dict[str, float]:
    """docs/theory.md §D's t = inf exponents of the fitted scores."""
    pred = p.predicted_exponents()
    return {"rho_star": pred["rho"], "rho_T": pred["rho"], "abs_delta_a": pred["delta_cos"]}


INTEGER_COLUMNS: dict[str, type[np.integer[Any]]] = {
    "width": np.int64, "seed": np.uint64, "trajectories": np.int64, "trajectory": np.int64,
    "failed": np.int64, "samples": np.int64, "outputs": np.int64}
"""Columns of study tables that hold integers, with their dtypes: seeds go up to
2**64 - 1 (``derive_seed``), which neither float64 nor int64 keeps. ("ok" is a count per
width but a flag per trajectory: NumPy's int64 or bool.)"""


def _column(name: str, values: Any) -> NDArray[Any]:
    """A table column: integers as ``INTEGER_COLUMNS`` says, anything else as NumPy
    infers (never through float64 for a seed or a width)."""
    return np.asarray(values, dtype=INTEGER_COLUMNS.get(name))


def _median(v: NDArray[np.float64]) -> float:
    return float(np.median(v)) if v.size else math.nan


def _width_table(ensembles: Sequence[Ensemble]) -> Table:
    """One row per width: hyperparameters, seed, counts, label fractions, medians of the
    scores over ok trajectories, seconds."""
    rows = []
    for e in ensembles:
        c = e.classification
        sc = _score_columns(e)
        rows.append({**e.hyper._asdict(), "seed": e.seed, "trajectories": c.trajectories,
                     "ok": int(np.sum(c.ok)), "failed": c.failed, "t_max": e.t_max,
                     "outputs": e.outputs, "source": e.source,
                     **{f"frac_{lab}": frac for lab, frac in c.fractions.items()},
                     **{f"median_{s}": _median(sc[s][c.ok]) for s in SCORE_COLUMNS},
                     "seconds": e.seconds})
    return Table({k: _column(k, [r[k] for r in rows]) for k in rows[0]})


def _setting(e: Ensemble) -> dict[str, Any]:
    return {**e.hyper._asdict(), "seed": e.seed, "outputs": e.outputs, "source": e.source}


def _long_table(ensembles: Sequence[Ensemble], settings: Sequence[dict[str, Any]],
                names: Sequence[str] | None = None) -> Table:
    """One row per (ensemble, trajectory): the ensemble's ``settings`` repeated, then
    the trajectory's index, label, ok flag and scores (``names``: these columns only)."""
    cols: dict[str, list[Any]] = {}
    for e, setting in zip(ensembles, settings, strict=True):
        c = e.classification
        n = c.trajectories
        sc = _score_columns(e)
        row = {**{k: [v] * n for k, v in setting.items()}, "trajectory": range(n),
               "label": c.labels.tolist(), "ok": c.ok.tolist(),
               **{s: sc[s].tolist() for s in SCORE_COLUMNS}}
        for k in (row if names is None else names):
            cols.setdefault(k, []).extend(row[k])
    return Table({k: _column(k, v) for k, v in cols.items()})


# --------------------------------------------------------------------------- phase diagram

@dataclass(frozen=True, eq=False, repr=False)
class PhaseDiagram:
    """Result of ``phase_diagram``: arrays of shape (ny, nx), row i is ``y_values[i]``;
    its repr is ``summary()``.

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
    ensembles : list of Ensemble
        One per cell, row-major (cell (i, j) is ``ensembles[i * nx + j]``).
    source : (ny, nx) str
        "exact" or "simulate": how each cell was computed.
    outputs : (ny, nx) int
        The network's outputs in each cell.
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
    ensembles: list[Ensemble] = field(default_factory=list)  # row-major, one per cell
    source: NDArray[np.str_] | None = None
    outputs: NDArray[np.int64] | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.y_values.size), int(self.x_values.size))

    def table(self) -> Table:
        """One row per cell (tidy form of every array)."""
        yy, xx = np.meshgrid(self.y_values, self.x_values, indexing="ij")
        cols = {self.y_name: _column(self.y_name, yy.ravel()),
                self.x_name: _column(self.x_name, xx.ravel())}
        if self.y_name == self.x_name:  # pragma: no cover - refused by phase_diagram
            cols = {"y": yy.ravel(), "x": xx.ravel()}
        cols["ok"] = self.ok.ravel()
        if self.outputs is not None and self.source is not None:
            cols["outputs"] = self.outputs.ravel()
            cols["source"] = self.source.ravel()
        cols["dominant"] = self.dominant.ravel()
        cols["dominant_fraction"] = self.dominant_fraction.ravel()
        for k, v in self.fractions.items():
            cols[f"frac_{k}"] = v.ravel()
        for k, v in self.mean.items():
            cols[f"mean_{k}"] = v.ravel()
        for k, v in self.median.items():
            cols[f"median_{k}"] = v.ravel()
        return Table(cols)

    def to_long(self) -> Table:
        """One row per (cell, trajectory): the cell's axis values, hyperparameters and
        seed, then the trajectory's index, label, ok flag and scores (``SCORE_COLUMNS``);
        the tidy form for plotting and grouping (``.to_pandas()`` for a DataFrame)."""
        require(len(self.ensembles) == self.dominant.size, "ensembles",
                "must hold one ensemble per cell for to_long", len(self.ensembles))
        nx = self.x_values.size
        settings = [{self.x_name: self.x_values[k % nx], self.y_name: self.y_values[k // nx],
                     **_setting(e)} for k, e in enumerate(self.ensembles)]
        return _long_table(self.ensembles, settings)

    def to_xarray(self) -> xarray.Dataset:
        """``to_long()`` as an ``xarray.Dataset`` of dims (y_name, x_name, "trajectory"),
        as ``WidthStudy.to_xarray`` (needs the ``xarray`` extra)."""
        from ._study_outputs import study_dataset

        return study_dataset("PhaseDiagram.to_xarray", self.to_long(), self.ensembles,
                             [(self.y_name, self.shape[0]), (self.x_name, self.shape[1])],
                             ("label", "ok", *SCORE_COLUMNS), {"exact": self.exact})

    def to_npz(self, path: Any) -> None:
        """All arrays in one ``.npz`` (readable with plain NumPy)."""
        arrays: dict[str, Any] = {
            "x_name": np.array(self.x_name), "x_values": _column(self.x_name, self.x_values),
            "y_name": np.array(self.y_name), "y_values": _column(self.y_name, self.y_values),
            "dominant": self.dominant, "dominant_fraction": self.dominant_fraction,
            "ok": self.ok,
        }
        if self.outputs is not None and self.source is not None:
            arrays.update(outputs=self.outputs, source=self.source)
        arrays.update({f"frac_{k}": v for k, v in self.fractions.items()})
        arrays.update({f"mean_{k}": v for k, v in self.mean.items()})
        arrays.update({f"median_{k}": v for k, v in self.median.items()})
        np.savez(path, **arrays)

    def summary(self) -> str:
        w = max(8, max(len(f"{v:g}") for v in self.x_values) + 2)
        lines = [f"phase diagram: {self.trajectories} trajectories per cell "
                 f"({'exact, t = inf' if self.exact else 'simulated'})",
                 f"dominant label (fraction); rows {self.y_name}, columns {self.x_name}",
                 " " * 10 + "".join(f"{v:>{w + 6}g}" for v in self.x_values)]
        short = {"kernel": "K", "alignment": "A", "disalignment": "D", "rescaling": "R",
                 FAILED: "F"}
        for i, yv in enumerate(self.y_values):
            cells = "".join(f"{short[self.dominant[i, j]]:>{w}} {self.dominant_fraction[i, j]:4.2f} "
                            for j in range(self.x_values.size))
            lines.append(f"{yv:>10g}{cells}")
        lines.append("K kernel, A alignment, D disalignment, R rescaling, F failed")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.summary()


def phase_diagram(
    x: tuple[str, Sequence[float]],
    y: tuple[str, Sequence[float]],
    base: Parametrization | str = "ntk",
    width: int = 256,
    trajectories: int = 200,
    seed: int = 0,
    **settings: Any,
) -> PhaseDiagram:
    """Label fractions and mean scores over a grid of two hyperparameters.

    Parameters
    ----------
    x, y : (name, values)
        Two different axis names from ``AXES``, e.g. ``("alpha", [0.5, 0.75, 1])``:

        - a Parametrization field: ``alpha``, ``beta_u``, ``beta_w``, ``c_u``, ``c_w``,
          ``kappa0``, ``eta0``, ``s_u0``, ``s_w0``, ``correlation``;
        - ``width`` (integers);
        - ``target``: the LatentLine's target slope beta* (``data.beta``; the axis was
          called "beta" before), ``sigma``: its input moment;
        - ``kappa``, ``s_u``, ``s_w``, ``eta_u``, ``eta_w``: that hyperparameter of every
          cell, in place of the parametrization's;
        - ``init_scale``: a factor (>= 0) on both s_u and s_w;
        - ``imbalance``: s_u / s_w (> 0), sqrt(s_u s_w) kept;
        - ``lr_ratio``: eta_w / eta_u (> 0), sqrt(eta_u eta_w) kept, so only the ratio
          changes, not the time unit (a ``train`` template's rates multiply these);
        - ``samples``: the cell trains on the first n rows of the ``Dataset`` (integers
          up to its rows; the test set stays): sample-complexity curves.

        A cell applies them in this order: parametrization fields, width, concrete
        hyperparameters, init_scale, imbalance, lr_ratio, data.
    base : Parametrization or preset name
        Everything not on an axis.
    width : int
        Width of every cell (unless "width" is an axis).
    trajectories, seed : int
        Per cell; the cell seed is ``derive_seed(seed, x_name, x, y_name, y)``.
    **settings
        The study settings (``StudySettings``), as in ``width_study`` (``train``: every
        cell trains as that GradientFlow, GradientDescent or SGD template).
        ``exact=True`` (linear, dim 1): each cell from the closed form at t = inf
        (``classify_exact``), no integration: the infinite-precision phase diagram.
        With ``store``/``client`` each cell is one task.

    Returns
    -------
    PhaseDiagram
        ``table()`` has one row per cell, with ``outputs`` and ``source`` ("exact" or
        "simulate"); ``mean`` and ``median`` hold every score of ``SCORE_COLUMNS``.
    """
    p = _parametrization(base)
    width = integer(width, "width", minimum=1)
    st = _settings("phase_diagram", dict(settings, trajectories=trajectories, seed=seed))
    (xn, xv), (yn, yv) = _axes.axis("x", x), _axes.axis("y", y)
    require(xn != yn, "y name", "must differ from the x name", yn)
    t0 = time.perf_counter()
    cells = [(i, j) for i in range(yv.size) for j in range(xv.size)]
    setups = [_axes.cell_setting(p, width, st.data, {xn: float(xv[j]), yn: float(yv[i])})
              for i, j in cells]
    tasks = [st.task(h, corr, st.seed_for(xn, xv[j], yn, yv[i]), d)
             for (i, j), (h, corr, d) in zip(cells, setups, strict=True)]
    done = st.run(tasks, desc="phase diagram")
    ensembles = [_ensemble(h, out) for (h, _, _), out in zip(setups, done, strict=True)]
    frac, mean, med, dom, domf, okc = _cell_arrays(ensembles, yv.size, xv.size)
    shape = (yv.size, xv.size)
    return PhaseDiagram(xn, xv, yn, yv, frac, mean, med, dom, domf, okc, st.trajectories,
                        st.exact, time.perf_counter() - t0, ensembles,
                        np.array([e.source for e in ensembles]).reshape(shape),
                        np.array([e.outputs for e in ensembles],
                                 dtype=np.int64).reshape(shape))


def _cell_arrays(ensembles: Sequence[Ensemble], ny: int, nx: int) -> tuple[Any, ...]:
    """The (ny, nx) arrays of a phase diagram from its cells' ensembles (row-major):
    label fractions, mean and median scores (ok, finite), dominant label and its
    fraction, ok counts."""
    frac = {lab: np.full((ny, nx), np.nan) for lab in LABELS}
    mean = {s: np.full((ny, nx), np.nan) for s in SCORE_COLUMNS}
    med = {s: np.full((ny, nx), np.nan) for s in SCORE_COLUMNS}
    dom = np.full((ny, nx), FAILED, dtype="<U12")
    domf = np.full((ny, nx), np.nan)
    okc = np.zeros((ny, nx), dtype=np.int64)
    for k, e in enumerate(ensembles):
        i, j = divmod(k, nx)
        c = e.classification
        okc[i, j] = int(np.sum(c.ok))
        for lab, f in c.fractions.items():
            frac[lab][i, j] = f
        dom[i, j] = c.dominant
        if dom[i, j] != FAILED:
            domf[i, j] = c.fractions[dom[i, j]]
        sc = _score_columns(e)
        for s in SCORE_COLUMNS:
            v = sc[s][c.ok]
            v = v[np.isfinite(v)]
            if v.size:
                mean[s][i, j] = float(np.mean(v))
                med[s][i, j] = float(np.median(v))
    return frac, mean, med, dom, domf, okc
