"""Tests of the closed-form model-A solution (docs/theory.md §A) against independent
references: the same physics evaluated at 60 digits with mpmath (straightforward
formulas, no stability tricks), DOP853 integration of the full 2m-dimensional ODE, the
logistic solution of the stuck case, the conserved quantities and the t = inf limits.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import mpmath
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from scipy.integrate import solve_ivp

from ntkflow._exact_line import LineSolution, line_solution

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
    """The init kinds of docs/theory.md §A.7, each as a one-trajectory ensemble."""
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
    elif kind == "near_parallel":  # |sin angle(u0, w0)| ~ 1e-11, beta* opposite to C0:
        # at the crossing C = 0 one layer shrinks to ~sqrt(G), resolved only through G
        w = -0.3 * u + 1e-11 * scale * rng.normal(size=width)
        beta = abs(beta) + 0.3
    elif kind == "parallel_beta0":  # w0 = 0.3 u0 in floats (G is rounding noise) and
        # beta* = 0: one layer decays to exactly 0
        w = 0.3 * u
        beta = 0.0
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
    "near_parallel",
    "parallel_beta0",
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
    """0, then log-spread from 1e-3/Gamma to past the escape time
    (docs/theory.md §A.7), then inf. Unreachable targets (no escape) run to 1000/Gamma,
    i.e. into underflow."""
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
    # very early times (s ~ 1e-9: relative accuracy of expm1, log1p, sinh) and the
    # instant where C crosses 0 (beta* opposite to C0), found by bisection
    early = np.array([1e-9, 1e-6]) * lo / 1e-3
    return np.sort(
        np.concatenate(
            [[0.0], early, np.geomspace(lo, hi, n), _crossings(sol, hi), [np.inf]]
        )
    )


def _crossings(sol: LineSolution, hi: float) -> FloatArray:
    out = []
    c0 = sol.initial_C
    for row in np.nonzero(c0 * sol.beta < 0)[0]:
        a, b = 0.0, hi
        if sol.at([b]).C[row, 0] * c0[row] > 0:
            continue
        for _ in range(80):
            mid = 0.5 * (a + b)
            if sol.at([mid]).C[row, 0] * c0[row] > 0:
                a = mid
            else:
                b = mid
        out.append(a)
    return np.array(out)


# --------------------------------------------------------------------------- mpmath


def mp_vectors(s: Setting, row: int, parallel: bool) -> tuple[list[Any], list[Any]]:
    """The initial vectors at working precision (call inside ``workdps``).

    ``parallel``: the library declared ``G = 0`` (§A.6 step 1: ``G <= 64 eps^2 A0 B0``
    is rounding noise of parallel vectors, e.g. ``w0 = 0.3 * u0`` in floats), so the
    reference uses exactly parallel vectors, ``w0 -> (C0/A0) u0`` (a change of
    ``w0`` by < 8 eps |w0|); otherwise the float inputs exactly.
    """
    mpf = mpmath.mpf
    u = [mpf(float(x)) for x in s.u0[row]]
    w = [mpf(float(x)) for x in s.w0[row]]
    A0 = mpmath.fsum(x * x for x in u)
    if parallel and A0 > 0:
        alpha = mpmath.fsum(x * y for x, y in zip(u, w, strict=True)) / A0
        w = [alpha * x for x in u]
    return u, w


def mp_reference(
    s: Setting, row: int, times: FloatArray, parallel: bool = False
) -> dict[str, list[Any]]:
    """Model A at 60 digits from the formulas of §A.4 written plainly.

    P, Q from the Bernoulli form of their Riccati equations,
    ``y = P - P_inf``: ``y(t) = y0 Gamma E / (Gamma + c y0 (1 - E))``, which is a
    different expression from the library's (§A.6) one; A, B, C, e, K from P, Q as in
    §A.4. A v+ or v- that is identically 0 stays 0 (P0 = 0 => P = 0).
    """
    mp = mpmath.mp
    with mpmath.workdps(MP_DPS):
        mpf = mpmath.mpf
        u, w = mp_vectors(s, row, parallel)
        eu, ew, k, sig, b = (
            mpf(s.eta_u),
            mpf(s.eta_w),
            mpf(s.kappa),
            mpf(s.sigma),
            mpf(s.beta),
        )
        lam = mp.sqrt(eu * ew)
        A0 = mp.fsum(x * x for x in u)
        B0 = mp.fsum(x * x for x in w)
        C0 = mp.fsum(x * y for x, y in zip(u, w, strict=True))
        ut = [x / mp.sqrt(eu) for x in u]
        wt = [x / mp.sqrt(ew) for x in w]
        P0 = mp.fsum((x + y) ** 2 for x, y in zip(ut, wt, strict=True))
        Q0 = mp.fsum((x - y) ** 2 for x, y in zip(ut, wt, strict=True))
        X = A0 / eu - B0 / ew
        G0 = A0 * B0 - C0**2
        c = sig * k**2 * lam**2 / 2
        om = 2 * lam * sig * k * b
        gam = mp.sqrt(om**2 + 4 * c**2 * P0 * Q0)
        Pinf = (om + gam) / (2 * c)
        Qinf = (gam - om) / (2 * c)
        out: dict[str, list[Any]] = {
            key: []
            for key in (
                "P",
                "Q",
                "d2",
                "C",
                "A",
                "B",
                "K",
                "Kp",
                "e",
                "loss",
                "cos",
                "s",
            )
        }
        out["G"] = [G0]
        delta = ew * A0 - eu * B0
        out["invariants"] = [
            {
                "G": G0,
                "A0": A0,
                "B0": B0,
                "delta": delta,
                "S0": ew * A0 + eu * B0,
                "kernel_scale": mp.sqrt(delta**2 / (4 * lam**2) + G0),
                "rate": gam,
            }
        ]

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
            out["d2"].append((mp.sqrt(P) - mp.sqrt(Q)) ** 2)
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
    same = (num == ref) | ((num == 0.0) & (np.abs(ref) < residue))
    # Subnormal numbers carry no relative precision; both below the normal range is
    # agreement (the stuck case decays like e^{-Gamma t} into underflow).
    same |= (np.abs(num) < _TINY) & (np.abs(ref) < _TINY)
    with np.errstate(divide="ignore", invalid="ignore"):  # inf - inf where same
        r = np.where(same, 0.0, np.abs(num - ref) / scale)
    return float(np.max(r))


# Closed form vs the same closed form at 60 digits (docs/theory.md §F: 1e-12 for closed
# forms): the float recipe is cancellation free, so errors are a few ulps
# times the condition of the observable, which grows like Gamma t in the exponential
# tails (E = e^{-Gamma t} with Gamma t rounded): ~3e-14 seen at Gamma t ~ 700.
TOL_MP = 1e-12


def c_scale(
    s: Setting, row: int, C: FloatArray, e: FloatArray, K: FloatArray
) -> FloatArray:
    """The rounding scale of C that an evaluation from the data can reach: the
    smallest of ``sum|u0 w0| + |C - C0|`` (C0 is a dot product), ``(|beta*| + |e|) /
    kappa`` and ``lambda (P + Q)/4 = K / (2 kappa^2 lambda) = sqrt(c_D^2 + C^2)``, the
    sizes of the three exact expressions of C. Each is >= |C|, so this is |C| except
    near a crossing C = 0, where C has an absolute uncertainty ~ eps |dC/dt| t from the
    time alone."""
    C0 = C[0]
    s1 = float(np.sum(np.abs(s.u0[row] * s.w0[row]))) + np.abs(C - C0)
    s2 = (abs(s.beta) + np.abs(e)) / s.kappa
    s3 = K / (2 * s.kappa**2 * math.sqrt(s.eta_u * s.eta_w))
    return np.minimum(np.minimum(s1, s2), s3)


@pytest.mark.parametrize("setting", MP_SETTINGS, ids=lambda s: s.name)
def test_against_mpmath(setting: Setting) -> None:
    sol = setting.solve()
    t = time_grid(sol)
    path = sol.at(t)
    for row in range(setting.u0.shape[0]):
        parallel = bool(sol.gram_det[row] == 0.0)
        ref = mp_reference(setting, row, t, parallel=parallel)
        A, B, C = _f(ref["A"]), _f(ref["B"]), _f(ref["C"])
        G = float(ref["G"][0])
        # per-trajectory invariants (§A.3, §A.4) against their 60-digit values
        inv = ref["invariants"][0]
        if parallel:  # declared parallel: the inputs' exact G is below the floor
            exact = mp_reference(setting, row, np.array([0.0]))["invariants"][0]
            A0, B0 = float(exact["A0"]), float(exact["B0"])
            assert float(exact["G"]) <= 2 * 64 * np.finfo(float).eps ** 2 * A0 * B0
        else:
            err = abs(sol.gram_det[row] - float(inv["G"])) / float(inv["G"])
            assert err <= TOL_MP
        for name, value in [
            ("delta", sol.delta[row]),
            ("kernel_scale", sol.kernel_scale[row]),
            ("rate", sol.rate[row]),
        ]:
            # Delta = eta_w A0 - eta_u B0 is known to eps (eta_w A0 + eta_u B0)
            scale = float(inv["S0"]) if name == "delta" else abs(float(inv[name]))
            err = _rel(np.array([value]), np.array([float(inv[name])]), scale)
            assert err <= TOL_MP, (name, row, err)
        sc = c_scale(setting, row, C, _f(ref["e"]), _f(ref["K"]))
        # A = eta_u (d^2 + 2 sigma+)/4 with d = sqrt(P) - sqrt(Q) = 4C/(lambda(sqrt P +
        # sqrt Q)): the part eta_u d^2/4 inherits C's relative error sc/|C|. That is
        # plain relative accuracy except near a crossing C = 0 where G << c_D^2 (width
        # 1, nearly parallel): there a layer passes (close to) 0 at an instant that is
        # itself uncertain by ~eps t.
        d2 = _f(ref["d2"])
        with np.errstate(divide="ignore", invalid="ignore"):
            inherit = np.where(C != 0, 2 * d2 * sc / np.abs(C), 0.0) / 4
        for key, num, r, scale in [
            ("A", path.norm_u2[row], A, A + setting.eta_u * inherit),
            ("B", path.norm_w2[row], B, B + setting.eta_w * inherit),
            ("K", path.ntk[row], _f(ref["K"]), None),
            ("K_plain", path.ntk_plain[row], _f(ref["Kp"]), None),
            ("e", path.residual[row], _f(ref["e"]), None),
            ("loss", path.loss[row], _f(ref["loss"]), None),
        ]:
            err = _rel(num, r, np.abs(r) if scale is None else scale)
            assert err <= TOL_MP, (key, row, err)
        err = _rel(path.C[row], C, sc)
        assert err <= TOL_MP, ("C", row, err)
        # ... and relative to |C| itself wherever |cos| > 1e-3 (docs/theory.md §A.7;
        # with G = 0 cos = +-1 throughout, so there: wherever |C| > 1e-3 of its rounding
        # scale).
        cos_ref = _f(ref["cos"])
        big = np.abs(C) > 1e-3 * sc if parallel else np.abs(cos_ref) > 1e-3
        err = _rel(path.C[row][big], C[big], np.abs(C[big]))
        assert err <= TOL_MP, ("C rel", row, err)
        if parallel:  # cos = sign(C), alignment 1 (documented convention)
            sure = np.abs(C) > TOL_MP * sc
            assert np.array_equal(path.cos[row][sure], np.sign(C[sure]))
            assert np.all(path.alignment[row] == 1.0)
        else:
            # cos = C / sqrt(C^2 + G) inherits C's error: |dcos| <= dC / sqrt(C^2+G),
            # i.e. absolute 1e-12 unless sqrt(G) << c_D (nearly parallel at a crossing)
            root = np.hypot(C, math.sqrt(G))
            err = float(
                np.max(np.abs(path.cos[row] - cos_ref) * root / np.maximum(sc, root))
            )
            assert err <= TOL_MP, ("cos", row, err)
            err = float(np.max(np.abs(path.alignment[row] - np.abs(path.cos[row]))))
            assert err == 0.0
        # hyperbolic angle: relative (+-inf matched exactly)
        s_ref = _f(ref["s"])
        err = _rel(path.angle[row], s_ref, np.abs(s_ref))
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


# DOP853 at rtol 1e-12 (docs/theory.md §A.7: the ODE is the less accurate side, as it
# forms kappa C - beta* by cancellation), errors relative to each quantity's scale.
# Measured over 3,000 random draws of these ranges: median 7.5e-13, 99th percentile
# 1.1e-11, worst 4.7e-11 (global error growth over an escape from a small init); the
# bound is 4x the worst.
TOL_ODE = 2e-10


@settings(max_examples=100, deadline=None)
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
    # A too-long trial step of a fast flow (kappa, eta, sigma up to 10) can overflow inside
    # the field; DOP853 rejects it and shrinks the step, so the warning is noise here.
    with np.errstate(over="ignore", invalid="ignore"):
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
    # The ODE resolves the vectors to ~rtol of |u| + |w| (errors couple between the
    # layers), so A = |u|^2 is resolved to ~rtol sqrt(A (A + B)), not to rtol A: with
    # beta* = 0 at width 1 one layer decays like e^{-Gamma t} and only that scale holds.
    errs = {
        "A": np.abs(path.norm_u2[0] - A) / np.sqrt(A * (A + B)),
        "B": np.abs(path.norm_w2[0] - B) / np.sqrt(B * (A + B)),
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
        assert worst <= TOL_ODE, (key, worst)


# --------------------------------------------------------------------------- stuck case


@pytest.mark.parametrize(
    ("u0", "eta", "kappa", "sigma", "beta"),
    [
        (np.array([1.0, 2.0, 2.0]) / 2, 0.5, 0.5, 2.0, -1.5),
        (np.array([3.0]), 1.0, 0.25, 1.0, -2.0),
        (np.array([1.0, -1.0, 3.0, 0.5, 0.25]), 2.0, 1.0, 0.5, -0.75),
        # small init: P0 ~ 1e-9, so P/P0 stays finite while P is already subnormal
        (np.array([1.0, 2.0]) * 2.0**-17, 1.0, 1.0, 1.0, -1.0),
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
    # up to Gamma t = 800: A underflows, and E = e^{-Gamma t} is subnormal at 708-745
    t = np.concatenate(
        [
            [0.0],
            np.geomspace(1e-3 / rate, 800.0 / rate, 30),
            np.arange(650, 750, 5) / rate,
        ]
    )
    with mpmath.workdps(MP_DPS):
        b, kap, A0 = mpmath.mpf(beta), mpmath.mpf(kappa), mpmath.mpf(float(u0 @ u0))
        ref = [
            b
            * A0
            / (kap * A0 + (b - kap * A0) * mpmath.exp(k * abs(b) * mpmath.mpf(ti)))
            for ti in t
        ]
        log_ratio = [mpmath.log(a / A0) for a in ref]
    A = _f(ref)
    path = sol.at(t)
    # Dyadic inputs make Gamma exact; what remains is a few ulps plus the rounding of
    # the product Gamma t, <= eps/2 * Gamma t = 4e-14 relative in E = e^{-Gamma t} at
    # Gamma t <= 745 (beyond, A underflows). The logistic reference is
    # docs/theory.md §A.5's.
    for key, num, r in [
        ("A", path.norm_u2[0], A),
        ("B", path.norm_w2[0], A),
        ("C", path.C[0], A),
        ("K", path.ntk[0], 2.0 * kappa**2 * eta * A),
        ("e", path.residual[0], kappa * A - beta),
    ]:
        err = _rel(num, r, np.abs(r))
        assert err <= 1e-13, (key, err)
    # v+ = e^{lambda s} v+(0) with P/P0 = A/A0: s = ln(A/A0) / (2 eta), finite and
    # exact even where A has underflowed.
    s_ref = _f(log_ratio) / (2.0 * eta)
    err = _rel(path.angle[0], s_ref, np.abs(s_ref))
    assert err <= 1e-13
    vec = sol.params_at(t)
    expected = np.sqrt(A)[:, None] / math.sqrt(float(u0 @ u0)) * u0[None, :]
    full = A > 1e-290  # (where |u|^2 itself underflows, only finiteness is asked)
    for v in (vec.u[0], vec.w[0]):
        assert np.all(np.isfinite(v))
        err = _max_ratio(np.max(np.abs(v - expected), axis=1)[full], np.sqrt(A[full]))
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
            np.abs(
                K**2 - 4 * lam**2 * k**4 * C**2 - k**4 * (delta**2 + 4 * lam**2 * G)
            ),
            K**2,
        ),
        "G": (np.abs(A * B - C**2 - G), A * B),
        "K(C)": (np.abs(K - 2 * k**2 * lam * np.hypot(c_d, C)), K),
    }
    for key, (diff, scale) in checks.items():
        worst = _max_ratio(diff, scale)
        assert worst <= TOL_INV, (key, worst)
    # The vectors of params_at reproduce the scalar path (different formulas: §A.6
    # step 10 against steps 5-8). A layer's vector is resolved to its own norm, except
    # that its component along the other layer is C / |other|, uncertain by
    # sc / |other| near a crossing C = 0 (sc: rounding scale of C, see c_scale).
    vec = sol.params_at(t)
    uu = np.einsum("ijk,ijk->ij", vec.u, vec.u)
    ww = np.einsum("ijk,ijk->ij", vec.w, vec.w)
    uw = np.einsum("ijk,ijk->ij", vec.u, vec.w)
    sc = np.stack(
        [c_scale(setting, r, C[r], p.residual[r], K[r]) for r in range(C.shape[0])]
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        du = np.sqrt(A) + np.where(B > 0, sc / np.sqrt(B), 0.0)
        dw = np.sqrt(B) + np.where(A > 0, sc / np.sqrt(A), 0.0)
    for key, (diff, scale) in {
        "|u|^2": (np.abs(uu - A), np.sqrt(A) * du),
        "|w|^2": (np.abs(ww - B), np.sqrt(B) * dw),
        "u.w": (np.abs(uw - C), np.sqrt(A * B) + sc),
    }.items():
        worst = _max_ratio(diff, scale)
        assert worst <= TOL_INV, (key, worst)


# --------------------------------------------------------------------------- limits


@pytest.mark.parametrize("setting", MP_SETTINGS, ids=lambda s: s.name)
def test_limits(setting: Setting) -> None:
    sol = setting.solve()
    lim = sol.limit()
    assert lim.times.tolist() == [np.inf]
    k, beta = setting.kappa, setting.beta
    lam = math.sqrt(setting.eta_u * setting.eta_w)
    reach = sol.reachable
    assert not np.any(reach & (sol.escape_time == np.inf) & (sol.rate > 0))
    c_inf = np.where(reach, beta / k, 0.0)
    # Reachable: kappa C -> beta*, e -> 0 and L -> L* exactly at t = inf (E = 0 there,
    # C from (beta* + e)/kappa): one rounding of the division.
    np.testing.assert_allclose(k * lim.C[reach, 0], beta, rtol=4e-16, atol=0)
    assert np.all(lim.residual[reach, 0] == 0.0)
    assert np.all(lim.loss[reach, 0] == setting.loss_min)
    # Unreachable (A.5): C -> 0 (the saddle; u, w -> 0 as G = 0), L -> L* + Sigma b^2/2.
    stuck = ~reach
    assert np.all(lim.C[stuck, 0] == 0.0)
    assert np.all(lim.residual[stuck, 0] == -beta)
    np.testing.assert_allclose(
        lim.loss[stuck, 0], setting.loss_min + setting.sigma * beta**2 / 2, rtol=1e-15
    )
    vec = sol.params_at([np.inf])
    assert np.all(vec.u[stuck] == 0.0)
    assert np.all(vec.w[stuck] == 0.0)
    # K_inf = 2 kappa^2 lambda sqrt(c_D^2 + C_inf^2) (A.5) and A_inf, B_inf from the
    # invariants alone: eta_w A - eta_u B = Delta, A B = C_inf^2 + G, evaluated at 60
    # digits from the initial vectors (independent of the P_inf, Q_inf route).
    with mpmath.workdps(MP_DPS):
        for row in range(setting.u0.shape[0]):
            u, w = mp_vectors(setting, row, parallel=bool(sol.gram_det[row] == 0))
            eu, ew = mpmath.mpf(setting.eta_u), mpmath.mpf(setting.eta_w)
            A0 = mpmath.fsum(x * x for x in u)
            B0 = mpmath.fsum(x * x for x in w)
            C0 = mpmath.fsum(x * y for x, y in zip(u, w, strict=True))
            delta = ew * A0 - eu * B0
            G = A0 * B0 - C0**2
            cinf = mpmath.mpf(float(c_inf[row]))
            root = mpmath.sqrt(delta**2 + 4 * eu * ew * (cinf**2 + G))
            A_inf = float((delta + root) / (2 * ew))
            B_inf = float((root - delta) / (2 * eu))
            K_inf = float(mpmath.mpf(k) ** 2 * root)  # = 2 k^2 lam sqrt(c_D^2 + C^2)
            assert float(root) == pytest.approx(
                2 * lam * math.hypot(float(sol.kernel_scale[row]), c_inf[row]),
                rel=1e-13,
            )
            # 1e-12 as in the mpmath test (same closed form, t = inf)
            for name, num, ref in [
                ("A", lim.norm_u2[row, 0], A_inf),
                ("B", lim.norm_w2[row, 0], B_inf),
                ("K", lim.ntk[row, 0], K_inf),
            ]:
                # an exact 0 (a layer that dies, beta* = 0, G = 0) is a ~1e-60
                # residue of the 60-digit difference in the reference
                if num == ref or (num == 0.0 and abs(ref) < 1e-45 * (A_inf + B_inf)):
                    continue
                err = abs(num - ref) / abs(ref)
                assert err <= 1e-12, (name, row, num, ref)
            if sol.gram_det[row] > 0:
                cos_ref = float(cinf / mpmath.sqrt(cinf**2 + G))
                assert lim.cos[row, 0] == pytest.approx(cos_ref, abs=1e-12)
                assert lim.alignment[row, 0] == pytest.approx(abs(cos_ref), abs=1e-12)
            else:
                assert lim.cos[row, 0] == np.sign(c_inf[row])
                assert lim.alignment[row, 0] == 1.0


@pytest.mark.parametrize(
    "setting",
    [s for s in MP_SETTINGS if s.name.startswith("tiny")],
    ids=lambda s: s.name,
)
def test_escape_time_marks_the_escape(setting: Setting) -> None:
    """From a 1e-6 init the residual stays near e0 until t_esc and is gone shortly after
    (A.5: the growing mode needs ln(P_inf/P0)/Gamma to reach O(1))."""
    sol = setting.solve()
    gamma = float(sol.rate[0])
    t_esc = float(sol.escape_time[0])
    assert gamma * t_esc > 20.0  # ln(1 + P_inf/P0) with P0 ~ 1e-12
    e0 = float(sol.at([0.0]).residual[0, 0])
    e = sol.at([t_esc - 3.0 / gamma, t_esc + 10.0 / gamma]).residual[0] / e0
    assert e[0] > 0.9
    assert 0.0 < e[1] < 1e-3


# --------------------------------------------------------------------------- ensembles


@pytest.mark.parametrize("setting", mixed_settings(), ids=lambda s: s.name)
def test_ensemble_equals_single_trajectories(setting: Setting) -> None:
    """Vectorised masks give the same bits as evaluating each trajectory alone."""
    sol = setting.solve()
    t = time_grid(sol)
    path = sol.at(t)
    vec = sol.params_at(t)
    for row in range(setting.u0.shape[0]):
        one = line_solution(
            setting.u0[row],  # 1-D: one trajectory
            setting.w0[row],
            kappa=setting.kappa,
            eta_u=setting.eta_u,
            eta_w=setting.eta_w,
            sigma=setting.sigma,
            beta=setting.beta,
            loss_min=setting.loss_min,
        )
        single = one.at(t)
        for f in fields(single):
            field = f.name
            if field == "times":
                continue
            got = getattr(single, field)
            assert got.shape == (1, t.size)
            np.testing.assert_array_equal(got[0], getattr(path, field)[row], field)
        v = one.params_at(t)
        np.testing.assert_array_equal(v.u[0], vec.u[row])
        np.testing.assert_array_equal(v.w[0], vec.w[row])


def test_no_warnings_and_finite_outputs_for_degenerate_inputs() -> None:
    """All-zero, exactly parallel/antiparallel and tiny inits at t = 0 ... inf: every
    observable is finite (the angle may be +-inf), nothing warns (filterwarnings =
    error)."""
    for setting in mixed_settings():
        sol = setting.solve()
        t = np.array([0.0, 1e-300, 1e-3, 1.0, 1e3, 1e300, np.inf])
        path = sol.at(t)
        for f in fields(path):
            field = f.name
            if field in ("times", "angle"):
                continue
            assert np.all(np.isfinite(getattr(path, field))), (setting.name, field)
        assert not np.any(np.isnan(path.angle))
        vec = sol.params_at(t)
        assert np.all(np.isfinite(vec.u))
        assert np.all(np.isfinite(vec.w))
        assert np.all(np.isfinite(sol.kernel_scale))
        assert not np.any(np.isnan(sol.escape_time))


# --------------------------------------------------------------------------- bad input


_GOOD: dict[str, Any] = {
    "kappa": 1.0,
    "eta_u": 1.0,
    "eta_w": 1.0,
    "sigma": 1.0,
    "beta": 1.0,
}


@pytest.mark.parametrize(
    ("change", "name"),
    [
        ({"sigma": -1.0}, "sigma"),
        ({"sigma": 0.0}, "sigma"),
        ({"eta_u": 0.0}, "eta_u"),
        ({"eta_w": -0.5}, "eta_w"),
        ({"kappa": 0.0}, "kappa"),
        ({"kappa": math.nan}, "kappa"),
        ({"beta": math.inf}, "beta"),
        ({"loss_min": math.nan}, "loss_min"),
    ],
)
def test_bad_scalars(change: dict[str, float], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        line_solution(np.ones((2, 3)), np.ones((2, 3)), **{**_GOOD, **change})


@pytest.mark.parametrize(
    ("u0", "w0", "name"),
    [
        (np.ones((2, 3)), np.ones((2, 4)), "w0"),
        (np.ones((2, 3)), np.ones((3, 3)), "w0"),
        (np.ones((2, 3, 1)), np.ones((2, 3, 1)), "u0"),
        (np.ones((2, 0)), np.ones((2, 0)), "u0"),
        (np.array([1.0, np.nan]), np.ones(2), "u0"),
        (np.ones(2), np.array([np.inf, 1.0]), "w0"),
    ],
)
def test_bad_vectors(u0: FloatArray, w0: FloatArray, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        line_solution(u0, w0, **_GOOD)


@pytest.mark.parametrize("times", [[-1.0, 1.0], [np.nan], [[0.0, 1.0]]])
def test_bad_times(times: Any) -> None:
    sol = line_solution(np.ones(3), np.ones(3), **_GOOD)
    with pytest.raises(ValueError, match="times"):
        sol.at(times)
    with pytest.raises(ValueError, match="times"):
        sol.params_at(times)


def test_shapes_and_one_dimensional_input() -> None:
    rng = np.random.default_rng(3)
    u, w = rng.normal(size=(5, 7)), rng.normal(size=(5, 7))
    sol = line_solution(u, w, **_GOOD)
    assert (sol.trajectories, sol.width) == (5, 7)
    path = sol.at([0.0, 1.0, np.inf])
    assert path.times.shape == (3,)
    assert path.C.shape == path.loss.shape == (5, 3)
    vec = sol.params_at([0.0, 1.0])
    assert vec.u.shape == vec.w.shape == (5, 2, 7)
    np.testing.assert_array_equal(vec.u[:, 0], u)  # t = 0 returns the init exactly
    np.testing.assert_array_equal(vec.w[:, 0], w)
    for attr in ("delta", "gram_det", "kernel_scale", "rate", "escape_time"):
        assert getattr(sol, attr).shape == (5,)
    one = line_solution(u[2], w[2], **_GOOD)
    assert one.at([1.0]).C.shape == (1, 1)
    assert one.at([1.0]).C[0, 0] == path.C[2, 1]


def test_time_blocks_give_the_same_bits() -> None:
    """``at`` evaluates large (trajectories, times) grids in blocks of times; block
    boundaries must not change a single bit."""
    rng = np.random.default_rng(5)
    u, w = rng.normal(size=(3000, 3)), rng.normal(size=(3000, 3))
    sol = line_solution(u, w, **{**_GOOD, "beta": -0.7})
    t = np.concatenate([[0.0], np.geomspace(1e-3, 1e2, 60), [np.inf]])
    whole = sol.at(t)
    for j in (0, 21, 22, 61):  # inside, at and past the block edges (21 columns)
        one = sol.at(t[j : j + 1])
        for f in fields(one):
            if f.name != "times":
                np.testing.assert_array_equal(
                    getattr(one, f.name)[:, 0], getattr(whole, f.name)[:, j], f.name
                )
