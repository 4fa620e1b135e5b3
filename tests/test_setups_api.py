"""The public face of the training setups (issue #15): shapes, defaults and the agreement
of the pieces a user combines (Result.predict, nf.ntk_gram, the in-run Gram record).
Numbers against independent references are in test_training_setups.py."""

from __future__ import annotations

import numpy as np
import pytest

import ntkflow as nf


def _problem(c=3, n=12, d=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    Y = rng.normal(size=(n, c)) if c > 1 else rng.normal(size=n)
    return X, Y


@pytest.mark.parametrize("act", ["linear", "relu", "tanh", "erf"])
def test_result_shapes_and_predict_with_outputs_and_bias(act):
    X, Y = _problem()
    net = nf.TwoLayer(width=5, act=act, kappa=0.7, bias=True)
    res = nf.simulate(net, nf.Dataset(X, Y), nf.GradientDescent(lr=0.05, steps=20),
                      init=nf.Gaussian(1.0, 1.0, s_b=0.5), trajectories=2,
                      record=nf.Record(times=3, params="all"))
    assert res.u.shape == (2, 3, 5, 3) and res.W.shape == (2, 3, 5, 3)
    assert res.b.shape == (2, 3, 5) and res.p.shape == (2, 3, 4, 3)
    # predict is a NumPy forward pass of the kept parameters; the loss it implies is the
    # core's record (1e-12: the same sums in another order).
    F = res.predict(X, at=-1)
    assert F.shape == (2, 12, 3)
    loss = 0.5 * np.sum((F - Y) ** 2, axis=(1, 2)) / 12
    np.testing.assert_allclose(loss, res.loss[:, -1], rtol=1e-12)
    # The initial parameters are regenerated bit for bit (b included).
    p0 = res.initial_params()
    assert np.array_equal(p0.u0, res.u[:, 0]) and np.array_equal(p0.b0, res.b[:, 0])


def test_bias_draws_leave_u_and_w_as_without_bias():
    """A bias is drawn after U and W: adding one does not change their draws."""
    with_b = nf.initial_params(nf.TwoLayer(width=6, bias=True), nf.Gaussian(s_b=0.3),
                               trajectories=3, seed=9, dim=2)
    without = nf.initial_params(nf.TwoLayer(width=6), trajectories=3, seed=9, dim=2)
    assert np.array_equal(with_b.u0, without.u0) and np.array_equal(with_b.W0, without.W0)
    assert with_b.b0.shape == (3, 6) and 0.1 < np.std(with_b.b0) < 0.6
    zero = nf.initial_params(nf.TwoLayer(width=6, bias=True), trajectories=1, seed=9, dim=2)
    assert np.all(zero.b0 == 0.0)  # s_b = 0 by default


@pytest.mark.parametrize("act", ["relu", "tanh", "linear"])
def test_ntk_gram_equals_the_in_run_gram_record(act):
    X, Y = _problem(c=2, n=7)
    net = nf.TwoLayer(width=5, act=act, kappa=0.6, bias=True)
    res = nf.simulate(net, nf.Dataset(X, Y),
                      nf.GradientFlow(t_max=0.5, eta_u=1.2, eta_w=0.7), trajectories=2,
                      init=nf.Gaussian(s_b=0.4),
                      record=nf.Record(times=3, gram="train", params="all"))
    K = nf.ntk_gram(res.u, res.W, X, act=act, kappa=0.6, eta_u=1.2, eta_w=0.7, b=res.b)
    assert K.shape == res.gram.shape == (2, 3, 14, 14)
    assert np.array_equal(K, res.gram)  # the same kernels, bit for bit
    assert np.array_equal(K, np.swapaxes(K, -1, -2))


def test_auto_kernel_metrics_skip_large_grams():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(700, 2))
    Y = np.eye(3)[rng.integers(0, 3, size=700)]  # 2100 Gram rows: over the auto limit
    net = nf.TwoLayer(width=4, act="tanh")
    train = nf.GradientDescent(lr=0.1, steps=2)
    auto = nf.simulate(net, nf.Dataset(X, Y), train, record=nf.Record(times=2))
    assert auto.ntk_change is None and auto.error is not None
    forced = nf.simulate(net, nf.Dataset(X[:60], Y[:60]), train,
                         record=nf.Record(times=2, ntk="metrics"))
    small = nf.simulate(net, nf.Dataset(X[:60], Y[:60]), train, record=nf.Record(times=2))
    assert np.array_equal(forced.ntk_change, small.ntk_change)


def test_classes_become_one_hot_targets_and_argmax_errors():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(30, 4))
    labels = rng.integers(0, 4, size=30)
    data = nf.Dataset(X, labels, classes=4)
    assert data.outputs == 4 and np.array_equal(data.y.argmax(1), labels)
    res = nf.simulate(nf.TwoLayer(width=8, act="relu"), data,
                      nf.GradientDescent(lr=0.5, steps=30, loss="softmax"),
                      trajectories=2, record=nf.Record(times=2, params="final"))
    F = res.predict(X)
    np.testing.assert_array_equal(res.error[:, -1], np.mean(F.argmax(2) != labels, axis=1))


def test_to_xarray_names_outputs():
    pytest.importorskip("xarray")
    X, Y = _problem(c=2)
    res = nf.simulate(nf.TwoLayer(width=3, act="tanh"), nf.Dataset(X, Y),
                      nf.GradientDescent(lr=0.1, steps=3), record=nf.Record(times=2))
    assert res.to_xarray()["p"].dims == ("trajectories", "times", "dim", "outputs")


def test_sgd_batches_are_the_ones_the_run_uses():
    """One SGD step on a linear network from explicit parameters moves U by -lr times the
    batch gradient: recomputed here from nf.sgd_batches (1e-13)."""
    X, Y = _problem(c=2, n=10)
    u0, W0 = np.full((1, 3, 2), 0.3), np.full((1, 3, 3), 0.2)
    train = nf.SGD(lr=0.1, steps=1, batch_size=4)
    res = nf.simulate(nf.TwoLayer(width=3), nf.Dataset(X, Y), train, seed=5,
                      init=nf.Params(u0, W0), first_trajectory=7,
                      record=nf.Record(times=[0, 1], params="final"))
    idx = nf.sgd_batches(5, 7, 0, samples=10, batch_size=4)
    assert len(set(idx.tolist())) == 4
    Xb, Yb = X[idx], Y[idx]
    H = Xb @ W0[0].T
    R = (H @ u0[0] - Yb) / 4
    np.testing.assert_allclose(res.u[0], u0[0] - 0.1 * H.T @ R, rtol=1e-13)


@pytest.mark.parametrize("c,bias", [(3, False), (3, True), (1, True)])
def test_linear_moments_path_with_outputs_and_bias_equals_the_samples(c, bias):
    """A linear network with vector outputs or a bias trains on the square root of its
    moments (dim rows instead of the samples): the same flow as on the samples, to
    rounding (1e-12 relative at rtol 1e-11), kernel metrics included for c = 1."""
    rng = np.random.default_rng(c + bias)
    X = rng.normal(size=(300, 5)) + 0.3
    Y = X @ rng.normal(size=(5, c)) + 0.5 * rng.normal(size=(300, c))
    data = nf.Dataset(X, Y if c > 1 else Y[:, 0])
    net = nf.TwoLayer(width=9, kappa=0.3, bias=bias)
    train = nf.GradientFlow(t_max=4.0, rtol=1e-11, atol=1e-14, lambda_u=0.02)
    kw = dict(trajectories=3, seed=2, init=nf.Gaussian(s_b=0.2),
              record=nf.Record(times=5, params="final"))
    mom = nf.simulate(net, data, train, **kw)
    dat = nf.simulate(net, data, train, path="data", **kw)
    assert mom.path == "moments" and dat.path == "data"
    names = ["loss", "norm_u2", "norm_w2", "alignment", "p", "u", "W"]
    names += ["ntk_change", "kernel_distance", "kta"] if c == 1 else []
    for name in names:
        a, b = getattr(mom, name), getattr(dat, name)
        assert np.max(np.abs(a - b)) <= 1e-12 * max(np.max(np.abs(b)), 1.0), name
    if c > 1:
        assert mom.ntk_change is None  # a (samples c)^2 kernel is not a moment


def test_exact_line_refuses_what_model_a_is_not():
    X = np.linspace(-1, 1, 9)
    for kw, name in ((dict(net=nf.TwoLayer(width=3, bias=True)), "net.bias"),
                     (dict(train=nf.GradientFlow(loss="logistic")), "train.loss"),
                     (dict(data=nf.Dataset(X, np.stack([X, -X], 1))), "data")):
        args = dict(net=nf.TwoLayer(width=3), data=nf.Dataset(X, np.sign(X + 0.1)),
                    train=nf.GradientFlow())
        args.update(kw)
        params = nf.initial_params(nf.TwoLayer(width=3), trajectories=1, dim=1)
        with pytest.raises(ValueError, match=name):
            nf.exact.line(params, args["net"], args["data"], args["train"])


def test_sgd_batch_larger_than_the_data_with_replacement():
    """Drawn with replacement a batch may hold more rows than the training set: the core
    sizes its buffers for them (this overflowed the heap before). One step of a relu
    network against NumPy on the same batch (1e-13)."""
    rng = np.random.default_rng(4)
    X, y = rng.normal(size=(24, 3)), rng.normal(size=24)
    p = nf.initial_params(nf.TwoLayer(width=16), trajectories=3, seed=1, dim=3)
    train = nf.SGD(lr=0.05, steps=1, batch_size=30, replace=True)
    res = nf.simulate(nf.TwoLayer(width=16, act="relu", kappa=0.25), nf.Dataset(X, y), train,
                      init=p, seed=2, record=nf.Record(times=[0, 1], params="final"))
    for k in range(3):
        idx = nf.sgd_batches(2, k, 0, samples=24, batch_size=30, replace=True)
        Z = X[idx] @ p.W0[k].T
        r = 0.25 * np.maximum(Z, 0) @ p.u0[k] - y[idx]
        gu = 0.25 * np.maximum(Z, 0).T @ r / 30
        np.testing.assert_allclose(res.u[k], p.u0[k] - 0.05 * gu, rtol=1e-13, atol=1e-15)
    longer = nf.simulate(nf.TwoLayer(width=16, act="tanh"), nf.Dataset(X, y),
                         nf.SGD(lr=0.05, steps=50, batch_size=100, replace=True),
                         trajectories=4, record=nf.Record(times=3))
    assert np.all(longer.status == 0)
