"""Per-neuron conserved quantities delta_i = eta_w u_i^2 - eta_u ||w_i||^2 (docs/theory.md §E.5):
the records against NumPy on the recorded parameters, their conservation by gradient flow
for linear and relu networks, their drift for tanh and under gradient descent."""

from __future__ import annotations

import numpy as np
import pytest

import ntkflow as nf

RNG = np.random.default_rng(7)
X = RNG.normal(size=(12, 3))
Y = np.tanh(X @ np.array([1.0, -0.5, 0.25]))
MOMENTS_2D = nf.Moments(Sigma=np.array([[1.0, 0.3], [0.3, 0.7]]), b=np.array([0.8, -0.4]))


def numpy_deltas(u, W, eta_u, eta_w):
    """delta_i and the per-neuron scale eta_w u_i^2 + eta_u ||w_i||^2 from parameters
    u (..., width) and W (..., width[, dim])."""
    w2 = W**2 if W.ndim == u.ndim else np.sum(W**2, axis=-1)
    return eta_w * u**2 - eta_u * w2, eta_w * u**2 + eta_u * w2


# (case id, net, data, train, simulate keywords): every path that integrates parameters.
CASES = [
    ("lanes-rk4", nf.TwoLayer(width=9, kappa=0.4), nf.LatentLine(beta=0.8),
     nf.GradientFlow(t_max=2.0, solver="rk4", dt=0.01, eta_u=0.7, eta_w=1.3), {}),
    ("lanes-gd", nf.TwoLayer(width=9, kappa=0.4), nf.LatentLine(beta=0.8),
     nf.GradientDescent(lr=0.05, steps=40, eta_w=0.6), {}),
    ("fused-dopri5", nf.TwoLayer(width=9, kappa=0.4), nf.LatentLine(beta=0.8),
     nf.GradientFlow(t_max=2.0, rtol=1e-10, eta_u=0.7, eta_w=1.3), {}),
    ("fused-dim2", nf.TwoLayer(width=7, kappa=0.5), MOMENTS_2D,
     nf.GradientFlow(t_max=2.0, solver="rk4", dt=0.01, eta_u=1.4), {}),
    ("stagewise", nf.TwoLayer(width=7, kappa=0.5), MOMENTS_2D,
     nf.GradientFlow(t_max=2.0, rtol=1e-10, eta_w=0.5), {"method": "stagewise"}),
    ("data-relu", nf.TwoLayer(width=8, act="relu", kappa=0.5), nf.Dataset(X=X, y=Y),
     nf.GradientFlow(t_max=1.0, solver="rk4", dt=0.01, eta_u=0.8), {}),
    ("data-tanh", nf.TwoLayer(width=8, act="tanh", kappa=0.5), nf.Dataset(X=X, y=Y),
     nf.GradientDescent(lr=0.1, steps=30, eta_w=1.5), {}),
    ("data-linear", nf.TwoLayer(width=8, kappa=0.5), nf.Dataset(X=X, y=Y),
     nf.GradientFlow(t_max=1.0, rtol=1e-10), {"path": "data"}),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_delta_records_equal_numpy_on_the_recorded_parameters(case) -> None:
    _, net, data, train, kw = case
    res = nf.simulate(net, data, train, trajectories=3, seed=11,
                      record=nf.Record(times=6, params="all", deltas=True), **kw)
    assert res.ok.all()
    eta_u, eta_w = train.eta_u, train.eta_w
    delta, scale = numpy_deltas(res.u, res.W, eta_u, eta_w)
    p0 = res.initial_params()
    delta0, _ = numpy_deltas(p0.u0, p0.W0, eta_u, eta_w)
    # The same few products and one subtraction per neuron as the core, but NumPy may
    # round in another order (FMA): a few ulps of the per-neuron scale, hence 1e-13.
    top = scale.max(axis=-1)
    np.testing.assert_allclose(res.deltas, delta, rtol=0, atol=1e-13 * top.max())
    assert res.deltas.shape == (3, 6, net.width)
    np.testing.assert_allclose(res.delta_mean, delta.mean(axis=-1), rtol=0,
                               atol=1e-13 * top.max())
    np.testing.assert_allclose(res.delta_std, delta.std(axis=-1), rtol=0,
                               atol=1e-13 * top.max())
    drift = np.max(np.abs(delta - delta0[:, None]), axis=-1) / top
    # drift is itself relative: compare absolutely, at the rounding of a difference of deltas
    np.testing.assert_allclose(res.delta_drift, drift, rtol=1e-10, atol=1e-14)
    # Their sum is the conserved total of docs/theory.md §A.3 / §B.2 behind balance_drift.
    total = eta_w * res.norm_u2 - eta_u * res.norm_w2
    np.testing.assert_allclose(res.delta_mean * net.width, total, rtol=0,
                               atol=1e-12 * top.max() * net.width)


@pytest.mark.parametrize("solver", ["dopri5", "rk4"])
@pytest.mark.parametrize("data", [nf.LatentLine(beta=1.2), MOMENTS_2D, nf.Dataset(X=X, y=Y)],
                         ids=["line", "moments", "dataset"])
def test_linear_flow_conserves_every_delta_i(solver, data) -> None:
    # Gradient flow of a linear network: d delta_i/dt = 0 exactly (docs/theory.md §B.2, Z_ii), so
    # the drift is the integration error. dopri5 rtol 1e-10 on t <= 3: ~1e-10 per unit of
    # scale; rk4 dt = 2e-3: O(dt^4) ~ 1e-11 times the (O(1)) fourth derivative. 1e-8 leaves
    # room for conditioning; a non-conserved quantity (tanh below) drifts by ~1e-2.
    train = (nf.GradientFlow(t_max=3.0, rtol=1e-10, atol=1e-12) if solver == "dopri5"
             else nf.GradientFlow(t_max=3.0, solver="rk4", dt=2e-3))
    net = nf.TwoLayer(width=16, kappa=0.5)
    res = nf.simulate(net, data, train, trajectories=4, seed=3,
                      init=nf.Gaussian(1.0, 0.5), record=nf.Record(times=11))
    assert res.ok.all()
    assert np.max(res.delta_drift) < 1e-8
    assert np.max(res.delta_drift[:, 0]) == 0.0  # t = 0: the reference itself
    # The spread is conserved too (every delta_i is), and it is not zero: an unbalanced
    # Gaussian start.
    np.testing.assert_allclose(res.delta_std, res.delta_std[:, :1].repeat(11, axis=1),
                               rtol=1e-8)
    assert np.min(res.delta_std) > 0.1


def test_relu_flow_conserves_and_tanh_flow_does_not() -> None:
    # relu is 1-homogeneous: u_i dL/du_i = w_i . dL/dw_i, so d delta_i/dt = 0 (docs/theory.md §E.5).
    # rk4 (the adaptive default for relu is being reworked elsewhere) with dt = 1e-3: where
    # a pre-activation crosses 0 inside a step the field jumps and the local error there is
    # O(dt^2) ~ 1e-6 of the state, a handful of times per trajectory: bound 1e-5.
    data = nf.Dataset(X=X, y=Y)
    train = nf.GradientFlow(t_max=2.0, solver="rk4", dt=1e-3)
    kw = dict(trajectories=3, seed=5, record=nf.Record(times=5))
    relu = nf.simulate(nf.TwoLayer(width=16, act="relu", kappa=0.5), data, train, **kw)
    tanh = nf.simulate(nf.TwoLayer(width=16, act="tanh", kappa=0.5), data, train, **kw)
    assert relu.ok.all() and tanh.ok.all()
    assert np.max(relu.delta_drift) < 1e-5
    assert np.min(tanh.delta_drift[:, -1]) > 1e-3  # not conserved: physics, not error


def test_gradient_descent_breaks_delta_i_at_lr_squared_per_step() -> None:
    # One gradient-descent step with g_u = -dL/du_i, g_w = -dL/dw_i:
    #   delta_i' - delta_i = 2 lr eta_u eta_w (u_i g_u - w_i . g_w)
    #                        + lr^2 eta_u eta_w (eta_u g_u^2 - eta_w ||g_w||^2),
    # and the O(lr) term vanishes for a 1-homogeneous activation (u_i g_u = w_i . g_w).
    # Over a few small steps the gradients barely change, so drift / steps ~ C lr^2.
    net = nf.TwoLayer(width=12, act="relu", kappa=0.5)
    data = nf.Dataset(X=X, y=Y)
    steps = 8
    lrs = np.array([5e-4, 1e-3, 2e-3, 4e-3])  # drift ~1e-8..1e-6, far above round-off
    per_step = []
    for lr in lrs:
        res = nf.simulate(net, data, nf.GradientDescent(lr=float(lr), steps=steps),
                          trajectories=2, seed=9, record=nf.Record(times=np.array([steps])))
        per_step.append(np.max(res.delta_drift[:, -1]) / steps)
    slope = np.polyfit(np.log(lrs), np.log(per_step), 1)[0]
    assert abs(slope - 2.0) < 0.2, (slope, per_step)
    # The same holds on the moments path (lanes) for a linear network.
    per_step = []
    for lr in lrs:
        res = nf.simulate(nf.TwoLayer(width=12, kappa=0.5), nf.LatentLine(beta=1.0),
                          nf.GradientDescent(lr=float(lr), steps=steps), trajectories=2,
                          seed=9, record=nf.Record(times=np.array([steps])))
        per_step.append(np.max(res.delta_drift[:, -1]) / steps)
    slope = np.polyfit(np.log(lrs), np.log(per_step), 1)[0]
    assert abs(slope - 2.0) < 0.2, (slope, per_step)


@pytest.mark.parametrize("solver", ["rk4", "gd"])
def test_lane_groups_do_not_change_delta_bits(solver) -> None:
    # d = 1 with fixed steps runs up to 8 trajectories in SIMD lanes, grouped by ensemble
    # size and thread count: the per-neuron records of a trajectory must not depend on it.
    net = nf.TwoLayer(width=37, kappa=0.2)
    train = (nf.GradientDescent(lr=0.2, steps=300) if solver == "gd"
             else nf.GradientFlow(t_max=3.0, solver=solver, dt=0.01))
    rec = nf.Record(times=7, deltas=True)

    def run(n, first=0, threads=None):
        return nf.simulate(net, nf.LatentLine(beta=0.9), train, trajectories=n, seed=5,
                           first_trajectory=first, threads=threads, record=rec)

    big = run(24, threads=1)
    names = ("delta_mean", "delta_std", "delta_drift", "deltas")
    for part in (run(3, threads=2), run(5, threads=1), run(11, threads=2)):
        n = part.loss.shape[0]
        for name in names:
            np.testing.assert_array_equal(getattr(part, name), getattr(big, name)[:n], name)
    one = run(1, first=13)
    for name in names:
        np.testing.assert_array_equal(getattr(one, name)[0], getattr(big, name)[13], name)


@pytest.mark.parametrize("method", ["full", "stagewise"])
@pytest.mark.parametrize("dim", [1, 2])
def test_drift_reference_is_the_initial_state_not_the_first_record(method, dim) -> None:
    # Record times after t = 0 must not move the reference of the drifts: the run with an
    # extra record at 0 takes the very same steps, so the shared times agree bit for bit.
    data = nf.LatentLine(beta=1.0) if dim == 1 else MOMENTS_2D
    train = nf.GradientFlow(t_max=2.0, solver="rk4", dt=0.1)
    net = nf.TwoLayer(width=5, act="linear", kappa=0.7)
    kw = dict(trajectories=2, seed=1, method=method)
    late = nf.simulate(net, data, train, record=nf.Record(times=np.array([1.0, 2.0])), **kw)
    base = nf.simulate(net, data, train, record=nf.Record(times=np.array([0.0, 1.0, 2.0])),
                       **kw)
    for name in ("delta_drift", "delta_mean", "balance_drift"):
        np.testing.assert_array_equal(getattr(late, name), getattr(base, name)[:, 1:], name)
    assert np.all(late.delta_drift > 0)


def test_failed_trajectories_get_nan_delta_records() -> None:
    net = nf.TwoLayer(width=6, kappa=1.0)
    u0 = np.ones((2, 6))
    W0 = np.ones((2, 6, 1))
    u0[1] *= 40.0
    W0[1] *= 40.0  # lr 0.2 from a 40x init blows up
    res = nf.simulate(net, nf.LatentLine(beta=1.0), nf.GradientDescent(lr=0.2, steps=50),
                      init=nf.Params(u0, W0), record=nf.Record(times=11, deltas=True))
    assert list(res.status) == [0, 1]
    j = np.searchsorted(res.times, res.t_fail[1])
    for name in ("delta_mean", "delta_std", "delta_drift", "deltas"):
        v = getattr(res, name)
        assert np.isfinite(v[0]).all(), name
        assert np.isnan(v[1, j + 1:]).all(), name


def test_reduced_method_has_no_delta_records() -> None:
    net = nf.TwoLayer(width=4)
    res = nf.simulate(net, nf.LatentLine(), nf.GradientFlow(t_max=1.0), method="reduced")
    assert res.delta_mean is None and res.delta_std is None
    assert res.delta_drift is None and res.deltas is None
    with pytest.raises(ValueError, match="record.deltas"):
        nf.simulate(net, nf.LatentLine(), nf.GradientFlow(t_max=1.0), method="reduced",
                    record=nf.Record(deltas=True))


def test_deltas_record_is_checked_against_the_memory_budget() -> None:
    with pytest.raises(ValueError, match="deltas"):
        nf.Record(deltas="yes")
    net = nf.TwoLayer(width=100_000)
    try:
        # 1000 x 101 x 1e5 doubles = 81 GB, refused before anything is allocated.
        nf.set_memory_budget(2**30)
        with pytest.raises(nf.MemoryBudgetError, match="record.deltas"):
            nf.simulate(net, nf.LatentLine(), nf.GradientFlow(), trajectories=1000,
                        record=nf.Record(deltas=True))
    finally:
        nf.set_memory_budget(None)


def test_to_xarray_names_the_width_dimension() -> None:
    pytest.importorskip("xarray")
    res = nf.simulate(nf.TwoLayer(width=3), nf.LatentLine(), nf.GradientFlow(t_max=1.0),
                      trajectories=2, record=nf.Record(times=4, deltas=True))
    ds = res.to_xarray()
    assert ds["deltas"].dims == ("trajectories", "times", "width")
    assert ds["delta_drift"].dims == ("trajectories", "times")


def test_spread_of_huge_but_finite_deltas_does_not_overflow() -> None:
    # u_i ~ 1e150: delta_i ~ 1e300 is finite, its square is not. The spread is formed from
    # deviations scaled by the largest one (the fuzz tests found this with diverging gd).
    u0 = np.array([[1e150, 2e150, 3e150]])
    W0 = np.zeros((1, 3, 1))  # with beta = 0 a stationary point: nothing moves
    res = nf.simulate(nf.TwoLayer(width=3), nf.LatentLine(beta=0.0),
                      nf.GradientFlow(t_max=1e-3, solver="rk4", dt=1e-3),
                      init=nf.Params(u0, W0), record=nf.Record(times=2, deltas=True))
    assert res.ok.all()
    d = res.deltas / 1e300
    np.testing.assert_allclose(res.delta_std / 1e300, d.std(axis=-1), rtol=1e-14)
    np.testing.assert_allclose(res.delta_mean / 1e300, d.mean(axis=-1), rtol=1e-14)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_delta_summaries_can_be_skipped_without_changing_anything_else(case) -> None:
    # delta_summaries=False leaves the three summaries None and every other record
    # bit for bit as the default run makes it (the recorder only reads the parameters);
    # deltas=True still works on its own.
    _, net, data, train, kw = case
    full = nf.simulate(net, data, train, trajectories=3, seed=11,
                       record=nf.Record(times=6, params="all", deltas=True), **kw)
    lean = nf.simulate(net, data, train, trajectories=3, seed=11,
                       record=nf.Record(times=6, params="all", deltas=True,
                                        delta_summaries=False), **kw)
    assert lean.delta_mean is None and lean.delta_std is None and lean.delta_drift is None
    assert full.delta_mean is not None
    for name in ("loss", "u", "W", "deltas", "steps", "norm_u2"):
        np.testing.assert_array_equal(getattr(lean, name), getattr(full, name), err_msg=name)


def test_delta_summaries_must_be_a_bool() -> None:
    with pytest.raises(ValueError, match="delta_summaries"):
        nf.Record(delta_summaries="no")
