"""Independent NumPy references for the tests: the linear network's gradient flow written
from the dataset form of the loss (not the core's residual form), integrated by SciPy or by
a plain NumPy rk4 vectorised over trajectories."""

from __future__ import annotations

import numpy as np
from scipy.integrate import solve_ivp


def field(u, W, Sigma, b, kappa, eta_u, eta_w):
    """du/dt, dW/dt for L = kappa^2/2 p^T Sigma p - kappa p^T b + const, p = W^T u.

    u: (..., m), W: (..., m, d)."""
    p = np.einsum("...md,...m->...d", W, u)
    g = kappa * (b - kappa * np.einsum("de,...e->...d", Sigma, p))
    du = eta_u * np.einsum("...md,...d->...m", W, g)
    dW = eta_w * u[..., :, None] * g[..., None, :]
    return du, dW


def loss(u, W, Sigma, b, y2, kappa):
    p = np.einsum("...md,...m->...d", W, u)
    return 0.5 * kappa**2 * np.einsum("...d,de,...e->...", p, Sigma, p) - kappa * p @ b + 0.5 * y2


def solve_full(u0, W0, Sigma, b, kappa, eta_u, eta_w, times, rtol=1e-12, atol=1e-14):
    """One trajectory with SciPy's DOP853; returns u (T, m), W (T, m, d)."""
    m, d = W0.shape

    def rhs(_t, y):
        du, dW = field(y[:m], y[m:].reshape(m, d), Sigma, b, kappa, eta_u, eta_w)
        return np.concatenate([du, dW.ravel()])

    sol = solve_ivp(rhs, (0.0, float(times[-1])), np.concatenate([u0, W0.ravel()]),
                    method="DOP853", t_eval=times, rtol=rtol, atol=atol)
    assert sol.success, sol.message
    return sol.y[:m].T, sol.y[m:].T.reshape(len(times), m, d)


def rk4(u0, W0, Sigma, b, kappa, eta_u, eta_w, dt, steps):
    """Classical rk4 on a whole ensemble u0 (n, m), W0 (n, m, d); returns the final state."""
    u, W = u0.copy(), W0.copy()
    f = lambda uu, WW: field(uu, WW, Sigma, b, kappa, eta_u, eta_w)  # noqa: E731
    for _ in range(steps):
        k1u, k1W = f(u, W)
        k2u, k2W = f(u + 0.5 * dt * k1u, W + 0.5 * dt * k1W)
        k3u, k3W = f(u + 0.5 * dt * k2u, W + 0.5 * dt * k2W)
        k4u, k4W = f(u + dt * k3u, W + dt * k3W)
        u = u + dt / 6 * (k1u + 2 * k2u + 2 * k3u + k4u)
        W = W + dt / 6 * (k1W + 2 * k2W + 2 * k3W + k4W)
    return u, W


def gradient_descent(u0, W0, Sigma, b, kappa, eta_u, eta_w, lr, steps):
    u, W = u0.copy(), W0.copy()
    for _ in range(steps):
        du, dW = field(u, W, Sigma, b, kappa, eta_u, eta_w)
        u, W = u + lr * du, W + lr * dW
    return u, W


def assert_close_to_scale(actual, expected, tol, name="", scale=None):
    """|actual - expected| <= tol * scale, where scale defaults to each trajectory's
    (leading axis) largest |expected| over the run: errors relative to a quantity's size
    over the run, not to values that pass through zero."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    if scale is None:
        axes = tuple(range(1, expected.ndim))
        scale = np.max(np.abs(expected), axis=axes, keepdims=True) if axes else np.abs(expected)
    err = np.abs(actual - expected) / np.where(scale > 0, scale, 1.0)
    worst = float(np.nanmax(err)) if err.size else 0.0
    assert np.all(np.isfinite(err)) and worst <= tol, f"{name}: worst scaled error {worst:.3g} > {tol:g}"
    return worst
