"""The result of an ensemble run: NumPy arrays with named dimensions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from .specs import Data, Init, Params, Training, TwoLayer

if TYPE_CHECKING:  # pragma: no cover
    import xarray

STATUS_NAMES: tuple[str, ...] = ("ok", "diverged", "step_limit")
"""Meaning of the codes in ``Result.status``."""

_DIMS: dict[str, tuple[str, ...]] = {
    "loss": ("trajectories", "times"),
    "norm_u2": ("trajectories", "times"),
    "norm_w2": ("trajectories", "times"),
    "alignment": ("trajectories", "times"),
    "balance_drift": ("trajectories", "times"),
    "status": ("trajectories",),
    "t_fail": ("trajectories",),
    "steps": ("trajectories",),
    "rejected": ("trajectories",),
    "t_hit": ("trajectories",),
}


@dataclass(frozen=True, eq=False)
class Result:
    """Records of one ensemble.

    Shapes use the dimensions ``trajectories``, ``times``, ``width`` and ``dim``; arrays
    written for dim = 1 drop their dim axes.

    Attributes
    ----------
    times : (times,)
        Record times (step numbers for gradient descent).
    loss : (trajectories, times)
        ``1/2 E[(f(x) - y)^2]`` on the data or moments.
    p : (trajectories, times[, dim])
        End-to-end weights ``W^T u`` (for dim = 1, ``u . w``).
    norm_u2, norm_w2 : (trajectories, times)
        ``||u||^2`` and ``||W||_F^2``.
    alignment : (trajectories, times)
        ``||W^T u|| / (||u|| ||W||_F)`` in [0, 1]; 1 when u = 0 or W = 0 (no angle:
        the layers count as parallel, THEORY §E.1).
    ntk : (trajectories, times[, dim, dim]) or None
        ``kappa^2 (eta_u W^T W + eta_w ||u||^2 I)``: the learning-rate-weighted NTK is
        ``K(x, x') = x^T ntk x'``; for dim = 1 the scalar kernel per unit ``x x'``.
    balance_drift : (trajectories, times)
        ``(Delta(t) - Delta(0)) / (eta_w ||u||^2 + eta_u ||W||^2)`` for the conserved
        ``Delta = eta_w ||u||^2 - eta_u ||W||_F^2``: integration error made visible.
    status : (trajectories,) int8
        Codes of ``STATUS_NAMES``: ok, diverged (non-finite loss or step size collapse),
        step_limit. Records after ``t_fail`` are NaN.
    t_fail : (trajectories,)
        Time of divergence or of the step limit; NaN when ok.
    steps, rejected : (trajectories,) int64
        Accepted and rejected steps.
    t_hit : (trajectories,) or None
        First time the loss reached ``Record.loss_below`` (NaN if never).
    u, W : arrays or None
        Parameters kept on request: (trajectories[, times], width) and
        (trajectories[, times], width, dim).
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
    _initial: list[Params] = field(default_factory=list, repr=False)

    @property
    def trajectories(self) -> int:
        return int(self.loss.shape[0])

    @property
    def dim(self) -> int:
        return int(self.data.dim)

    @property
    def ok(self) -> NDArray[np.bool_]:
        """Mask of trajectories that ran to the end."""
        return np.asarray(self.status == 0)

    def status_counts(self) -> dict[str, int]:
        """Number of trajectories per status name."""
        return {name: int(np.sum(self.status == code)) for code, name in enumerate(STATUS_NAMES)}

    def initial_params(self) -> Params:
        """The initial parameters, regenerated bit for bit from (seed, trajectory index)
        rather than stored."""
        if isinstance(self.init, Params):
            return self.init
        if not self._initial:
            from ._simulate import draw_initial

            self._initial.append(
                draw_initial(self.init, self.net.width, self.dim, self.trajectories,
                             seed=self.seed, first_trajectory=self.first_trajectory)
            )
        return self._initial[0]

    def summary(self) -> str:
        """A few lines for a terminal."""
        counts = ", ".join(f"{k} {v}" for k, v in self.status_counts().items() if v)
        final = self.loss[:, -1]
        return (
            f"{self.trajectories} trajectories, width {self.net.width}, dim {self.dim}, "
            f"{self.times.size} record times up to {self.times[-1]:g} ({self.method}, "
            f"{self.isa}); status: {counts}; final loss median "
            f"{np.nanmedian(final) if np.any(np.isfinite(final)) else float('nan'):.4g}; "
            f"steps median {int(np.median(self.steps))}"
        )

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
        d = self.dim
        vars_["p"] = (("trajectories", "times") + (("dim",) if d > 1 else ()), self.p)
        if self.ntk is not None:
            extra = ("dim", "dim_") if self.ntk.ndim == 4 else ()
            vars_["ntk"] = (("trajectories", "times") + extra, self.ntk)
        coords = {"times": self.times,
                  "trajectories": self.first_trajectory + np.arange(self.trajectories)}
        return xr.Dataset(vars_, coords=coords,
                          attrs={"seed": self.seed, "width": self.net.width,
                                 "kappa": self.net.kappa, "method": self.method})


