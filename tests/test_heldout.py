"""Held-out evaluation on the data path: the test set's records, the linearised twin's test
predictions and the twin gaps against an independent NumPy reference written from the
network's definition and docs/theory.md §0 / §C.1 / §E.5; Result.predict; positional data
containers."""

from __future__ import annotations

import numpy as np
import pytest

import ntkflow as nf

from .reference import act_and_slope

# ---- data containers take their arrays positionally ---------------------------------------


def test_dataset_and_moments_take_arrays_positionally() -> None:
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(6, 2)), rng.normal(size=6)
    a, b = nf.Dataset(X, y), nf.Dataset(X=X, y=y)
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(a.y, b.y)
    S, c = np.array([[2.0, 0.5], [0.5, 1.0]]), np.array([1.0, -1.0])
    m1, m2 = nf.Moments(S, c), nf.Moments(Sigma=S, b=c)
    np.testing.assert_array_equal(m1.moments().beta, m2.moments().beta)
    assert nf.Moments(S, c, 3.0).moments().loss_min == nf.Moments(S, c, y2=3.0).moments().loss_min
    with pytest.raises(ValueError, match="^y must have shape"):
        nf.Dataset(X, y[:5])


# ---- an independent NumPy reference -------------------------------------------------------




def outputs(u: np.ndarray, W: np.ndarray, X: np.ndarray, act: str, kappa: float) -> np.ndarray:
    """f(x) = kappa sum_i u_i act(w_i . x) for one network: u (m,), W (m, d), X (s, d)."""
    return kappa * act_and_slope(act, X @ W.T)[0] @ u


def gram(u, W, X1, X2, act, kappa, eta_u, eta_w) -> np.ndarray:
    """docs/theory.md §C.1: K = kappa^2 [eta_u H1 H2^T + eta_w (G1 G2^T) o (X1 X2^T)]."""
    H1, S1 = act_and_slope(act, X1 @ W.T)
    H2, S2 = act_and_slope(act, X2 @ W.T)
    G1, G2 = S1 * u, S2 * u
    return kappa**2 * (eta_u * H1 @ H2.T + eta_w * (G1 @ G2.T) * (X1 @ X2.T))


def twin(u0, W0, X, y, Xt, times, train, act, kappa):
    """The linearised network's outputs on X and Xt at the record times, (T, n), (T, nt).

    Flow: kernel regression through numpy.linalg.eigh of K_0,
    f_lin,t = f_0 - K_0(., X) V diag((1 - exp(-lam t / n)) / lam) V^T r_0 (t / n at lam = 0).
    Descent: the explicit iteration r <- r - lr/n K_0 r, f(Xt) <- f(Xt) - lr/n K_0(Xt, X) r."""
    n = X.shape[0]
    K0 = gram(u0, W0, X, X, act, kappa, train.eta_u, train.eta_w)
    Kx = gram(u0, W0, Xt, X, act, kappa, train.eta_u, train.eta_w)
    f0, ft0 = outputs(u0, W0, X, act, kappa), outputs(u0, W0, Xt, act, kappa)
    r0 = f0 - y
    if isinstance(train, nf.GradientDescent):
        out, out_t, r, ft, done = [], [], r0.copy(), ft0.copy(), 0
        for t in times:
            for _ in range(int(t) - done):
                r, ft = r - train.lr / n * K0 @ r, ft - train.lr / n * Kx @ r
            done = int(t)
            out.append(y + r)
            out_t.append(ft.copy())
        return np.array(out), np.array(out_t)
    lam, V = np.linalg.eigh(K0)
    lam = np.maximum(lam, 0.0)
    c = V.T @ r0
    fl, ftl = [], []
    for t in times:
        x = lam * t / n
        h = np.where(x > 0, -np.expm1(-x) / np.where(lam > 0, lam, 1.0), t / n)
        fl.append(f0 - K0 @ V @ (h * c))
        ftl.append(ft0 - Kx @ V @ (h * c))
    return np.array(fl), np.array(ftl)


def problem(seed: int, n: int = 24, nt: int = 15, d: int = 3, m: int = 12,
            trajectories: int = 2):
    """+-1 labels of a noisy teacher, train and test; Gaussian initial parameters."""
    rng = np.random.default_rng(seed)
    X, Xt = rng.normal(size=(n, d)), rng.normal(size=(nt, d))
    w = rng.normal(size=d)
    y = np.where(X @ w + 0.3 * rng.normal(size=n) > 0, 1.0, -1.0)
    yt = np.where(Xt @ w > 0, 1.0, -1.0)
    params = nf.Params(rng.normal(size=(trajectories, m)),
                       rng.normal(size=(trajectories, m, d)) / np.sqrt(d))
    return nf.Dataset(X, y), nf.Dataset(Xt, yt), params


ACTS = ["relu", "tanh", "erf", "linear"]
# rk4 with a small fixed step: the records are compared with a reference computed from the
# run's own kept parameters, so only the record-time arithmetic is under test, not the
# integrator (and not the default adaptive solver).
TRAINS = {"flow": nf.GradientFlow(eta_u=0.8, eta_w=1.2, t_max=2.0, solver="rk4", dt=0.01),
          "descent": nf.GradientDescent(lr=0.2, steps=40, eta_u=0.8, eta_w=1.2)}


@pytest.mark.parametrize("train_name", list(TRAINS))
@pytest.mark.parametrize("act", ACTS)
def test_held_out_records_match_numpy(act: str, train_name: str) -> None:
    data, test, params = problem(1)
    train = TRAINS[train_name]
    kappa = 0.5
    times = [0.0, 0.5, 1.0, 2.0] if train_name == "flow" else [0.0, 3.0, 17.0, 40.0]
    res = nf.simulate(nf.TwoLayer(width=12, act=act, kappa=kappa), data, train, init=params,
                      record=nf.Record(times=times, params="all", test=test, linearized=True))
    assert res.path == "data" and np.all(res.status == 0)
    X, y, Xt, yt = data.X, data.y, test.X, test.y
    n, nt = X.shape[0], Xt.shape[0]
    for k in range(2):
        f = np.array([outputs(res.u[k, j], res.W[k, j], X, act, kappa)
                      for j in range(len(times))])
        ft = np.array([outputs(res.u[k, j], res.W[k, j], Xt, act, kappa)
                       for j in range(len(times))])
        fl, ftl = twin(params.u0[k], params.W0[k], X, y, Xt, times, train, act, kappa)
        assert np.all(np.isfinite(ftl)) and np.all(np.isfinite(fl))  # a stable twin
        # The same formulas on the same parameters, in another order (and LAPACK's
        # eigenvectors against Eigen's, or the explicit iteration against the geometric
        # sum): sums of <= n width products, round-off ~1e-14 of O(1) values. 1e-10 leaves
        # room for the conditioning of the eigenvectors of K_0's near-degenerate modes.
        np.testing.assert_allclose(res.test_loss[k], 0.5 * np.sum((ft - yt) ** 2, 1) / nt,
                                   rtol=1e-10)
        np.testing.assert_allclose(res.test_loss_lin[k],
                                   0.5 * np.sum((ftl - yt) ** 2, 1) / nt, rtol=1e-10)
        np.testing.assert_allclose(res.loss_lin[k], 0.5 * np.sum((fl - y) ** 2, 1) / n,
                                   rtol=1e-10)
        # Gaps are already relative to ||f_0 - y|| (O(1) here); at t = 0 the twin equals the
        # network up to round-off, so the tolerance is absolute in that unit.
        gap = np.linalg.norm(f - fl, axis=1) / np.linalg.norm(f[0] - y)
        gap_t = np.linalg.norm(ft - ftl, axis=1) / np.linalg.norm(ft[0] - yt)
        np.testing.assert_allclose(res.lin_gap[k], gap, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(res.test_lin_gap[k], gap_t, rtol=1e-10, atol=1e-10)
        # Sign errors are counts: exact (no output lies within round-off of 0 here).
        assert np.min(np.abs(np.concatenate([f, ft, ftl], axis=1))) > 1e-8
        np.testing.assert_array_equal(res.error[k], np.mean(np.sign(f) != y, axis=1))
        np.testing.assert_array_equal(res.test_error[k], np.mean(np.sign(ft) != yt, axis=1))
        np.testing.assert_array_equal(res.test_error_lin[k],
                                      np.mean(np.sign(ftl) != yt, axis=1))
    # Not vacuous: training moved the network away from its twin and changed the test loss.
    assert res.delta_lin()[:, -1].min() > 1e-4 and res.test_loss[0, -1] != res.test_loss[0, 0]
    np.testing.assert_array_equal(res.delta_lin(), np.maximum.accumulate(res.lin_gap, axis=1))
    np.testing.assert_array_equal(res.delta_lin(test=True)[:, -1], res.test_lin_gap.max(1))


def test_errors_only_for_labels_and_test_set_never_affects_training() -> None:
    data, test, params = problem(2)
    net = nf.TwoLayer(width=12, act="tanh", kappa=0.5)
    train = TRAINS["descent"]
    base = nf.simulate(net, data, train, init=params,
                       record=nf.Record(times=5, params="final"))
    assert base.error is not None and base.test_loss is None and base.lin_gap is None
    noisy = nf.Dataset(test.X, test.y + 0.5)  # targets that are not labels
    res = nf.simulate(net, data, train, init=params,
                      record=nf.Record(times=5, test=noisy, params="final"))
    assert res.test_loss is not None and res.test_error is None and res.test_loss_lin is None
    for name in ("loss", "error", "norm_u2", "kta", "u", "W"):  # training is untouched
        np.testing.assert_array_equal(getattr(res, name), getattr(base, name), name)
    reg = nf.simulate(net, noisy, train, init=params, record=nf.Record(times=5))
    assert reg.error is None


def test_divergence_leaves_the_twin_and_nans_the_network_records() -> None:
    data, test, params = problem(3, trajectories=3)
    u0, W0 = params.u0.copy(), params.W0.copy()
    u0[1] *= 30.0
    W0[1] *= 30.0
    # rk4 with a step far too long for this start: the network blows up, while the twin
    # (exact, exp(-lam t / n)) stays finite.
    res = nf.simulate(nf.TwoLayer(width=12, act="relu", kappa=1.0), data,
                      nf.GradientFlow(t_max=2.0, solver="rk4", dt=0.05),
                      init=nf.Params(u0, W0),
                      record=nf.Record(times=11, test=test, linearized=True))
    assert res.status.tolist() == [0, 1, 0]
    j = np.searchsorted(res.times, res.t_fail[1])
    for name in ("test_loss", "error", "test_error", "lin_gap", "test_lin_gap"):
        rec = getattr(res, name)
        assert np.isnan(rec[1, j:]).all() and np.isfinite(rec[1, :j]).all(), name
        assert np.isfinite(rec[[0, 2]]).all(), name
    assert 0 < j < res.times.size
    # The twin depends on the initial state only: all its records are written.
    for name in ("loss_lin", "test_loss_lin", "test_error_lin"):
        assert np.isfinite(getattr(res, name)).all(), name
    assert np.isnan(res.delta_lin()[1, j:]).all()


def test_same_bits_for_one_and_two_threads_with_a_test_set() -> None:
    data, test, _ = problem(4)
    net = nf.TwoLayer(width=12, act="relu", kappa=0.5)
    runs = [nf.simulate(net, data, TRAINS["descent"], trajectories=9, seed=3, threads=threads,
                        record=nf.Record(times=5, test=test, linearized=True))
            for threads in (1, 2)]
    for name in ("loss", "error", "test_loss", "test_error", "loss_lin", "test_loss_lin",
                 "test_error_lin", "lin_gap", "test_lin_gap"):
        np.testing.assert_array_equal(getattr(runs[0], name), getattr(runs[1], name), name)


def test_linear_network_with_a_test_set_takes_the_data_path() -> None:
    data, test, params = problem(5)
    lin = nf.TwoLayer(width=12, kappa=0.5)
    flow = TRAINS["flow"]
    assert nf.simulate(lin, data, flow, init=params).path == "moments"
    res = nf.simulate(lin, data, flow, init=params, record=nf.Record(times=3, test=test))
    assert res.path == "data" and res.test_loss is not None


def test_bad_held_out_input_names_the_parameter_before_any_work() -> None:
    data, test, params = problem(6)
    relu = nf.TwoLayer(width=12, act="relu", kappa=0.5)
    flow = TRAINS["flow"]
    with pytest.raises(ValueError, match="^test must be a Dataset"):
        nf.Record(test=test.X)
    with pytest.raises(ValueError, match="^test must be a Dataset"):
        nf.Record(test=(test.X, test.y))
    wrong = nf.Dataset(np.ones((5, 2)), np.ones(5))
    with pytest.raises(ValueError, match="^record.test must have dim 3"):
        nf.simulate(relu, data, flow, init=params, record=nf.Record(test=wrong))
    with pytest.raises(ValueError, match="record.test"):
        nf.simulate(nf.TwoLayer(width=12), data, flow, init=params, path="moments",
                    record=nf.Record(test=test))
    with pytest.raises(ValueError, match=r"^data must be a Dataset.*record\.test"):
        nf.simulate(nf.TwoLayer(width=4), nf.LatentLine(), flow,
                    record=nf.Record(test=nf.Dataset(np.ones((3, 1)), np.ones(3))))


# ---- Result.predict --------------------------------------------------------------------------


@pytest.mark.parametrize("act", ACTS)
def test_predict_matches_the_numpy_forward_pass(act: str) -> None:
    data, test, params = problem(7)
    net = nf.TwoLayer(width=12, act=act, kappa=0.5)
    train = TRAINS["descent"]
    res = nf.simulate(net, data, train, init=params,
                      record=nf.Record(times=4, params="all", test=test))
    for at in (0, 2, -1):
        ref = np.array([outputs(res.u[k, at], res.W[k, at], test.X, act, 0.5)
                        for k in range(2)])
        # A forward pass in NumPy vs. the core's: round-off of m-term sums.
        np.testing.assert_allclose(res.predict(test.X, at=at), ref, rtol=1e-12, atol=1e-14)
    # It reproduces the recorded test loss at every record time.
    for j in range(4):
        pred = res.predict(test.X, at=j)
        np.testing.assert_allclose(0.5 * np.mean((pred - test.y) ** 2, axis=1),
                                   res.test_loss[:, j], rtol=1e-12)
    final = nf.simulate(net, data, train, init=params,  # the same (data) path
                        record=nf.Record(times=4, params="final", test=test))
    np.testing.assert_array_equal(final.predict(test.X), res.predict(test.X, at=-1))


def test_predict_refuses_bad_input() -> None:
    data, test, params = problem(8)
    net = nf.TwoLayer(width=12, act="erf", kappa=0.5)
    train = TRAINS["descent"]
    bare = nf.simulate(net, data, train, init=params, record=nf.Record(times=3))
    with pytest.raises(ValueError, match="record.params"):
        bare.predict(test.X)
    final = nf.simulate(net, data, train, init=params,
                        record=nf.Record(times=3, params="final"))
    with pytest.raises(ValueError, match="^at must be -1"):
        final.predict(test.X, at=0)
    final.predict(test.X, at=2)  # the last record time, counted from the start
    with pytest.raises(ValueError, match="^at must index the 3 record times"):
        final.predict(test.X, at=3)
    with pytest.raises(ValueError, match=r"^X must have shape \(samples, 3\)"):
        final.predict(test.X[:, :2])
    with pytest.raises(ValueError, match="^X must be finite"):
        final.predict(np.full((2, 3), np.nan))
