"""Kernel-side exact results: the infinite-width NTK (docs/theory.md §C.2) and the
linearised (kernel-regime) training trajectory. Public through ``ntkflow.exact``."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from ._validate import array, real, require
from .specs import ACTIVATIONS

Array = NDArray[np.float64]

# The 2-D quadrature of the tanh kernel: step (at unit variance) and range in units of the
# standard normal, and the largest (pairs x nodes x nodes) block evaluated at once (32 MB).
_STEP = 0.3
_Z_MAX = 9.0
_CHUNK_VALUES = 1 << 22


def _inputs(value: Any, name: str) -> Array:
    X = array(value, name, ndim=(1, 2))
    if X.ndim == 1:
        X = array(X.reshape(-1, 1), name, ndim=2)
    require(X.shape[0] >= 1 and X.shape[1] >= 1, name,
            "must have shape (inputs >= 1, dim >= 1)", X)
    return X


def _angles(X: Array, X2: Array) -> Array:
    """Angle between every x in X and x' in X2, by Kahan's 2 atan2(|a - b|, |a + b|) on unit
    vectors: accurate to rounding for (anti)parallel inputs, where arccos(cos) loses half
    the digits. 0 where an input is zero (unused there)."""
    def unit(A: Array) -> Array:
        norm = np.linalg.norm(A, axis=1, keepdims=True)
        out: Array = A / np.where(norm > 0, norm, 1.0)
        return out

    A, B = unit(X), unit(X2)
    theta = np.empty((X.shape[0], X2.shape[0]))
    rows = max(1, (1 << 22) // max(1, X2.shape[0] * X.shape[1]))  # <= 32 MB of differences
    for r0 in range(0, X.shape[0], rows):
        a = A[r0:r0 + rows, None, :]
        minus = np.linalg.norm(a - B[None], axis=2)
        plus = np.linalg.norm(a + B[None], axis=2)
        theta[r0:r0 + rows] = 2.0 * np.arctan2(minus, plus)
    return theta


def _gaussian_pairs(
    act: Callable[[Array], Array],
    dact: Callable[[Array], Array],
    S11: Array,
    S22: Array,
    S12: Array,
) -> tuple[Array, Array]:
    """E[act(h) act(h')] and E[act'(h) act'(h')] for (h, h') ~ N(0, [[S11, S12], [S12, S22]])
    (flat arrays of pairs), by a 2-D product trapezoidal rule on the Cholesky factor,
    written out so that singular covariances ((anti)parallel or zero inputs) need no special
    case: h = L11 z1, h' = L21 z1 + L22 z2, z ~ N(0, I), z in [-9, 9]^2.

    Why not Gauss-Hermite: tanh has poles at h = +-i pi/2, i.e. at distance
    pi / (2 sqrt(S)) from the real z axis, and a fixed 60-node Gauss-Hermite rule degrades
    quickly as S grows (measured relative error of E[tanh' tanh'] against a converged
    reference: 2e-7 at S = 1, 5e-5 at S = 2, 8e-3 at S = 5, 0.3 at S = 20). The trapezoidal
    rule converges like exp(-2 pi d / step) for an integrand analytic in the strip
    |Im z| < d; with step 0.3 / max(1, sqrt(S11), sqrt(S22)) that is exp(-pi^2 / 0.3)
    ~ 5e-15 for tanh at any S, at the cost of 61 x 61 nodes for S <= 1 and ~60 sqrt(S) per
    axis above. The truncation at |z| = 9 drops a Gaussian mass of 2e-19.
    """
    e_aa = np.empty(S11.shape)
    e_dd = np.empty(S11.shape)
    L11 = np.sqrt(np.maximum(S11, 0.0))
    L21 = np.where(L11 > 0, S12 / np.where(L11 > 0, L11, 1.0), 0.0)
    L22 = np.sqrt(np.maximum(S22 - L21 * L21, 0.0))
    spread = np.sqrt(np.maximum(np.maximum(S11, S22), 1.0))
    # Nodes per half axis, rounded up to a multiple of 10 so that pairs share rules.
    half = (np.ceil(_Z_MAX * spread / (_STEP * 10)) * 10).astype(np.int64)
    for h_nodes in np.unique(half):
        idx = np.nonzero(half == h_nodes)[0]
        z = np.linspace(-_Z_MAX, _Z_MAX, 2 * int(h_nodes) + 1)
        w = (z[1] - z[0]) * np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
        chunk = max(1, _CHUNK_VALUES // z.size**2)
        for c0 in range(0, idx.size, chunk):
            sel = idx[c0:c0 + chunk]
            h = L11[sel, None] * z[None, :]  # (pairs, i)
            hp = (L21[sel, None, None] * z[None, :, None]
                  + L22[sel, None, None] * z[None, None, :])  # (pairs, i, j)
            e_aa[sel] = (act(h) * (act(hp) @ w)) @ w
            e_dd[sel] = (dact(h) * (dact(hp) @ w)) @ w
    return e_aa, e_dd


def _tanh(x: Array) -> Array:
    out: Array = np.tanh(x)
    return out


def _dtanh(x: Array) -> Array:
    t = np.tanh(x)
    out: Array = 1.0 - t * t
    return out


def ntk_infinite(
    X: Any,
    act: str,
    s_u: float,
    s_w: float,
    eta_u: float = 1.0,
    eta_w: float = 1.0,
    X2: Any = None,
) -> Array:
    """See ``ntkflow.exact.ntk_infinite``."""
    require(act in ACTIVATIONS, "act", f"must be one of {ACTIVATIONS}", act)
    s_u = real(s_u, "s_u", low=0.0)
    s_w = real(s_w, "s_w", low=0.0)
    eta_u = real(eta_u, "eta_u", low=0.0)
    eta_w = real(eta_w, "eta_w", low=0.0)
    A = _inputs(X, "X")
    B = A if X2 is None else _inputs(X2, "X2")
    d = A.shape[1]
    require(B.shape[1] == d, "X2", f"must have {d} columns like X", B)
    dot = A @ B.T
    if X2 is None:
        dot = 0.5 * (dot + dot.T)
    c = s_w * s_w / d
    n1 = np.einsum("ij,ij->i", A, A)
    n2 = np.einsum("ij,ij->i", B, B)
    S11 = np.broadcast_to(c * n1[:, None], dot.shape)
    S22 = np.broadcast_to(c * n2[None, :], dot.shape)
    S12 = c * dot
    if act == "linear":
        e_aa, e_dd = S12, np.ones(dot.shape)
    elif act == "relu":
        # Arc-cosine kernels of order 1 and 0 (Cho & Saul): the angle of the covariance is
        # the angle between the inputs.
        theta = _angles(A, B)
        q = np.sqrt(S11 * S22)
        live = q > 0
        e_aa = np.where(live, q / (2 * np.pi) * (np.sin(theta) + (np.pi - theta) * np.cos(theta)),
                        0.0)
        e_dd = np.where(live, (np.pi - theta) / (2 * np.pi), 0.0)
    elif act == "erf":
        a = (1 + 2 * S11) * (1 + 2 * S22)
        e_aa = (2 / np.pi) * np.arcsin(np.clip(2 * S12 / np.sqrt(a), -1.0, 1.0))
        # (1 + 2 S11)(1 + 2 S22) - 4 S12^2, with the Gram determinant S11 S22 - S12^2 >= 0
        # clipped at 0 (rounding of (anti)parallel inputs).
        det = 1 + 2 * S11 + 2 * S22 + 4 * np.maximum(S11 * S22 - S12 * S12, 0.0)
        e_dd = (4 / np.pi) / np.sqrt(det)
    else:  # tanh: no closed form
        if X2 is None:  # symmetric: the upper triangle only
            iu = np.triu_indices(dot.shape[0])
            ea, ed = _gaussian_pairs(_tanh, _dtanh, S11[iu], S22[iu], S12[iu])
            e_aa = np.empty(dot.shape)
            e_dd = np.empty(dot.shape)
            e_aa[iu], e_dd[iu] = ea, ed
            e_aa.T[iu], e_dd.T[iu] = ea, ed
        else:
            ea, ed = _gaussian_pairs(_tanh, _dtanh, S11.ravel(), S22.ravel(), S12.ravel())
            e_aa, e_dd = ea.reshape(dot.shape), ed.reshape(dot.shape)
    K: Array = eta_u * e_aa + eta_w * s_u * s_u * dot * e_dd
    return K


class KernelRegime(NamedTuple):
    """The linearised network's training trajectory on its training inputs.

    f : (..., times, samples)
        Function values at the record times.
    loss : (..., times)
        ``1/(2n) ||f - y||^2``.
    """

    f: Array
    loss: Array


def kernel_regime(K0: Any, f0: Any, y: Any, times: Any, lr: float | None = None) -> KernelRegime:
    """See ``ntkflow.exact.kernel_regime``."""
    K = array(K0, "K0", ndim=(2, 3))
    n = int(K.shape[-1])
    require(K.shape[-2] == n and n >= 1, "K0", "must have shape (..., samples, samples)", K)
    scale = float(np.max(np.abs(K))) if K.size else 0.0
    asym = float(np.max(np.abs(K - np.swapaxes(K, -1, -2)))) if K.size else 0.0
    require(asym <= 1e-10 * scale, "K0",
            f"must be symmetric (max |K0 - K0^T| = {asym:.3g} of scale {scale:.3g})", K)
    f = array(f0, "f0", ndim=(1, 2))
    require(f.shape == K.shape[:-1], "f0", f"must have shape {K.shape[:-1]} to match K0", f)
    yy = array(y, "y", ndim=1)
    require(yy.shape == (n,), "y", f"must have shape ({n},) to match K0", yy)
    t = array(times, "times", ndim=(0, 1)).reshape(-1)
    require(bool(np.all(t >= 0)), "times", "must be >= 0", t)
    lam, V = np.linalg.eigh(0.5 * (K + np.swapaxes(K, -1, -2)))
    top = np.max(np.abs(lam), axis=-1, keepdims=True)
    require(bool(np.all(lam >= -1e-10 * top)), "K0",
            f"must be positive semi-definite (smallest eigenvalue {float(lam.min()):.3g})", K)
    lam = np.maximum(lam, 0.0)  # round-off below 0: K0 is PSD
    coef = np.einsum("...ji,...j->...i", V, f - yy)  # V^T r0
    if lr is None:
        decay = np.exp(-lam[..., None, :] * t[:, None] / n)  # (..., times, modes)
    else:
        lr = real(lr, "lr", low=0.0, low_open=True)
        require(bool(np.all(t == np.round(t))), "times",
                "must be whole step numbers for gradient descent (lr given)", t)
        decay = (1.0 - lr * lam[..., None, :] / n) ** t[:, None]
    modes = decay * coef[..., None, :]
    resid = np.einsum("...ij,...tj->...ti", V, modes)
    loss = 0.5 * np.sum(modes * modes, axis=-1) / n  # V orthogonal: ||r|| = ||modes||
    return KernelRegime(f=resid + yy, loss=loss)
