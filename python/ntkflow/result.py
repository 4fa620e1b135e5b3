"""The result of an ensemble run: NumPy arrays with named dimensions."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from ._initial import draw_initial
from .specs import SGD, Data, GradientFlow, Init, Params, Training, TwoLayer

if TYPE_CHECKING:  # pragma: no cover
    import xarray

# Arrays every Result has that describe the run rather than record it.
_RUN_FIELDS = frozenset({"times", "status", "t_fail", "steps", "rejected", "events",
                         "t_stiff"})

STATUS_NAMES: tuple[str, ...] = ("ok", "diverged", "step_limit", "stalled")
"""Meaning of the codes in ``Result.status``."""

_DIMS: dict[str, tuple[str, ...]] = {
    "loss": ("trajectories", "times"),
    "norm_u2": ("trajectories", "times"),
    "norm_w2": ("trajectories", "times"),
    "alignment": ("trajectories", "times"),
    "balance_drift": ("trajectories", "times"),
    "delta_mean": ("trajectories", "times"),
    "delta_std": ("trajectories", "times"),
    "delta_drift": ("trajectories", "times"),
    "deltas": ("trajectories", "times", "width"),
    "status": ("trajectories",),
    "t_fail": ("trajectories",),
    "steps": ("trajectories",),
    "rejected": ("trajectories",),
    "events": ("trajectories",),
    "t_hit": ("trajectories",),
    "t_stiff": ("trajectories",),
    "ntk_change": ("trajectories", "times"),
    "kernel_distance": ("trajectories", "times"),
    "kta": ("trajectories", "times"),
    "move_u": ("trajectories", "times"),
    "move_w": ("trajectories", "times"),
    "pattern_change": ("trajectories", "times"),
    "loss_lin": ("trajectories", "times"),
    "lin_gap": ("trajectories", "times"),
    "error": ("trajectories", "times"),
    "test_loss": ("trajectories", "times"),
    "test_error": ("trajectories", "times"),
    "test_loss_lin": ("trajectories", "times"),
    "test_error_lin": ("trajectories", "times"),
    "test_lin_gap": ("trajectories", "times"),
}


def _erf(z: NDArray[np.float64]) -> NDArray[np.float64]:
    """erf elementwise, as the core computes it (C's erf, through Python's math.erf):
    NumPy has none and SciPy is not a dependency."""
    out: NDArray[np.float64] = np.asarray(np.frompyfunc(math.erf, 1, 1)(z), dtype=np.float64)
    return out


@dataclass(frozen=True, eq=False)
class Result:
    """Records of one ensemble.

    Shapes use the dimensions ``trajectories``, ``times``, ``width``, ``dim``, ``samples``
    (training inputs) and ``probes``; arrays written for dim = 1 drop their dim axes.
    Linear networks run on the data's moments (``path="moments"``) unless a record needs
    the samples; networks with an activation always run on the ``Dataset``
    (``path="data"``).

    Attributes
    ----------
    times : (times,)
        Record times (step numbers for gradient descent).
    loss : (trajectories, times)
        The training loss L of ``train.loss`` (square: ``1/2 E[||f(x) - y||^2]``) on the
        data or moments, without the weight-decay penalty; for SGD on the whole training
        set, without label noise.
    p : (trajectories, times[, dim][, outputs])
        End-to-end weights ``W^T u`` (for dim = 1, ``u . w``); with an activation it is
        still ``W^T u``, the vector behind ``alignment``, but no longer the function. With c
        outputs ``W^T U`` (dim, c); with a bias the inputs are ``(x, 1)``, so p has dim + 1
        rows, the last ``sum_i b_i U_i``.
    norm_u2, norm_w2 : (trajectories, times)
        ``||U||_F^2`` and ``||W||_F^2`` (biases included in ``W``).
    alignment : (trajectories, times)
        ``||W^T u|| / (||u|| ||W||_F)`` in [0, 1]; 1 when u = 0 or W = 0 (no angle:
        the layers count as parallel, docs/theory.md §E.1).
    ntk : (trajectories, times[, dim, dim]) or None
        ``kappa^2 (eta_u W^T W + eta_w ||u||^2 I)``: the learning-rate-weighted NTK is
        ``K(x, x') = x^T ntk x'``; for dim = 1 the scalar kernel per unit ``x x'``.
        Linear networks only (None with an activation: see ``gram`` and ``ntk_change``).
    balance_drift : (trajectories, times)
        ``(Delta(t) - Delta(0)) / (eta_w ||u||^2 + eta_u ||W||^2)`` for
        ``Delta = eta_w ||u||^2 - eta_u ||W||_F^2``, which gradient flow conserves for the
        linear and relu activations (1-homogeneous): then it is integration error made
        visible. For tanh and erf Delta is not conserved and this is physics.
    delta_mean, delta_std : (trajectories, times) or None
        Mean and spread (population standard deviation) over neurons of the per-neuron
        quantities ``delta_i = eta_w u_i^2 - eta_u ||w_i||^2`` (docs/theory.md §E.5), each conserved
        by gradient flow for linear and relu (1-homogeneous) networks, not for tanh and erf;
        gradient descent changes them by O(lr^2) per step. ``delta_mean`` is ``Delta /
        width``. None with ``method="reduced"`` (no parameters to read them from).
    delta_drift : (trajectories, times) or None
        ``max_i |delta_i(t) - delta_i(0)| / max_i (eta_w u_i(t)^2 + eta_u ||w_i(t)||^2)``:
        relative to the largest per-neuron scale, so that a conserved run shows its
        rounding or integration error (~1e-16 up to the solver's rtol) whatever the units
        (+inf in the degenerate case of all parameters exactly 0 after a change).
        ``delta_i(0)`` is taken from the initial state, even when the first record time is
        later. None with ``method="reduced"``.
    deltas : (trajectories, times, width) or None
        Every ``delta_i``, kept on request (``Record.deltas``).
    status : (trajectories,) int8
        Codes of ``STATUS_NAMES``: ok; diverged (a non-finite loss, or the adaptive step
        collapsing on overflowing trial steps); step_limit (``max_steps`` reached);
        stalled (the adaptive step collapsed below 1e-14 t with finite errors above
        tolerance: the tolerance cannot be met there, e.g. rounding noise above atol).
        Records after ``t_fail`` are NaN; the parameters reached are kept.
    t_fail : (trajectories,)
        Time of the failure; NaN when ok.
    steps, rejected : (trajectories,) int64
        Accepted and rejected steps.
    events : (trajectories,) int64 or None
        Switching events located by the adaptive solver on a relu network: steps cut short
        where a pre-activation ``w_i . x_j`` crossed 0 (docs/theory.md §H); 0 otherwise.
    t_hit : (trajectories,) or None
        First time the loss reached ``Record.loss_below`` (NaN if never).
    t_stiff : (trajectories,) or None
        The time from which rodas4 integrated the run: 0 with ``solver="rodas4"`` (or an
        ``auto`` run stiff from the start), the hand-over time with ``solver="auto"``
        (dopri5's steps were held by stability there), NaN where it never did. None where
        rodas4 cannot run (relu, descent, fixed steps, too many samples x outputs).
    u, W, b : arrays or None
        Parameters kept on request: ``u`` (trajectories[, times], width[, outputs]),
        ``W`` (trajectories[, times], width, dim) and, for a network with a bias, ``b``
        (trajectories[, times], width).
    gram : (trajectories, times, samples, samples) or (..., probes, probes) or None
        The learning-rate-weighted NTK Gram matrix
        ``kappa^2 [eta_u H H^T + eta_w (G G^T) o (X X^T)]`` (docs/theory.md §C.1) on the
        training inputs or on ``Record.probe``, kept on request (``Record.gram``).
    ntk_change, kernel_distance, kta : (trajectories, times) or None
        Metrics of the training Gram matrix ``K_t`` against ``K_0``, computed whether or
        not ``gram`` keeps it (``Record.ntk != "none"``, data on samples):
        ``||K_t - K_0||_F / ||K_0||_F``, ``1 - <K_t, K_0>_F / (||K_t||_F ||K_0||_F)`` and
        the kernel-target alignment ``<K_t, y y^T>_F / (||K_t||_F ||y||^2)``. NaN where
        the denominator is 0.
    move_u, move_w : (trajectories, times) or None
        ``||u_t - u_0|| / ||u_0||`` and ``||W_t - W_0||_F / ||W_0||_F`` (``path="data"``).
    pattern_change : (trajectories, times) or None
        relu only: fraction of hidden units i for which some training input's
        ``1[w_i . x_j > 0]`` differs from its value at t = 0.
    loss_lin : (trajectories, times) or None
        Loss of the linearised network trained from the same initialisation with the
        initial training Gram matrix (``Record.linearized``), exact at each record time;
        with SGD stepped on the run's own batches and noisy targets (docs/theory.md
        §I.3). It depends on the initial state (and the batches) only, so it stays finite
        after ``t_fail``.
    lin_gap : (trajectories, times) or None
        ``||f_t(X) - f_lin,t(X)|| / ||f_0(X) - y||`` over the training inputs: the
        network's distance from its linearised twin (``Record.linearized``); its maximum
        over the run is docs/theory.md §E.5's ``delta_lin`` (see ``delta_lin()``). NaN when
        ``f_0(X) = y``.
    error : (trajectories, times) or None
        Training classification error, recorded on the data path when the targets are
        labels. One output, every target exactly +1 or -1: the fraction of samples with
        ``sign(f(x)) != y`` (``f(x) = 0`` counts as an error). c >= 2 outputs, one-hot
        rows: the fraction whose ``argmax f(x)`` is not the target class.
    test_loss : (trajectories, times) or None
        The loss L on ``Record.test``.
    test_error : (trajectories, times) or None
        Classification error on ``Record.test`` (as ``error``), when its targets are
        labels.
    test_loss_lin, test_error_lin : (trajectories, times) or None
        Test loss and error of the linearised twin (``Record.test`` with
        ``Record.linearized``): its test outputs are exactly
        ``f_lin,t(x) = f_0(x) - K_0(x, X) V diag((1 - exp(-lam t / n)) / lam) V^T r_0``
        (flow; for descent ``(lr/n) sum_{k<t} (1 - lr lam / n)^k`` in place of the
        diagonal) with ``K_0 = V diag(lam) V^T`` and ``r_0 = f_0(X) - y``; with SGD
        ``f_lin`` moves by ``-(lr/|B|) K_0(x, X)[:, B] (f_lin,B - y~_B)`` on each step's
        batch. Like ``loss_lin`` they stay finite after ``t_fail``.
    test_lin_gap : (trajectories, times) or None
        ``lin_gap`` on the test inputs: ``||f_t - f_lin,t|| / ||f_0 - y||``, both norms
        over ``Record.test``.
    path : {"moments", "data"} or None
        Which integration path produced the run.
    """

    times: NDArray[np.float64]
    loss: NDArray[np.float64]
    p: NDArray[np.float64]
    norm_u2: NDArray[np.float64]
    norm_w2: NDArray[np.float64]
    alignment: NDArray[np.float64]
    ntk: NDArray[np.float64] | None
    balance_drift: NDArray[np.float64]
    status: NDArray[np.int8]
    t_fail: NDArray[np.float64]
    steps: NDArray[np.int64]
    rejected: NDArray[np.int64]
    t_hit: NDArray[np.float64] | None
    u: NDArray[np.float64] | None
    W: NDArray[np.float64] | None
    net: TwoLayer
    data: Data
    train: Training
    init: Init
    seed: int
    first_trajectory: int
    method: str
    isa: str
    events: NDArray[np.int64] | None = None
    t_stiff: NDArray[np.float64] | None = None
    gram: NDArray[np.float64] | None = None
    ntk_change: NDArray[np.float64] | None = None
    kernel_distance: NDArray[np.float64] | None = None
    kta: NDArray[np.float64] | None = None
    move_u: NDArray[np.float64] | None = None
    move_w: NDArray[np.float64] | None = None
    pattern_change: NDArray[np.float64] | None = None
    loss_lin: NDArray[np.float64] | None = None
    lin_gap: NDArray[np.float64] | None = None
    error: NDArray[np.float64] | None = None
    test_loss: NDArray[np.float64] | None = None
    test_error: NDArray[np.float64] | None = None
    test_loss_lin: NDArray[np.float64] | None = None
    test_error_lin: NDArray[np.float64] | None = None
    test_lin_gap: NDArray[np.float64] | None = None
    delta_mean: NDArray[np.float64] | None = None
    delta_std: NDArray[np.float64] | None = None
    delta_drift: NDArray[np.float64] | None = None
    deltas: NDArray[np.float64] | None = None
    b: NDArray[np.float64] | None = None
    path: str | None = None
    _initial: list[Params] = field(default_factory=list, repr=False)

    @property
    def trajectories(self) -> int:
        return int(self.loss.shape[0])

    @property
    def dim(self) -> int:
        return int(self.data.dim)

    @property
    def outputs(self) -> int:
        """Outputs c of the network (target columns of the data)."""
        return int(getattr(self.data, "outputs", 1))

    @property
    def ok(self) -> NDArray[np.bool_]:
        """Mask of trajectories that ran to the end."""
        return np.asarray(self.status == 0)

    def status_counts(self) -> dict[str, int]:
        """Number of trajectories per status name."""
        return {name: int(np.sum(self.status == code)) for code, name in enumerate(STATUS_NAMES)}

    def initial_params(self) -> Params:
        """The initial parameters, regenerated bit for bit from (seed, trajectory index)
        rather than stored (``ntkflow.initial_params`` draws them without a run)."""
        if isinstance(self.init, Params):
            return self.init
        if not self._initial:
            self._initial.append(
                draw_initial(self.init, self.net.width, self.dim, self.trajectories,
                             seed=self.seed, first_trajectory=self.first_trajectory,
                             outputs=self.outputs, bias=self.net.bias)
            )
        return self._initial[0]

    def delta_lin(self, test: bool = False) -> NDArray[np.float64]:
        """docs/theory.md §E.5's ``delta_lin`` up to each record time: the running maximum over
        times of ``lin_gap`` (``test_lin_gap`` with ``test=True``).

        Returns
        -------
        array (trajectories, times)
            ``[:, -1]`` is the path maximum over the whole run. NaN from ``t_fail`` on
            (the gap is NaN there); a NaN gap at t = 0 (``f_0 = y``) makes every later
            value NaN.
        """
        name = "test_lin_gap" if test else "lin_gap"
        gap = getattr(self, name)
        if gap is None:
            need = "Record(linearized=True" + (", test=...)" if test else ")")
            raise ValueError(f"{name} was not recorded: run with {need}")
        out: NDArray[np.float64] = np.fmax.accumulate(gap, axis=1)
        # fmax skips NaN: put it back where the gap itself is NaN (after a failure).
        out[np.isnan(gap)] = np.nan
        return out

    def predict(self, X: Any, at: int = -1) -> NDArray[np.float64]:
        """The network's outputs ``f(x) = kappa sum_i U_i act(w_i . x + b_i)`` on new inputs,
        from the kept parameters (NumPy; the core's activations, ``relu'(0) = 0``).

        Parameters
        ----------
        X : array (samples, dim)
            Inputs; for dim = 1 also (samples,).
        at : int
            Index into ``times`` (negative counts from the end). With
            ``Record(params="all")`` any record time; with ``params="final"`` only the
            last (-1 or ``len(times) - 1``).

        Returns
        -------
        array (trajectories, samples), or (trajectories, samples, outputs) for c >= 2
            A trajectory that did not finish (``status != 0``) gives NaN from ``t_fail``
            on with ``params="all"``, and the outputs of its last state with
            ``params="final"``.
        """
        from ._validate import array, integer, require

        if self.u is None or self.W is None:
            raise ValueError(
                'predict needs the parameters: run with record.params="final" or "all" '
                "(record.params was None)")
        d = self.dim
        x = array(X, "X", ndim=(1, 2), copy=False)
        if x.ndim == 1:
            require(d == 1, "X", f"must have shape (samples, {d})", x)
            x = x.reshape(-1, 1)
        require(x.shape[1] == d, "X", f"must have shape (samples, {d}) (dim = {d})", x)
        T = self.times.size
        at = integer(at, "at")
        require(-T <= at < T, "at", f"must index the {T} record times", at)
        c = self.outputs
        b = self.b
        if self.W.ndim == 3:  # params="final": the end of the run only
            require(at % T == T - 1, "at",
                    'must be -1 (the last record time) with record.params="final"', at)
            u, W = self.u, self.W
        else:
            u, W = self.u[:, at], self.W[:, at]
            b = None if b is None else b[:, at]
        # Contiguous copies: the same bits for params="final" and the last of "all".
        u = np.ascontiguousarray(u).reshape(u.shape[0], u.shape[1], c)
        W = np.ascontiguousarray(W.reshape(W.shape[0], W.shape[1], d))
        Z = np.einsum("sd,kmd->ksm", x, W)
        if b is not None:
            Z = Z + b[:, None, :]
        act = self.net.act
        if act == "relu":
            H = np.maximum(Z, 0.0)
        elif act == "tanh":
            H = np.tanh(Z)
        elif act == "erf":
            H = _erf(Z)
        else:
            H = Z
        if c == 1:
            one: NDArray[np.float64] = self.net.kappa * np.einsum("ksm,km->ks", H, u[..., 0])
            return one
        out: NDArray[np.float64] = self.net.kappa * np.einsum("ksm,kmc->ksc", H, u)
        return out

    @property
    def solver(self) -> str:
        """Which method integrated the run, in words: for ``solver="auto"``, how many
        trajectories moved on to rodas4 and from when (``t_stiff`` has each one's time)."""
        train = self.train
        if not isinstance(train, GradientFlow):
            return "descent" if not isinstance(train, SGD) else "sgd"
        if train.solver != "auto":
            return train.solver
        if self.t_stiff is None:
            return "auto: dopri5 (rodas4 does not apply here)"
        stiff = self.t_stiff[np.isfinite(self.t_stiff)]
        if stiff.size == 0:
            return "auto: dopri5 (no trajectory was stiff)"
        start, later = stiff[stiff == 0], stiff[stiff > 0]
        parts = [f"rodas4 from the start in {start.size}"] if start.size else []
        if later.size:
            parts.append(f"dopri5, then rodas4 in {later.size} (from t = {np.min(later):.3g} "
                         f"to {np.max(later):.3g})")
        rest = self.trajectories - stiff.size
        return (f"auto: {'; '.join(parts)} of {self.trajectories} trajectories"
                + (f"; dopri5 throughout in {rest}" if rest else ""))

    def summary(self) -> str:
        """A few lines for a terminal."""
        counts = ", ".join(f"{k} {v}" for k, v in self.status_counts().items() if v)
        final = self.loss[:, -1]
        return (
            f"{self.trajectories} trajectories, width {self.net.width}, dim {self.dim}, "
            f"{self.times.size} record times up to {self.times[-1]:g} ({self.net.act}, "
            f"{self.path or 'moments'} path, {self.method}, "
            f"{self.isa}); status: {counts}; final loss median "
            f"{np.nanmedian(final) if np.any(np.isfinite(final)) else float('nan'):.4g}; "
            f"steps median {int(np.median(self.steps))}; solver {self.solver}"
        )

    def __repr__(self) -> str:
        # The default dataclass repr prints every array in full: megabytes for an ensemble.
        kept = [f.name for f in fields(self)
                if f.name not in _RUN_FIELDS and isinstance(getattr(self, f.name), np.ndarray)]
        return f"<Result: {self.summary()}; records {', '.join(kept)}>"

    def to_xarray(self) -> xarray.Dataset:
        """The records as an ``xarray.Dataset`` (needs the ``xarray`` extra)."""
        try:
            import xarray as xr
        except ImportError:
            raise ImportError(
                "Result.to_xarray needs xarray: pip install 'ntkflow[xarray]'"
            ) from None
        vars_: dict[str, Any] = {name: (dims, getattr(self, name)) for name, dims in _DIMS.items()
                                 if getattr(self, name) is not None}
        extra_p = ("dim", "outputs")[: self.p.ndim - 2]  # p is (.., dim[+1 bias][, outputs])
        vars_["p"] = (("trajectories", "times") + extra_p, self.p)
        if self.ntk is not None:
            extra = ("dim", "dim_") if self.ntk.ndim == 4 else ()
            vars_["ntk"] = (("trajectories", "times") + extra, self.ntk)
        if self.gram is not None:
            vars_["gram"] = (("trajectories", "times", "inputs", "inputs_"), self.gram)
        coords = {"times": self.times,
                  "trajectories": self.first_trajectory + np.arange(self.trajectories)}
        return xr.Dataset(vars_, coords=coords,
                          attrs={"seed": self.seed, "width": self.net.width,
                                 "kappa": self.net.kappa, "method": self.method,
                                 "act": self.net.act, "path": str(self.path)})


