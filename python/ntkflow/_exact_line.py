"""Closed-form gradient flow of model A (docs/theory.md §A): a linear two-layer network
on one-dimensional data, any width, evaluated for a whole ensemble at once.

The flow ``du/dt = eta_u r w``, ``dw/dt = eta_w r u`` with
``r = Sigma kappa (beta* - kappa u.w)`` is a hyperbolic rotation of the initial pair
(§A.4). Every observable follows from the Riccati solution for
``P = |u/sqrt(eta_u) + w/sqrt(eta_w)|^2`` and ``Q = |u/sqrt(eta_u) - w/sqrt(eta_w)|^2``,
evaluated with the cancellation-free recipe of §A.6 so that tiny inits, ``C0 = 0``,
``t = inf`` and the degenerate cases (``Pi = 0``, ``Gamma = 0``) keep full relative
accuracy.

All per-trajectory work is vectorised over the ensemble; mixed ensembles (some
trajectories degenerate, some not) are handled with masks. Intermediate ``inf``/``nan``
of discarded branches are silenced with ``np.errstate``; no warning escapes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._validate import show

__all__ = ["LineParams", "LinePath", "LineSolution", "line_solution"]

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]

_EPS = float(np.finfo(np.float64).eps)
# §A.6 step 1: a Gram determinant below 64 eps^2 A0 B0 (|sin theta| < 8 eps) is rounding
# noise of nearly parallel vectors; it is set to exactly 0 (u0 || w0).
_G_FLOOR = 64.0 * _EPS**2
# Smallest number with full 53-bit precision (2^52 times the smallest normal).
_FULL = 2.0**52 * float(np.finfo(np.float64).tiny)
# Below this |lambda s| the vectors are rebuilt with cosh/sinh (accurate sinh for small
# angles); above it with the v+/v- form, whose coefficients then differ by a factor
# > e^2, so their difference loses at most ~1.3 eps.
_SMALL_ANGLE = 1.0
# Elements per block of (trajectories, times) evaluated at once by LineSolution.at.
_BLOCK = 1 << 16


def _real(value: float, name: str, rule: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be {rule}; got {show(value)}") from None


def _positive(value: float, name: str) -> float:
    out = _real(value, name, "a finite number > 0")
    if not (math.isfinite(out) and out > 0.0):
        raise ValueError(f"{name} must be a finite number > 0; got {show(value)}")
    return out


def _finite(value: float, name: str) -> float:
    out = _real(value, name, "a finite number")
    if not math.isfinite(out):
        raise ValueError(f"{name} must be a finite number; got {show(value)}")
    return out


def _vectors(value: ArrayLike, name: str) -> FloatArray:
    try:
        out = np.array(value, dtype=np.float64, order="C", copy=True)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be an array of real numbers; got {show(value)}"
        ) from None
    if out.ndim == 1:
        out = out[None, :]
    if out.ndim != 2:
        raise ValueError(
            f"{name} must have shape (width,) or (trajectories, width); "
            f"got shape {out.shape}"
        )
    if out.shape[1] < 1:
        raise ValueError(f"{name} must have width >= 1; got shape {out.shape}")
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{name} must be finite; got NaN or infinite entries")
    out.setflags(write=False)
    return out


def _times(times: ArrayLike) -> FloatArray:
    try:
        t = np.array(times, dtype=np.float64, order="C", copy=True)
    except (TypeError, ValueError):
        raise ValueError(
            f"times must be an array of real numbers; got {show(times)}"
        ) from None
    if t.ndim == 0:
        t = t.reshape(1)
    if t.ndim != 1:
        raise ValueError(f"times must be one-dimensional; got shape {t.shape}")
    bad = np.isnan(t) | (t < 0.0)
    if np.any(bad):
        raise ValueError(
            f"times must be >= 0 (np.inf allowed); got {t[bad][0]!r} among "
            f"{int(np.count_nonzero(bad))} bad entries"
        )
    t.setflags(write=False)
    return t


def _frozen(a: FloatArray) -> FloatArray:
    a.setflags(write=False)
    return a


def _split(a: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Dekker's split a = hi + lo, each half with <= 26 significant bits."""
    c = 134217729.0 * a  # 2^27 + 1
    hi = c - (c - a)
    return hi, a - hi


def _gram_det(
    u0: FloatArray, w0: FloatArray, A0: FloatArray, C0: FloatArray
) -> FloatArray:
    """``G = A0 |w0 - (C0/A0) u0|^2`` (§A.6 step 1), shape (trajectories,).

    The projection residual avoids the cancellation of ``A0 B0 - C0^2`` (relative error
    eps/sin^2 theta). Computed plainly it still loses eps/sin theta, because
    ``w0 - alpha u0`` cancels; here the products ``alpha u0`` are exact (Dekker's
    two-product), and a second projection removes the component along ``u0`` left by
    the rounding of ``alpha``, so G keeps a few ulps for any angle above the
    ``8 eps`` floor. Width 1 gives exactly 0.
    """
    if u0.shape[1] == 1:
        return np.zeros(u0.shape[0])
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        alpha = np.where(A0 > 0.0, C0 / A0, 0.0)[:, None]
        prod = alpha * u0
        a_hi, a_lo = _split(np.broadcast_to(alpha, u0.shape))
        u_hi, u_lo = _split(u0)
        err = ((a_hi * u_hi - prod) + a_hi * u_lo + a_lo * u_hi) + a_lo * u_lo
        resid = (w0 - prod) - err
        beta = np.where(A0 > 0.0, np.einsum("ij,ij->i", resid, u0) / A0, 0.0)
        resid = resid - beta[:, None] * u0
        G: FloatArray = A0 * np.einsum("ij,ij->i", resid, resid)
        # Dekker's split overflows above ~1e300: plain projection there.
        plain = w0 - prod
        G_plain: FloatArray = A0 * np.einsum("ij,ij->i", plain, plain)
    return np.where(np.isfinite(G), G, G_plain)


def _log_ratio(
    z_inf: FloatArray,
    z_other_inf: FloatArray,
    other0: FloatArray,
    E: FloatArray,
    Eb: FloatArray,
    gt: FloatArray,
    den: FloatArray,
) -> FloatArray:
    """``ln(P/P0)`` (or, with roles swapped, ``ln(Q/Q0)``) without underflow.

    ``P/P0 = (P_inf + Q_inf E + Q0 Eb) / den_P`` (using ``Pi = P0 Q0``). In the
    unreachable case ``P_inf = Q0 = 0`` the ratio is ``Q_inf E / den_P``, which
    underflows long before ``s`` becomes large (``s = -838`` is ``P/P0 = e^-1676``);
    there the logarithm is taken term by term: ``ln(Q_inf) - Gamma t``.
    """
    ratio = (z_inf + z_other_inf * E + other0 * Eb) / den
    by_terms = np.logaddexp(np.log(z_inf + other0 * Eb), np.log(z_other_inf) - gt)
    tiny = float(np.finfo(np.float64).tiny)
    return np.where(ratio > tiny, np.log(ratio), by_terms - np.log(den))


@dataclass(frozen=True, kw_only=True, slots=True)
class LinePath:
    """Observables of model A along a time grid (docs/theory.md §A).

    Every array except ``times`` has shape (trajectories, times).

    Attributes
    ----------
    times : ndarray, shape (times,)
        The evaluation times, >= 0; ``inf`` is the exact limit.
    C : ndarray
        ``u . w``; the network is ``f(x) = kappa C x``.
    norm_u2, norm_w2 : ndarray
        ``A = |u|^2`` and ``B = |w|^2``.
    ntk : ndarray
        Learning-rate-weighted NTK scalar ``K = kappa^2 (eta_u B + eta_w A)`` (the
        kernel per unit ``z z'``).
    ntk_plain : ndarray
        Plain NTK scalar ``kappa^2 (A + B)``.
    cos : ndarray
        ``cos theta = C / sqrt(C^2 + G)`` in [-1, 1]; ``sign(C)`` when ``G = 0``
        (width 1 or ``u0 || w0``), which is 0 at an instant where ``C = 0`` (direction
        undefined there).
    alignment : ndarray
        Layer alignment in [0, 1]: ``|cos theta|`` when ``G > 0`` and 1.0 when ``G = 0``
        (width 1 or parallel layers, docs/theory.md §E.1), including an instant where
        ``u`` or ``w`` passes through 0.
    residual : ndarray
        Slope error ``e = kappa C - beta*``; it never changes sign (§A.5).
    loss : ndarray
        ``L* + Sigma e^2 / 2``.
    angle : ndarray
        Hyperbolic angle ``s(t) = int_0^t r dt'`` (§A.4); ``-inf``/``inf`` at
        ``t = inf`` when ``v+`` or ``v-`` collapses to 0 (unreachable target,
        ``Gamma = 0``).
    """

    times: FloatArray
    C: FloatArray
    norm_u2: FloatArray
    norm_w2: FloatArray
    ntk: FloatArray
    ntk_plain: FloatArray
    cos: FloatArray
    alignment: FloatArray
    residual: FloatArray
    loss: FloatArray
    angle: FloatArray


class LineParams(NamedTuple):
    """Weights of model A at given times.

    Attributes
    ----------
    u, w : ndarray, shape (trajectories, times, width)
        Output weights and (projected) input weights.
    """

    u: FloatArray
    w: FloatArray


class _Core(NamedTuple):
    """Internal per-(trajectory, time) quantities, shape (trajectories, times)."""

    P: FloatArray
    Q: FloatArray
    C: FloatArray
    e: FloatArray
    s: FloatArray


class LineSolution:
    """Exact gradient flow of an ensemble of model-A networks (docs/theory.md §A.4-A.6).

    Build it with :func:`line_solution`; the constructor assumes validated input.
    Read-only: the parameters (``kappa``, ``eta_u``, ``eta_w``, ``sigma``, ``beta``,
    ``loss_min``), the ensemble size (``trajectories``, ``width``) and, with shape
    (trajectories,), ``initial_C``, the invariants ``delta``, ``gram_det``,
    ``kernel_scale``, the rate ``rate``, ``escape_time`` and the mask ``reachable``.
    Evaluate with :meth:`at`, :meth:`limit` and :meth:`params_at`.
    """

    __slots__ = (
        "_A0",
        "_B0",
        "_C0",
        "_G",
        "_Gamma",
        "_P0",
        "_P_inf",
        "_Pi",
        "_Q0",
        "_Q_inf",
        "_X",
        "_beta",
        "_c",
        "_e0",
        "_eta_u",
        "_eta_w",
        "_kappa",
        "_lam",
        "_loss_min",
        "_sigma",
        "_u0",
        "_w0",
    )

    def __init__(
        self,
        u0: FloatArray,
        w0: FloatArray,
        *,
        kappa: float,
        eta_u: float,
        eta_w: float,
        sigma: float,
        beta: float,
        loss_min: float,
    ) -> None:
        self._kappa = kappa
        self._eta_u = eta_u
        self._eta_w = eta_w
        self._sigma = sigma
        self._beta = beta
        self._loss_min = loss_min
        self._u0 = u0
        self._w0 = w0
        lam = math.sqrt(eta_u * eta_w)
        self._lam = lam
        # Step 1: Gram scalars; P0, Q0 element-wise from the rescaled vectors (never
        # from A0, B0, C0, which would cancel when u0 is nearly parallel to w0).
        A0 = np.einsum("ij,ij->i", u0, u0)
        B0 = np.einsum("ij,ij->i", w0, w0)
        C0 = np.einsum("ij,ij->i", u0, w0)
        ut = u0 / math.sqrt(eta_u)
        wt = w0 / math.sqrt(eta_w)
        P0 = np.einsum("ij,ij->i", ut + wt, ut + wt)
        Q0 = np.einsum("ij,ij->i", ut - wt, ut - wt)
        G = _gram_det(u0, w0, A0, C0)
        G = np.where(G <= _G_FLOOR * A0 * B0, 0.0, G)
        X = A0 / eta_u - B0 / eta_w
        Pi = P0 * Q0
        # Step 2: constants of the Riccati equation.
        c = sigma * kappa**2 * lam**2 / 2.0
        omega = 2.0 * lam * sigma * kappa * beta
        sqrt_pi = np.sqrt(P0) * np.sqrt(Q0)
        Gamma = np.hypot(omega, 2.0 * c * sqrt_pi)
        # Step 3: roots without cancellation (the small one from P_inf Q_inf = Pi).
        with np.errstate(divide="ignore", invalid="ignore"):
            if omega >= 0.0:
                big = (omega + Gamma) / (2.0 * c)
                small = sqrt_pi * (2.0 * c * sqrt_pi / (omega + Gamma))
                P_inf, Q_inf = big, small
            else:
                big = (Gamma - omega) / (2.0 * c)
                small = sqrt_pi * (2.0 * c * sqrt_pi / (Gamma - omega))
                P_inf, Q_inf = small, big
        # Gamma = 0 (beta* = 0 and Pi = 0): both roots are 0 (0/0 above).
        degenerate = Gamma == 0.0
        P_inf = np.where(degenerate, 0.0, P_inf)
        Q_inf = np.where(degenerate, 0.0, Q_inf)
        self._A0 = _frozen(A0)
        self._B0 = _frozen(B0)
        self._C0 = _frozen(C0)
        self._P0 = _frozen(P0)
        self._Q0 = _frozen(Q0)
        self._G = _frozen(G)
        self._X = _frozen(X)
        self._Pi = _frozen(Pi)
        self._c = c
        self._Gamma = _frozen(Gamma)
        self._P_inf = _frozen(P_inf)
        self._Q_inf = _frozen(Q_inf)
        self._e0 = _frozen(kappa * C0 - beta)

    # ------------------------------------------------------------------ parameters
    @property
    def kappa(self) -> float:
        """Output scale kappa > 0."""
        return self._kappa

    @property
    def eta_u(self) -> float:
        """Learning rate of u, > 0."""
        return self._eta_u

    @property
    def eta_w(self) -> float:
        """Learning rate of w, > 0."""
        return self._eta_w

    @property
    def sigma(self) -> float:
        """Second moment Sigma of the data, > 0."""
        return self._sigma

    @property
    def beta(self) -> float:
        """Target slope beta*."""
        return self._beta

    @property
    def loss_min(self) -> float:
        """Minimum loss L*."""
        return self._loss_min

    # ------------------------------------------------------------------ invariants
    @property
    def trajectories(self) -> int:
        """Number of trajectories in the ensemble."""
        return int(self._u0.shape[0])

    @property
    def width(self) -> int:
        """Width m of every network."""
        return int(self._u0.shape[1])

    @property
    def initial_C(self) -> FloatArray:
        """``C0 = u0 . w0``, shape (trajectories,)."""
        return self._C0

    @property
    def delta(self) -> FloatArray:
        """Conserved layer imbalance ``Delta = eta_w A - eta_u B`` (§A.3)."""
        return _frozen(self.eta_w * self._A0 - self.eta_u * self._B0)

    @property
    def gram_det(self) -> FloatArray:
        """Conserved Gram determinant ``G = A B - C^2 >= 0``; exactly 0 for width 1 and
        when ``|sin angle(u0, w0)| < 8 eps``."""
        return self._G

    @property
    def kernel_scale(self) -> FloatArray:
        """``c_D = sqrt(Delta^2 / (4 lambda^2) + G)``; ``K = 2 kappa^2 lambda
        sqrt(c_D^2 + C^2)`` at all times (units of C)."""
        return _frozen(np.hypot(self.delta / (2.0 * self._lam), np.sqrt(self._G)))

    @property
    def rate(self) -> FloatArray:
        """Relaxation rate ``Gamma = Sigma K_inf`` (§A.4); 0 in the algebraic case
        ``beta* = 0``, ``Pi = 0``."""
        return self._Gamma

    @property
    def reachable(self) -> BoolArray:
        """Boolean, shape (trajectories,): False where the target cannot be reached
        (``Q0 = 0`` with ``beta* < 0``, ``P0 = 0`` with ``beta* > 0``; §A.5), so the
        network converges to the saddle ``C = 0``."""
        stuck = ((self._Q0 == 0.0) & (self.beta < 0.0)) | (
            (self._P0 == 0.0) & (self.beta > 0.0)
        )
        return np.asarray(~stuck)

    @property
    def escape_time(self) -> FloatArray:
        """Escape time ``[ln(1 + P_inf/P0) + ln(1 + Q_inf/Q0)] / Gamma`` (§A.5), shape
        (trajectories,).

        A term whose root is 0 contributes 0. ``inf`` where the target is unreachable
        (a growing root with zero initial value) or ``Gamma = 0`` (algebraic decay).
        """
        with np.errstate(divide="ignore", invalid="ignore"):
            tp = np.where(
                self._P0 > 0.0,
                np.log1p(self._P_inf / self._P0),
                np.where(self._P_inf > 0.0, np.inf, 0.0),
            )
            tq = np.where(
                self._Q0 > 0.0,
                np.log1p(self._Q_inf / self._Q0),
                np.where(self._Q_inf > 0.0, np.inf, 0.0),
            )
            out = np.where(self._Gamma > 0.0, (tp + tq) / self._Gamma, np.inf)
        return _frozen(np.asarray(out, dtype=np.float64))

    # ------------------------------------------------------------------ evaluation
    def _core(self, t: FloatArray) -> _Core:
        """Steps 4-7 and 10 of §A.6: P, Q, C, e and s at times ``t``."""
        kappa, lam, beta, c = self.kappa, self._lam, self.beta, self._c
        P0 = self._P0[:, None]
        Q0 = self._Q0[:, None]
        Pi = self._Pi[:, None]
        Pinf = self._P_inf[:, None]
        Qinf = self._Q_inf[:, None]
        e0 = self._e0[:, None]
        Gamma = self._Gamma[:, None]
        deg = Gamma == 0.0
        tt = t[None, :]
        pos_P = P0 > 0.0
        pos_Q = Q0 > 0.0
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            # Step 4 (0 * inf = nan for Gamma = 0, t = inf is masked out here).
            gt = np.where(deg, 0.0, Gamma * tt)
            E = np.exp(-gt)
            Eb = -np.expm1(-gt)
            # Step 5: Riccati solution, all terms non-negative.
            den_P = P0 * Eb + Qinf + Pinf * E
            den_Q = Q0 * Eb + Pinf + Qinf * E
            P = (P0 * (Pinf + Qinf * E) + Pi * Eb) / den_P
            Q = (Q0 * (Qinf + Pinf * E) + Pi * Eb) / den_Q
            # Gamma = 0: dP/dt = -c P^2 (algebraic decay).
            P = np.where(deg, P0 / (1.0 + c * P0 * tt), P)
            Q = np.where(deg, Q0 / (1.0 + c * Q0 * tt), Q)
            P = np.where(pos_P, P, 0.0)
            Q = np.where(pos_Q, Q, 0.0)
            # Step 6: residual from the product form with the larger of P0, Q0.
            use_P = P0 >= Q0
            e_P = e0 * E * (P0 / P) * ((P + Qinf) / (P0 + Qinf)) ** 2
            e_Q = e0 * E * (Q0 / Q) * ((Q + Pinf) / (Q0 + Pinf)) ** 2
            e = np.where(use_P, e_P, e_Q)
            PQmax = np.maximum(P0, Q0)
            e = np.where(deg, e0 / (1.0 + c * PQmax * tt), e)
            # Fallback: direct formula when the product form is undefined (P0 = Q0 = 0,
            # inf * 0 after underflow) or when the direct one cannot cancel (|e| at
            # least half its rounding scale: always so in the unreachable case, where
            # e -> -beta* and the product form meets subnormal E).
            e_dir = kappa * lam * (P - Q) / 4.0 - beta
            scale_dir = kappa * lam * (P + Q) / 4.0 + abs(beta)
            direct = (
                (PQmax == 0.0) | ~np.isfinite(e) | (np.abs(e_dir) >= 0.5 * scale_dir)
            )
            e = np.where(direct, e_dir, e)
            # Step 7: three candidates for C, take the one with the smallest rounding
            # scale.
            fP = np.where(pos_P, P0 / den_P, 0.0)
            fQ = np.where(pos_Q, Q0 / den_Q, 0.0)
            dC = -(e0 / kappa) * Eb * (fP + fQ)
            C1 = self._C0[:, None] + dC
            s1 = np.abs(self._C0[:, None]) + np.abs(dC)
            s1 = np.where(np.isfinite(s1) & ~deg, s1, np.inf)
            C2 = (beta + e) / kappa
            s2 = (abs(beta) + np.abs(e)) / kappa
            s2 = np.where(np.isfinite(s2), s2, np.inf)
            C3 = lam * (P - Q) / 4.0
            s3 = lam * (P + Q) / 4.0
            C = np.where(s2 < s1, C2, C1)
            C = np.where(s3 < np.minimum(s1, s2), C3, C)
            # Step 10: hyperbolic angle s, from P/P0 - 1 (or Q/Q0 - 1 if P0 = 0).
            x = -4.0 * e0 * Eb / (kappa * lam * den_P)
            log_P = _log_ratio(Pinf, Qinf, Q0, E, Eb, gt, den_P)
            s_P = np.where(x > -0.5, np.log1p(x), log_P) / (2.0 * lam)
            y = 4.0 * e0 * Eb / (kappa * lam * den_Q)
            log_Q = _log_ratio(Qinf, Pinf, P0, E, Eb, gt, den_Q)
            s_Q = -np.where(y > -0.5, np.log1p(y), log_Q) / (2.0 * lam)
            # Gamma = 0: P/P0 = 1/(1 + c P0 t) = e^{2 lambda s}.
            s_P = np.where(deg, -np.log1p(c * P0 * tt) / (2.0 * lam), s_P)
            s_Q = np.where(deg, np.log1p(c * Q0 * tt) / (2.0 * lam), s_Q)
            # u0 = w0 = 0: nothing moves, r = Sigma kappa beta* stays constant.
            r0 = self.sigma * kappa * beta
            s_0 = np.where(r0 == 0.0, 0.0, r0 * tt)
            s = np.where(pos_P, s_P, np.where(pos_Q, s_Q, s_0))
        return _Core(P=P, Q=Q, C=C, e=e, s=s)

    def _norms(self, core: _Core) -> tuple[FloatArray, FloatArray]:
        """Step 8 of §A.6: A = |u|^2 and B = |w|^2 as sums of non-negative terms."""
        lam = self._lam
        G = self._G[:, None]
        X = self._X[:, None]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            # sigma+ sigma- = 4G/lambda^2; the larger is sqrt(Pi) + |X|, the smaller
            # follows from the product (no cancellation in sqrt(Pi) - |X|).
            sqrt_pi = (np.sqrt(self._P0) * np.sqrt(self._Q0))[:, None]
            s_big = sqrt_pi + np.abs(X)
            s_small = np.where(s_big > 0.0, (4.0 * G / lam**2) / s_big, 0.0)
            s_plus = np.where(X >= 0.0, s_big, s_small)
            s_minus = np.where(X >= 0.0, s_small, s_big)
            # d = sqrt(P) - sqrt(Q) = 4C / (lambda (sqrt(P) + sqrt(Q))), so that
            # P + Q = d^2 + 2 sqrt(Pi).
            root_sum = np.sqrt(core.P) + np.sqrt(core.Q)
            d = np.where(root_sum > 0.0, 4.0 * core.C / (lam * root_sum), 0.0)
            d2 = d * d
            A = self.eta_u * (d2 + 2.0 * s_plus) / 4.0
            B = self.eta_w * (d2 + 2.0 * s_minus) / 4.0
        return A, B

    def at(self, times: ArrayLike) -> LinePath:
        """Evaluate every observable at the given times.

        Parameters
        ----------
        times : array_like, shape (times,)
            Times >= 0, in any order; ``np.inf`` gives the exact limit. A scalar is one
            time.

        Returns
        -------
        LinePath
            Arrays of shape (trajectories, times).
        """
        t = _times(times)
        names = [f for f in LinePath.__dataclass_fields__ if f != "times"]
        out = {name: np.empty((self.trajectories, t.size)) for name in names}
        # Blocks of times keep the ~30 temporaries of the recipe cache-sized instead of
        # (trajectories, times) each.
        step = max(1, _BLOCK // max(1, self.trajectories))
        for j in range(0, t.size, step):
            block = self._observables(t[j : j + step])
            for name in names:
                out[name][:, j : j + step] = block[name]
        return LinePath(times=t, **{name: _frozen(a) for name, a in out.items()})

    def _observables(self, t: FloatArray) -> dict[str, FloatArray]:
        """Steps 4-10 of §A.6 at times ``t``: the fields of LinePath but ``times``."""
        core = self._core(t)
        P, Q, C, e = core.P, core.Q, core.C, core.e
        kappa, lam = self.kappa, self._lam
        G = self._G[:, None]
        A, B = self._norms(core)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            # Step 9.
            K = kappa**2 * lam**2 * (P + Q) / 2.0
            parallel = G == 0.0
            cos = np.where(parallel, np.sign(C), C / np.hypot(C, np.sqrt(G)))
            return {
                "C": C,
                "norm_u2": A,
                "norm_w2": B,
                "ntk": K,
                "ntk_plain": kappa**2 * (A + B),
                "cos": cos,
                "alignment": np.where(parallel, 1.0, np.abs(cos)),
                "residual": e,
                "loss": self.loss_min + self.sigma * e * e / 2.0,
                "angle": core.s,
            }

    def limit(self) -> LinePath:
        """Observables at ``t = inf``: ``.at(np.array([np.inf]))``."""
        return self.at(np.array([np.inf]))

    def params_at(self, times: ArrayLike) -> LineParams:
        """The weight vectors at the given times (§A.4, §A.6 step 10).

        Parameters
        ----------
        times : array_like, shape (times,)
            Times >= 0; ``np.inf`` allowed.

        Returns
        -------
        LineParams
            ``u`` and ``w`` of shape (trajectories, times, width).
        """
        t = _times(times)
        core = self._core(t)
        lam, eta_u, eta_w = self._lam, self.eta_u, self.eta_w
        u0, w0 = self._u0, self._w0
        n_traj, width = u0.shape
        u = np.empty((n_traj, t.size, width))
        w = np.empty((n_traj, t.size, width))
        ls = lam * core.s
        small = np.abs(ls) <= _SMALL_ANGLE
        # Small angles: u = cosh u0 + sqrt(eta_u/eta_w) sinh w0 (sinh keeps full
        # relative accuracy where a difference of the v+/v- coefficients would not).
        ti, ni = np.nonzero(small)
        ch = np.cosh(ls[ti, ni])[:, None]
        sh = np.sinh(ls[ti, ni])[:, None]
        u[ti, ni] = ch * u0[ti] + math.sqrt(eta_u / eta_w) * sh * w0[ti]
        w[ti, ni] = math.sqrt(eta_w / eta_u) * sh * u0[ti] + ch * w0[ti]
        # Large (or infinite) angles: v+(t) = sqrt(P/P0) v+(0), v-(t) = sqrt(Q/Q0)
        # v-(0); cosh/sinh would overflow, and a v+/- that is identically 0 stays 0.
        ti, ni = np.nonzero(~small)
        P0 = self._P0[ti]
        Q0 = self._Q0[ti]
        ls_big = ls[ti, ni]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            # sqrt(P/P0) = e^{lambda s} to an ulp while P is a full-precision normal
            # number; below that (the unreachable case's tail) from the angle, which
            # stays accurate when P underflows.
            P = core.P[ti, ni]
            Q = core.Q[ti, ni]
            a_p = np.where(P >= _FULL, np.sqrt(P) / np.sqrt(P0), np.exp(ls_big))
            a_m = np.where(Q >= _FULL, np.sqrt(Q) / np.sqrt(Q0), np.exp(-ls_big))
            a_p = np.where(P0 > 0.0, a_p, 0.0)
            a_m = np.where(Q0 > 0.0, a_m, 0.0)
        ut0 = u0[ti] / math.sqrt(eta_u)
        wt0 = w0[ti] / math.sqrt(eta_w)
        vp = a_p[:, None] * (ut0 + wt0)
        vm = a_m[:, None] * (ut0 - wt0)
        u[ti, ni] = (math.sqrt(eta_u) / 2.0) * (vp + vm)
        w[ti, ni] = (math.sqrt(eta_w) / 2.0) * (vp - vm)
        # Parallel layers (G = 0: width 1, u0 || w0): a layer that shrinks towards 0
        # (beta* = 0) is a cancelling difference of O(1) terms above. It is rebuilt from
        # the dominant one (in the rescaled norms, which bound the rounding above) and
        # the accurate scalars: w = (C/A) u or u = (C/B) w.
        # (Only where the dominant norm is a full-precision normal number: in an
        # underflowing tail the ratio C/A would be noise; the rotation is kept there.)
        parallel = self._G == 0.0
        if np.any(parallel):
            A, B = self._norms(core)
            u_major = A / eta_u >= B / eta_w
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio_w = core.C / A
                ratio_u = core.C / B
            ti, ni = np.nonzero(parallel[:, None] & u_major & (A >= _FULL))
            w[ti, ni] = ratio_w[ti, ni, None] * u[ti, ni]
            ti, ni = np.nonzero(parallel[:, None] & ~u_major & (B >= _FULL))
            u[ti, ni] = ratio_u[ti, ni, None] * w[ti, ni]
        return LineParams(u=_frozen(u), w=_frozen(w))


def line_solution(
    u0: ArrayLike,
    w0: ArrayLike,
    *,
    kappa: float,
    eta_u: float,
    eta_w: float,
    sigma: float,
    beta: float,
    loss_min: float = 0.0,
) -> LineSolution:
    """Closed-form gradient flow of linear two-layer networks on one-dimensional data.

    Model A of docs/theory.md §A: ``f(x) = kappa (u . w) x`` with loss
    ``L = L* + (Sigma / 2) (kappa u.w - beta*)^2``, flow ``du/dt = eta_u r w``,
    ``dw/dt = eta_w r u``, ``r = Sigma kappa (beta* - kappa u.w)``.

    Parameters
    ----------
    u0, w0 : array_like, shape (trajectories, width) or (width,)
        Initial output and (projected) input weights; a 1-D pair is one trajectory.
        Finite, same shape, width >= 1.
    kappa : float
        Output scale, > 0.
    eta_u, eta_w : float
        Learning rates of u and w, > 0.
    sigma : float
        Second moment of the data ``Sigma = mean(z^2)``, > 0.
    beta : float
        Target slope ``beta* = b / Sigma``, any sign or 0.
    loss_min : float
        Minimum loss ``L*``, finite (default 0).

    Returns
    -------
    LineSolution
        ``.at(times)`` gives the observables of shape (trajectories, times),
        ``.params_at(times)`` the vectors, ``.limit()`` the values at ``t = inf``.

    Raises
    ------
    ValueError
        Naming the offending parameter.

    Notes
    -----
    Accurate to a few ulps relative for init scales down to ~1e-75 (``P0``, ``Q0``,
    ``P0 Q0`` must not underflow) and any time including ``inf``.
    """
    kappa = _positive(kappa, "kappa")
    eta_u = _positive(eta_u, "eta_u")
    eta_w = _positive(eta_w, "eta_w")
    sigma = _positive(sigma, "sigma")
    beta = _finite(beta, "beta")
    loss_min = _finite(loss_min, "loss_min")
    u = _vectors(u0, "u0")
    w = _vectors(w0, "w0")
    if u.shape != w.shape:
        raise ValueError(
            f"w0 must have the same shape as u0 {u.shape}; got shape {w.shape}"
        )
    return LineSolution(
        u,
        w,
        kappa=kappa,
        eta_u=eta_u,
        eta_w=eta_w,
        sigma=sigma,
        beta=beta,
        loss_min=loss_min,
    )
