"""Layer-wise weight decay on the moments path (docs/theory.md §B.5).

The references here are written from the formulas of §B.5, not from the core: the full
parameter flow with decay and the reduced system (p, M, a), both integrated by SciPy, and a
NumPy loop of the descent step."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.integrate import solve_ivp

import ntkflow as nf

from .reference import assert_close_to_scale

KAPPA = 0.8
ETA_U, ETA_W = 1.3, 0.6
LAM_U, LAM_W = 0.15, 0.04
WIDTH = 5
N = 3  # trajectories
T_MAX = 4.0
FIELDS = ("loss", "p", "norm_u2", "norm_w2")


def moments(dim: int) -> nf.Moments:
    rng = np.random.default_rng(11 + dim)
    A = rng.normal(size=(dim, dim))
    Sigma = A @ A.T / dim + 0.3 * np.eye(dim)
    b = rng.normal(size=dim) + 0.5
    return nf.Moments(Sigma, b, y2=float(b @ np.linalg.solve(Sigma, b)) + 0.4)


def flow(**kw) -> nf.GradientFlow:
    base = dict(eta_u=ETA_U, eta_w=ETA_W, lambda_u=LAM_U, lambda_w=LAM_W, t_max=T_MAX,
                rtol=1e-11, atol=1e-14)
    base.update(kw)
    return nf.GradientFlow(**base)


def run(dim: int, train, *, method: str = "full", width: int = WIDTH, kappa: float = KAPPA,
        times=9, **rec):
    return nf.simulate(nf.TwoLayer(width=width, kappa=kappa), moments(dim), train,
                       init=nf.Gaussian(0.7, 0.9, correlation=0.3), trajectories=N, seed=5,
                       record=nf.Record(times=times, **rec), method=method)


# ------------------------------------------------------------------ independent references


def data_loss(p, mom: nf.Moments, y2: float):
    """L from the dataset form kappa^2/2 p^T Sigma p - kappa p^T b + y2/2."""
    S, b = mom.Sigma, mom.b
    return (0.5 * KAPPA**2 * np.einsum("...d,de,...e->...", p, S, p) - KAPPA * p @ b
            + 0.5 * y2)


def reduced_reference(mom: nf.Moments, u0, W0, times, eta_u=ETA_U, eta_w=ETA_W,
                      lam_u=LAM_U, lam_w=LAM_W):
    """The §B.5 reduced system for (p, M, a) plus D = sum_i delta_i integrated by its own law
    dD/dt = -2 eta_u eta_w (lam_u a - lam_w tr M); SciPy DOP853, rtol 1e-12.
    Returns p (T, d), a (T,), tr M (T,), D (T,)."""
    S, b = mom.Sigma, mom.b
    d = S.shape[0]

    def rhs(_t, y):
        p, M, a = y[:d], y[d:d + d * d].reshape(d, d), y[d + d * d]
        g = KAPPA * (b - KAPPA * S @ p)  # minus dL/dp
        dp = eta_w * (a * g - lam_w * p) + eta_u * (M @ g - lam_u * p)
        dM = eta_w * (np.outer(g, p) + np.outer(p, g) - 2 * lam_w * M)
        da = 2 * eta_u * (p @ g - lam_u * a)
        dD = -2 * eta_u * eta_w * (lam_u * a - lam_w * np.trace(M))
        return np.concatenate([dp, dM.ravel(), [da, dD]])

    a0, M0 = u0 @ u0, W0.T @ W0
    y0 = np.concatenate([W0.T @ u0, M0.ravel(), [a0, eta_w * a0 - eta_u * np.trace(M0)]])
    sol = solve_ivp(rhs, (0.0, float(times[-1])), y0, method="DOP853", t_eval=times,
                    rtol=1e-12, atol=1e-14)
    assert sol.success, sol.message
    y = sol.y.T
    trM = np.trace(y[:, d:d + d * d].reshape(-1, d, d), axis1=1, axis2=2)
    return y[:, :d], y[:, d + d * d], trM, y[:, -1]


def full_reference(mom: nf.Moments, u0, W0, times):
    """The full m(1 + d) parameter flow with decay, SciPy DOP853, rtol 1e-12."""
    S, b = mom.Sigma, mom.b
    m, d = W0.shape

    def rhs(_t, y):
        u, W = y[:m], y[m:].reshape(m, d)
        g = KAPPA * (b - KAPPA * S @ (W.T @ u))
        du = ETA_U * (W @ g - LAM_U * u)
        dW = ETA_W * (np.outer(u, g) - LAM_W * W)
        return np.concatenate([du, dW.ravel()])

    sol = solve_ivp(rhs, (0.0, float(times[-1])), np.concatenate([u0, W0.ravel()]),
                    method="DOP853", t_eval=times, rtol=1e-12, atol=1e-14)
    assert sol.success, sol.message
    u, W = sol.y[:m].T, sol.y[m:].T.reshape(-1, m, d)
    return u, W


# ------------------------------------------------------------------------------ the tests


@pytest.mark.parametrize("dim", [1, 3])
def test_methods_agree_with_each_other_and_with_scipy(dim):
    mom = moments(dim)
    full = run(dim, flow(), params="all")
    stage = run(dim, flow(), method="stagewise")
    red = run(dim, flow(), method="reduced")
    # fixed-step rk4: for dim = 1 the SIMD lanes, for dim = 3 the fused step
    rk4 = run(dim, flow(solver="rk4", dt=2e-3))
    rk4_stage = run(dim, flow(solver="rk4", dt=2e-3), method="stagewise")
    for f in FIELDS:
        ref_ = getattr(full, f)
        assert_close_to_scale(getattr(stage, f), ref_, 1e-9, f"stagewise {f}")
        assert_close_to_scale(getattr(red, f), ref_, 1e-9, f"reduced {f}")
        assert_close_to_scale(getattr(rk4, f), ref_, 1e-9, f"rk4 full {f}")
        # the same Runge-Kutta method on the same parameters: rounding apart
        assert_close_to_scale(getattr(rk4, f), getattr(rk4_stage, f), 1e-12, f"rk4 {f}")
    # decay did something: the norms of the run differ from an undecayed one
    free = run(dim, flow(lambda_u=0.0, lambda_w=0.0))
    assert np.max(np.abs(free.norm_u2[:, -1] - full.norm_u2[:, -1])) > 1e-2

    init = full.initial_params()
    times = full.times
    for k in range(N):
        u0, W0 = init.u0[k], init.W0[k]
        p, a, trM, _ = reduced_reference(mom, u0, W0, times)
        u, W = full_reference(mom, u0, W0, times)
        pk = full.p[k].reshape(len(times), dim)
        assert_close_to_scale(pk, p, 1e-9, "p vs scipy reduced")
        assert_close_to_scale(full.norm_u2[k], a, 1e-9, "norm_u2 vs scipy reduced")
        assert_close_to_scale(full.norm_w2[k], trM, 1e-9, "norm_w2 vs scipy reduced")
        assert_close_to_scale(full.loss[k], data_loss(p, mom, mom.y2), 1e-9, "loss")
        assert_close_to_scale(full.u[k], u, 1e-9, "u vs scipy full")
        assert_close_to_scale(full.W[k], W, 1e-9, "W vs scipy full")


def test_fused_fixed_step_above_the_lanes_width_for_dim_1():
    """dim 1 fixed steps run in SIMD lanes up to width 4096 (checked against stagewise in
    the test above) and in LinearFused<2> beyond: that one against stagewise too."""
    train = flow(solver="rk4", dt=0.01, t_max=1.0)
    kw = dict(width=4097, kappa=4097**-0.5, params="final")
    fused = run(1, train, **kw)
    stage = run(1, train, method="stagewise", **kw)
    assert np.all(fused.ok) and fused.loss[0, -1] < 0.5 * fused.loss[0, 0]
    for f in FIELDS + ("u", "W"):
        assert_close_to_scale(getattr(fused, f), getattr(stage, f), 1e-12, f)


@pytest.mark.parametrize("dim", [1, 3])
@pytest.mark.parametrize("method", ["full", "stagewise"])
def test_matched_decay_shrinks_every_delta_exponentially(dim, method):
    mu = 0.3
    train = flow(lambda_u=mu * ETA_W, lambda_w=mu * ETA_U)
    res = run(dim, train, method=method, deltas=True)
    factor = np.exp(-2 * ETA_U * ETA_W * mu * res.times)
    expected = res.deltas[:, :1, :] * factor[None, :, None]
    # relative to each trajectory's largest |delta_i| at each time
    scale = np.max(np.abs(expected), axis=2, keepdims=True)
    assert_close_to_scale(res.deltas, expected, 1e-9, "delta_i", scale=scale)
    assert factor[-1] < 0.3  # the decay is visible
    # the summed imbalance (balance_drift's Delta) follows the same law
    Delta = ETA_W * res.norm_u2 - ETA_U * res.norm_w2
    assert_close_to_scale(Delta, Delta[:, :1] * factor, 1e-9, "Delta")


@pytest.mark.parametrize("dim", [1, 3])
def test_summed_delta_law_with_general_decay(dim):
    mom = moments(dim)
    res = run(dim, flow(lambda_u=0.25, lambda_w=0.07), times=13)
    init = res.initial_params()
    for k in range(N):
        _, a, trM, D = reduced_reference(mom, init.u0[k], init.W0[k], res.times,
                                         lam_u=0.25, lam_w=0.07)
        assert_close_to_scale(res.delta_mean[k] * WIDTH, D, 1e-9, "sum of delta_i")
        assert_close_to_scale(res.norm_u2[k], a, 1e-9, "a")
        assert_close_to_scale(res.norm_w2[k], trM, 1e-9, "tr M")
    assert np.max(np.abs(res.delta_mean[:, -1] - res.delta_mean[:, 0])) > 1e-2


def numpy_descent(mom, u0, W0, lr, steps, eta_u=ETA_U, eta_w=ETA_W, lam_u=LAM_U,
                  lam_w=LAM_W):
    """theta -= lr * eta * (grad L + lambda theta), L from the dataset form; all steps."""
    S, b = mom.Sigma, mom.b
    u, W = u0.copy(), W0.copy()
    us, Ws = [u.copy()], [W.copy()]
    for _ in range(steps):
        p = np.einsum("nmd,nm->nd", W, u)
        grad_p = KAPPA**2 * p @ S - KAPPA * b  # dL/dp (S symmetric)
        gu = np.einsum("nmd,nd->nm", W, grad_p)  # dL/du = W dL/dp
        gW = u[:, :, None] * grad_p[:, None, :]  # dL/dW = u (dL/dp)^T
        u, W = (u - lr * eta_u * (gu + lam_u * u), W - lr * eta_w * (gW + lam_w * W))
        us.append(u.copy())
        Ws.append(W.copy())
    return np.stack(us, axis=1), np.stack(Ws, axis=1)


@pytest.mark.parametrize("dim", [1, 3])
@pytest.mark.parametrize("method", ["full", "stagewise"])
def test_descent_with_decay_matches_a_numpy_loop(dim, method):
    # (method="reduced" with descent is Euler on (p, M, a), not descent on the parameters)
    mom = moments(dim)
    steps, lr = 100, 0.05
    train = nf.GradientDescent(lr=lr, steps=steps, eta_u=ETA_U, eta_w=ETA_W,
                               lambda_u=LAM_U, lambda_w=LAM_W)
    res = run(dim, train, method=method, times=steps + 1, params="all")
    init = nf.initial_params(nf.TwoLayer(width=WIDTH, kappa=KAPPA), nf.Gaussian(0.7, 0.9, 0.3),
                             trajectories=N, seed=5, dim=dim)
    u, W = numpy_descent(mom, init.u0, init.W0, lr, steps)
    p = np.einsum("ntmd,ntm->ntd", W, u)
    assert_close_to_scale(res.p.reshape(p.shape), p, 1e-12, "p")
    assert_close_to_scale(res.norm_u2, np.sum(u**2, axis=2), 1e-12, "norm_u2")
    assert_close_to_scale(res.norm_w2, np.sum(W**2, axis=(2, 3)), 1e-12, "norm_w2")
    assert_close_to_scale(res.loss, data_loss(p, mom, mom.y2), 1e-12, "loss")
    assert_close_to_scale(res.u, u, 1e-12, "u")
    assert_close_to_scale(res.W, W, 1e-12, "W")


@pytest.mark.parametrize("dim", [1, 3])
@pytest.mark.parametrize(("solver", "method"), [
    ("dopri5", "full"), ("dopri5", "stagewise"), ("dopri5", "reduced"),
    ("rk4", "full"),  # dim 1: the SIMD lanes
    ("rk4", "stagewise")])
def test_loss_below_crossing_uses_the_decayed_dl_dt(dim, solver, method):
    """t_hit interpolates the loss with dL/dt at both step ends: with decay dL/dt is
    grad L . theta_dot, and the located time matches a SciPy event on the full flow.
    (Measured: errors <= 4e-8 relative; with the decay term left out of dL/dt they are
    6e-4 to 2e-3 in every one of these cases.)"""
    mom = moments(dim)
    train = flow(lambda_u=0.3, lambda_w=0.2, solver=solver, dt=0.01)
    probe = run(dim, train, times=2)
    level = float(np.max(probe.loss[:, -1])) + 0.3 * float(
        np.min(probe.loss[:, 0] - probe.loss[:, -1]))
    res = run(dim, train, times=2, loss_below=level, method=method)
    assert np.all(np.isfinite(res.t_hit))
    init = res.initial_params()
    S, b = mom.Sigma, mom.b
    for k in range(N):
        u0, W0 = init.u0[k], init.W0[k]

        def rhs(_t, y):
            u, W = y[:WIDTH], y[WIDTH:].reshape(WIDTH, dim)
            g = KAPPA * (b - KAPPA * S @ (W.T @ u))
            return np.concatenate([ETA_U * (W @ g - 0.3 * u),
                                   (ETA_W * (np.outer(u, g) - 0.2 * W)).ravel()])

        def below(_t, y):
            return data_loss(y[WIDTH:].reshape(WIDTH, dim).T @ y[:WIDTH], mom, mom.y2) - level

        below.terminal = True
        sol = solve_ivp(rhs, (0.0, T_MAX), np.concatenate([u0, W0.ravel()]), method="DOP853",
                        events=below, rtol=1e-12, atol=1e-14)
        t_ref = sol.t_events[0][0]
        # dopri5 at rtol 1e-11 is accurate to ~1e-9; rk4 at dt = 0.01 to ~4e-8 here
        tol = 1e-8 if solver == "dopri5" else 2e-7
        assert abs(res.t_hit[k] - t_ref) <= tol * t_ref, (res.t_hit[k], t_ref)


@pytest.mark.parametrize("dim", [1, 3])
def test_zero_decay_is_bit_identical_to_the_defaults(dim):
    for train0, train in [
        (nf.GradientFlow(eta_u=ETA_U, eta_w=ETA_W, t_max=2.0),
         nf.GradientFlow(eta_u=ETA_U, eta_w=ETA_W, t_max=2.0, lambda_u=0.0, lambda_w=-0.0)),
        (nf.GradientFlow(eta_u=ETA_U, eta_w=ETA_W, t_max=2.0, solver="rk4"),
         nf.GradientFlow(eta_u=ETA_U, eta_w=ETA_W, t_max=2.0, solver="rk4", lambda_u=0,
                         lambda_w=0.0)),
        (nf.GradientDescent(eta_u=ETA_U, eta_w=ETA_W, steps=50),
         nf.GradientDescent(eta_u=ETA_U, eta_w=ETA_W, steps=50, lambda_u=0.0, lambda_w=0.0)),
    ]:
        for method in ("full", "stagewise", "reduced"):
            params = None if method == "reduced" else "final"
            a = run(dim, train0, method=method, params=params, loss_below=0.5)
            b = run(dim, train, method=method, params=params, loss_below=0.5)
            for f in FIELDS + ("alignment", "ntk", "balance_drift", "delta_mean", "u", "W",
                               "t_hit", "steps"):
                x, y = getattr(a, f), getattr(b, f)
                assert (x is None) == (y is None), f
                if x is not None:
                    assert np.array_equal(x, y, equal_nan=True), (method, f)


@pytest.mark.parametrize("cls", [nf.GradientFlow, nf.GradientDescent])
@pytest.mark.parametrize("name", ["lambda_u", "lambda_w"])
@pytest.mark.parametrize("bad", [-1e-3, float("nan"), float("inf"), "0.1", True, None])
def test_bad_decay_is_refused_naming_it(cls, name, bad):
    with pytest.raises(ValueError, match=name):
        cls(**{name: bad})


def test_decay_defaults_and_values():
    for cls in (nf.GradientFlow, nf.GradientDescent):
        t = cls()
        assert t.lambda_u == 0.0 and t.lambda_w == 0.0
        t = cls(lambda_u=1, lambda_w=np.float32(0.5))
        assert type(t.lambda_u) is float and t.lambda_u == 1.0 and t.lambda_w == 0.5


def test_exact_line_refuses_decay():
    net, data = nf.TwoLayer(width=3), nf.LatentLine()
    params = nf.initial_params(net, trajectories=2, dim=1)
    nf.exact.line(params, net, data, nf.GradientFlow())  # no decay: fine
    for name in ("lambda_u", "lambda_w"):
        with pytest.raises(ValueError, match=f"{name} must be 0 for exact.line"):
            nf.exact.line(params, net, data, nf.GradientFlow(**{name: 0.1}))


def test_exact_sweeps_refuse_decay():
    kw = dict(net=nf.TwoLayer(width=4), data=nf.LatentLine(), trajectories=2)
    for extra in (dict(compute="exact"), dict(horizon="auto")):
        with pytest.raises(ValueError, match="train.lambda_w must be 0"):
            nf.Task(train=nf.GradientFlow(lambda_w=0.1), **kw, **extra)
    # simulated tasks take decay, and only a non-zero decay enters the key
    plain = nf.Task(train=nf.GradientFlow(t_max=1.0), **kw)
    zero = nf.Task(train=nf.GradientFlow(t_max=1.0, lambda_u=0.0), **kw)
    decayed = nf.Task(train=nf.GradientFlow(t_max=1.0, lambda_u=0.1), **kw)
    assert plain.key == zero.key != decayed.key
    assert "lambda_u" not in plain.describe()["train"]
    assert decayed.describe()["train"]["lambda_u"] == 0.1


@pytest.mark.parametrize("dim", [1, 3])
def test_data_path_agrees_with_moments_path(dim):
    """The samples (nonlinear.cpp's linear branch) and the moments (linear.cpp) are two
    implementations of the same decayed flow; 1e-9 relative at rtol 1e-11."""
    rng = np.random.default_rng(dim)
    X = rng.normal(size=(9, dim))
    data = nf.Dataset(X, X @ rng.normal(size=dim) + 0.1 * rng.normal(size=9))
    train = nf.GradientFlow(eta_u=1.3, eta_w=0.7, lambda_u=0.2, lambda_w=0.05, t_max=3.0,
                            rtol=1e-11, atol=1e-14)
    kw = dict(trajectories=3, seed=4, record=nf.Record(times=7, params="final"))
    mom = nf.simulate(nf.TwoLayer(width=5), data, train, path="moments", **kw)
    dat = nf.simulate(nf.TwoLayer(width=5), data, train, path="data", **kw)
    assert mom.path == "moments" and dat.path == "data"
    for name in ("loss", "norm_u2", "norm_w2", "u", "W"):
        a, b = getattr(mom, name), getattr(dat, name)
        assert np.max(np.abs(a - b)) <= 1e-9 * np.max(np.abs(a)), name


def test_config_reads_decay(tmp_path):
    from ntkflow import config

    base = ('kind = "simulate"\n[network]\nwidth = 4\n[run]\ntrajectories = 3\n'
            '[output]\nfigures = false\n[train]\nlambda_u = 0.2\nlambda_w = 0.1\n')
    cfg = tmp_path / "decay.toml"
    cfg.write_text(base)
    with pytest.raises(config.ConfigError, match="t_max"):
        config.run(cfg, tmp_path / "out", quiet=True)
    cfg.write_text(base + "t_max = 2.0\ntimes = 5\n")
    config.run(cfg, tmp_path / "out", quiet=True)
    with np.load(tmp_path / "out" / "simulation.npz") as z:
        ref = nf.simulate(nf.TwoLayer(width=4), nf.LatentLine(),
                          nf.GradientFlow(lambda_u=0.2, lambda_w=0.1, t_max=2.0),
                          trajectories=3, record=nf.Record(times=5, spacing="log"))
        assert np.array_equal(z["loss"], ref.loss)
