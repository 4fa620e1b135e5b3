"""Spec objects: what to simulate. Each is frozen and checked when it is built, so a bad
value fails before any work starts, with a message naming the parameter."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import numpy as np
from numpy.typing import NDArray

from . import _memory
from ._validate import array, integer, real, require

Activation = Literal["linear", "relu", "tanh", "erf"]
ACTIVATIONS: tuple[str, ...] = ("linear", "relu", "tanh", "erf")


def _set(obj: object, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)


def _flag(value: Any, name: str) -> bool:
    require(isinstance(value, (bool, np.bool_)), name, "must be True or False", value)
    return bool(value)


@dataclass(frozen=True, kw_only=True, slots=True)
class TwoLayer:
    """Two-layer network ``f(x) = kappa * sum_i U_i act(w_i . x + b_i)`` (docs/theory.md
    §0, §I).

    The number of outputs c (``U_i`` in R^c) is the number of target columns of the data:
    one for ``y`` of shape (samples,), c for ``Y`` of shape (samples, c).

    Parameters
    ----------
    width : int
        Number of hidden units m, >= 1.
    act : {"linear", "relu", "tanh", "erf"}
        Activation.
    kappa : float
        Output scale, > 0.
    bias : bool
        A first-layer bias ``b_i`` per unit, trained with ``W`` (learning rate ``eta_w``,
        decay ``lambda_w``) and drawn at initialisation with its own scale
        (``Gaussian(s_b=...)``). Needs a ``Dataset``.
    """

    width: int
    act: Activation = "linear"
    kappa: float = 1.0
    bias: bool = False

    def __post_init__(self) -> None:
        _set(self, "width", integer(self.width, "width", minimum=1))
        require(self.act in ACTIVATIONS, "act", f"must be one of {ACTIVATIONS}", self.act)
        _set(self, "kappa", real(self.kappa, "kappa", low=0.0, low_open=True))
        _set(self, "bias", _flag(self.bias, "bias"))


class MomentData(NamedTuple):
    """The data as a linear network sees it: ``L(p) = loss_min + 1/2 r^T Sigma r`` with
    ``r = kappa p - beta`` and ``beta = Sigma^+ b`` (the minimum-norm minimiser)."""

    Sigma: NDArray[np.float64]  # (dim, dim)
    b: NDArray[np.float64]  # (dim,)
    beta: NDArray[np.float64]  # (dim,)
    loss_min: float


@dataclass(frozen=True, kw_only=True, slots=True)
class LatentLine:
    """One-dimensional population data (docs/theory.md §A): ``Sigma = sigma``,
    ``b = sigma * beta``.

    Parameters
    ----------
    beta : float
        Target slope beta*, any sign.
    sigma : float
        Input second moment, > 0.
    loss_min : float
        Irreducible loss L* >= 0 (label noise).
    """

    beta: float = 1.0
    sigma: float = 1.0
    loss_min: float = 0.0

    def __post_init__(self) -> None:
        _set(self, "beta", real(self.beta, "beta"))
        _set(self, "sigma", real(self.sigma, "sigma", low=0.0, low_open=True))
        _set(self, "loss_min", real(self.loss_min, "loss_min", low=0.0))

    @property
    def dim(self) -> int:
        return 1

    def moments(self) -> MomentData:
        s = np.array([[self.sigma]])
        return MomentData(s, np.array([self.sigma * self.beta]), np.array([self.beta]),
                          self.loss_min)


def _pinv_solve(Sigma: NDArray[np.float64], b: NDArray[np.float64]) -> NDArray[np.float64]:
    vals, vecs = np.linalg.eigh(Sigma)
    cut = max(vals.max(initial=0.0), 0.0) * Sigma.shape[0] * np.finfo(float).eps * 16
    inv = np.where(vals > cut, 1.0 / np.where(vals > cut, vals, 1.0), 0.0)
    beta: NDArray[np.float64] = vecs @ (inv * (vecs.T @ b))
    return beta


@dataclass(frozen=True, slots=True, eq=False)
class Moments:
    """Population moments ``Sigma = E[x x^T]``, ``b = E[x y]`` and optionally ``y2 = E[y^2]``.

    The arrays may be given positionally, ``Moments(Sigma, b)``, or by keyword.

    Parameters
    ----------
    Sigma : array (dim, dim)
        Symmetric positive semi-definite, not zero.
    b : array (dim,)
        Must lie in the range of Sigma (it does for any real distribution).
    y2 : float, optional
        ``E[y^2]``; fixes the loss constant. Without it the minimum loss is taken as 0.
    """

    Sigma: Any
    b: Any
    y2: float | None = None
    _moments: MomentData = field(init=False, repr=False)

    def __post_init__(self) -> None:
        S = array(self.Sigma, "Sigma", ndim=(0, 2))
        if S.ndim == 0:
            S = array(S.reshape(1, 1), "Sigma", ndim=2)
        d = S.shape[0]
        require(S.shape == (d, d) and d >= 1, "Sigma", "must be a square (dim, dim) array", S)
        b = array(self.b, "b", ndim=(0, 1)).reshape(-1)
        require(b.shape == (d,), "b", f"must have shape ({d},) to match Sigma", b)
        scale = float(np.max(np.abs(S)))
        require(scale > 0, "Sigma", "must not be zero", S)
        asym = float(np.max(np.abs(S - S.T)))
        require(asym <= 1e-12 * scale, "Sigma",
                f"must be symmetric (max |Sigma - Sigma^T| = {asym:.3g})", S)
        lam_min = float(np.linalg.eigvalsh(S).min())
        require(lam_min >= -1e-12 * scale * d, "Sigma",
                f"must be positive semi-definite (smallest eigenvalue {lam_min:.3g})", S)
        beta = _pinv_solve(S, b)
        miss = float(np.linalg.norm(S @ beta - b))
        require(miss <= 1e-9 * (float(np.linalg.norm(b)) + scale * float(np.linalg.norm(beta))),
                "b", "must lie in the range of Sigma", b)
        loss_min = 0.0
        if self.y2 is not None:
            y2 = real(self.y2, "y2", low=0.0)
            floor = float(b @ beta)
            require(y2 >= floor * (1 - 1e-12), "y2",
                    f"must be >= b^T Sigma^+ b = {floor:.6g} (E[y^2] >= explained part)", y2)
            loss_min = max(0.0, 0.5 * (y2 - floor))
        S.setflags(write=False)
        b.setflags(write=False)
        beta.setflags(write=False)
        _set(self, "Sigma", S)
        _set(self, "b", b)
        _set(self, "_moments", MomentData(S, b, beta, loss_min))

    @property
    def dim(self) -> int:
        return int(self.Sigma.shape[0])

    def moments(self) -> MomentData:
        return self._moments


# The rule quoted when something else is passed as ``data`` (a tuple (X, y) most often).
DATA_RULE = "must be a LatentLine, Moments or Dataset; for arrays use nf.Dataset(X, y)"


@dataclass(frozen=True, slots=True, eq=False)
class Dataset:
    """A training (or test) set: inputs ``X`` (samples, dim) and targets ``y`` (samples,)
    or ``Y`` (samples, c) for a network with c outputs.

    The arrays may be given positionally, ``Dataset(X, y)``, or by keyword.

    Parameters
    ----------
    X : array (samples, dim)
        Inputs; (samples,) is read as dim = 1.
    y : array (samples,) or (samples, c)
        Targets: real values (square loss), +-1 labels (logistic loss, or square loss with
        a classification error), or rows on the simplex such as one-hot class vectors
        (softmax loss). (samples, 1) is read as (samples,).
    classes : int, optional
        ``y`` holds integer class labels 0..classes-1: they are stored as one-hot rows
        (samples, classes), the targets of a network with ``classes`` outputs.

    A linear network with one output sees it only through its moments, which are computed
    once (the loss reported is this dataset's own ``1/(2n) sum_j (f(x_j) - y_j)^2``).
    """

    X: Any
    y: Any
    classes: int | None = None
    _moments: MomentData | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        X = array(self.X, "X", ndim=(1, 2))
        if X.ndim == 1:
            X = array(X.reshape(-1, 1), "X", ndim=2)
        n, d = X.shape
        require(n >= 1 and d >= 1, "X", "must have at least one sample and one feature", X)
        if self.classes is not None:
            k = integer(self.classes, "classes", minimum=2)
            y = array(self.y, "y", ndim=(1, 2))
            require(y.shape in ((n,), (n, 1)), "y",
                    f"must hold {n} class labels (shape ({n},)) with classes={k}", y)
            labels = y.reshape(n)
            require(bool(np.all((labels == np.round(labels)) & (labels >= 0) & (labels < k))),
                    "y", f"must be integer class labels in 0..{k - 1} (classes={k})", y)
            y = np.zeros((n, k))
            y[np.arange(n), labels.astype(np.int64)] = 1.0
            _set(self, "classes", k)
        else:
            y = array(self.y, "y", ndim=(1, 2))
            require(y.shape[0] == n and (y.ndim == 1 or y.shape[1] >= 1), "y",
                    f"must have shape ({n},) or ({n}, outputs) to match X", y)
            if y.ndim == 2 and y.shape[1] == 1:
                y = y.reshape(n)
        y = np.ascontiguousarray(y)
        y.setflags(write=False)
        _set(self, "X", X)
        _set(self, "y", y)
        require(bool(np.any(X != 0)), "X", "must not be all zero", X)

    @property
    def dim(self) -> int:
        return int(self.X.shape[1])

    @property
    def samples(self) -> int:
        return int(self.X.shape[0])

    @property
    def outputs(self) -> int:
        """Target columns c: the number of outputs of a network trained on this set."""
        return 1 if self.y.ndim == 1 else int(self.y.shape[1])

    def moments(self) -> MomentData:
        require(self.outputs == 1, "data",
                "has several target columns: its moments are for one output", self.outputs)
        if self._moments is None:
            X, y = self.X, self.y
            n = X.shape[0]
            Sigma = (X.T @ X) / n
            Sigma = 0.5 * (Sigma + Sigma.T)
            b = (X.T @ y) / n
            # Least squares on X itself: beta solves the normal equations and the residual
            # gives L* without the cancellation of E[y^2] - b^T beta.
            beta = np.linalg.lstsq(X, y, rcond=None)[0]
            resid = X @ beta - y
            loss_min = 0.5 * float(resid @ resid) / n
            _set(self, "_moments", MomentData(Sigma, b, beta, loss_min))
        assert self._moments is not None
        return self._moments


Data = LatentLine | Moments | Dataset

Solver = Literal["auto", "dopri5", "rodas4", "rk4", "euler"]
SOLVERS: tuple[str, ...] = ("auto", "dopri5", "rodas4", "rk4", "euler")
ADAPTIVE: tuple[str, ...] = ("auto", "dopri5", "rodas4")
Loss = Literal["square", "logistic", "softmax"]
LOSSES: tuple[str, ...] = ("square", "logistic", "softmax")


@dataclass(frozen=True, kw_only=True, slots=True)
class Objective:
    """What training minimises, and how fast each layer moves: shared by ``GradientFlow``,
    ``GradientDescent`` and ``SGD`` (docs/theory.md §I).

    Parameters
    ----------
    eta_u, eta_w : float
        Layer-wise learning rates, >= 0 (0 freezes the layer; the biases move with W).
    lambda_u, lambda_w : float
        Layer-wise weight decay, >= 0: the objective is
        ``L + lambda_u/2 ||U||^2 + lambda_w/2 (||W||_F^2 + ||b||^2)``, so the flow is
        ``dU/dt = -eta_u (dL/dU + lambda_u U)`` and likewise for W; descent steps by
        ``lr`` times that field. The recorded ``loss`` stays the data loss L. Decay breaks
        the conservation of ``delta_i``, which then obeys ``d delta_i/dt = -2 eta_u eta_w
        (lambda_u ||U_i||^2 - lambda_w ||w_i||^2)`` (docs/theory.md §B.5, §E.5). The closed
        form ``exact.line`` has no decay and refuses it.
    loss : {"square", "logistic", "softmax"}
        The per-sample loss of ``L = (1/n) sum_j l(f(x_j), y_j)``: "square"
        ``1/2 ||f - y||^2``; "logistic" ``log(1 + exp(-y f))`` for one output and +-1
        labels; "softmax" cross-entropy ``logsumexp(f) - y . f`` for c >= 2 outputs and
        one-hot (or simplex) targets, e.g. ``Dataset(X, labels, classes=c)``.
    """

    eta_u: float = 1.0
    eta_w: float = 1.0
    lambda_u: float = 0.0
    lambda_w: float = 0.0
    loss: Loss = "square"

    def _check_objective(self) -> None:
        _set(self, "eta_u", real(self.eta_u, "eta_u", low=0.0))
        _set(self, "eta_w", real(self.eta_w, "eta_w", low=0.0))
        _set(self, "lambda_u", real(self.lambda_u, "lambda_u", low=0.0))
        _set(self, "lambda_w", real(self.lambda_w, "lambda_w", low=0.0))
        require(self.loss in LOSSES, "loss", f"must be one of {LOSSES}", self.loss)

    @property
    def decay(self) -> bool:
        """Whether any layer has weight decay."""
        return self.lambda_u > 0 or self.lambda_w > 0


@dataclass(frozen=True, kw_only=True, slots=True)
class GradientFlow(Objective):
    """Gradient flow ``du/dt = -eta_u dL/du``, ``dW/dt = -eta_w dL/dW`` on [0, t_max]
    (plus weight decay, see ``Objective``).

    Parameters
    ----------
    eta_u, eta_w, lambda_u, lambda_w, loss
        The objective and the layer-wise rates: see ``Objective``.
    t_max : float
        Horizon, > 0.
    solver : {"auto", "dopri5", "rodas4", "rk4", "euler"}
        auto (default): dopri5, and each trajectory moves on to rodas4 once dopri5's steps
        are held by stability rather than accuracy (the stiff, lazy regime: a large NTK);
        ``Result.t_stiff`` says when (NaN: never). For relu networks auto is dopri5 (their
        field is piecewise, and dopri5 locates its switches; ``t_stiff`` is None), and on
        a dataset with more than 4096 samples x outputs it is dopri5 too (see rodas4).
        Model A (d = 1, width <= 4096) runs auto in the SIMD lanes of dopri5, bit for bit
        as dopri5 until a trajectory hands over; that trajectory then leaves its lane.
        dopri5: adaptive Dormand-Prince 5(4), error control per trajectory with rtol/atol.
        rodas4: the linearly implicit Rosenbrock method Rodas4 (order 4, L-stable), error
        control per trajectory, with the exact Jacobian of the flow. Linear networks on
        moments integrate the width-independent state of docs/theory.md §B.6 (a step costs
        O(dim^3) whatever the width). Networks on a dataset (linear, tanh, erf; any loss,
        outputs, bias, weight decay; not relu: a ValueError) solve with the Jacobian's
        structure, per-neuron (outputs + dim)^2 blocks plus a low-rank Gauss-Newton part,
        never a dense matrix of the parameters: a step costs about
        O(width (samples dim^2 + (samples outputs)^2 (outputs + dim))) and each thread
        holds a (samples outputs)^2 matrix, so rodas4 there takes at most 4096 samples x
        outputs.
        rk4, euler: fixed steps no longer than dt, shortened to land on every record time.
    dt : float
        Largest step of the fixed-step solvers, > 0.
    rtol, atol : float
        Tolerances of the adaptive solvers (auto, dopri5, rodas4), > 0.
    max_steps : int, optional
        Step limit per trajectory. The adaptive solvers count attempted steps (auto: of
        both methods) and mark a trajectory reaching it ``step_limit``; for rk4 and euler
        the count is known in advance and a run needing more is refused before it starts.
        Default (None): for the adaptive solvers, as many
        steps as cost about 3e9 parameter-sample operations (``3e9 / (width (1 + dim)
        samples)``, samples = dim on moments) clamped to [1e5, 1e7], i.e. a few seconds
        of one core per trajectory at most; for rk4 and euler 1e7.

    Notes
    -----
    relu makes the flow field jump where a pre-activation ``w_i . x_j`` crosses 0. dopri5
    integrates such a network piece by piece: each step uses the smooth field of the
    activation pattern it starts from, a crossing inside a step is located on the dense
    output and the step cut there, and where the flow slides along a switching surface it
    follows Filippov's sliding field (docs/theory.md §H); on one-dimensional data a unit
    whose fields on both sides push it into ``w_i = 0`` is held there, for one event,
    until one turns outward. So dopri5 keeps its accuracy on relu networks (records
    within about 10 rtol of the exact flow) and never stalls; rk4 and euler step across
    the surfaces with O(dt) error there.
    """

    t_max: float = 10.0
    solver: Solver = "auto"
    dt: float = 0.01
    rtol: float = 1e-9
    atol: float = 1e-12
    max_steps: int | None = None

    def __post_init__(self) -> None:
        self._check_objective()
        _set(self, "t_max", real(self.t_max, "t_max", low=0.0, low_open=True))
        require(self.solver in SOLVERS, "solver", f"must be one of {SOLVERS}", self.solver)
        _set(self, "dt", real(self.dt, "dt", low=0.0, low_open=True))
        _set(self, "rtol", real(self.rtol, "rtol", low=0.0, low_open=True, high=1.0))
        _set(self, "atol", real(self.atol, "atol", low=0.0, low_open=True))
        if self.max_steps is not None:
            _set(self, "max_steps", integer(self.max_steps, "max_steps", minimum=1))


@dataclass(frozen=True, kw_only=True, slots=True)
class GradientDescent(Objective):
    """Full-batch gradient descent: ``u -= lr * eta_u * dL/du``, ``W -= lr * eta_w * dL/dW``
    (plus weight decay, see ``Objective``).

    Record times are step numbers in [0, steps].

    Parameters
    ----------
    lr : float
        Step size, > 0.
    steps : int
        Number of steps, >= 1.
    eta_u, eta_w, lambda_u, lambda_w, loss
        See ``Objective``.
    """

    lr: float = 0.1
    steps: int = 1000

    def __post_init__(self) -> None:
        self._check_objective()
        _set(self, "lr", real(self.lr, "lr", low=0.0, low_open=True))
        _set(self, "steps", integer(self.steps, "steps", minimum=1))
        # Record times are float64 step numbers, exact up to 2^53.
        require(self.steps <= 2**53, "steps", "must be <= 2**53", self.steps)

    @property
    def t_max(self) -> float:
        return float(self.steps)


@dataclass(frozen=True, kw_only=True, slots=True)
class SGD(Objective):
    """Minibatch stochastic gradient descent: each step moves the parameters by ``lr``
    times the flow field of the loss on a batch of ``batch_size`` training samples.

    Batches (and label noise) are drawn in the core from a counter-based generator keyed
    by (seed, trajectory, step), so a run is the same bit for bit whatever the thread
    count or chunking; ``nf.sgd_batches`` returns the indices a step uses. Records are
    taken on the whole training set, without noise. Record times are step numbers.

    Parameters
    ----------
    lr : float
        Learning rate, > 0.
    steps : int
        Number of steps, 1 <= steps <= 2**32.
    batch_size : int
        Samples per step, >= 1 (<= the training samples without replacement).
    replace : bool
        Draw each batch with replacement (default: without, a fresh batch every step).
    label_noise : float
        Standard deviation of Gaussian noise added to the batch's targets, fresh at every
        step (label-noise SGD), >= 0. Square loss only.
    eta_u, eta_w, lambda_u, lambda_w, loss
        See ``Objective``.
    """

    lr: float = 0.1
    steps: int = 1000
    batch_size: int = 32
    replace: bool = False
    label_noise: float = 0.0

    def __post_init__(self) -> None:
        self._check_objective()
        _set(self, "lr", real(self.lr, "lr", low=0.0, low_open=True))
        _set(self, "steps", integer(self.steps, "steps", minimum=1))
        require(self.steps <= 2**32, "steps",
                "must be <= 2**32 (the generator's step counter)", self.steps)
        _set(self, "batch_size", integer(self.batch_size, "batch_size", minimum=1))
        _set(self, "replace", _flag(self.replace, "replace"))
        _set(self, "label_noise", real(self.label_noise, "label_noise", low=0.0))
        require(self.label_noise == 0 or self.loss == "square", "label_noise",
                f'must be 0 with loss="{self.loss}": noise on the targets is defined for the '
                "square loss only (labels of the logistic or softmax loss are not real "
                "values)", self.label_noise)

    @property
    def t_max(self) -> float:
        return float(self.steps)


Training = GradientFlow | GradientDescent | SGD


@dataclass(frozen=True, slots=True)
class Gaussian:
    """``u_i ~ N(0, s_u^2)``, ``W_ik ~ N(0, s_w^2/d)``, drawn in the core from a counter-based
    generator keyed by (seed, trajectory index).

    Parameters
    ----------
    s_u, s_w : float
        Standard deviations, >= 0.
    correlation : float in [-1, 1] or "copy"
        ``corr(u_i, W_ik)`` (rho0 of docs/theory.md §E.4). "copy" sets
        ``W_ik = s_w/(s_u sqrt d) u_i`` exactly, an init with ``u`` parallel to every
        column of ``W``. Both need one output.
    s_b : float
        Standard deviation of the first-layer biases, ``b_i ~ N(0, s_b^2)``, >= 0
        (networks with ``bias=True``; default 0: biases start at zero). They are drawn
        after U and W, which stay the draws of the same network without bias.
    """

    s_u: float = 1.0
    s_w: float = 1.0
    correlation: float | Literal["copy"] = 0.0
    s_b: float = 0.0

    def __post_init__(self) -> None:
        _set(self, "s_u", real(self.s_u, "s_u", low=0.0))
        _set(self, "s_w", real(self.s_w, "s_w", low=0.0))
        _set(self, "s_b", real(self.s_b, "s_b", low=0.0))
        if self.correlation == "copy":
            require(self.s_u > 0, "s_u", 'must be > 0 with correlation="copy"', self.s_u)
        else:
            _set(self, "correlation",
                 real(self.correlation, "correlation", low=-1.0, high=1.0))


@dataclass(frozen=True, slots=True, eq=False)
class Params:
    """Explicit parameters: ``u0`` (trajectories, width) or (trajectories, width, outputs),
    ``W0`` (trajectories, width, dim) and, for a network with a bias, ``b0``
    (trajectories, width) (default zeros).

    ``W0`` of shape (trajectories, width) is read as dim = 1; a single trajectory may be
    given as ``u0`` (width,), ``W0`` (width,) or (width, dim), ``b0`` (width,).
    """

    u0: Any
    W0: Any
    b0: Any = None

    def __post_init__(self) -> None:
        u = array(self.u0, "u0", ndim=(1, 2, 3))
        single = u.ndim == 1  # one trajectory: u0 (width,), W0 (width,) or (width, dim)
        if single:
            u = array(u.reshape(1, -1), "u0", ndim=2)
        n, m = u.shape[:2]
        require(n >= 1 and m >= 1 and u.size >= 1, "u0",
                "must have shape (trajectories >= 1, width >= 1[, outputs >= 1])", u)
        if u.ndim == 3 and u.shape[2] == 1:
            u = u.reshape(n, m)
        W = array(self.W0, "W0", ndim=(1, 2, 3))
        if single and W.ndim <= 2:
            W = W.reshape(1, W.shape[0], -1)
        elif W.ndim == 2:
            W = W.reshape(W.shape[0], W.shape[1], 1)
        require(W.ndim == 3 and W.shape[:2] == (n, m) and W.shape[2] >= 1, "W0",
                f"must have shape ({n}, {m}, dim) to match u0", W)
        W = np.ascontiguousarray(W)
        W.setflags(write=False)
        u = np.ascontiguousarray(u)
        u.setflags(write=False)
        _set(self, "u0", u)
        _set(self, "W0", W)
        if self.b0 is not None:
            b = array(self.b0, "b0", ndim=(1, 2)).reshape(-1)
            require(b.size == n * m, "b0", f"must have shape ({n}, {m}) to match u0", b)
            b = np.ascontiguousarray(b.reshape(n, m))
            b.setflags(write=False)
            _set(self, "b0", b)

    @property
    def trajectories(self) -> int:
        return int(self.u0.shape[0])

    @property
    def width(self) -> int:
        return int(self.u0.shape[1])

    @property
    def dim(self) -> int:
        return int(self.W0.shape[2])

    @property
    def outputs(self) -> int:
        return 1 if self.u0.ndim == 2 else int(self.u0.shape[2])


Init = Gaussian | Params

NtkRecord = Literal["auto", "scalar", "matrix", "metrics", "none"]
# Above this many rows (samples x outputs) "auto" skips the kernel metrics of a network
# with an activation or several outputs: they cost O(rows^2 width) per record time.
AUTO_METRICS_ROWS = 2048


@dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class Record:
    """What a run keeps, at which times.

    Parameters
    ----------
    times : int or array
        An int n: n times from 0 to t_max, evenly spaced (``spacing="linear"``) or 0 followed
        by n - 1 log-spaced times from ``t_max * 1e-4`` (``spacing="log"``). An array: any
        strictly increasing times in [0, t_max] (step numbers for gradient descent). The run
        ends at the last record time.
    ntk : {"auto", "scalar", "matrix", "metrics", "none"}
        The linear network's kernel ``kappa^2 (eta_u W^T W + eta_w ||u||^2 I)`` (dim, dim),
        which gives ``K(x, x') = x^T K x'``. "auto": a scalar when dim = 1, else the matrix.
        On a ``Dataset`` the kernel metrics of the training Gram matrix (``ntk_change``,
        ``kernel_distance``, ``kta``) come with it. For a network with an activation or
        several outputs only "auto", "metrics" or "none" apply: "metrics" computes them
        always, at O((samples outputs)^2 width) per record time; "auto" only while the
        Gram matrix has at most 2048 rows (samples x outputs), so that a large dataset is
        not slowed down by a record nobody asked for.
    params : {None, "final", "all"}
        Keep the parameters at the end, or at every record time (memory checked first).
    loss_below : float, optional
        Also record the first time each trajectory's loss falls to this level, located
        inside the step by cubic Hermite interpolation (the step number for descent).
    gram : {None, "train", "probe"}
        Keep the NTK Gram matrix at every record time, on the training inputs
        (samples, samples) or on ``probe`` (probes, probes). Needs a ``Dataset``; the size,
        trajectories x times x inputs^2 doubles, is checked against the memory budget.
    probe : array (probes, dim), optional
        Inputs of the probe Gram matrix; given exactly when ``gram="probe"``.
    linearized : bool
        Also train the linearised (kernel-regime) network from the same initialisation and
        record its loss, ``loss_lin``: exact, through the eigendecomposition of the
        initial training Gram matrix (docs/theory.md §0: df/dt = -(1/n) K_0 (f - y)); with
        ``SGD`` stepped on the run's own batches and noisy targets, so that batch noise is
        not counted as distance from the kernel regime (§I.3). Also its gap to the
        network, ``lin_gap``; with ``test``, also the twin's ``test_loss_lin``,
        ``test_error_lin`` and ``test_lin_gap``. Needs a ``Dataset``.
    test : Dataset, optional
        A held-out set with the training data's dim, evaluated at every record time; it
        never affects training. Records ``test_loss``, and ``test_error`` when its targets
        are all exactly +-1. Needs the samples: the run takes ``path="data"``.
    deltas : bool
        Also keep every per-neuron conserved quantity
        ``delta_i = eta_w u_i^2 - eta_u ||w_i||^2`` (docs/theory.md §E.5) at every record time,
        (trajectories, times, width) doubles, checked against the memory budget. Their
        summaries (``delta_mean``, ``delta_std``, ``delta_drift``) are always recorded when
        the parameters are integrated (not with ``method="reduced"``, which refuses this),
        unless ``delta_summaries=False``.
    delta_summaries : bool
        Record ``delta_mean``, ``delta_std`` and ``delta_drift`` (the default). They cost a
        pass over every trajectory's parameters at every record time: on a linear ensemble
        at width 1024 with 101 record times, about a fifth of a dopri5 run. False skips
        them (they are then None) when only the loss and the other records are wanted.
    """

    times: Any = 101
    spacing: Literal["linear", "log"] = "linear"
    ntk: NtkRecord = "auto"
    params: Literal["final", "all"] | None = None
    loss_below: float | None = None
    gram: Literal["train", "probe"] | None = None
    probe: Any = None
    linearized: bool = False
    test: Dataset | None = None
    deltas: bool = False
    delta_summaries: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.times, (int, np.integer)) and not isinstance(self.times, bool):
            _set(self, "times", integer(self.times, "times", minimum=1))
        else:
            t = array(self.times, "times", ndim=(0, 1)).reshape(-1)
            require(t.size >= 1, "times", "must not be empty", t)
            require(bool(np.all(t >= 0)), "times", "must be >= 0", t)
            require(bool(np.all(np.diff(t) > 0)), "times", "must be strictly increasing", t)
            t.setflags(write=False)
            _set(self, "times", t)
        require(self.spacing in ("linear", "log"), "spacing", 'must be "linear" or "log"',
                self.spacing)
        require(self.ntk in ("auto", "scalar", "matrix", "metrics", "none"), "ntk",
                'must be "auto", "scalar", "matrix", "metrics" or "none"', self.ntk)
        require(self.params in (None, "final", "all"), "params",
                'must be None, "final" or "all"', self.params)
        if self.loss_below is not None:
            _set(self, "loss_below", real(self.loss_below, "loss_below", low=0.0))
        require(self.gram in (None, "train", "probe"), "gram",
                'must be None, "train" or "probe"', self.gram)
        if self.gram == "probe":
            require(self.probe is not None, "probe", 'must be given with gram="probe"',
                    self.probe)
            P = array(self.probe, "probe", ndim=2)
            require(P.shape[0] >= 1 and P.shape[1] >= 1, "probe",
                    "must have shape (probes >= 1, dim >= 1)", P)
            _set(self, "probe", P)
        else:
            require(self.probe is None, "probe", 'is only used with gram="probe"',
                    self.probe)
        require(isinstance(self.linearized, (bool, np.bool_)), "linearized",
                "must be True or False", self.linearized)
        _set(self, "linearized", bool(self.linearized))
        require(self.test is None or isinstance(self.test, Dataset), "test",
                "must be a Dataset (the held-out X and y) or None", type(self.test).__name__)
        require(isinstance(self.deltas, (bool, np.bool_)), "deltas", "must be True or False",
                self.deltas)
        _set(self, "deltas", bool(self.deltas))
        require(isinstance(self.delta_summaries, (bool, np.bool_)), "delta_summaries",
                "must be True or False", self.delta_summaries)
        _set(self, "delta_summaries", bool(self.delta_summaries))

    def resolve_times(self, train: Training) -> NDArray[np.float64]:
        """The record times for this training run (validated against its horizon)."""
        discrete = not isinstance(train, GradientFlow)  # descent and SGD count steps
        t_max = train.t_max
        if isinstance(self.times, int):
            n = self.times
            if discrete and n > t_max + 1:  # every step is a record time
                return np.arange(t_max + 1.0)
            # The times alone can be an absurd request (Record(times=10**12) is 8 TB).
            _memory.check(8.0 * n, f"record.times={n}", "record fewer times")
            if self.spacing == "log" and n > 2:  # (geomspace of one point is its start)
                t = np.concatenate([[0.0], np.geomspace(t_max * 1e-4, t_max, n - 1)])
            else:
                t = np.linspace(0.0, t_max, n) if n > 1 else np.array([t_max])
            if discrete:
                t = np.unique(np.round(t))
        else:
            t = np.asarray(self.times, dtype=np.float64)
            if discrete:
                require(bool(np.all(t == np.round(t))), "times",
                        f"must be whole step numbers for {type(train).__name__}", t)
        require(float(t[-1]) <= t_max, "times",
                f"must lie in [0, t_max = {t_max:g}] (last record {float(t[-1]):g})", t)
        out = np.ascontiguousarray(t, dtype=np.float64)
        return out
