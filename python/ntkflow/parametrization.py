"""Width parametrizations (docs/theory.md §D): how the output scale, init scales and
learning rates of model A scale with the width m."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Literal, NamedTuple

from ._validate import integer, real, require
from .specs import Gaussian, GradientFlow, TwoLayer


class Hyper(NamedTuple):
    """The concrete hyperparameters of one width."""

    width: int
    kappa: float
    s_u: float
    s_w: float
    eta_u: float
    eta_w: float


_PRESETS: dict[str, tuple[float, float, float, float, float]] = {
    # name: (alpha, beta_u, beta_w, c_u, c_w)  -- docs/theory.md §D table
    "ntk": (0.5, 0.0, 0.0, 0.0, 0.0),
    "mean_field": (1.0, 0.0, 0.0, 1.0, 1.0),
    "standard": (0.0, 0.5, 0.0, -1.0, -1.0),
    "small_init": (0.5, 0.5, 0.5, 0.0, 0.0),
    "ntk_fast_w": (0.5, 0.0, 0.0, 0.0, 1.0),
    "mean_field_imbalanced": (1.0, 0.0, 0.0, 0.0, 2.0),
}

EXPONENTS: tuple[str, ...] = ("alpha", "beta_u", "beta_w", "c_u", "c_w", "kappa0", "eta0",
                              "s_u0", "s_w0")


@dataclass(frozen=True, kw_only=True, slots=True)
class Parametrization:
    """``kappa = kappa0 m^-alpha``, ``s_u = s_u0 m^-beta_u``, ``s_w = s_w0 m^-beta_w``,
    ``eta_u = eta0 m^c_u``, ``eta_w = eta0 m^c_w`` (docs/theory.md §D, d = 1).

    Parameters
    ----------
    alpha, beta_u, beta_w, c_u, c_w : float
        Width exponents (any finite real).
    kappa0, eta0, s_u0, s_w0 : float
        Prefactors, > 0 (default 1). A common factor of both learning rates only rescales
        time; ``s_u0``, ``s_w0`` carry a fixed init scale across widths (e.g. a small
        initialisation s = 0.01 at every width).
    correlation : float in [-1, 1] or "copy"
        Init correlation of the two layers (docs/theory.md §E.4's rho0), default 0.
    name : str
        A label for tables ("custom" unless built by ``named``).

    Examples
    --------
    >>> Parametrization.named("ntk").at(1024)
    Hyper(width=1024, kappa=0.03125, s_u=1.0, s_w=1.0, eta_u=1.0, eta_w=1.0)
    """

    alpha: float = 0.5
    beta_u: float = 0.0
    beta_w: float = 0.0
    c_u: float = 0.0
    c_w: float = 0.0
    kappa0: float = 1.0
    eta0: float = 1.0
    s_u0: float = 1.0
    s_w0: float = 1.0
    correlation: float | Literal["copy"] = 0.0
    name: str = "custom"

    def __post_init__(self) -> None:
        for f in ("alpha", "beta_u", "beta_w", "c_u", "c_w"):
            object.__setattr__(self, f, real(getattr(self, f), f))
        object.__setattr__(self, "kappa0", real(self.kappa0, "kappa0", low=0.0, low_open=True))
        for f in ("eta0", "s_u0", "s_w0"):
            object.__setattr__(self, f, real(getattr(self, f), f, low=0.0, low_open=True))
        if self.correlation != "copy":
            object.__setattr__(self, "correlation",
                               real(self.correlation, "correlation", low=-1.0, high=1.0))
        require(isinstance(self.name, str), "name", "must be a string", self.name)

    @classmethod
    def named(cls, name: str, **overrides: Any) -> Parametrization:
        """A preset of docs/theory.md §D: "ntk", "mean_field", "standard",
        "small_init", "ntk_fast_w" (eta_w = m eta_u), "mean_field_imbalanced"
        (eta_w = m^2 eta_u). Keyword arguments override fields (e.g. ``kappa0=2``)."""
        require(name in _PRESETS, "parametrization", f"must be one of {tuple(_PRESETS)}", name)
        a, bu, bw, cu, cw = _PRESETS[name]
        base = cls(alpha=a, beta_u=bu, beta_w=bw, c_u=cu, c_w=cw, name=name)
        return replace(base, **overrides) if overrides else base

    @staticmethod
    def presets() -> tuple[str, ...]:
        return tuple(_PRESETS)

    def replace(self, **changes: Any) -> Parametrization:
        """A copy with some fields changed (name becomes "custom" unless given)."""
        names = {f.name for f in fields(self)}
        for k in changes:
            require(k in names, k, f"is not a Parametrization field {tuple(sorted(names))}", k)
        if "name" not in changes and any(k in EXPONENTS for k in changes):
            changes["name"] = "custom"
        return replace(self, **changes)

    def at(self, width: int) -> Hyper:
        """The hyperparameters at this width."""
        m = integer(width, "width", minimum=1)
        return Hyper(
            width=m,
            kappa=self.kappa0 * m ** (-self.alpha),
            s_u=self.s_u0 * float(m ** (-self.beta_u)),
            s_w=self.s_w0 * float(m ** (-self.beta_w)),
            eta_u=self.eta0 * m**self.c_u,
            eta_w=self.eta0 * m**self.c_w,
        )

    def net(self, width: int) -> TwoLayer:
        h = self.at(width)
        return TwoLayer(width=h.width, kappa=h.kappa)

    def init(self, width: int) -> Gaussian:
        h = self.at(width)
        return Gaussian(h.s_u, h.s_w, correlation=self.correlation)

    def train(self, width: int, **kwargs: Any) -> GradientFlow:
        """A GradientFlow with this width's learning rates (other settings passed on)."""
        h = self.at(width)
        return GradientFlow(eta_u=h.eta_u, eta_w=h.eta_w, **kwargs)

    def predicted_exponents(self) -> dict[str, float]:
        """Width exponents docs/theory.md §D predicts for model A at t = inf (i.i.d.
        init): ``rho`` for the median relative NTK change and ``delta_cos`` for
        ``|Delta |cos||``.
        0 means Theta(1) (feature learning)."""
        r = self.c_w - self.c_u
        e_D = 1 + max(-2 * self.beta_u + r / 2, -2 * self.beta_w - r / 2)
        e_C0 = 0.5 - self.beta_u - self.beta_w
        e_G = 1 - self.beta_u - self.beta_w
        a = self.alpha
        if a < e_D:
            rho = 2 * max(a, e_C0) - 2 * e_D
        elif a == e_D:
            rho = 0.0
        else:
            rho = a - e_D
        dcos = max(a - e_G, -0.5) if a < e_G else 0.0
        return {"rho": rho, "delta_cos": dcos}
