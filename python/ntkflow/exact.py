"""Exact solutions to compare simulations with.

- ``line``: the closed form of docs/theory.md §A for linear networks on one-dimensional
  data, any width, learning rates, output scale and init, evaluated for a whole ensemble
  at once and stable for large times, tiny inits and C0 = 0.
- ``reduced``: the width-independent reduced flow of docs/theory.md §B.1 for any input
  dimension.
- ``ntk_infinite``: the infinite-width NTK of docs/theory.md §C.2 (linear, relu, erf in
  closed form, tanh by 2-D quadrature).
- ``kernel_regime``: the linearised (kernel-regime) training trajectory with a fixed kernel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from ._validate import require
from .specs import Data, GradientFlow, Params, Record, Training, TwoLayer

if TYPE_CHECKING:  # pragma: no cover
    from numpy.typing import NDArray

    from ._exact_kernel import KernelRegime
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
        Learning rates eta_u, eta_w > 0 (the solver settings are irrelevant here). No
        weight decay: ``lambda_u`` and ``lambda_w`` must be 0 (with decay, simulate the
        flow; ``method="reduced"`` integrates the closed reduced system of §B.1).

    Returns
    -------
    LineSolution
        ``.at(times)`` gives loss, C = u . w, norms, NTK, alignment of shape
        (trajectories, times); ``.params_at(times)`` the vectors; ``.limit()`` t = inf.
    """
    from ._exact_line import line_solution

    require(net.act == "linear", "net.act", 'must be "linear" for the exact solution', net.act)
    require(not net.bias, "net.bias", "must be False for exact.line (model A has no bias)",
            net.bias)
    require(data.dim == 1, "data", "must be one-dimensional (dim = 1) for exact.line",
            data.dim)
    require(getattr(data, "outputs", 1) == 1, "data",
            "must have one target column for exact.line (model A has one output)",
            getattr(data, "outputs", 1))
    require(train.loss == "square", "train.loss",
            'must be "square" for exact.line (model A is the square loss)', train.loss)
    require(isinstance(train, GradientFlow), "train",
            "must be a GradientFlow (the closed form is of the flow, not of descent)", train)
    assert isinstance(train, GradientFlow)
    require(train.eta_u > 0, "eta_u", "must be > 0 for exact.line", train.eta_u)
    require(train.eta_w > 0, "eta_w", "must be > 0 for exact.line", train.eta_w)
    for name in ("lambda_u", "lambda_w"):
        require(getattr(train, name) == 0.0, name,
                'must be 0 for exact.line (the closed form has no weight decay; simulate '
                'the flow instead, e.g. with method="reduced")', getattr(train, name))
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
    """The width-independent reduced flow (docs/theory.md §B.1) from the same initial
    parameters.

    Integrates ``(p, M, a) = (W^T u, W^T W, ||u||^2)`` with the training's solver (and its
    weight decay, which keeps the system closed: docs/theory.md §B.5) and
    returns a ``Result`` with the same records as ``simulate`` (no parameters), at
    ``times`` (default: those of the Result given, else 101 evenly spaced).
    """
    from ._simulate import simulate

    params = _params_of(source)
    if times is None:
        times = getattr(source, "times", None)
    record = Record() if times is None else Record(times=np.asarray(times, dtype=float))
    return simulate(net, data, train, init=params, record=record, method="reduced",
                    progress=False)


def ntk_infinite(
    X: ArrayLike,
    act: str,
    s_u: float,
    s_w: float,
    eta_u: float = 1.0,
    eta_w: float = 1.0,
    X2: ArrayLike | None = None,
) -> NDArray[np.float64]:
    """The infinite-width limit of the learning-rate-weighted NTK Gram matrix
    (docs/theory.md §C.2).

    For ``kappa = 1/sqrt(width)``, ``u_i ~ N(0, s_u^2)`` and ``W_ik ~ N(0, s_w^2/d)`` --
    ntkflow's ``Gaussian(s_u, s_w)`` initialisation -- the finite-width Gram matrix
    ``ntk_gram`` converges to

        ``K(x, x') = eta_u E[act(h) act(h')] + eta_w s_u^2 (x.x') E[act'(h) act'(h')]``

    with ``(h, h')`` centred Gaussian of covariance ``s_w^2/d [[|x|^2, x.x'], [x.x', |x'|^2]]``.
    linear, relu (arc-cosine kernels, angles by Kahan's formula) and erf are closed forms.
    tanh has none: a 2-D product trapezoidal rule on the Cholesky factor of each 2 x 2
    covariance, written out so that (anti)parallel and zero inputs need no special case,
    with a step shrinking as 1/sqrt(variance); accurate to ~1e-14 relative at any
    variance. (A fixed 60 x 60 Gauss-Hermite rule, the textbook choice discussed in
    docs/theory.md §C.2, is off by 2e-7 at unit pre-activation variance and by 1e-2 at
    variance 5: tanh's poles at +-i pi/2 come close to the real axis.)

    Parameters
    ----------
    X : array (samples, dim)
    act : {"linear", "relu", "tanh", "erf"}
    s_u, s_w : float
        Initial standard deviations, >= 0.
    eta_u, eta_w : float
        Learning rates weighting the two layers, >= 0 (1, 1: the plain NTK).
    X2 : array (samples2, dim), optional
        Second inputs: the cross kernel ``K(X, X2)``.

    Returns
    -------
    array (samples, samples) or (samples, samples2)
    """
    from ._exact_kernel import ntk_infinite as impl

    return impl(X, act, s_u, s_w, eta_u, eta_w, X2)


def kernel_regime(
    K0: ArrayLike,
    f0: ArrayLike,
    y: ArrayLike,
    times: ArrayLike,
    lr: float | None = None,
) -> KernelRegime:
    """Training of the linearised network with the fixed kernel K0, exactly.

    On its training inputs the linearised network's residual ``r = f - y`` obeys
    ``dr/dt = -(1/n) K0 r`` (gradient flow) or ``r <- (I - lr/n K0) r`` (gradient descent,
    ``lr`` given, times counted in steps), solved through ``K0 = V diag(lambda) V^T``:
    ``r(t) = V g(lambda, t) V^T r(0)`` with ``g = exp(-lambda t/n)`` or
    ``(1 - lr lambda/n)^t``. This is the kernel-regime baseline of docs/theory.md §0
    with the learning-rate-weighted kernel; ``Record(linearized=True)`` records its loss
    in-run.

    Parameters
    ----------
    K0 : array (..., samples, samples)
        Symmetric positive semi-definite (eigenvalues down to -1e-10 of the largest are
        rounding and taken as 0), e.g. ``ntk_gram`` of the initial parameters.
    f0 : array (..., samples)
        Initial function values on the training inputs.
    y : array (samples,)
        Targets.
    times : array (times,)
        Times >= 0 (whole steps when ``lr`` is given).
    lr : float, optional
        Learning rate of gradient descent; None for gradient flow.

    Returns
    -------
    KernelRegime
        ``f`` (..., times, samples) and ``loss`` (..., times).
    """
    from ._exact_kernel import kernel_regime as impl

    return impl(K0, f0, y, times, lr)
