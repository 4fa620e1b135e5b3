"""Exact solutions to compare simulations with.

- ``line``: the closed form of THEORY §A for linear networks on one-dimensional data, any
  width, learning rates, output scale and init, evaluated for a whole ensemble at once and
  stable for large times, tiny inits and C0 = 0.
- ``reduced``: the width-independent reduced flow of THEORY §B.1 for any input dimension.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from ._validate import require
from .specs import Data, GradientFlow, Params, Record, Training, TwoLayer

if TYPE_CHECKING:  # pragma: no cover
    from ._exact_line import LineSolution
    from .result import Result


def _params_of(source: Params | Result) -> Params:
    if isinstance(source, Params):
        return source
    require(hasattr(source, "initial_params"), "params", "must be Params or a Result", source)
    return source.initial_params()


def line(source: Params | Result, net: TwoLayer, data: Data, train: Training) -> LineSolution:
    """Closed-form gradient flow of a linear network on one-dimensional data.

    Parameters
    ----------
    source : Params or Result
        Initial parameters, ``u0`` (trajectories, width) and ``W0`` (trajectories, width, 1),
        or a Result whose initial parameters are regenerated.
    net : TwoLayer
        Linear, any width and kappa.
    data : LatentLine, or Moments / Dataset of dimension 1
    train : GradientFlow
        Learning rates eta_u, eta_w > 0 (the solver settings are irrelevant here).

    Returns
    -------
    LineSolution
        ``.at(times)`` gives loss, C = u . w, norms, NTK, alignment of shape
        (trajectories, times); ``.params_at(times)`` the vectors; ``.limit()`` t = inf.
    """
    from ._exact_line import line_solution

    require(net.act == "linear", "net.act", 'must be "linear" for the exact solution', net.act)
    require(data.dim == 1, "data", "must be one-dimensional (dim = 1) for exact.line",
            data.dim)
    require(isinstance(train, GradientFlow), "train",
            "must be a GradientFlow (the closed form is of the flow, not of descent)", train)
    assert isinstance(train, GradientFlow)
    require(train.eta_u > 0, "eta_u", "must be > 0 for exact.line", train.eta_u)
    require(train.eta_w > 0, "eta_w", "must be > 0 for exact.line", train.eta_w)
    params = _params_of(source)
    require(params.width == net.width, "params", f"width must be net.width = {net.width}",
            params.width)
    require(params.dim == 1, "params", "must have dim = 1", params.dim)
    mom = data.moments()
    return line_solution(
        params.u0,
        params.W0[..., 0],
        kappa=net.kappa,
        eta_u=train.eta_u,
        eta_w=train.eta_w,
        sigma=float(mom.Sigma[0, 0]),
        beta=float(mom.beta[0]),
        loss_min=float(mom.loss_min),
    )


def reduced(
    source: Params | Result,
    net: TwoLayer,
    data: Data,
    train: Training,
    times: ArrayLike | None = None,
) -> Result:
    """The width-independent reduced flow (THEORY §B.1) from the same initial parameters.

    Integrates ``(p, M, a) = (W^T u, W^T W, ||u||^2)`` with the training's solver and
    returns a ``Result`` with the same records as ``simulate`` (no parameters), at
    ``times`` (default: those of the Result given, else 101 evenly spaced).
    """
    from ._simulate import simulate

    params = _params_of(source)
    if times is None:
        times = getattr(source, "times", None)
    record = Record() if times is None else Record(times=np.asarray(times, dtype=float))
    return simulate(net, data, train, init=params, record=record, method="reduced")
