"""Which mechanism of feature learning a run shows (docs/theory.md §E).

``classify(result)`` scores every trajectory of a simulated ensemble from its records;
``classify_exact(solution)`` does the same for model A from the closed form at t = inf,
with the exact path extremes of §E.3 (no time grid to resolve). Both return a
``Classification``: per-trajectory labels and scores, label fractions with Wilson
intervals.

Labels (rule of §E.2, defaults eps = 0.05, tau = 0.1)::

    if rho* < eps:                 "kernel"
    elif max(drop, rise) <= tau:   "rescaling"
    elif drop >= rise:             "disalignment"
    else:                          "alignment"

plus "failed" for trajectories whose status is not ok (diverged, step limit); those are
kept in ``labels`` but excluded from ``fractions`` and ``summary()``.

For networks with an activation the kernel test is §E.5's instead: ``delta_lin < eps_lin``,
the largest distance of the network from its linearised twin (``Record(linearized=True)``)
relative to the initial residual; the rest of the rule is unchanged. ``rho*`` falls only
about as width^-1/2 for such networks at NTK parametrization, so a fixed eps on it calls
wide, lazy networks feature learners. Linear networks (model A and §B, whose NTK change
falls as width^-1) keep ``rho*``. ``Classification.kernel_test`` says which decided.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
from numpy.typing import NDArray

from ._validate import real, require
from .specs import Gaussian, LatentLine, TwoLayer

if TYPE_CHECKING:  # pragma: no cover
    from ._exact_line import LineSolution
    from .result import Result

LABELS: tuple[str, ...] = ("kernel", "alignment", "disalignment", "rescaling")
"""The four mechanisms, in the order tables use."""
FAILED = "failed"

SCORE_NAMES: tuple[str, ...] = (
    "rho_T", "rho_star", "a_0", "a_T", "a_min", "drop", "rise", "delta_a", "log_scale",
)
KERNEL_TESTS: tuple[str, ...] = ("auto", "rho", "delta_lin")
"""Scores every classification has (docs/theory.md §E.1), each of shape (trajectories,):

rho_T      relative NTK change at the end, ``||K_T - K_0||_F / ||K_0||_F``
rho_star   its path maximum over the record times (exact extreme for classify_exact)
a_0, a_T   layer alignment ``||W^T u|| / (||u|| ||W||_F)`` at the start and the end
a_min      its path minimum
drop, rise ``a_0 - a_min`` and ``a_T - a_min`` (both >= 0)
delta_a    ``a_T - a_0``
log_scale  ``log((||u|| ||W||_F)_T / (||u|| ||W||_F)_0)``: change of the weights' scale

With a linearised twin recorded (``Record(linearized=True)``) also:

delta_lin    ``max_t ||f_t - f_lin,t|| / ||f_0 - y||`` on the training inputs (§E.5)
delta_lin_T  the same distance at the end
and with a test set: ``test_delta_lin`` (on the test inputs) and ``test_loss_gap``,
``test_loss - test_loss_lin`` at the end (> 0: the network generalises worse than its
kernel predictor).
"""

Rule = Literal["path", "endpoint"]


def wilson_interval(count: int, total: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a binomial fraction ``count / total`` (95% by default).

    Returns (nan, nan) when ``total`` is 0.
    """
    if total <= 0:
        return (math.nan, math.nan)
    p = count / total
    z2 = z * z
    den = 1.0 + z2 / total
    centre = (p + z2 / (2 * total)) / den
    half = z * math.sqrt(p * (1 - p) / total + z2 / (4 * total * total)) / den
    return (max(0.0, centre - half), min(1.0, centre + half))


def label_scores(
    rho_star: NDArray[np.float64],
    drop: NDArray[np.float64],
    rise: NDArray[np.float64],
    *,
    eps: float,
    tau: float,
) -> NDArray[np.str_]:
    """The rule of docs/theory.md §E.2 applied element-wise (no status handling).
    ``rho_star`` is the kernel test's score (``delta_lin`` under §E.5's test) and ``eps``
    its threshold."""
    lab = np.where(
        rho_star < eps,
        "kernel",
        np.where(
            np.maximum(drop, rise) <= tau,
            "rescaling",
            np.where(drop >= rise, "disalignment", "alignment"),
        ),
    )
    return np.asarray(lab, dtype="<U12")


def _endpoint_labels(
    rho_T: NDArray[np.float64], delta_a: NDArray[np.float64], *, eps: float, tau: float
) -> NDArray[np.str_]:
    """The simple endpoint rule §E.2 compares with (misbehaves on sign changes, case X)."""
    lab = np.where(
        rho_T < eps,
        "kernel",
        np.where(delta_a > tau, "alignment",
                 np.where(delta_a < -tau, "disalignment", "rescaling")),
    )
    return np.asarray(lab, dtype="<U12")


@dataclass(frozen=True, eq=False)
class Classification:
    """Mechanism labels and scores of an ensemble.

    Attributes
    ----------
    labels : (trajectories,) str
        One of ``LABELS`` or "failed" (status not ok).
    scores : dict of name -> (trajectories,) float
        ``SCORE_NAMES`` always; ``kta_0``, ``kta_T``, ``delta_kta`` (kernel-target
        alignment, §E.5) when the result recorded it. NaN for failed trajectories.
    ok : (trajectories,) bool
        Trajectories that count in fractions.
    eps, tau : float
        Thresholds used.
    source : str
        "record" (from a simulated Result's record times) or "exact" (model A at t = inf).
    rule : str
        "path" (docs/theory.md §E.2) or "endpoint".
    kernel_test : str
        The score that decided "kernel": "rho_star" (``rho* < eps``, §E.2) or "delta_lin"
        (``delta_lin < eps_lin``, §E.5); "rho_T" / "delta_lin_T" under the endpoint rule.
    eps_lin : float
        Threshold of the twin test (used when kernel_test is delta_lin).
    """

    labels: NDArray[np.str_]
    scores: dict[str, NDArray[np.float64]]
    ok: NDArray[np.bool_]
    eps: float
    tau: float
    source: str
    rule: str = "path"
    notes: tuple[str, ...] = field(default=())
    kernel_test: str = "rho_star"
    eps_lin: float = 0.05

    @property
    def trajectories(self) -> int:
        return int(self.labels.shape[0])

    @property
    def failed(self) -> int:
        """Number of trajectories labelled "failed" (excluded from fractions)."""
        return int(np.sum(~self.ok))

    @property
    def counts(self) -> dict[str, int]:
        """Number of ok trajectories per label (all four labels present)."""
        lab = self.labels[self.ok]
        return {name: int(np.sum(lab == name)) for name in LABELS}

    @property
    def fractions(self) -> dict[str, float]:
        """Fraction of each label among the ok trajectories (NaN if none is ok)."""
        total = int(np.sum(self.ok))
        return {k: (v / total if total else math.nan) for k, v in self.counts.items()}

    def intervals(self, level: float = 0.95) -> dict[str, tuple[float, float]]:
        """Wilson confidence interval of each label's fraction among ok trajectories."""
        from statistics import NormalDist

        level = real(level, "level", low=0.0, high=1.0, low_open=True, high_open=True)
        z = NormalDist().inv_cdf(0.5 + level / 2)
        total = int(np.sum(self.ok))
        return {k: wilson_interval(v, total, z) for k, v in self.counts.items()}

    @property
    def dominant(self) -> str:
        """The most frequent label among ok trajectories ("failed" if none is ok)."""
        counts = self.counts
        if sum(counts.values()) == 0:
            return FAILED
        return max(LABELS, key=lambda k: counts[k])

    def fraction_of(self, label: str) -> float:
        """Fraction of ok trajectories with this label."""
        require(label in LABELS, "label", f"must be one of {LABELS}", label)
        return self.fractions[label]

    def median(self, score: str) -> float:
        """Median of a score over ok trajectories."""
        require(score in self.scores, "score", f"must be one of {tuple(self.scores)}", score)
        vals = self.scores[score][self.ok]
        return float(np.median(vals)) if vals.size else math.nan

    def summary(self, level: float = 0.95) -> str:
        """A table: count and fraction of each label with its Wilson interval."""
        total = int(np.sum(self.ok))
        ivals = self.intervals(level)
        pct = f"{100 * level:g}%"
        test = (f"{self.kernel_test} < eps_lin={self.eps_lin:g}"
                if self.kernel_test.startswith("delta_lin")
                else f"{self.kernel_test} < eps={self.eps:g}")
        lines = [
            f"{self.trajectories} trajectories ({self.source}, {self.rule} rule, "
            f"kernel if {test}, tau={self.tau:g}); {self.failed} failed, excluded",
            f"{'label':<14}{'count':>7}{'fraction':>10}   {pct} Wilson interval",
        ]
        for name in LABELS:
            c = self.counts[name]
            lo, hi = ivals[name]
            frac = c / total if total else math.nan
            lines.append(f"{name:<14}{c:>7}{frac:>10.3f}   [{lo:.3f}, {hi:.3f}]")
        lines.extend(self.notes)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def _check_thresholds(eps: float, tau: float) -> tuple[float, float]:
    eps = real(eps, "eps", low=0.0, low_open=True)
    tau = real(tau, "tau", low=0.0, high=1.0)
    return eps, tau


def _finish(
    scores: dict[str, NDArray[np.float64]],
    ok: NDArray[np.bool_],
    *,
    eps: float,
    tau: float,
    source: str,
    rule: Rule,
    notes: tuple[str, ...] = (),
    twin: bool = False,
    eps_lin: float = 0.05,
) -> Classification:
    """Labels from the scores; `twin`: the kernel test is delta_lin < eps_lin (§E.5)."""
    require(rule in ("path", "endpoint"), "rule", 'must be "path" or "endpoint"', rule)
    path = rule == "path"
    test = ("delta_lin" if twin else "rho_star") if path else ("delta_lin_T" if twin
                                                                else "rho_T")
    level = eps_lin if twin else eps
    needed = (test, "drop", "rise") if path else (test, "delta_a")
    finite = np.all([np.isfinite(scores[k]) for k in needed], axis=0)
    ok = np.asarray(ok & finite)
    if path:
        lab = label_scores(scores[test], scores["drop"], scores["rise"], eps=level, tau=tau)
    else:
        lab = _endpoint_labels(scores[test], scores["delta_a"], eps=level, tau=tau)
    lab = np.where(ok, lab, FAILED).astype("<U12")
    out = {k: np.where(ok, np.asarray(v, dtype=np.float64), np.nan) for k, v in scores.items()}
    for v in out.values():
        v.setflags(write=False)
    lab.setflags(write=False)
    ok.setflags(write=False)
    return Classification(lab, out, ok, eps, tau, source, rule, notes, test, eps_lin)


def _alignment_scores(a: NDArray[np.float64]) -> dict[str, NDArray[np.float64]]:
    with np.errstate(invalid="ignore"):
        a_min = np.min(a, axis=1)
    a0, aT = a[:, 0], a[:, -1]
    return {
        "a_0": a0,
        "a_T": aT,
        "a_min": a_min,
        "drop": np.maximum(a0 - a_min, 0.0),
        "rise": np.maximum(aT - a_min, 0.0),
        "delta_a": aT - a0,
    }


def _sqrt_psd(S: NDArray[np.float64]) -> NDArray[np.float64]:
    vals, vecs = np.linalg.eigh(S)
    out: NDArray[np.float64] = (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T
    return out


def _ntk_change(result: Result) -> NDArray[np.float64]:
    """Relative Frobenius change of the training Gram matrix, (trajectories, times).

    A linear network's Gram on a dataset is ``X K X^T``; since ``X^T X = n Sigma``,
    ``||X M X^T||_F = n ||S M S||_F`` with ``S = Sigma^(1/2)``, so the same formula
    serves a Dataset and population Moments (where it is the population Gram operator).
    """
    K = result.ntk
    require(K is not None, "result",
            "must record the NTK (Record(ntk='auto'), not 'none') to be classified", None)
    assert K is not None
    if K.ndim == 2:  # dim = 1: scalar kernel; the Gram is K z z^T, a fixed rank-one shape
        with np.errstate(divide="ignore", invalid="ignore"):
            out: NDArray[np.float64] = np.abs(K / K[:, :1] - 1.0)
        return out
    S = _sqrt_psd(np.asarray(result.data.moments().Sigma, dtype=np.float64))
    G = np.einsum("ab,ntbc,cd->ntad", S, K, S)
    # Frobenius norms after dividing by each trajectory's largest |G|: sums of squares of
    # kernels near 1e154 (finite runs far out on a divergence) would overflow.
    with np.errstate(divide="ignore", invalid="ignore"):
        # fmax skips the NaN records of a failed trajectory (and does not warn on them).
        c = np.fmax.reduce(np.abs(G), axis=(1, 2, 3), keepdims=True)
        c = np.where(c > 0, c, 1.0)
        Gs = G / c
        num = np.sqrt(np.sum((Gs - Gs[:, :1]) ** 2, axis=(2, 3)))
        den = np.sqrt(np.sum(Gs[:, :1] ** 2, axis=(2, 3)))
        out = num / den
    return out


def classify(
    result: Result,
    eps: float = 0.05,
    tau: float = 0.1,
    *,
    rule: Rule = "path",
    eps_lin: float = 0.05,
    kernel_test: Literal["auto", "rho", "delta_lin"] = "auto",
) -> Classification:
    """Label each trajectory of a simulated ensemble by its feature-learning mechanism.

    Parameters
    ----------
    result : Result
        Any ensemble with an NTK record or a linearised twin. Scores are taken over its
        record times, so path extremes are only as good as the grid: record on a log grid
        fine enough to resolve the NTK and alignment dip (e.g.
        ``Record(times=200, spacing="log")``) and run until the loss has converged
        (docs/theory.md §E.2). For model A, ``classify_exact`` gives the exact extremes at
        t = inf instead.
    eps : float
        NTK threshold: ``rho* < eps`` is the kernel regime (linear networks), > 0.
    tau : float
        Alignment threshold in [0, 1].
    rule : {"path", "endpoint"}
        "path" is docs/theory.md §E.2 (``rho*`` and the alignment dip); "endpoint" the
        simple rule on ``rho_T`` and ``a_T - a_0`` it is compared with.
    eps_lin : float
        Threshold of the twin test, ``delta_lin < eps_lin`` is the kernel regime, > 0.
    kernel_test : {"auto", "rho", "delta_lin"}
        "auto": the twin test (docs/theory.md §E.5) for a network with an activation that
        recorded its linearised twin (``Record(linearized=True)``), ``rho*`` for linear
        networks (model A and §B, as in §E.2). "rho" and "delta_lin" force one.

    Returns
    -------
    Classification
        Trajectories whose status is not ok are labelled "failed" and left out of the
        fractions. ``kernel_test`` names the score that decided "kernel"; every score is
        in ``scores`` side by side.

    Notes
    -----
    When the result carries ``ntk_change`` (relative Frobenius change of the training
    Gram matrix, (trajectories, times); nonlinear networks, §E.5) it is used for
    ``rho``; a ``kta`` record (kernel-target alignment, (trajectories, times)) is
    reported as ``kta_0``, ``kta_T`` and ``delta_kta`` beside the label, never in it.
    A network with an activation classified without its twin falls back to ``rho*``,
    with a note: that test calls wide, lazy networks feature learners.
    The alignment is ``result.alignment`` as recorded; for data on a line in dim > 1
    §E.1 asks for ``W e`` instead of ``W``, which this does not do.
    """
    eps, tau = _check_thresholds(eps, tau)
    eps_lin = real(eps_lin, "eps_lin", low=0.0, low_open=True)
    require(kernel_test in KERNEL_TESTS, "kernel_test", f"must be one of {KERNEL_TESTS}",
            kernel_test)
    require(hasattr(result, "alignment") and hasattr(result, "status"), "result",
            "must be a Result", result)
    gap = getattr(result, "lin_gap", None)
    linear = getattr(getattr(result, "net", None), "act", "linear") == "linear"
    twin = kernel_test == "delta_lin" or (kernel_test == "auto" and not linear
                                          and gap is not None)
    require(not twin or gap is not None, "kernel_test",
            '"delta_lin" needs the linearised twin: simulate with Record(linearized=True)',
            kernel_test)
    notes: list[str] = []
    scores = _alignment_scores(np.asarray(result.alignment, dtype=np.float64))
    scores.update(_kernel_change_scores(result, required=not twin))
    scores.update(_scale_scores(result))
    scores.update(_twin_scores(result))
    kta = getattr(result, "kta", None)
    if kta is not None:
        k = np.asarray(kta, dtype=np.float64)
        scores["kta_0"] = k[:, 0]
        scores["kta_T"] = k[:, -1]
        scores["delta_kta"] = k[:, -1] - k[:, 0]
        notes.append("kernel-target alignment (kta_*) is reported, not used in the label")
    if not linear and not twin:
        notes.append(f"kernel test by rho* for act={result.net.act!r}: record the "
                     "linearised twin (Record(linearized=True)) for the test of "
                     "docs/theory.md §E.5, delta_lin < eps_lin")
    if result.times.size < 3:
        notes.append(f"only {result.times.size} record times: path extremes unresolved")
    ok = np.asarray(result.status == 0)
    return _finish(scores, ok, eps=eps, tau=tau, source="record", rule=rule,
                   notes=tuple(notes), twin=twin, eps_lin=eps_lin)


def _kernel_change_scores(result: Result, required: bool) -> dict[str, NDArray[np.float64]]:
    """rho_T and rho_star from ntk_change or the (dim, dim) kernel record; NaN when
    neither was recorded and the kernel test does not need them."""
    change = getattr(result, "ntk_change", None)
    if change is None and getattr(result, "ntk", None) is None:
        require(not required, "result",
                "has no NTK change to classify by: record it (Record(ntk='auto' or "
                "'metrics') on the samples, path='data') or the linearised twin "
                "(Record(linearized=True)) for the test of docs/theory.md §E.5",
                "no ntk_change, ntk or lin_gap")
        nan = np.full(result.trajectories, np.nan)
        return {"rho_T": nan, "rho_star": nan.copy()}
    rho = (np.asarray(change, dtype=np.float64) if change is not None
           else _ntk_change(result))
    require(rho.ndim == 2 and rho.shape[0] == result.trajectories, "result.ntk_change",
            "must have shape (trajectories, times)", rho.shape)
    with np.errstate(invalid="ignore"):
        return {"rho_T": rho[:, -1], "rho_star": np.max(rho, axis=1)}


def _scale_scores(result: Result) -> dict[str, NDArray[np.float64]]:
    # In logs: ||u||^2 ||W||^2 overflows for runs far out (finite) on a divergence.
    with np.errstate(divide="ignore", invalid="ignore"):
        log_scale = (np.log(np.asarray(result.norm_u2, dtype=np.float64))
                     + np.log(np.asarray(result.norm_w2, dtype=np.float64)))
        return {"log_scale": 0.5 * (log_scale[:, -1] - log_scale[:, 0])}


def _twin_scores(result: Result) -> dict[str, NDArray[np.float64]]:
    """delta_lin (path maximum) and delta_lin_T of the training inputs, and on a test set
    test_delta_lin and the final test-loss gap to the twin (docs/theory.md §E.5)."""
    out: dict[str, NDArray[np.float64]] = {}
    if getattr(result, "lin_gap", None) is None:
        return out
    path = result.delta_lin()
    out["delta_lin"] = path[:, -1]
    out["delta_lin_T"] = np.asarray(result.lin_gap, dtype=np.float64)[:, -1]
    if getattr(result, "test_lin_gap", None) is not None:
        out["test_delta_lin"] = result.delta_lin(test=True)[:, -1]
    test_loss = getattr(result, "test_loss", None)
    test_loss_lin = getattr(result, "test_loss_lin", None)
    if test_loss is not None and test_loss_lin is not None:
        out["test_loss_gap"] = (np.asarray(test_loss, dtype=np.float64)[:, -1]
                                - np.asarray(test_loss_lin, dtype=np.float64)[:, -1])
    return out


def exact_scores(solution: LineSolution) -> tuple[dict[str, NDArray[np.float64]],
                                                  NDArray[np.bool_]]:
    """Scores of docs/theory.md §E.1 for model A at t = inf, with the exact extremes of
    §E.3.

    C(t) runs monotonically from C0 to C_inf (§A.5), and ``a = |C|/sqrt(C^2 + G)``,
    ``K = 2 kappa^2 lambda sqrt(c_D^2 + C^2)`` depend on C only, so the extremes along
    the path are at the ends or, when C changes sign, at C = 0.
    Returns the scores and a mask of trajectories whose limit is finite.
    """
    start = solution.at(np.array([0.0]))
    end = solution.limit()
    C0 = start.C[:, 0]
    Cinf = end.C[:, 0]
    K0 = start.ntk[:, 0]
    Kinf = end.ntk[:, 0]
    a0 = start.alignment[:, 0]
    ainf = end.alignment[:, 0]
    cD = np.asarray(solution.kernel_scale, dtype=np.float64)
    G = np.asarray(solution.gram_det, dtype=np.float64)
    crosses = (C0 * Cinf) < 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        rho_T = np.abs(Kinf / K0 - 1.0)
        # 1 - K_min/K_0 with K_min = 2 kappa^2 lambda c_D: c_D / sqrt(c_D^2 + C0^2)
        dip = 1.0 - cD / np.hypot(cD, C0)
        rho_star = np.where(crosses, np.maximum(rho_T, dip), rho_T)
        a_min = np.where(crosses & (G > 0.0), 0.0, np.minimum(a0, ainf))
        scale0 = start.norm_u2[:, 0] * start.norm_w2[:, 0]
        scale1 = end.norm_u2[:, 0] * end.norm_w2[:, 0]
        log_scale = 0.5 * (np.log(scale1) - np.log(scale0))
    scores = {
        "rho_T": rho_T,
        "rho_star": rho_star,
        "a_0": a0,
        "a_T": ainf,
        "a_min": a_min,
        "drop": np.maximum(a0 - a_min, 0.0),
        "rise": np.maximum(ainf - a_min, 0.0),
        "delta_a": ainf - a0,
        "log_scale": log_scale,
    }
    ok = np.isfinite(rho_star) & np.isfinite(a_min) & np.isfinite(ainf)
    return scores, np.asarray(ok)


def classify_exact(
    solution: LineSolution,
    eps: float = 0.05,
    tau: float = 0.1,
    *,
    rule: Rule = "path",
) -> Classification:
    """Label model-A trajectories from the closed form at t = inf (docs/theory.md §E.3).

    Parameters
    ----------
    solution : LineSolution
        From ``ntkflow.exact.line``.
    eps, tau, rule
        As for ``classify``.

    Returns
    -------
    Classification
        ``source == "exact"``; ``rho_star`` and ``a_min`` are the exact path extremes,
        ``*_T`` scores are the t = inf limits. Trajectories whose target is unreachable
        (measure zero, §A.5) are still labelled from their limit (the saddle C = 0).
    """
    eps, tau = _check_thresholds(eps, tau)
    require(hasattr(solution, "limit") and hasattr(solution, "kernel_scale"), "solution",
            "must be an exact.LineSolution", solution)
    scores, ok = exact_scores(solution)
    return _finish(scores, ok, eps=eps, tau=tau, source="exact", rule=rule)


def agreement(a: Classification, b: Classification) -> float:
    """Fraction of trajectories, ok in both, that get the same label."""
    require(a.trajectories == b.trajectories, "b",
            f"must have {a.trajectories} trajectories like a", b.trajectories)
    both = a.ok & b.ok
    if not np.any(both):
        return math.nan
    return float(np.mean(a.labels[both] == b.labels[both]))


@dataclass(frozen=True)
class ReferenceSetting:
    """A row of docs/theory.md §E.4's table (model A, Sigma = 1, eta_u = eta_w = 1).

    ``beta = None`` is case X: a per-trajectory target ``beta* = -kappa C0`` (exact
    reversal of the initial function), which needs one dataset per trajectory.
    """

    name: str
    expected: str
    width: int
    kappa: float
    s_u: float
    s_w: float
    correlation: float | Literal["copy"]
    beta: float | None

    def net(self) -> TwoLayer:
        return TwoLayer(width=self.width, kappa=self.kappa)

    def init(self) -> Gaussian:
        return Gaussian(self.s_u, self.s_w, correlation=self.correlation)

    def data(self) -> LatentLine:
        require(self.beta is not None, "beta",
                "is per trajectory in case X (use solve_reversal)", self.beta)
        assert self.beta is not None
        return LatentLine(beta=self.beta)


REFERENCE_SETTINGS: dict[str, ReferenceSetting] = {
    s.name: s
    for s in (
        ReferenceSetting("K1", "kernel", 4096, 1 / 64, 1.0, 1.0, 0.0, 1.0),
        ReferenceSetting("K2", "kernel", 256, 1 / 16, 1.0, 0.01, 0.0, 1.0),
        ReferenceSetting("A1", "alignment", 256, 1 / 16, 0.01, 0.01, 0.0, 1.0),
        ReferenceSetting("A2", "alignment", 256, 1 / 256, 1.0, 1.0, 0.0, 2.0),
        ReferenceSetting("D1", "disalignment", 256, 1 / 256, 1.0, 1.0, 0.9, 0.05),
        ReferenceSetting("D2", "disalignment", 256, 1 / 256, 1.0, 1.0, 0.9, -0.1),
        ReferenceSetting("R1", "rescaling", 1, 1.0, 0.1, 0.1, 0.0, 1.0),
        ReferenceSetting("R2", "rescaling", 256, 1 / 16, 0.01, 0.01, "copy", 1.0),
        ReferenceSetting("X", "disalignment", 256, 1 / 256, 1.0, 1.0, 0.9, None),
    )
}
"""docs/theory.md §E.4's demo and test settings by id (K1 ... R2, X)."""
