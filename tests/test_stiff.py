"""The stiff solver of linear networks (rodas4) and the automatic hand-over from dopri5
(docs/theory.md §B.6), against the closed form of model A, SciPy's Radau on the full
parameter flow, and dopri5; plus bit identity across threads and grouping."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.integrate import solve_ivp

import ntkflow as nf
from ntkflow._initial import draw_initial

from . import reference as ref

LINE = nf.LatentLine(beta=1.3, sigma=0.8)
NET = nf.TwoLayer(width=64)


def _line_errors(solver: str, s: float, t_max: float, rtol: float) -> tuple[float, float, nf.Result]:
    params = draw_initial(nf.Gaussian(s_u=s, s_w=s), NET.width, 1, 4, seed=3)
    train = nf.GradientFlow(t_max=t_max, rtol=rtol, atol=1e-20, solver=solver)
    res = nf.simulate(NET, LINE, train, init=params, record=nf.Record(times=60, spacing="log"))
    assert (res.status == 0).all(), res.status
    path = nf.exact.line(res, NET, LINE, train).at(res.times)
    loss = ref.assert_close_to_scale(res.loss, path.loss, 1.0, "loss")
    C = ref.assert_close_to_scale(res.p, path.C, 1.0, "C")
    return loss, C, res


# Worst errors measured (relative to each trajectory's largest value over the run), lazy
# start s = 2 on [0, 50], rtol 1e-10: rodas4 loss 1.25e-10, C 5.8e-10; auto loss 3.2e-11,
# C 3.8e-10, as dopri5 alone, because dopri5 integrates the fast transient before the
# hand-over. The bounds are 5x those; at rtol 1e-9 each fails.
@pytest.mark.parametrize(("solver", "tol_loss", "tol_C"),
                         [("rodas4", 6e-10, 3e-9), ("auto", 1.6e-10, 1.9e-9)])
def test_lazy_model_a_against_the_closed_form(solver: str, tol_loss: float, tol_C: float) -> None:
    loss, C, res = _line_errors(solver, 2.0, 50.0, 1e-10)
    assert loss <= tol_loss and C <= tol_C, (loss, C)
    if solver == "auto":  # the lazy start is stiff from about t = 0.2 on
        assert np.all(res.t_stiff > 0) and np.all(res.t_stiff < 1.0), res.t_stiff
    else:
        assert np.all(res.t_stiff == 0.0)


def test_auto_is_dopri5_until_the_hand_over_and_far_cheaper_after() -> None:
    """Rich start (s = 0.05): auto follows dopri5 through the escape (same accuracy) and
    switches once converged; dopri5 alone then crawls at its stability limit."""
    loss_a, C_a, auto = _line_errors("auto", 0.05, 200.0, 1e-10)
    loss_d, C_d, dop = _line_errors("dopri5", 0.05, 200.0, 1e-10)
    assert auto.t_stiff is not None and np.all(np.isfinite(auto.t_stiff))
    assert np.all(auto.t_stiff > 40.0), auto.t_stiff  # after the escape (t ~ 20-40)
    assert loss_a <= 2 * loss_d + 1e-13 and C_a <= 2 * C_d + 1e-13, (loss_a, loss_d, C_a, C_d)
    assert dop.t_stiff is None


def _random_setting(d: int = 4, m: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(d, d))
    sigma = A @ A.T / d + 0.3 * np.eye(d)
    b = rng.normal(size=d)
    return nf.Moments(sigma, b), nf.TwoLayer(width=m, kappa=0.8)


def _radau_full(u0, W0, sigma, b, kappa, train, times):
    """The full parameter flow with weight decay, SciPy Radau at rtol 1e-12."""
    m, d = W0.shape

    def rhs(_t, y):
        u, W = y[:m], y[m:].reshape(m, d)
        du, dW = ref.field(u, W, sigma, b, kappa, train.eta_u, train.eta_w)
        du = du - train.eta_u * train.lambda_u * u
        dW = dW - train.eta_w * train.lambda_w * W
        return np.concatenate([du, dW.ravel()])

    sol = solve_ivp(rhs, (0.0, float(times[-1])), np.concatenate([u0, W0.ravel()]),
                    method="Radau", t_eval=times, rtol=1e-12, atol=1e-14)
    assert sol.success, sol.message
    return sol.y[:m].T, sol.y[m:].T.reshape(len(times), m, d)


# Measured worst scaled error against Radau over u, W, p, the loss and every delta_i
# (d = 4, width 6, decay, init 2.5, rtol 1e-11): rodas4 5.6e-12, auto 3.4e-12. Bounds 5x.
@pytest.mark.parametrize(("solver", "tol"), [("rodas4", 3e-11), ("auto", 1.7e-11)])
def test_general_moments_with_decay_against_radau(solver: str, tol: float) -> None:
    data, net = _random_setting()
    train = nf.GradientFlow(t_max=40.0, rtol=1e-11, atol=1e-20, solver=solver,
                            eta_u=1.3, eta_w=0.7, lambda_u=0.02, lambda_w=0.05)
    init = nf.Gaussian(s_u=2.5, s_w=2.5)
    res = nf.simulate(net, data, train, init=init, trajectories=3, seed=7,
                      record=nf.Record(times=25, spacing="log", params="all", deltas=True))
    assert (res.status == 0).all()
    p0 = draw_initial(init, net.width, 4, 3, seed=7)
    worst = 0.0
    for k in range(3):
        u, W = _radau_full(p0.u0[k], p0.W0[k], data.Sigma, data.b, net.kappa, train, res.times)
        worst = max(worst, ref.assert_close_to_scale(res.u[k][None], u[None], tol, "u"),
                    ref.assert_close_to_scale(res.W[k][None], W[None], tol, "W"))
        p = np.einsum("tmd,tm->td", W, u)
        worst = max(worst, ref.assert_close_to_scale(res.p[k][None], p[None], tol, "p"))
        loss = ref.loss(u, W, data.Sigma, data.b, 0.0, net.kappa)
        worst = max(worst, ref.assert_close_to_scale(res.loss[k][None] - res.loss[k, -1],
                                                     loss[None] - loss[-1], tol, "loss"))
        deltas = train.eta_w * u**2 - train.eta_u * np.sum(W**2, axis=2)
        worst = max(worst, ref.assert_close_to_scale(res.deltas[k][None], deltas[None], tol,
                                                     "deltas"))
    assert worst <= tol


def test_reduced_rodas4_matches_full_rodas4() -> None:
    """method="reduced" integrates the same (p, M, a) without the propagator: different
    steps (Phi joins the error norm), so agreement to the tolerance (measured 6.9e-12 at
    rtol 1e-10, bound 5e-11)."""
    data, net = _random_setting(seed=2)
    train = nf.GradientFlow(t_max=30.0, rtol=1e-10, solver="rodas4")
    kw = dict(init=nf.Gaussian(s_u=2.0, s_w=2.0), trajectories=2, seed=1,
              record=nf.Record(times=20))
    full = nf.simulate(net, data, train, **kw)
    red = nf.simulate(net, data, train, method="reduced", **kw)
    for name in ("loss", "p", "norm_u2", "norm_w2", "ntk"):
        ref.assert_close_to_scale(getattr(red, name), getattr(full, name), 5e-11, name)


@pytest.mark.parametrize("solver", ["rodas4", "auto"])
def test_bits_do_not_depend_on_threads_or_grouping(solver: str) -> None:
    data, net = _random_setting(d=3, m=40, seed=4)
    train = nf.GradientFlow(t_max=60.0, solver=solver)
    kw = dict(init=nf.Gaussian(s_u=2.0, s_w=2.0), seed=11,
              record=nf.Record(times=7, params="final", deltas=True))
    whole = nf.simulate(net, data, train, trajectories=5, threads=2, **kw)
    one = nf.simulate(net, data, train, trajectories=5, threads=1, **kw)
    alone = nf.simulate(net, data, train, trajectories=1, first_trajectory=3, **kw)
    if solver == "auto":
        assert np.all(np.isfinite(whole.t_stiff))  # the hand-over is exercised
    for name in ("loss", "p", "ntk", "deltas", "u", "W", "steps", "rejected", "t_stiff"):
        a, b, c = getattr(whole, name), getattr(one, name), getattr(alone, name)
        assert np.array_equal(a, b, equal_nan=True), name
        assert np.array_equal(a[3:4], c, equal_nan=True), name


def test_the_lazy_case_of_the_issue_is_fast_and_right() -> None:
    """Width 256, d = 30, 20 noisy samples of a latent line, init 3, t_max 3000: dopri5
    reaches its step limit on every trajectory (about 86,000 steps); auto finishes in a few
    hundred steps, within 1e-6 of rodas4 at rtol 1e-12 (scaled to the run's largest
    loss)."""
    rng = np.random.default_rng(0)
    d, n = 30, 20
    z = rng.standard_normal(n)
    direction = rng.standard_normal(d)
    direction /= np.linalg.norm(direction)
    X = np.outer(z, direction) + 0.3 * rng.standard_normal((n, d))
    data = nf.Dataset(X, 1.5 * z + 0.1 * rng.standard_normal(n))
    net, init = nf.TwoLayer(width=256), nf.Gaussian(s_u=3.0, s_w=3.0)
    kw = dict(init=init, trajectories=4, seed=1, record=nf.Record(times=30, spacing="log"))
    auto = nf.simulate(net, data, nf.GradientFlow(t_max=3000, rtol=1e-8), **kw)
    tight = nf.simulate(net, data, nf.GradientFlow(t_max=3000, rtol=1e-12, atol=1e-20,
                                                   solver="rodas4"), **kw)
    assert (auto.status == 0).all() and (tight.status == 0).all()
    # rho(0) t_max ~ 3e7: stiff from the start, handed over before the first step.
    assert np.all(auto.t_stiff == 0.0), auto.t_stiff
    assert auto.steps.max() + auto.rejected.max() < 2000, auto.steps
    ref.assert_close_to_scale(auto.loss, tight.loss, 1e-6, "loss")


def test_step_limit_and_loss_threshold_with_rodas4() -> None:
    train = nf.GradientFlow(t_max=50.0, solver="rodas4", max_steps=6)
    res = nf.simulate(NET, LINE, train, trajectories=2, record=nf.Record(times=5))
    assert np.all(res.status == nf.STATUS_NAMES.index("step_limit"))
    assert np.isnan(res.loss[:, -1]).all() and np.isfinite(res.loss[:, 0]).all()
    # t_hit against the closed form's crossing (bisection on the exact loss).
    params = draw_initial(nf.Gaussian(s_u=1.0, s_w=1.0), NET.width, 1, 2, seed=0)
    flow = nf.GradientFlow(t_max=20.0, solver="rodas4", rtol=1e-10)
    level = 0.05
    res = nf.simulate(NET, LINE, flow, init=params, record=nf.Record(times=3, loss_below=level))
    sol = nf.exact.line(res, NET, LINE, flow)
    for k in range(2):
        lo, hi = 0.0, 20.0
        for _ in range(80):
            mid = 0.5 * (lo + hi)
            (lo, hi) = (mid, hi) if sol.at(np.array([mid])).loss[k, 0] > level else (lo, mid)
        assert abs(res.t_hit[k] - hi) <= 1e-6 * hi, (res.t_hit[k], hi)


def test_rodas4_is_refused_where_it_does_not_exist() -> None:
    X = np.random.default_rng(0).normal(size=(12, 2))
    data = nf.Dataset(X, X[:, 0])
    relu = nf.TwoLayer(width=8, act="relu")
    with pytest.raises(ValueError, match="solver"):
        nf.simulate(relu, data, nf.GradientFlow(solver="rodas4"), trajectories=1)
    with pytest.raises(ValueError, match="method"):
        nf.simulate(NET, LINE, nf.GradientFlow(solver="rodas4"), trajectories=1,
                    method="stagewise")
    res = nf.simulate(relu, data, nf.GradientFlow(t_max=1.0), trajectories=1)  # auto: dopri5
    assert res.t_stiff is None and res.status[0] == 0
