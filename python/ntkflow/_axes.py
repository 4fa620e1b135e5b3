"""Phase-diagram axes: the names a grid can vary, their values, and what they do to a cell.

A cell starts from the base parametrization at the diagram's width on the study's data.
Its two axis values change it in one fixed order -- parametrization fields, width,
concrete hyperparameters, then the joint init scale, the imbalance and the learning-rate
ratio, then the data -- so a pair of axes means the same whichever of them is x.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from ._validate import require
from .parametrization import EXPONENTS, Hyper, Parametrization
from .specs import Data, Dataset, LatentLine

AXES: tuple[str, ...] = (*EXPONENTS, "correlation", "width", "target", "sigma", "kappa",
                         "s_u", "s_w", "eta_u", "eta_w", "init_scale", "imbalance",
                         "lr_ratio", "samples")
"""Names a phase-diagram axis can vary:

- Parametrization fields: the width exponents and prefactors (``EXPONENTS``: alpha,
  beta_u, beta_w, c_u, c_w, kappa0, eta0, s_u0, s_w0) and ``correlation``;
- ``width``;
- ``target`` (the LatentLine's target slope beta*) and ``sigma`` (its input moment);
- ``kappa``, ``s_u``, ``s_w``, ``eta_u``, ``eta_w``: a concrete hyperparameter of every
  cell, overriding the parametrization's value;
- ``init_scale``: a factor on both s_u and s_w;
- ``imbalance``: s_u / s_w, with sqrt(s_u s_w) kept;
- ``lr_ratio``: eta_w / eta_u, with sqrt(eta_u eta_w) kept (not a change of time unit);
- ``samples``: the cell trains on the first n rows of the Dataset.
"""

# Old axis names: a one-line error says what they are called now.
RENAMED: dict[str, tuple[str, str]] = {
    "beta": ("target", "the LatentLine's target slope beta*; beta_u, beta_w are the "
             "init exponents"),
}

# Axes whose values are counts (integers >= 1), and table columns of them.
COUNT_AXES: tuple[str, ...] = ("width", "samples")
_POSITIVE: tuple[str, ...] = ("imbalance", "lr_ratio")


def axis(label: str, ax: Any) -> tuple[str, NDArray[np.float64]]:
    """A checked axis ``(name, values)``; ``label`` is "x" or "y" (for messages)."""
    require(isinstance(ax, (tuple, list)) and len(ax) == 2, label,
            "must be a pair (name, values)", ax)
    name, vals = ax
    if isinstance(name, str) and name in RENAMED:
        new, what = RENAMED[name]
        raise ValueError(f'{label} name "{name}" was renamed to "{new}" ({what})')
    require(isinstance(name, str) and name in AXES, f"{label} name",
            f"must be one of {', '.join(AXES)}", name)
    v = np.asarray(vals, dtype=np.float64).reshape(-1)
    require(v.size >= 1 and bool(np.all(np.isfinite(v))), f"{label} values",
            "must be a non-empty list of finite numbers", vals)
    if name in COUNT_AXES:
        require(bool(np.all((v == np.round(v)) & (v >= 1))), name,
                "axis values must be positive integers", vals)
    elif name in _POSITIVE:
        require(bool(np.all(v > 0)), name, "axis values must be > 0 (a ratio)", vals)
    elif name == "init_scale":
        require(bool(np.all(v >= 0)), name, "axis values must be >= 0 (a factor on "
                "s_u and s_w)", vals)
    return str(name), v


def cell_setting(
    base: Parametrization, width: int, data: Data, values: dict[str, float]
) -> tuple[Hyper, float | Literal["copy"], Data]:
    """The hyperparameters, init correlation and data of the cell at these axis values."""
    p_changes = {k: v for k, v in values.items() if k in (*EXPONENTS, "correlation")}
    p = base.replace(**p_changes) if p_changes else base
    if "width" in values:
        width = int(values["width"])
    h = p.at(width)
    direct = {k: float(v) for k, v in values.items() if k in Hyper._fields and k != "width"}
    if direct:
        h = h._replace(**direct)  # type: ignore[arg-type]
    return _rescaled(h, values), p.correlation, _cell_data(data, values)


def _rescaled(h: Hyper, values: dict[str, float]) -> Hyper:
    """The joint init scale, then the ratios at a kept geometric mean."""
    if "init_scale" in values:
        c = float(values["init_scale"])
        h = h._replace(s_u=c * h.s_u, s_w=c * h.s_w)
    if "imbalance" in values:
        require(h.s_u > 0 and h.s_w > 0, "imbalance",
                "needs s_u, s_w > 0 (it keeps their geometric mean)", (h.s_u, h.s_w))
        g, r = math.sqrt(h.s_u) * math.sqrt(h.s_w), math.sqrt(values["imbalance"])
        h = h._replace(s_u=g * r, s_w=g / r)
    if "lr_ratio" in values:
        require(h.eta_u > 0 and h.eta_w > 0, "lr_ratio",
                "needs eta_u, eta_w > 0 (it keeps their geometric mean)",
                (h.eta_u, h.eta_w))
        g, r = math.sqrt(h.eta_u) * math.sqrt(h.eta_w), math.sqrt(values["lr_ratio"])
        h = h._replace(eta_u=g / r, eta_w=g * r)
    return h


def _cell_data(data: Data, values: dict[str, float]) -> Data:
    if "target" in values or "sigma" in values:
        require(isinstance(data, LatentLine), "data",
                "must be a LatentLine to vary target or sigma", type(data).__name__)
        assert isinstance(data, LatentLine)
        data = LatentLine(beta=float(values.get("target", data.beta)),
                          sigma=float(values.get("sigma", data.sigma)),
                          loss_min=data.loss_min)
    if "samples" in values:
        require(isinstance(data, Dataset), "data",
                "must be a Dataset to vary samples (a cell trains on its first n rows)",
                type(data).__name__)
        assert isinstance(data, Dataset)
        n = int(values["samples"])
        require(n <= data.samples, "samples",
                f"axis values must be <= the Dataset's {data.samples} rows", n)
        data = first_rows(data, n)
    return data


def first_rows(data: Dataset, n: int) -> Dataset:
    """The Dataset of the first ``n`` samples (class labels stay class labels)."""
    if data.classes is not None:
        labels = np.argmax(data.y[:n], axis=1)
        return Dataset(data.X[:n], labels, classes=data.classes)
    return Dataset(data.X[:n], data.y[:n])
