"""Tests of the closed-form model-A solution (THEORY.md §A) against independent
references: the same physics evaluated at 60 digits with mpmath (straightforward
formulas, no stability tricks), DOP853 integration of the full 2m-dimensional ODE, the
logistic solution of the stuck case, the conserved quantities and the t = inf limits.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mpmath
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from scipy.integrate import solve_ivp

from ntkflow._exact_line import LinePath, LineSolution, line_solution

FloatArray = NDArray[np.float64]
MP_DPS = 60
_TINY = float(np.finfo(np.float64).tiny)

# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Setting:
    """One ensemble: shared hyperparameters, one or more initial conditions."""

    name: str
    u0: FloatArray  # (trajectories, width)
    w0: FloatArray
    kappa: float
    eta_u: float
    eta_w: float
    sigma: float
    beta: float
    loss_min: float = 0.0

    def solve(self) -> LineSolution:
        return line_solution(
            self.u0,
            self.w0,
            kappa=self.kappa,
            eta_u=self.eta_u,
            eta_w=self.eta_w,
            sigma=self.sigma,
            beta=self.beta,
            loss_min=self.loss_min,
        )


def _hyper(rng: np.random.Generator) -> dict[str, float]:
    return {
        "kappa": float(10 ** rng.uniform(-1.5, 0.5)),
        "eta_u": float(10 ** rng.uniform(-1, 1)),
        "eta_w": float(10 ** rng.uniform(-1, 1)),
        "sigma": float(10 ** rng.uniform(-1, 1)),
    }


def make_setting(kind: str, width: int, seed: int) -> Setting:
    """The init kinds of THEORY §A.7, each as a one-trajectory ensemble."""
    rng = np.random.default_rng(seed)
    h = _hyper(rng)
    scale = float(10 ** rng.uniform(-1, 0.3))
    u = scale * rng.normal(size=width)
    w = scale * rng.normal(size=width)
    beta = float(2.0 * rng.normal())
    if kind == "random":
        pass
    elif kind == "orthogonal":  # C0 = 0 up to rounding (exactly 0 at width 1)
        if width == 1:
            w[:] = 0.0
        else:
            w -= (u @ w) / (u @ u) * u
    elif kind == "overshoot":  # kappa C0 = 20 beta*
        beta = h["kappa"] * float(u @ w) / 20.0
    elif kind == "opposite":  # C0 and beta* of opposite signs: C crosses 0
        beta = -math.copysign(abs(beta) + 0.5, float(u @ w))
    elif kind == "tiny":
        u *= 1e-6 / scale
        w *= 1e-6 / scale
        beta = math.copysign(abs(beta) + 0.5, beta)
    elif kind == "u0_zero":
        u[:] = 0.0
    elif kind == "parallel":  # u0 || w0, target reachable (same sign as C0)
        w = 2.5 * u
        beta = abs(beta) + 0.3
    elif kind == "beta_zero":
        beta = 0.0
    elif kind == "algebraic":  # beta* = 0 and u~0 = w~0: Gamma = 0, algebraic decay
        h["eta_w"] = h["eta_u"]
        w = u.copy()
        beta = 0.0
    elif kind == "stuck":  # u~0 = w~0 with beta* < 0 (Q0 = 0): converges to C = 0
        h["eta_w"] = h["eta_u"]
        w = u.copy()
        beta = -(abs(beta) + 0.3)
    else:  # pragma: no cover
        raise AssertionError(kind)
    return Setting(f"{kind}-m{width}-s{seed}", u[None, :], w[None, :], beta=beta, **h)


def mixed_settings() -> list[Setting]:
    """Ensembles mixing generic and degenerate trajectories (masks, not loops)."""
    rng = np.random.default_rng(7)
    m = 4
    g = rng.normal(size=(2, m))
    u_neg = np.stack([g[0], g[1], g[1], np.zeros(m), 1e-6 * g[0], g[0]])
    # rows: random, stuck (Q0 = 0), P0 = 0 reachable, zero, tiny, P0 = 0 reachable
    w_neg = np.stack([0.7 * g[1], g[1], -g[1], np.zeros(m), 1e-6 * g[1], -g[0]])
    common = {"kappa": 0.8, "eta_u": 1.7, "eta_w": 1.7, "sigma": 0.9}
    out = [
        Setting("mixed-beta<0", u_neg, w_neg, beta=-1.3, loss_min=0.25, **common),
        # beta* = 0: random (Gamma > 0), u0 = w0 and u0 = -w0 (Gamma = 0), zero.
        Setting(
            "mixed-beta=0",
            np.stack([g[0], g[1], g[0], np.zeros(m)]),
            np.stack([0.3 * g[1], g[1], -g[0], np.zeros(m)]),
            beta=0.0,
            **common,
        ),
        # beta* > 0: P0 = 0 is now the stuck one, Q0 = 0 reachable.
        Setting(
            "mixed-beta>0",
            np.stack([g[0], g[1], g[0], np.zeros(m)]),
            np.stack([0.3 * g[1], -g[1], g[0], np.zeros(m)]),
            beta=2.1,
            **common,
        ),
    ]
    return out


KINDS = (
    "random",
    "orthogonal",
    "overshoot",
    "opposite",
    "tiny",
    "u0_zero",
    "parallel",
    "beta_zero",
    "algebraic",
    "stuck",
)
WIDTHS = (1, 2, 3, 5, 16, 64)
MP_SETTINGS = [
    make_setting(kind, width, seed=100 * k + j)
    for k, kind in enumerate(KINDS)
    for j, width in enumerate(WIDTHS)
    if (k + j) % 2 == 0 or width in (1, 64)
] + mixed_settings()


def time_grid(sol: LineSolution, n: int = 16) -> FloatArray:
    """0, then log-spread from 1e-3/Gamma to past the escape time (THEORY §A.7), then
    inf. Unreachable targets (no escape) run to 1000/Gamma, i.e. into underflow."""
    gamma = sol.rate
    esc = sol.escape_time
    pos = gamma > 0
    ok = pos & np.isfinite(esc)
    if np.any(ok):
        lo = 1e-3 / float(np.max(gamma[pos]))
        hi = float(np.max(esc[ok] + 40.0 / gamma[ok]))
    elif np.any(pos):
        lo = 1e-3 / float(np.max(gamma[pos]))
        hi = 1e3 / float(np.min(gamma[pos]))
    else:  # Gamma = 0 only: algebraic decay P = P0 / (1 + c P0 t)
        lo, hi = 1e-3, 1e6
    return np.concatenate([[0.0], np.geomspace(lo, hi, n), [np.inf]])


# --------------------------------------------------------------------------- mpmath


def mp_reference(s: Setting, row: int, times: FloatArray) -> dict[str, list[Any]]:
    """Model A at 60 digits from the formulas of §A.4 written plainly.

    P, Q from the Bernoulli form of their Riccati equations,
    ``y = P - P_inf``: ``y(t) = y0 Gamma E / (Gamma + c y0 (1 - E))``, which is a
    different expression from the library's (§A.6) one; A, B, C, e, K from P, Q as in
    §A.4. A v+ or v- that is identically 0 stays 0 (P0 = 0 => P = 0).
    """
    mp = mpmath.mp
    with mpmath.workdps(MP_DPS):
        mpf = mpmath.mpf
        u = [mpf(float(x)) for x in s.u0[row]]
        w = [mpf(float(x)) for x in s.w0[row]]
        eu, ew, k, sig, b = (mpf(s.eta_u), mpf(s.eta_w), mpf(s.kappa), mpf(s.sigma),
                             mpf(s.beta))
        lam = mp.sqrt(eu * ew)
        A0 = mp.fsum(x * x for x in u)
        B0 = mp.fsum(x * x for x in w)
        C0 = mp.fsum(x * y for x, y in zip(u, w))
        ut = [x / mp.sqrt(eu) for x in u]
        wt = [x / mp.sqrt(ew) for x in w]
        P0 = mp.fsum((x + y) ** 2 for x, y in zip(ut, wt))
        Q0 = mp.fsum((x - y) ** 2 for x, y in zip(ut, wt))
        X = A0 / eu - B0 / ew
        G0 = A0 * B0 - C0**2
        c = sig * k**2 * lam**2 / 2
        om = 2 * lam * sig * k * b
        gam = mp.sqrt(om**2 + 4 * c**2 * P0 * Q0)
        Pinf = (om + gam) / (2 * c)
        Qinf = (gam - om) / (2 * c)
        out: dict[str, list[Any]] = {
            key: []
            for key in ("P", "Q", "C", "A", "B", "K", "Kp", "e", "loss", "cos", "s")
        }
        out["G"] = [G0]

        def riccati(z0: Any, zinf: Any, t: Any) -> Any:
            if z0 == 0:
                return mpf(0)
            if gam == 0:
                return mpf(0) if t == mp.inf else z0 / (1 + c * z0 * t)
            E = mpf(0) if t == mp.inf else mp.exp(-gam * t)
            y0 = z0 - zinf
            return zinf + y0 * gam * E / (gam + c * y0 * (1 - E))

        for tf in times:
            t = mp.inf if math.isinf(tf) else mpf(float(tf))
            if tf == 0.0:  # the initial values, by definition
                P, Q = P0, Q0
            else:
                P = riccati(P0, Pinf, t)
                Q = riccati(Q0, Qinf, t)
            C = lam * (P - Q) / 4
            A = eu * (P + Q + 2 * X) / 4
            B = ew * (P + Q - 2 * X) / 4
            e = k * C - b
            if P0 > 0:
                sval = mp.log(P / P0) / (2 * lam) if P > 0 else -mp.inf
            elif Q0 > 0:
                sval = -mp.log(Q / Q0) / (2 * lam) if Q > 0 else mp.inf
            else:
                sval = sig * k * b * t if b != 0 else mpf(0)
            out["P"].append(P)
            out["Q"].append(Q)
            out["C"].append(C)
            out["A"].append(A)
            out["B"].append(B)
            out["K"].append(k**2 * (eu * B + ew * A))
            out["Kp"].append(k**2 * (A + B))
            out["e"].append(e)
            out["loss"].append(mpf(s.loss_min) + sig * e**2 / 2)
            out["cos"].append(C / mp.sqrt(A * B) if A * B > 0 else mp.sign(C))
            out["s"].append(sval)
    return out


def _f(xs: list[Any]) -> FloatArray:
    return np.array([float(x) for x in xs])


def _rel(num: FloatArray, ref: FloatArray, scale: FloatArray) -> float:
    """max |num - ref| / scale over a row of times.

    Where the exact value is 0 (e at t = inf, A at t = 0 for u0 = 0) the float code
    returns an exact 0, while the 60-digit reference leaves a residue of ~1e-60 of the
    row's largest |ref|; such pairs (float exactly 0, |ref| < 1e-45 of the row's
    largest) count as equal. Everything else, however small, is compared to ``scale``.
    """
    if ref.size == 0:
        return 0.0
    residue = 1e-45 * float(np.max(np.abs(ref[np.isfinite(ref)]), initial=0.0))
    diff = np.abs(num - ref)
    same = (num == ref) | ((num == 0.0) & (np.abs(ref) < residue))
    # Subnormal numbers carry no relative precision; both below the normal range is
    # agreement (the stuck case decays like e^{-Gamma t} into underflow).
    same |= (np.abs(num) < _TINY) & (np.abs(ref) < _TINY)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(same, 0.0, diff / scale)
    return float(np.max(r))


WORST: dict[str, float] = {}


def _record(key: str, value: float) -> None:
    WORST[key] = max(WORST.get(key, 0.0), value)


# Closed form vs the same closed form at 60 digits (THEORY §A.7 saw <= 1.6e-14, §F
# recommends 1e-12): the float recipe is cancellation free, so errors are a few ulps
# times the condition of the observable; 1e-12 leaves ~50x margin.
TOL_MP = 1e-12


@pytest.mark.parametrize("setting", MP_SETTINGS, ids=lambda s: s.name)
def test_against_mpmath(setting: Setting) -> None:
    sol = setting.solve()
    t = time_grid(sol)
    path = sol.at(t)
    G_float = sol.gram_det
    for row in range(setting.u0.shape[0]):
        ref = mp_reference(setting, row, t)
        A, B, C = _f(ref["A"]), _f(ref["B"]), _f(ref["C"])
        G = float(ref["G"][0])
        for key, num, r in [
            ("A", path.norm_u2[row], A),
            ("B", path.norm_w2[row], B),
            ("K", path.ntk[row], _f(ref["K"])),
            ("K_plain", path.ntk_plain[row], _f(ref["Kp"])),
            ("e", path.residual[row], _f(ref["e"])),
            ("loss", path.loss[row], _f(ref["loss"])),
        ]:
            err = _rel(num, r, np.abs(r))
            _record(f"mp {key} rel", err)
            assert err <= TOL_MP, (key, row, err)
        # C relative to sqrt(C^2 + G): C passes through 0 when beta* opposes C0, and
        # only the rotation-invariant size sqrt(AB) is resolved to relative accuracy
        # there. With G = 0 (width 1, parallel) sqrt(AB) = |C| would vanish at the
        # crossing, so the kernel scale c_D (K = 2 kappa^2 lambda sqrt(c_D^2 + C^2),
        # the rounding scale of lambda (P - Q)/4) is used instead.
        c_d = float(sol.kernel_scale[row])
        scale_c = np.hypot(C, math.sqrt(G) if G_float[row] > 0 else c_d)
        err = _rel(path.C[row], C, scale_c)
        _record("mp C scaled", err)
        assert err <= TOL_MP, ("C", row, err)
        # ... and relative to |C| itself wherever |cos| > 1e-3 (THEORY §A.7).
        cos_ref = _f(ref["cos"])
        big = np.abs(cos_ref) > 1e-3
        err = _rel(path.C[row][big], C[big], np.abs(C[big]))
        _record("mp C rel (|cos|>1e-3)", err)
        assert err <= TOL_MP, ("C rel", row, err)
        # cos in [-1, 1]: absolute. Undefined where A B = 0 (u or w is 0): skipped.
        defined = (A * B > 0) & ~((G_float[row] == 0) & (C == 0))
        err = float(np.max(np.abs(path.cos[row] - cos_ref)[defined], initial=0.0))
        _record("mp cos abs", err)
        assert err <= TOL_MP, ("cos", row, err)
        expected_align = np.abs(cos_ref) if G_float[row] > 0 else np.ones_like(cos_ref)
        err = float(np.max(np.abs(path.alignment[row] - expected_align)[defined],
                           initial=0.0))
        assert err <= TOL_MP, ("alignment", row, err)
        # hyperbolic angle: relative (s = 0 at t = 0 exactly; +-inf matched exactly)
        s_ref = _f(ref["s"])
        finite = np.isfinite(s_ref)
        assert np.array_equal(path.angle[row][~finite], s_ref[~finite])
        err = _rel(path.angle[row][finite], s_ref[finite], np.abs(s_ref[finite]))
        _record("mp angle rel", err)
        assert err <= TOL_MP, ("angle", row, err)


# --------------------------------------------------------------------------- DOP853


def _full_ode(
    kappa: float, eta_u: float, eta_w: float, sigma: float, beta: float, width: int
) -> Callable[[float, FloatArray], FloatArray]:
    """du/dt = eta_u r w, dw/dt = eta_w r u, r = Sigma kappa (beta* - kappa u.w)."""

    def rhs(_t: float, y: FloatArray) -> FloatArray:
        u, w = y[:width], y[width:]
        r = sigma * kappa * (beta - kappa * float(u @ w))
        return np.concatenate([eta_u * r * w, eta_w * r * u])

    return rhs


# DOP853 at rtol 1e-12 (THEORY §A.7 saw 2e-11 against the closed form, the ODE being the
# less accurate side); 1e-8 relative to each quantity's scale allows for the global
# error growth over an escape from a small init.
TOL_ODE = 1e-8


@settings(max_examples=30, deadline=None)
@given(
    width=st.integers(1, 64),
    kappa=st.floats(0.1, 10.0),
    eta_u=st.floats(0.1, 10.0),
    eta_w=st.floats(0.1, 10.0),
    sigma=st.floats(0.1, 10.0),
    beta=st.floats(-3.0, 3.0),
    log_su=st.floats(-3.0, 0.5),
    log_sw=st.floats(-3.0, 0.5),
    seed=st.integers(0, 2**32 - 1),
)
def test_against_dop853(
    width: int,
    kappa: float,
    eta_u: float,
    eta_w: float,
    sigma: float,
    beta: float,
    log_su: float,
    log_sw: float,
    seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    u0 = 10**log_su * rng.normal(size=width) / math.sqrt(width)
    w0 = 10**log_sw * rng.normal(size=width)
    sol = line_solution(
        u0, w0, kappa=kappa, eta_u=eta_u, eta_w=eta_w, sigma=sigma, beta=beta
    )
    gamma = float(sol.rate[0])
    t_end = float(sol.escape_time[0]) + 20.0 / gamma
    t = np.concatenate([[0.0], np.geomspace(1e-3 / gamma, t_end, 12)])
    y0 = np.concatenate([u0, w0])
    ode = solve_ivp(
        _full_ode(kappa, eta_u, eta_w, sigma, beta, width),
        (0.0, t_end),
        y0,
        method="DOP853",
        t_eval=t,
        rtol=1e-12,
        atol=1e-16 * float(np.max(np.abs(y0))),
    )
    assert ode.success, ode.message
    u_ode, w_ode = ode.y[:width].T, ode.y[width:].T  # (times, width)
    A = np.einsum("ij,ij->i", u_ode, u_ode)
    B = np.einsum("ij,ij->i", w_ode, w_ode)
    C = np.einsum("ij,ij->i", u_ode, w_ode)
    path = sol.at(t)
    G = float(sol.gram_det[0])
    scale_c = np.hypot(C, math.sqrt(G) if G > 0 else float(sol.kernel_scale[0]))
    errs = {
        "A": np.abs(path.norm_u2[0] - A) / A,
        "B": np.abs(path.norm_w2[0] - B) / B,
        "K": np.abs(path.ntk[0] - kappa**2 * (eta_u * B + eta_w * A))
        / (kappa**2 * (eta_u * B + eta_w * A)),
        "C": np.abs(path.C[0] - C) / scale_c,
        # e = kappa C - beta* cancels in the ODE: scale |e| + kappa * scale(C)
        "e": np.abs(path.residual[0] - (kappa * C - beta))
        / (np.abs(kappa * C - beta) + kappa * scale_c),
    }
    if G > 0:
        errs["cos"] = np.abs(path.cos[0] - C / np.sqrt(A * B))
    else:  # sign(C); compare away from an exact crossing
        away = np.abs(C) > 1e-6 * scale_c
        errs["cos"] = np.abs(path.cos[0] - np.sign(C))[away]
    vec = sol.params_at(t)
    norm = np.sqrt(A + B)[:, None]
    errs["u"] = np.max(np.abs(vec.u[0] - u_ode) / norm, axis=1)
    errs["w"] = np.max(np.abs(vec.w[0] - w_ode) / norm, axis=1)
    for key, err in errs.items():
        worst = float(np.max(err, initial=0.0))
        _record(f"ode {key}", worst)
        assert worst <= TOL_ODE, (key, worst)


# --------------------------------------------------------------------------- stuck case


@pytest.mark.parametrize(
    ("u0", "eta", "kappa", "sigma", "beta"),
    [
        (np.array([1.0, 2.0, 2.0]) / 2, 0.5, 0.5, 2.0, -1.5),
        (np.array([3.0]), 1.0, 0.25, 1.0, -2.0),
        (np.array([1.0, -1.0, 3.0, 0.5, 0.25]), 2.0, 1.0, 0.5, -0.75),
    ],
)
def test_stuck_against_logistic(
    u0: FloatArray, eta: float, kappa: float, sigma: float, beta: float
) -> None:
    """u0 = w0, eta_u = eta_w = eta, beta* < 0: v- = 0, so u = w and C = A obeys the
    logistic equation dA/dt = k A (beta* - kappa A), k = 2 eta Sigma kappa, whose
    solution A(t) = beta* A0 / (kappa A0 + (beta* - kappa A0) e^{k |beta*| t}) (A.5)
    decays to the saddle A = 0: the target cannot be reached."""
    sol = line_solution(
        u0, u0.copy(), kappa=kappa, eta_u=eta, eta_w=eta, sigma=sigma, beta=beta
    )
    k = 2.0 * eta * sigma * kappa
    rate = k * abs(beta)
    assert float(sol.rate[0]) == pytest.approx(rate, rel=1e-15)
    assert not sol.reachable[0]
    assert sol.escape_time[0] == np.inf
    t = np.concatenate([[0.0], np.geomspace(1e-3 / rate, 700.0 / rate, 25)])
    with mpmath.workdps(MP_DPS):
        b, kap, A0 = mpmath.mpf(beta), mpmath.mpf(kappa), mpmath.mpf(float(u0 @ u0))
        ref = [
            b * A0 / (kap * A0 + (b - kap * A0) * mpmath.exp(k * abs(b) * mpmath.mpf(ti)))
            for ti in t
        ]
        log_ratio = [mpmath.log(a / A0) for a in ref]
    A = _f(ref)
    path = sol.at(t)
    # The inputs are dyadic, so Gamma and every coefficient are exact and the closed
    # form keeps a few ulps even at Gamma t = 700 (THEORY A.5 saw 6e-15): 1e-13.
    for key, num, r in [
        ("A", path.norm_u2[0], A),
        ("B", path.norm_w2[0], A),
        ("C", path.C[0], A),
        ("K", path.ntk[0], 2.0 * kappa**2 * eta * A),
        ("e", path.residual[0], kappa * A - beta),
    ]:
        err = _rel(num, r, np.abs(r))
        _record(f"stuck {key} rel", err)
        assert err <= 1e-13, (key, err)
    # v+ = e^{lambda s} v+(0) with P/P0 = A/A0: s = ln(A/A0) / (2 eta), finite and
    # exact even where A has underflowed.
    s_ref = _f(log_ratio) / (2.0 * eta)
    err = _rel(path.angle[0], s_ref, np.abs(s_ref))
    _record("stuck angle rel", err)
    assert err <= 1e-13
    vec = sol.params_at(t)
    expected = np.sqrt(A)[:, None] / math.sqrt(float(u0 @ u0)) * u0[None, :]
    for v in (vec.u[0], vec.w[0]):
        err = float(np.max(np.abs(v - expected) / np.sqrt(A)[:, None]))
        _record("stuck vectors", err)
        assert err <= 1e-13
    lim = sol.limit()
    assert lim.C[0, 0] == 0.0
    assert lim.norm_u2[0, 0] == 0.0
    assert lim.residual[0, 0] == -beta
    assert lim.loss[0, 0] == pytest.approx(sigma * beta**2 / 2, rel=1e-15)
    assert lim.angle[0, 0] == -np.inf
    assert np.all(sol.params_at([np.inf]).u == 0.0)


# --------------------------------------------------------------------------- invariants


# Conserved quantities evaluated from the returned A, B, C, K (computed by different
# formulas: A, B via sigma+-, C by candidate selection, K from P + Q): rounding of a
# few ulps relative to the size of the terms, so 1e-12 relative to that size.
TOL_INV = 1e-12


def _max_ratio(diff: FloatArray, scale: FloatArray) -> float:
    """max diff/scale over entries whose scale is a normal number with room for
    squares of components (> 1e-290); below that (the stuck case's tail) both sides
    have underflowed and nothing is left to compare."""
    ok = scale > 1e-290
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.max(np.where(ok, diff / scale, 0.0), initial=0.0))


@pytest.mark.parametrize("setting", MP_SETTINGS, ids=lambda s: s.name)
def test_invariants_along_solution(setting: Setting) -> None:
    sol = setting.solve()
    t = time_grid(sol)
    p = sol.at(t)
    eu, ew, k = setting.eta_u, setting.eta_w, setting.kappa
    lam = math.sqrt(eu * ew)
    A, B, C, K = p.norm_u2, p.norm_w2, p.C, p.ntk
    delta = sol.delta[:, None]
    G = sol.gram_det[:, None]
    c_d = sol.kernel_scale[:, None]
    checks = {
        "Delta": (np.abs(ew * A - eu * B - delta), ew * A + eu * B),
        # K^2 - 4 eta_u eta_w kappa^4 C^2 = kappa^4 D^2, D^2 = Delta^2 + 4 lambda^2 G
        "D^2": (
            np.abs(K**2 - 4 * lam**2 * k**4 * C**2 - k**4 * (delta**2 + 4 * lam**2 * G)),
            K**2,
        ),
        "G": (np.abs(A * B - C**2 - G), A * B),
        "K(C)": (np.abs(K - 2 * k**2 * lam * np.hypot(c_d, C)), K),
    }
    for key, (diff, scale) in checks.items():
        worst = _max_ratio(diff, scale)
        _record(f"invariant {key}", worst)
        assert worst <= TOL_INV, (key, worst)
    # The vectors of params_at reproduce the scalar path (different formulas: §A.6
    # step 10 against steps 5-8).
    vec = sol.params_at(t)
    uu = np.einsum("ijk,ijk->ij", vec.u, vec.u)
    ww = np.einsum("ijk,ijk->ij", vec.w, vec.w)
    uw = np.einsum("ijk,ijk->ij", vec.u, vec.w)
    for key, (diff, scale) in {
        "|u|^2": (np.abs(uu - A), A),
        "|w|^2": (np.abs(ww - B), B),
        "u.w": (np.abs(uw - C), np.sqrt(A * B)),
    }.items():
        worst = _max_ratio(diff, scale)
        _record(f"params {key}", worst)
        assert worst <= TOL_INV, (key, worst)
