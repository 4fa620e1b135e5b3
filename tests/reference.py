"""Independent NumPy references for the tests: the linear network's gradient flow written
from the dataset form of the loss (not the core's residual form), integrated by SciPy or by
a plain NumPy rk4 vectorised over trajectories."""

from __future__ import annotations

import numpy as np
import scipy.special
from scipy.integrate import solve_ivp


def act_and_slope(act: str, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The activation and its derivative (relu' = 1[z > 0], 0 at 0), elementwise."""
    if act == "relu":
        return np.maximum(Z, 0.0), (Z > 0).astype(float)
    if act == "tanh":
        return np.tanh(Z), 1.0 / np.cosh(Z) ** 2
    if act == "erf":
        return scipy.special.erf(Z), 2 / np.sqrt(np.pi) * np.exp(-Z * Z)
    return Z, np.ones_like(Z)


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


# ------------------------------------------------------------ relu flow in Filippov's sense
# Written independently of the core's numerics: SciPy's DOP853 stepped by hand on the
# smooth field of the current activation pattern, crossings found by brentq on DOP853's own
# dense output, and the sliding controls by scipy.optimize.lsq_linear. The selection is
# the one docs/theory.md §H defines: for unit i with sliding samples J, beta_j = alpha_j r_j
# minimises ||P_i + sum_j beta_j x_j|| over alpha in [0, 1]^J (where the pairs can stay
# on their surfaces this makes every x_j . (P_i + sum beta x) = 0). In one dimension a unit
# reaching w_i = 0 is decided whole instead (ORIGIN): it takes the field of the side whose
# field points away from 0, or none while both point into it.

OFF, ON, SLIDE, ORIGIN = 0, 1, 2, 3


def origin_side(r, x, u_i, w_i):
    """+1 / -1: the side (w > 0 / w < 0) a one-dimensional unit at w_i = 0 moves to, 0
    when both sides' fields point into the origin. With g+- = u_i sum_{x_j >< 0} r_j x_j
    the fields are -g+- up to a positive factor; when both point away, the side of w_i."""
    gp, gm = u_i * r[x > 0] @ x[x > 0], u_i * r[x <= 0] @ x[x <= 0]
    up, down = gp < 0, gm > 0
    if up and down:
        return 1 if w_i > 0 else -1 if w_i < 0 else (1 if -gp >= gm else -1)
    return 1 if up else -1 if down else 0


def relu_field(state, mode, X, y, kappa, eta_u, eta_w):
    """Filippov field of the relu network on the pattern `mode` (n, m) of OFF/ON/SLIDE, and
    the controls {(j, i): alpha} of its sliding pairs."""
    from scipy.optimize import lsq_linear

    n, d = X.shape
    m = mode.shape[1]
    u, W = state[:m], state[m:].reshape(m, d)
    Z = X @ W.T
    H = np.where(mode == ON, Z, np.where(mode >= SLIDE, np.maximum(Z, 0.0), 0.0))
    r = kappa * H @ u - y
    P = ((mode == ON) * r[:, None]).T @ X  # (m, d)
    for i in np.nonzero((mode == ORIGIN).all(axis=0))[0]:
        side = origin_side(r, X[:, 0], u[i], W[i, 0])
        if side != 0:
            on = X[:, 0] > 0 if side > 0 else X[:, 0] < 0
            P[i] = r[on] @ X[on]
    alpha = {}
    for i in np.unique(np.nonzero(mode == SLIDE)[1]):
        js = np.nonzero(mode[:, i] == SLIDE)[0]
        lo, hi = np.minimum(0.0, r[js]), np.maximum(0.0, r[js])
        free = hi > lo
        beta = np.zeros(js.size)
        if free.any():
            sol = lsq_linear(X[js[free]].T, -P[i], bounds=(lo[free], hi[free]),
                             method="bvls", tol=1e-15)
            beta[free] = sol.x
        P[i] += beta @ X[js]
        for j, b, rj in zip(js, beta, r[js], strict=True):
            alpha[(int(j), int(i))] = b / rj if rj != 0 else 0.5
    du = -eta_u * kappa / n * H.T @ r
    dW = -eta_w * kappa / n * u[:, None] * P
    return np.concatenate([du, dW.ravel()]), alpha, P, r, Z


def relu_flow_filippov(u0, W0, X, y, kappa, eta_u, eta_w, times, rtol=1e-12, atol=1e-14):
    """Loss (times,) and parameters (times, m (1 + d)) of one relu trajectory, and how many
    times a pair started to slide."""
    from scipy.integrate import DOP853
    from scipy.optimize import brentq

    n, d = X.shape
    m = u0.size
    state = np.concatenate([u0, W0.ravel()])
    mode = np.where(X @ W0.T > 0, ON, OFF)
    if d == 1:
        mode[:, W0[:, 0] == 0] = ORIGIN
    t, k, T = 0.0, 0, len(times)
    out_loss, out_state = np.empty(T), np.empty((T, state.size))
    slides = 0

    def record(s):
        r = kappa * np.maximum(X @ s[m:].reshape(m, d).T, 0.0) @ s[:m] - y
        return 0.5 * r @ r / n

    def switch(s, crossing):
        """New modes at state s (and s, in one dimension with units held at exactly 0):
        the crossing pair (and any pair found outside its side) goes to the other side or
        slides; sliding pairs whose control sits on a bound with z on that side leave. In one
        dimension units carried off the origin beyond atol leave it, and units with a pair
        moved at the origin go to ORIGIN."""
        nonlocal slides
        new = mode.copy()
        _, alpha, P, r, Z = relu_field(s, mode, X, y, kappa, eta_u, eta_w)
        for (j, i), a in alpha.items():  # carried off the surface beyond atol
            off = atol * np.linalg.norm(X[j])
            if a >= 1.0 and Z[j, i] > off:
                new[j, i] = ON
            elif a <= 0.0 and Z[j, i] < -off:
                new[j, i] = OFF
        for i in np.nonzero((new == ORIGIN).all(axis=0))[0]:
            if abs(s[m + i]) > atol:
                new[:, i] = np.where(X[:, 0] * s[m + i] > 0, ON, OFF)
        outside = ((new == ON) & (Z <= 0)) | ((new == OFF) & (Z > 0))
        for jc, ic in crossing:
            outside[jc, ic] = True
        moved = list(zip(*np.nonzero(outside), strict=True))
        for j, i in moved:  # all to their other side first, then sliding on that field
            new[j, i] = OFF if new[j, i] == ON else ON
        _, _, P, r, _ = relu_field(s, new, X, y, kappa, eta_u, eta_w)
        u = s[:m]
        if d == 1:
            s = s.copy()
            located = {i for _, i in crossing}
            for i in sorted({i for _, i in moved}):
                if i in located or abs(s[m + i]) <= atol:
                    if origin_side(r, X[:, 0], u[i], s[m + i]) == 0:
                        s[m + i] = 0.0
                    new[:, i] = ORIGIN
            return new, s
        for j, i in moved:
            pj = X[j] @ P[i] - (r[j] * X[j] @ X[j] if new[j, i] == ON else 0.0)
            dz_off = -u[i] * pj
            dz_on = dz_off - u[i] * r[j] * X[j] @ X[j]
            if dz_on < 0 < dz_off:
                new[j, i] = SLIDE
                slides += 1
        return new, s

    while k < T:
        while k < T and times[k] <= t:
            out_loss[k], out_state[k] = record(state), state
            k += 1
        if k == T:
            break
        solver = DOP853(lambda _t, s, mode=mode: relu_field(s, mode, X, y, kappa, eta_u, eta_w)[0],
                        t, state, float(times[-1]), rtol=rtol, atol=atol)
        while True:
            msg = solver.step()
            assert msg is None, msg
            dense = solver.dense_output()
            t0, t1 = solver.t_old, solver.t
            found = []
            Z1 = X @ solver.y[m:].reshape(m, d).T
            outside = ((mode == ON) & (Z1 <= 0)) | ((mode == OFF) & (Z1 > 0))
            for j, i in zip(*np.nonzero(outside), strict=True):
                z = lambda tt, j=j, i=i, dense=dense: X[j] @ dense(tt)[m:].reshape(m, d)[i]
                if (z(t0) > 0) != (mode[j, i] == ON):
                    continue  # outside at both ends (rounding at a surface just switched)
                found.append((brentq(z, t0, t1, xtol=1e-15, rtol=1e-15), int(j), int(i)))
            first = min((f[0] for f in found), default=np.inf)
            # Crossings within 1e-9 of a step of the first are one event (pairs of one unit
            # crossing together, as when w_i passes through 0 in one dimension).
            crossing = [(j, i) for te, j, i in found if te <= first + 1e-9 * (t1 - t0)]
            stop = t1 if not crossing else first
            while k < T and times[k] <= stop:
                s = dense(times[k])
                out_loss[k], out_state[k] = record(s), s
                k += 1
            state, t = (solver.y, t1) if not crossing else (dense(first), first)
            new, state = switch(state, crossing)
            if crossing or not np.array_equal(new, mode) or solver.status == "finished":
                mode = new
                break
    return out_loss, out_state, slides
