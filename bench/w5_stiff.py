"""W5: the stiff lazy regime (issue #17). A linear network with a large initialisation:

    width 256, d = 30, n = 20 samples x = z v + 0.3 noise, y = 1.5 z + 0.1 noise (v a unit
    vector, z ~ N(0, 1)), kappa = 1, u_i ~ N(0, 9), W_ik ~ N(0, 9/d), eta_u = eta_w = 1,
    gradient flow on [0, 3000], the loss at 31 log-spaced times.

The NTK is large (its top rate is ~1e4) while the slowest direction needs the whole
horizon: dopri5 reaches its step limit. ntkflow's default call (solver "auto": dopri5,
then Rodas4 once stability holds the steps; docs/theory.md §B.6) is timed against SciPy's
implicit solvers (BDF, Radau, LSODA, each given the analytic Jacobian, looped over
trajectories) and diffrax's Kvaerno5 (jit+vmap), at matched accuracy: every line's distance
to a tight reference (ntkflow rodas4 at rtol 1e-12, itself checked against SciPy Radau at
rtol 1e-12 on two trajectories) must reach ntkflow default's; the peers' rtol is tightened
by 10^0.5 until it does.

What the peers integrate. The full flow has m(1 + d) = 7,936 parameters; an implicit
solver on it factors a dense 7,936 x 7,936 Jacobian (3e11 flops) again and again (one
trajectory of LSODA on it is run at rtol 1e-8, stopped after 10 minutes, and reported,
extrapolated, not matched). The matched peers integrate the width-independent reduced
system of docs/theory.md §B.1 (p, M, a: d + d^2 + 1 = 931 numbers) with its exact dense
Jacobian: the same algorithmic idea as ntkflow's, so their ratio to ntkflow's reduced line
is implementation speed, and the "like for like" line says so.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from ._harness import Config, Impl, Row, max_rel_diff, run_impls, say
from .ladder import Line, dev_rows, tune
from .peers import Compiled, load

T_MAX, N_TIMES, RTOL, S_INIT = 3000.0, 31, 1e-8, 3.0
REF_RTOL = 1e-12
# (trajectories, width, d, samples) per mode; tiny keeps the stiffness, not the size.
SIZES = {"full": (256, 256, 30, 20), "quick": (32, 256, 30, 20), "tiny": (4, 64, 8, 20)}
# Trajectories the SciPy loops calibrate on and are timed on (time extrapolated).
SCIPY_CALIB = {"full": 2, "quick": 2, "tiny": 2}
SCIPY_TIMED = {"full": 16, "quick": 4, "tiny": 2}
CAP_S = {"full": 900.0, "quick": 150.0, "tiny": 10.0}
RTOLS = [RTOL * 10.0 ** (-0.5 * k) for k in range(9)]  # 1e-8 ... 1e-12
FULL_BUDGET_S = {"full": 600.0, "quick": 0.0, "tiny": 30.0}
# Kvaerno5's steps here cost about 0.1-0.2 s each (7 stages, Newton on 931 unknowns) and at
# rtol 1e-8 it had reached t = 0.09 of 3000 after 2000 steps (about 6 minutes on 1
# trajectory), where Rodas4 needs 176 steps in all. Past 1000 steps it cannot come within
# 20x of ntkflow; the cap bounds the line's time, and an unfinished run is reported so.
KV_MAX_STEPS = 1000


def dataset(d: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    z = rng.standard_normal(n)
    v = rng.standard_normal(d)
    v /= np.linalg.norm(v)
    X = np.outer(z, v) + 0.3 * rng.standard_normal((n, d))
    return X, 1.5 * z + 0.1 * rng.standard_normal(n)


class Reduced:
    """The reduced flow of docs/theory.md §B.1 on the data's moments, written from the
    loss L = kappa^2/2 p.Sigma p - kappa p.b + y2/2 (not from ntkflow's code), with its
    exact Jacobian, for SciPy."""

    def __init__(self, X: np.ndarray, y: np.ndarray, kappa: float = 1.0) -> None:
        n, self.d = X.shape
        self.S, self.b = X.T @ X / n, X.T @ y / n
        self.y2, self.k = float(y @ y / n), kappa

    def state(self, u: np.ndarray, W: np.ndarray) -> np.ndarray:
        return np.concatenate([W.T @ u, (W.T @ W).ravel(), [u @ u]])

    def split(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        d = self.d
        return z[:d], z[d:d + d * d].reshape(d, d), float(z[-1])

    def field(self, _t: float, z: np.ndarray) -> np.ndarray:
        p, M, a = self.split(z)
        g = self.k * (self.b - self.k * self.S @ p)
        return np.concatenate([a * g + M @ g, (np.outer(g, p) + np.outer(p, g)).ravel(),
                               [2.0 * p @ g]])

    def jac(self, _t: float, z: np.ndarray) -> np.ndarray:
        d = self.d
        p, M, a = self.split(z)
        g = self.k * (self.b - self.k * self.S @ p)
        G = -self.k**2 * self.S  # dg/dp
        J = np.zeros((z.size, z.size))
        J[:d, :d] = (a * np.eye(d) + M) @ G
        J[:d, d:d + d * d] = np.kron(np.eye(d), g[None, :])  # d(M g)_i / dM_il = g_l
        J[:d, -1] = g
        I = np.eye(d)
        # dM_kl/dp_j = G_kj p_l + g_k I_lj + I_kj g_l + p_k G_lj
        dM = (G[:, None, :] * p[None, :, None] + g[:, None, None] * I[None, :, :]
              + I[:, None, :] * g[None, :, None] + p[:, None, None] * G[None, :, :])
        J[d:d + d * d, :d] = dM.reshape(d * d, d)
        J[-1, :d] = 2.0 * (g + G @ p)
        return J

    def loss(self, z: np.ndarray) -> np.ndarray:
        p = z[..., :self.d]
        return (0.5 * self.k**2 * np.einsum("...d,de,...e->...", p, self.S, p)
                - self.k * p @ self.b + 0.5 * self.y2)


class _Deadline(Exception):
    pass


def _with_deadline(f: Any, deadline: float) -> Any:
    """f, raising _Deadline once the clock passes ``deadline``: a SciPy solve cannot be
    stopped from outside, and one setting of BDF on this case takes minutes."""
    def g(t: float, z: np.ndarray) -> np.ndarray:
        if time.perf_counter() > deadline:
            raise _Deadline
        return f(t, z)
    return g


def scipy_reduced(red: Reduced, u0: np.ndarray, W0: np.ndarray, times: np.ndarray,
                  method: str, rtol: float, budget: float = math.inf) -> np.ndarray:
    """The loss of each trajectory; all NaN if the loop passes ``budget`` seconds (the
    ladder then reads it as over its cap, with the time spent)."""
    from scipy.integrate import solve_ivp

    deadline = time.perf_counter() + budget
    out = np.empty((u0.shape[0], times.size))
    for k in range(u0.shape[0]):
        try:
            sol = solve_ivp(_with_deadline(red.field, deadline), (0.0, T_MAX),
                            red.state(u0[k], W0[k]), method=method, t_eval=times,
                            rtol=rtol, atol=rtol * 1e-6, jac=red.jac)
        except _Deadline:
            print(f"      ({method} passed its budget of {budget:.3g} s: stopped)")
            return np.full_like(out, np.nan)
        if not sol.success:
            raise RuntimeError(f"{method}: {sol.message}")
        out[k] = red.loss(sol.y.T)
    return out


def scipy_full(X: np.ndarray, y: np.ndarray, u0: np.ndarray, W0: np.ndarray,
               times: np.ndarray, method: str, rtol: float, budget: float) -> np.ndarray:
    """The full parameter flow with the analytic dense Jacobian: what a user who does not
    know §B.1 writes. One trajectory at a time."""
    from scipy.integrate import solve_ivp

    n, d = X.shape
    S, b = X.T @ X / n, X.T @ y / n
    m = u0.shape[1]

    def field(_t: float, th: np.ndarray) -> np.ndarray:
        u, W = th[:m], th[m:].reshape(m, d)
        g = b - S @ (W.T @ u)
        return np.concatenate([W @ g, np.outer(u, g).ravel()])

    def jac(_t: float, th: np.ndarray) -> np.ndarray:
        u, W = th[:m], th[m:].reshape(m, d)
        g = b - S @ (W.T @ u)
        # dp = W^T du + dW^T u;  dg = -S dp
        Jp = np.zeros((d, m * (1 + d)))
        Jp[:, :m] = W.T
        Jp[:, m:] = np.kron(u[None, :], np.eye(d))  # dp_j/dW_il = u_i delta_jl
        Jg = -S @ Jp
        J = np.zeros((m * (1 + d), m * (1 + d)))
        J[:m] = W @ Jg
        J[:m, m:] += np.kron(np.eye(m), g[None, :])
        J[m:] = (u[:, None, None] * Jg[None, :, :]).reshape(m * d, -1)
        J[m:, :m] += np.kron(np.eye(m), g[:, None])
        return J

    deadline = time.perf_counter() + budget
    out = np.empty((u0.shape[0], times.size))
    for k in range(u0.shape[0]):
        try:
            sol = solve_ivp(_with_deadline(field, deadline), (0.0, T_MAX),
                            np.concatenate([u0[k], W0[k].ravel()]), method=method,
                            t_eval=times, rtol=rtol, atol=rtol * 1e-6, jac=jac)
        except _Deadline:
            return np.full_like(out, np.nan)
        if not sol.success:
            raise RuntimeError(f"{method}: {sol.message}")
        th = sol.y.T
        p = np.einsum("tmd,tm->td", th[:, m:].reshape(-1, m, d), th[:, :m])
        out[k] = 0.5 * np.einsum("td,de,te->t", p, S, p) - p @ b + 0.5 * float(y @ y / n)
    return out


def diffrax_kvaerno5(jax: Any, diffrax: Any, red: Reduced, z0: np.ndarray,
                     times: np.ndarray, rtol: float) -> Compiled:
    """diffrax Kvaerno5 (ESDIRK, order 5) on the reduced system, jit+vmap over
    trajectories, PID controller; its chord solves use the autodiff Jacobian."""
    jnp = jax.numpy
    S, b, k, d = jnp.asarray(red.S), jnp.asarray(red.b), red.k, red.d

    def rhs(_t: Any, z: Any, _args: Any) -> Any:
        p, M, a = z[:d], z[d:d + d * d].reshape(d, d), z[-1]
        g = k * (b - k * S @ p)
        return jnp.concatenate([a * g + M @ g, (jnp.outer(g, p) + jnp.outer(p, g)).ravel(),
                                jnp.array([2.0]) * (p @ g)])

    def loss(_t: Any, z: Any, _args: Any) -> Any:
        p = z[:d]
        return 0.5 * k**2 * p @ S @ p - k * p @ b + 0.5 * red.y2

    term = diffrax.ODETerm(rhs)
    ctrl = diffrax.PIDController(rtol=rtol, atol=rtol * 1e-6)
    # The Newton (chord) iterations' tolerance: diffrax takes the step controller's by
    # default, and that tight a tolerance fails the chord iterations and rejects steps
    # (tiny case, rtol 1e-8: 2843 steps, 1243 accepted; at 100x and 10^4x looser, 1578 and
    # 760). A loose chord tolerance, as Hairer and Wanner recommend for the Newton solves
    # of implicit methods, gave 184 steps; the ladder still checks the answers' accuracy.
    solver = diffrax.Kvaerno5(root_finder=diffrax.VeryChord(rtol=1e-3, atol=1e-6))
    saveat = diffrax.SaveAt(ts=jnp.asarray(times), fn=loss)

    def one(z: Any) -> Any:
        return diffrax.diffeqsolve(term, solver, t0=0.0, t1=T_MAX, dt0=None,
                                   y0=z, stepsize_controller=ctrl, saveat=saveat,
                                   max_steps=KV_MAX_STEPS, throw=False).ys

    return Compiled(jax, jax.jit(jax.vmap(one)), (jnp.asarray(z0),))


def run(cfg: Config, gemm_gflops: float) -> dict[str, Any]:
    del gemm_gflops
    import ntkflow as nf

    n_traj, m, d, n = SIZES[cfg.mode]
    label = {"full": "", "quick": "  [QUICK: fewer trajectories]",
             "tiny": "  [TINY: smoke test]"}[cfg.mode]
    print(f"\nW5: stiff lazy regime, {n_traj} trajectories x width {m}, d = {d}, {n} samples, "
          f"init s_u = s_w = {S_INIT:g}, t_max {T_MAX:g}, loss at {N_TIMES} log-spaced "
          f"times{label}")
    X, y = dataset(d, n)
    data, net = nf.Dataset(X, y), nf.TwoLayer(width=m)
    init = nf.Gaussian(s_u=S_INIT, s_w=S_INIT)
    rec = nf.Record(times=N_TIMES, spacing="log", ntk="none")
    times = rec.resolve_times(nf.GradientFlow(t_max=T_MAX))

    def ntk(s: float = S_INIT, method: str = "full", **kw: Any) -> Any:
        train = nf.GradientFlow(t_max=T_MAX, rtol=RTOL, **kw)
        return lambda: nf.simulate(net, data, train, init=nf.Gaussian(s_u=s, s_w=s),
                                   trajectories=n_traj, seed=0, record=rec,
                                   threads=cfg.threads, method=method)

    default = nf.simulate(net, data, nf.GradientFlow(t_max=T_MAX, rtol=RTOL), init=init,
                          trajectories=n_traj, seed=0, record=rec, threads=cfg.threads)
    print(f"  ntkflow default: {default.solver}; steps median {int(np.median(default.steps))}"
          f", rejected median {int(np.median(default.rejected))}")
    tight = nf.simulate(net, data, nf.GradientFlow(t_max=T_MAX, rtol=REF_RTOL, atol=1e-20,
                                                   solver="rodas4"),
                        init=init, trajectories=n_traj, seed=0, record=rec,
                        threads=cfg.threads)
    params = default.initial_params()
    u0, W0 = params.u0, params.W0
    red = Reduced(X, y)
    summary: list[str] = []
    scipy, why_scipy = load("scipy", cfg.peers)
    if scipy:  # the reference itself, against an independent integrator
        lsoda = scipy_reduced(red, u0[:1], W0[:1], times, "LSODA", 1e-11)
        check = max_rel_diff(tight.loss[:1], lsoda, per_row=True)
        say(summary, f"reference (ntkflow rodas4, rtol {REF_RTOL:g}) vs SciPy LSODA on the "
            f"reduced system at rtol 1e-11, 1 trajectory: max rel diff {check:.1e}")
    ref = tight.loss[:, None, :]
    target = dev_rows(default.loss[:, None, :], ref)
    say(summary, f"ntkflow default's distance to the reference: {target.max():.2e} (the "
        "target every peer must reach)")

    def loss(run_it: Any) -> Any:
        return lambda: run_it().loss

    impls = [
        Impl("ntkflow default (auto)", loss(ntk()), kind="ntkflow",
             note=f"rtol {RTOL:g}; {default.solver}"),
        Impl("ntkflow rodas4 (full)", loss(ntk(solver="rodas4")), kind="ntkflow", tol=1e-5),
        Impl("ntkflow rodas4 (reduced)", loss(ntk(solver="rodas4", method="reduced")),
             kind="ntkflow", tol=1e-5, note="the peers' state: like for like"),
    ]
    rows = run_impls(impls, cfg, work=float(n_traj), unit="traj/s", per_row=True,
                     exact=tight.loss, exact_label="reference")
    t_default = next((r.median for r in rows if r.name.startswith("ntkflow default")
                      and r.status == "ok"), math.nan)
    out_rows = [r.to_json() for r in rows]
    _explicit_lines(nf, ntk, default, rec, n_traj, t_default, summary)
    out_rows += _matched_peers(cfg, red, u0, W0, times, ref, target, n_traj, t_default,
                               scipy, why_scipy, summary)
    out_rows += _full_system_peer(cfg, X, y, u0, W0, times, ref, n_traj, t_default, scipy,
                                  summary)
    return {"workload": "W5", "trajectories": n_traj, "width": m, "dim": d, "unit": "traj/s",
            "rows": out_rows, "summary": summary,
            "default_solver": default.solver,
            "steps_median": float(np.median(default.steps)), "target": float(target.max())}


def _explicit_lines(nf: Any, ntk: Any, default: Any, rec: Any, n_traj: int,
                    t_default: float, summary: list[str]) -> None:
    """dopri5 alone on the same case, and the default call at a small (non-stiff) init."""
    small = ntk(s=0.1)
    t0 = time.perf_counter()
    res_small = small()
    t_small = time.perf_counter() - t0
    say(summary, f"the default call at init 0.1 (not stiff at the start) takes {t_small:.3g} s "
        f"({res_small.solver}); at init {S_INIT:g} it takes {t_default:.3g} s: "
        f"{t_default / t_small:.3g}x (target <= 5x)")
    k = min(4, n_traj)
    t0 = time.perf_counter()
    dop = nf.simulate(default.net, default.data,
                      nf.GradientFlow(t_max=T_MAX, rtol=RTOL, solver="dopri5"),
                      init=default.init, trajectories=k, seed=0, record=rec)
    t_dop = time.perf_counter() - t0
    done = int(np.sum(dop.status == 0))
    if done == k:
        say(summary, f"dopri5 alone: {k}/{k} trajectories finished, median "
            f"{int(np.median(dop.steps))} steps, {t_dop / k:.3g} s per trajectory "
            f"({t_dop / k / (t_default / n_traj):.3g}x the default's time per trajectory)")
    else:
        say(summary, f"dopri5 alone: {done}/{k} trajectories finished; the rest stopped at "
            f"their default step limit ({int(np.max(dop.steps + dop.rejected))} steps) by "
            f"t = {np.nanmax(dop.t_fail):.3g} of {T_MAX:g}, after {t_dop / k:.3g} s per "
            "trajectory")


def _matched_peers(cfg: Config, red: Reduced, u0: np.ndarray, W0: np.ndarray,
                   times: np.ndarray, ref: np.ndarray, target: np.ndarray, n_traj: int,
                   t_default: float, scipy: Any, why_scipy: str | None,
                   summary: list[str]) -> list[dict[str, Any]]:
    """Each peer's rtol tightened until it is as close to the reference as ntkflow's
    default, then timed there (SciPy loops on a subset, time extrapolated)."""
    print(f"\n  W5 peers at matched accuracy (target {target.max():.2e}; rtol from {RTOL:g} "
          f"down by 10^0.5, atol = 1e-6 rtol; cap {CAP_S[cfg.mode]:.0f} s per run projected "
          f"to {n_traj})")
    out: list[dict[str, Any]] = []
    best = math.inf
    calib = np.arange(min(SCIPY_CALIB[cfg.mode], n_traj))
    timed_idx = np.arange(min(SCIPY_TIMED[cfg.mode], n_traj))
    for method in ("BDF", "Radau", "LSODA"):
        name = f"scipy solve_ivp {method} + jac (loop, reduced)"
        if not scipy:
            print(f"  {name:<44}{why_scipy}")
            continue
        line = Line(name, lambda rt, idx, meth=method: (
            lambda: scipy_reduced(red, u0[idx], W0[idx], times, meth, rt,
                                  CAP_S[cfg.mode] * idx.size / n_traj)[:, None, :]),
            RTOLS, lambda rt: f"rtol {rt:.2g}", jit=False, stop_unfinished=True)
        print(f"  {name}")
        tuned = tune(line, calib, n_traj, ref, target, CAP_S[cfg.mode], len(RTOLS),
                     lambda first: 1 if first * n_traj / timed_idx.size > 30 else 3,
                     run_idx=timed_idx, rows="trajectories")
        best = _report(name, tuned, n_traj, t_default, summary, out, best)
    jax, why = load("jax", cfg.peers)
    diffrax, why2 = load("diffrax", cfg.peers) if jax else (None, why)
    name = "diffrax Kvaerno5 (jit+vmap, reduced)"
    if diffrax:
        z0 = np.stack([red.state(u0[k], W0[k]) for k in range(n_traj)])
        sub = np.arange(min(2, n_traj))  # a vmapped batch of 8 took over 15 minutes
        print(f"    (at most {KV_MAX_STEPS} steps per solve; ntkflow's steps are above)")

        def make(rt: float, idx: np.ndarray) -> Any:
            f = diffrax_kvaerno5(jax, diffrax, red, z0[idx], times, rt)
            return lambda: np.asarray(f())[:, None, :]

        print(f"  {name}")
        line = Line(name, make, RTOLS, lambda rt: f"rtol {rt:.2g}", jit=True,
                    stop_unfinished=True)
        tuned = tune(line, sub, n_traj, ref, target, CAP_S[cfg.mode], len(RTOLS),
                     lambda first: 1, run_idx=sub, rows="trajectories")
        best = _report(name, tuned, n_traj, t_default, summary, out, best)
    else:
        print(f"  {name:<44}{why2}")
    if math.isfinite(best) and math.isfinite(t_default):
        say(summary, f"ntkflow default is {best / t_default:.3g}x faster than the fastest "
            "matched peer (target >= 20x)")
    return out


def _report(name: str, tuned: Any, n_traj: int, t_default: float, summary: list[str],
            out: list[dict[str, Any]], best: float) -> float:
    med = float(np.median(tuned.times))
    matched = "matched" if tuned.full_met else "NOT matched"
    if not np.isfinite(tuned.answer).all():  # stopped at its budget or step limit
        matched, med = "stopped at its budget or step limit, a lower bound:", med
    scale = f", timed on {n_traj / tuned.scale:.0f} and x{tuned.scale:g}" \
        if tuned.scale != 1 else ""
    say(summary, f"{name}: {matched} at rtol {tuned.setting:.2g} ({tuned.stop}); {med:.4g} s "
        f"for {n_traj}{scale}; {med / t_default:.3g}x ntkflow default's time")
    row = Row(name, "ok" if tuned.full_met else "not matched", times=tuned.times, median=med,
              min=min(tuned.times), max=max(tuned.times), throughput=n_traj / med,
              ratio=med / t_default, note=f"matched accuracy at rtol {tuned.setting:.2g}"
              if tuned.full_met else f"not matched ({tuned.stop})")
    out.append({**row.to_json(), "setting": f"rtol {tuned.setting:.2g}", "ladder": tuned.log})
    return min(best, med) if tuned.full_met else best


def _full_system_peer(cfg: Config, X: np.ndarray, y: np.ndarray, u0: np.ndarray,
                      W0: np.ndarray, times: np.ndarray, ref: np.ndarray, n_traj: int,
                      t_default: float, scipy: Any, summary: list[str]
                      ) -> list[dict[str, Any]]:
    """SciPy LSODA (the fastest SciPy line on the reduced system) on the full parameter
    flow with its dense analytic Jacobian, one trajectory at rtol 1e-8, stopped after
    FULL_BUDGET_S: what the reduced system saves (one setting, not matched)."""
    if not scipy or cfg.mode == "quick":
        return []
    P = u0.shape[1] * (1 + W0.shape[2])
    budget = FULL_BUDGET_S[cfg.mode]
    t0 = time.perf_counter()
    loss = scipy_full(X, y, u0[:1], W0[:1], times, "LSODA", RTOL, budget)
    t = time.perf_counter() - t0
    if np.isnan(loss).all():
        say(summary, f"scipy solve_ivp LSODA + dense jac on the full {P}-parameter flow: "
            f"unfinished after {t:.3g} s for 1 trajectory (rtol {RTOL:g}); more than "
            f"{t * n_traj:.4g} s for {n_traj}, over {t * n_traj / t_default:.3g}x ntkflow "
            "default's time")
        dev = math.inf
    else:
        dev = float(dev_rows(loss[:, None, :], ref[:1]).max())
        say(summary, f"scipy solve_ivp LSODA + dense jac on the full {P}-parameter flow: "
            f"{t:.3g} s for 1 trajectory at rtol {RTOL:g} (distance {dev:.1e}), "
            f"{t * n_traj:.4g} s extrapolated to {n_traj}: {t * n_traj / t_default:.3g}x "
            "ntkflow default's time (one setting, not matched)")
    row = Row("scipy solve_ivp LSODA + jac (full, 1 traj)", "not matched",
              times=[t * n_traj], median=t * n_traj, throughput=n_traj / (t * n_traj),
              ratio=t * n_traj / t_default,
              note=f"1 trajectory x{n_traj}, rtol {RTOL:g}, distance {dev:.1e}"
              + (" (stopped: a lower bound)" if not math.isfinite(dev) else ""))
    return [row.to_json()]
