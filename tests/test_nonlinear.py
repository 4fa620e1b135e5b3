"""Networks with an activation on a dataset (simulate's data path) against plain NumPy /
SciPy reimplementations written from the loss, and its kernel records against NumPy
computations from the recorded parameters."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
from scipy.integrate import solve_ivp

import ntkflow as nf

from . import reference as ref
from .reference import act_and_slope

# ---- an independent NumPy reimplementation: f(x) = kappa sum_i u_i act(w_i . x) ----------




def loss_and_grads(u, W, X, y, act, kappa):
    """L = 1/(2n) sum_j (f(x_j) - y_j)^2 and its gradients, by the chain rule."""
    n = X.shape[0]
    Z = X @ W.T
    H, S = act_and_slope(act, Z)
    r = kappa * H @ u - y
    grad_u = kappa / n * H.T @ r
    grad_W = kappa / n * np.einsum("j,ji,i,jk->ik", r, S, u, X)
    return 0.5 * r @ r / n, grad_u, grad_W


def descend(u, W, X, y, act, kappa, eta_u, eta_w, lr, steps):
    u, W = u.copy(), W.copy()
    for _ in range(steps):
        _, gu, gW = loss_and_grads(u, W, X, y, act, kappa)
        u, W = u - lr * eta_u * gu, W - lr * eta_w * gW
    return u, W


def problem(seed: int, n: int, d: int, m: int, trajectories: int = 2):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) / np.sqrt(d)
    y = np.sin(2 * X[:, 0]) + 0.3 * rng.normal(size=n)
    params = nf.Params(rng.normal(size=(trajectories, m)),
                       rng.normal(size=(trajectories, m, d)) / np.sqrt(d))
    return nf.Dataset(X=X, y=y), params


# ---- dynamics ------------------------------------------------------------------------------


def test_relu_gradient_descent_matches_numpy() -> None:
    data, params = problem(0, n=40, d=5, m=30)
    kappa, eta_u, eta_w, lr = 2 / np.sqrt(30), 0.7, 1.3, 0.2
    times = [0, 50, 120, 200]
    res = nf.simulate(nf.TwoLayer(width=30, act="relu", kappa=kappa), data,
                      nf.GradientDescent(lr=lr, steps=200, eta_u=eta_u, eta_w=eta_w),
                      init=params, record=nf.Record(times=times, params="all"))
    assert res.path == "data" and np.all(res.status == 0)
    for k in range(2):
        u, W = params.u0[k], params.W0[k]
        for j, t in enumerate(times):
            steps = t - (times[j - 1] if j else 0)
            u, W = descend(u, W, data.X, data.y, "relu", kappa, eta_u, eta_w, lr, steps)
            # Same steps, same formulas up to the order of floating-point operations (and no
            # pre-activation near enough to 0 to flip a relu branch): round-off, ~1e-14.
            np.testing.assert_allclose(res.u[k, j], u, rtol=1e-10, atol=1e-10 * np.abs(u).max())
            np.testing.assert_allclose(res.W[k, j], W, rtol=1e-10, atol=1e-10 * np.abs(W).max())
            loss = loss_and_grads(u, W, data.X, data.y, "relu", kappa)[0]
            np.testing.assert_allclose(res.loss[k, j], loss, rtol=1e-10)
    assert res.loss[0, -1] < 0.5 * res.loss[0, 0]  # it learned something


@pytest.mark.parametrize("act", ["tanh", "erf"])
def test_smooth_gradient_descent_matches_numpy(act: str) -> None:
    # tanh and erf descent step for step against the NumPy reimplementation above (no
    # weight decay, one output: the plain loss of docs/theory.md §0). Same steps and
    # formulas up to the order of floating-point sums: seen 6e-16 at every level
    # (baseline, v3, v4); bound 1e-12 relative to each quantity's size. A learning rate
    # off by 1e-10 fails.
    data, params = problem(5, n=12, d=3, m=8)
    kappa, eta_u, eta_w, lr = 1.5 / np.sqrt(8), 0.7, 1.3, 0.3
    times = [0, 1, 2, 5, 8]
    res = nf.simulate(nf.TwoLayer(width=8, act=act, kappa=kappa), data,
                      nf.GradientDescent(lr=lr, steps=8, eta_u=eta_u, eta_w=eta_w),
                      init=params, record=nf.Record(times=times, params="all"))
    assert res.path == "data" and np.all(res.status == 0)
    assert_descends_like_numpy(res, params, data, act, kappa, eta_u, eta_w, lr, times)
    assert res.loss[0, -1] < 0.5 * res.loss[0, 0]  # it trains: the steps are not trivial


def assert_descends_like_numpy(res, params, data, act, kappa, eta_u, eta_w, lr, times) -> None:
    """Every recorded u, W and loss of both trajectories against the NumPy descent, to
    1e-12 of each quantity's size."""
    for k in range(2):
        u, W = params.u0[k], params.W0[k]
        for j, t in enumerate(times):
            u, W = descend(u, W, data.X, data.y, act, kappa, eta_u, eta_w, lr,
                           t - (times[j - 1] if j else 0))
            np.testing.assert_allclose(res.u[k, j], u, rtol=0, atol=1e-12 * np.abs(u).max())
            np.testing.assert_allclose(res.W[k, j], W, rtol=0, atol=1e-12 * np.abs(W).max())
            loss = loss_and_grads(u, W, data.X, data.y, act, kappa)[0]
            np.testing.assert_allclose(res.loss[k, j], loss, rtol=1e-12)


@pytest.mark.parametrize("act", ["relu", "tanh"])
@pytest.mark.parametrize("eta_u, eta_w", [(0.0, 1.1), (0.9, 0.0), (0.9, 1.1)])
def test_descent_with_fewer_samples_than_inputs_and_a_frozen_layer(act, eta_u, eta_w) -> None:
    # relu and tanh take a fused path for one output (field_fused: dW^T = X^T B into a
    # d x m buffer); n = 3 < d = 7 makes that buffer larger than the rows x m one, and
    # eta = 0 freezes a layer. Against the NumPy descent, bound as above.
    data, params = problem(7, n=3, d=7, m=9)
    kappa, lr = 1.3 / np.sqrt(9), 0.4
    times = [0, 1, 4, 10]
    res = nf.simulate(nf.TwoLayer(width=9, act=act, kappa=kappa), data,
                      nf.GradientDescent(lr=lr, steps=10, eta_u=eta_u, eta_w=eta_w),
                      init=params, record=nf.Record(times=times, params="all"))
    assert np.all(res.status == 0)
    assert_descends_like_numpy(res, params, data, act, kappa, eta_u, eta_w, lr, times)
    for k in range(2):
        if eta_u == 0:
            np.testing.assert_array_equal(res.u[k, -1], params.u0[k])
        if eta_w == 0:
            np.testing.assert_array_equal(res.W[k, -1], params.W0[k])


@pytest.mark.parametrize("n, d, m", [(1, 1, 3), (9, 5, 37), (8, 3, 47), (17, 32, 48),
                                     (11, 128, 24), (5, 129, 30), (23, 2, 16)])
@pytest.mark.parametrize("eta_u, eta_w", [(0.9, 1.1), (0.0, 1.1), (0.9, 0.0)])
def test_relu_descent_on_the_kernels_edge_shapes(n, d, m, eta_u, eta_w) -> None:
    # On AVX-512 builds relu with one output and d <= 128 runs relu_kernels.hpp: units in
    # panels of 24 (the last one padded: m = 37 leaves 13 units in it, 47 leaves 23, 16 a
    # single partial panel), rows in tiles of 8 (n = 9, 17, 23 leave partial tiles), inputs
    # in blocks of 8 in the backward kernel (d = 5, 3, 2, 1); d = 129 takes Gemm instead.
    # Elsewhere every case takes the general path. Against the NumPy descent, bound as above.
    data, params = problem(11, n=n, d=d, m=m)
    kappa, lr = 1.3 / np.sqrt(m), 0.3
    times = [0, 1, 3, 6]
    res = nf.simulate(nf.TwoLayer(width=m, act="relu", kappa=kappa), data,
                      nf.GradientDescent(lr=lr, steps=6, eta_u=eta_u, eta_w=eta_w),
                      init=params, record=nf.Record(times=times, params="all"))
    assert np.all(res.status == 0)
    assert_descends_like_numpy(res, params, data, "relu", kappa, eta_u, eta_w, lr, times)
    assert not np.array_equal(res.u[:, -1] if eta_u else res.W[:, -1],
                              params.u0 if eta_u else params.W0)  # the steps are not trivial


@pytest.mark.parametrize("act", ["tanh", "erf"])
def test_flow_matches_scipy_dop853(act: str) -> None:
    data, params = problem(1, n=25, d=3, m=12)
    kappa, eta_u, eta_w = 1.5 / np.sqrt(12), 1.2, 0.6
    times = np.array([0.0, 0.2, 1.0, 3.0])
    res = nf.simulate(nf.TwoLayer(width=12, act=act, kappa=kappa), data,
                      nf.GradientFlow(eta_u=eta_u, eta_w=eta_w, t_max=3.0, rtol=1e-11,
                                      atol=1e-14),
                      init=params, record=nf.Record(times=times, params="all"))
    m, d = 12, 3

    def rhs(_t, z):
        _, gu, gW = loss_and_grads(z[:m], z[m:].reshape(m, d), data.X, data.y, act, kappa)
        return np.concatenate([-eta_u * gu, -eta_w * gW.ravel()])

    for k in range(2):
        z0 = np.concatenate([params.u0[k], params.W0[k].ravel()])
        sol = solve_ivp(rhs, (0.0, 3.0), z0, method="DOP853", t_eval=times, rtol=1e-13,
                        atol=1e-15)
        assert sol.success
        u, W = sol.y[:m].T, sol.y[m:].T.reshape(len(times), m, d)
        # Ours at rtol 1e-11 against DOP853 at 1e-13, relative to the weight scale: seen
        # 7e-14 to 1.1e-13 (tanh, erf; both trajectories); the bound is 4e-13, and at
        # rtol 1e-10 all four exceed it (5.6e-13 to 8e-13).
        scale = np.abs(u).max() + np.abs(W).max()
        np.testing.assert_allclose(res.u[k], u, rtol=0, atol=4e-13 * scale)
        np.testing.assert_allclose(res.W[k], W, rtol=0, atol=4e-13 * scale)


@pytest.mark.parametrize("train", [
    nf.GradientFlow(eta_u=0.8, eta_w=1.4, t_max=4.0, solver="rk4", dt=0.02),
    nf.GradientDescent(lr=0.1, steps=300, eta_u=0.8, eta_w=1.4),
])
def test_linear_activation_on_samples_matches_the_moments_path(train) -> None:
    data, params = problem(2, n=30, d=3, m=20, trajectories=3)
    net = nf.TwoLayer(width=20, kappa=1 / np.sqrt(20))
    record = nf.Record(times=9, params="final")
    mom = nf.simulate(net, data, train, init=params, record=record, path="moments")
    raw = nf.simulate(net, data, train, init=params, record=record, path="data")
    assert (mom.path, raw.path) == ("moments", "data")
    # Same fixed steps of the same flow, written once on (Sigma, beta) and once on (X, y):
    # the two differ by round-off only, amplified by at most a few over 300 steps.
    for name in ("loss", "p", "norm_u2", "norm_w2", "alignment", "ntk", "u", "W"):
        ref.assert_close_to_scale(getattr(raw, name), getattr(mom, name), 1e-10, name)
    np.testing.assert_allclose(raw.balance_drift, mom.balance_drift, rtol=0, atol=1e-12)
    # Kernel metrics: on the samples from n x n Gram matrices, on the moments from the
    # (dim, dim) kernels through S = X^T X (same quantities, exactly).
    for name in ("ntk_change", "kernel_distance", "kta"):
        ref.assert_close_to_scale(getattr(raw, name), getattr(mom, name), 1e-10, name)


def test_balance_is_conserved_for_relu_and_not_for_tanh() -> None:
    data, params = problem(3, n=30, d=4, m=16)
    # relu's flow field jumps where a pre-activation crosses 0 and can slide along such a
    # surface, where adaptive dopri5 chatters: a fixed-step rk4 run for relu.
    relu = nf.simulate(nf.TwoLayer(width=16, act="relu", kappa=0.5), data,
                       nf.GradientFlow(t_max=5.0, solver="rk4", dt=1e-3), init=params,
                       record=nf.Record(times=11))
    tanh = nf.simulate(nf.TwoLayer(width=16, act="tanh", kappa=0.5), data,
                       nf.GradientFlow(t_max=5.0, rtol=1e-11, atol=1e-13), init=params,
                       record=nf.Record(times=11))
    assert np.all(relu.status == 0) and np.all(tanh.status == 0)
    # relu is 1-homogeneous: eta_w ||u||^2 - eta_u ||W||^2 is conserved by the flow, and
    # the recorded drift is integration error; rk4 loses its order at each kink crossing
    # (seen: 2.7e-9 at dt = 1e-3, 4.7e-8 at dt = 1e-2). tanh does not conserve it (1e-2).
    assert np.max(np.abs(relu.balance_drift)) <= 1e-8
    assert np.max(np.abs(tanh.balance_drift)) > 1e-4


# ---- kernel records ---------------------------------------------------------------------


def numpy_metrics(K: np.ndarray, y: np.ndarray):
    """ntk_change, kernel_distance, kta of K (trajectories, times, n, n) against K[:, 0]."""
    K0 = K[:, :1]
    norm = np.linalg.norm(K, axis=(2, 3))
    change = np.linalg.norm(K - K0, axis=(2, 3)) / norm[:, :1]
    distance = 1 - np.einsum("ktij,ktij->kt", K, np.broadcast_to(K0, K.shape)) / (
        norm * norm[:, :1])
    kta = np.einsum("i,ktij,j->kt", y, K, y) / (norm * (y @ y))
    return change, distance, kta


@pytest.mark.parametrize("case", ["relu-descent", "tanh-flow"])
def test_kernel_records_match_numpy(case: str) -> None:
    act = case.split("-")[0]
    data, params = problem(4, n=30, d=4, m=20)
    X, y = data.X, data.y
    kappa, eta_u, eta_w = 1.5 / np.sqrt(20), 0.9, 1.1
    net = nf.TwoLayer(width=20, act=act, kappa=kappa)
    if case == "relu-descent":
        train = nf.GradientDescent(lr=0.3, steps=150, eta_u=eta_u, eta_w=eta_w)
        times = np.array([0.0, 10.0, 60.0, 150.0])
    else:
        train = nf.GradientFlow(eta_u=eta_u, eta_w=eta_w, t_max=8.0)
        times = np.array([0.0, 0.5, 3.0, 8.0])
    res = nf.simulate(net, data, train, init=params,
                      record=nf.Record(times=times, params="all", gram="train",
                                       linearized=True))
    gram = nf.ntk_gram(res.u, res.W, X, act=act, kappa=kappa, eta_u=eta_u, eta_w=eta_w)
    # The in-run Gram and ntk_gram run the same block kernel on the same parameters.
    np.testing.assert_array_equal(res.gram, gram)
    change, distance, kta = numpy_metrics(gram, y)
    # Sums of n^2 = 900 products in another order: round-off, relative to O(1) values
    # (the change itself starts at 0: absolute tolerance on the scale of 1).
    np.testing.assert_allclose(res.ntk_change, change, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(res.kernel_distance, distance, rtol=0, atol=1e-13)
    np.testing.assert_allclose(res.kta, kta, rtol=1e-12)
    assert res.ntk_change[0, -1] > 1e-3  # the kernel did move: the check is not vacuous
    move_u = np.linalg.norm(res.u - res.u[:, :1], axis=2) / np.linalg.norm(res.u[:, :1], axis=2)
    move_w = np.linalg.norm(res.W - res.W[:, :1], axis=(2, 3)) / np.linalg.norm(
        res.W[:, :1], axis=(2, 3))
    np.testing.assert_allclose(res.move_u, move_u, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(res.move_w, move_w, rtol=1e-12, atol=1e-15)
    if act == "relu":
        on = np.einsum("jd,ktid->ktji", X, res.W) > 0
        pattern = np.mean(np.any(on != on[:, :1], axis=2), axis=2)
        np.testing.assert_array_equal(res.pattern_change, pattern)
        assert res.pattern_change[0, -1] > 0
    else:
        assert res.pattern_change is None
    # The linearised network: f_lin(t) - y = expm(-K0 t / n) (f0 - y) for the flow, the
    # explicit iteration for descent; K0 from ntk_gram of the initial parameters.
    n = X.shape[0]
    for k in range(2):
        K0 = gram[k, 0]
        f0 = kappa * act_and_slope(act, X @ params.W0[k].T)[0] @ params.u0[k]
        for j, t in enumerate(times):
            if isinstance(train, nf.GradientDescent):
                r = f0 - y
                for _ in range(int(t)):
                    r = r - train.lr / n * K0 @ r
            else:
                r = scipy.linalg.expm(-K0 * t / n) @ (f0 - y)
            # Eigendecomposition in the core vs expm / 150 explicit steps: round-off.
            np.testing.assert_allclose(res.loss_lin[k, j], 0.5 * r @ r / n, rtol=1e-10)
    np.testing.assert_allclose(res.loss_lin[:, 0], res.loss[:, 0], rtol=1e-13)  # same start


def test_probe_gram_and_late_first_record() -> None:
    data, params = problem(5, n=20, d=3, m=10)
    net = nf.TwoLayer(width=10, act="erf", kappa=0.4)
    train = nf.GradientDescent(lr=0.5, steps=60)
    P = np.random.default_rng(9).normal(size=(7, 3))
    base = nf.simulate(net, data, train, init=params, record=nf.Record(times=[0, 30, 60]))
    probe = nf.simulate(net, data, train, init=params,
                        record=nf.Record(times=[0, 30, 60], params="all", gram="probe",
                                         probe=P))
    assert probe.gram.shape == (2, 3, 7, 7)
    np.testing.assert_array_equal(
        probe.gram, nf.ntk_gram(probe.u, probe.W, P, act="erf", kappa=0.4))
    for name in ("loss", "ntk_change", "kta", "move_w"):  # asking for a Gram changes nothing
        np.testing.assert_array_equal(getattr(probe, name), getattr(base, name))
    # Metrics, movement and the balance drift are anchored at t = 0, not at the first
    # record time.
    late = nf.simulate(net, data, train, init=params, record=nf.Record(times=[30, 60]))
    np.testing.assert_array_equal(late.ntk_change, base.ntk_change[:, 1:])
    np.testing.assert_array_equal(late.move_u, base.move_u[:, 1:])
    np.testing.assert_array_equal(late.balance_drift, base.balance_drift[:, 1:])


def test_divergence_is_marked_and_kernel_records_become_nan() -> None:
    data, params = problem(6, n=20, d=3, m=10, trajectories=3)
    u0, W0 = params.u0.copy(), params.W0.copy()
    u0[1] *= 40.0
    W0[1] *= 40.0
    res = nf.simulate(nf.TwoLayer(width=10, act="relu", kappa=1.0), data,
                      nf.GradientDescent(lr=0.5, steps=100), init=nf.Params(u0, W0),
                      record=nf.Record(times=11, gram="train", linearized=True))
    assert res.status.tolist() == [0, 1, 0]
    j = np.searchsorted(res.times, res.t_fail[1])
    for name in ("loss", "ntk_change", "kta", "move_u", "pattern_change", "gram"):
        rec = getattr(res, name)
        assert np.isnan(rec[1, j:]).all() and np.isfinite(rec[1, :j]).all(), name
        assert np.isfinite(rec[[0, 2]]).all(), name
    assert np.isfinite(res.loss_lin[1, 0])  # the linearised run starts from the same state


# ---- paths, errors, reproducibility ---------------------------------------------------------


def test_path_is_chosen_from_the_records() -> None:
    data, params = problem(7, n=10, d=2, m=4)
    flow = nf.GradientFlow(t_max=1.0)
    lin = nf.TwoLayer(width=4, kappa=0.5)
    assert nf.simulate(lin, data, flow, init=params).path == "moments"
    assert nf.simulate(lin, data, flow, init=params,
                       record=nf.Record(times=3, linearized=True)).path == "data"
    assert nf.simulate(lin, nf.LatentLine(), flow).path == "moments"
    relu = nf.TwoLayer(width=4, act="relu", kappa=0.5)
    res = nf.simulate(relu, data, nf.GradientDescent(lr=0.1, steps=10), init=params,
                      record=nf.Record(times=3, ntk="none"))
    assert res.path == "data" and res.ntk is None and res.ntk_change is None
    assert res.move_u is not None and res.pattern_change is not None


def test_bad_input_names_the_parameter_before_any_work() -> None:
    X = np.random.default_rng(0).normal(size=(10, 3))
    y = X[:, 0].copy()
    relu = nf.TwoLayer(width=8, act="relu", kappa=0.3)
    flow = nf.GradientFlow(t_max=1.0)
    bad = X.copy()
    bad[4, 2] = np.nan
    with pytest.raises(ValueError, match="^X must be finite"):
        nf.Dataset(X=bad, y=y)
    with pytest.raises(ValueError, match=r"^y must have shape \(10,\)"):
        nf.Dataset(X=X, y=y[:9])
    data = nf.Dataset(X=X, y=y)
    with pytest.raises(ValueError, match="^record.probe must have 3 columns"):
        nf.simulate(relu, data, flow,
                    record=nf.Record(gram="probe", probe=np.ones((4, 2))))
    with pytest.raises(ValueError, match="^probe must be given"):
        nf.Record(gram="probe")
    with pytest.raises(ValueError, match="^probe is only used"):
        nf.Record(probe=np.ones((4, 3)))
    with pytest.raises(ValueError, match="^gram must be"):
        nf.Record(gram="test")
    with pytest.raises(ValueError, match="^data must be a Dataset"):
        nf.simulate(relu, nf.LatentLine(), flow)
    with pytest.raises(ValueError, match="^path"):
        nf.simulate(relu, data, flow, path="moments")
    with pytest.raises(ValueError, match="record.gram"):
        nf.simulate(nf.TwoLayer(width=8), data, flow, path="moments",
                    record=nf.Record(gram="train"))
    with pytest.raises(ValueError, match="^record.ntk"):
        nf.simulate(relu, data, flow, record=nf.Record(ntk="matrix"))
    with pytest.raises(ValueError, match="^method"):
        nf.simulate(relu, data, flow, method="reduced")
    # A Gram record over the memory budget fails in the size check, before anything is
    # allocated or integrated (here 10^4 trajectories x 101 times x 10^2 doubles = 0.8 GB).
    nf.set_memory_budget(2**28)
    try:
        with pytest.raises(nf.MemoryBudgetError, match="^record.gram='train'"):
            nf.simulate(relu, data, flow, trajectories=10_000,
                        record=nf.Record(gram="train"))
    finally:
        nf.set_memory_budget(None)


@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_same_bits_for_one_and_two_threads(act: str) -> None:
    data, _ = problem(8, n=24, d=3, m=16)
    net = nf.TwoLayer(width=16, act=act, kappa=0.25)
    # descent for relu (see the balance test), adaptive dopri5 for tanh
    train = (nf.GradientDescent(lr=0.5, steps=200) if act == "relu"
             else nf.GradientFlow(t_max=2.0))
    P = np.random.default_rng(1).normal(size=(5, 3))
    runs = [nf.simulate(net, data, train, trajectories=37, seed=11, threads=threads,
                        record=nf.Record(times=5, gram="probe", probe=P, linearized=True,
                                         params="final"))
            for threads in (1, 2)]
    for name in ("loss", "p", "norm_u2", "norm_w2", "alignment", "balance_drift", "steps",
                 "gram", "ntk_change", "kernel_distance", "kta", "move_u", "move_w",
                 "loss_lin", "u", "W"):
        np.testing.assert_array_equal(getattr(runs[0], name), getattr(runs[1], name), name)
