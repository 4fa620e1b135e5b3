"""The stiff solver on the dataset path (rodas4, and auto's hand-over from dopri5) for smooth
activations (cpp/src/nonlinear_stiff.hpp): against SciPy's Radau on the full parameter flow
written here in NumPy, bit identity across threads and grouping, relu's refusal and its
unchanged auto, and the records computed from the state (Gram, twin, test set, deltas)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.special
from scipy.integrate import solve_ivp

import ntkflow as nf

from . import reference as ref

N_SAMPLES, DIM, WIDTH = 10, 3, 12
LAMBDA_U, LAMBDA_W, ETA_U, ETA_W = 0.01, 0.02, 1.0, 0.7


def _dataset(c: int, loss: str = "square", seed: int = 1) -> nf.Dataset:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N_SAMPLES, DIM))
    if loss == "logistic":
        return nf.Dataset(X, np.where(X[:, 0] + 0.3 * rng.normal(size=N_SAMPLES) > 0, 1.0, -1.0))
    if loss == "softmax":
        return nf.Dataset(X, rng.integers(0, c, N_SAMPLES), classes=c)
    Y = np.tanh(X @ rng.normal(size=(DIM, c))) + 0.1 * rng.normal(size=(N_SAMPLES, c))
    return nf.Dataset(X, Y[:, 0] if c == 1 else Y)


def _slope(loss: str, F: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """dl/dF of each sample's loss."""
    if loss == "square":
        return F - Y
    if loss == "logistic":
        return -Y * scipy.special.expit(-Y * F)
    return scipy.special.softmax(F, axis=1) - Y


def _radau(res: nf.Result, net: nf.TwoLayer, data: nf.Dataset, train: nf.GradientFlow
           ) -> tuple[np.ndarray, np.ndarray]:
    """Every trajectory's parameters (U and [W, b]) at res.times, SciPy Radau at rtol 1e-12 on
    the flow of L = (1/n) sum_j l(f_j) + decay, f = kappa act([X, 1] [W, b]^T) U."""
    X = np.c_[data.X, np.ones(len(data.X))] if net.bias else data.X
    Y = data.y.reshape(len(X), -1)
    n, D = X.shape
    c, m, kappa = Y.shape[1], net.width, net.kappa
    p = res.initial_params()
    Us, Ws = [], []
    for k in range(res.trajectories):
        U0 = p.u0[k].reshape(m, c)
        W0 = np.c_[p.W0[k], p.b0[k]] if net.bias else p.W0[k]

        def rhs(_t, th):
            U, W = th[:m * c].reshape(m, c), th[m * c:].reshape(m, D)
            A, S = ref.act_and_slope(net.act, X @ W.T)
            R = _slope(train.loss, kappa * A @ U, Y)
            dU = -train.eta_u * (kappa / n * A.T @ R + train.lambda_u * U)
            dW = -train.eta_w * (kappa / n * (S * (R @ U.T)).T @ X + train.lambda_w * W)
            return np.concatenate([dU.ravel(), dW.ravel()])

        sol = solve_ivp(rhs, (0.0, float(res.times[-1])), np.r_[U0.ravel(), W0.ravel()],
                        method="Radau", t_eval=res.times, rtol=1e-12, atol=1e-14)
        assert sol.success, sol.message
        Us.append(sol.y[:m * c].T.reshape(-1, m, c))
        Ws.append(sol.y[m * c:].T.reshape(-1, m, D))
    return np.array(Us), np.array(Ws)


def _run(act: str, c: int, bias: bool, solver: str, kappa: float = 8.0, loss: str = "square",
         trajectories: int = 2, **kw) -> tuple[nf.Result, nf.TwoLayer, nf.Dataset, nf.GradientFlow]:
    net = nf.TwoLayer(width=WIDTH, act=act, kappa=kappa, bias=bias)
    data = _dataset(c, loss)
    train = nf.GradientFlow(t_max=20.0, rtol=1e-10, atol=1e-12, solver=solver, loss=loss,
                            eta_u=ETA_U, eta_w=ETA_W, lambda_u=LAMBDA_U, lambda_w=LAMBDA_W)
    init = nf.Gaussian(s_u=2.0, s_w=2.0, **({"s_b": 1.0} if bias else {}))
    kw.setdefault("record", nf.Record(times=np.linspace(0.0, 20.0, 11), params="all"))
    res = nf.simulate(net, data, train, trajectories=trajectories, seed=2, init=init,
                      path="data", **kw)
    return res, net, data, train


def _worst_error(res: nf.Result, net: nf.TwoLayer, data: nf.Dataset,
                 train: nf.GradientFlow) -> float:
    """Largest parameter error against Radau, relative to each layer's largest entry."""
    Us, Ws = _radau(res, net, data, train)
    U = res.u.reshape(Us.shape)
    W = np.concatenate([res.W, res.b[..., None]], -1) if net.bias else res.W
    return max(float(np.abs(U - Us).max() / np.abs(Us).max()),
               float(np.abs(W - Ws).max() / np.abs(Ws).max()))


# Measured worst (rodas4 / auto): logistic 3.3e-12 / 2.5e-11, softmax (3 classes)
# 1.5e-12 / 1.6e-11; auto stays on dopri5 there (the slopes of these losses fade as the
# margins grow, and with them the stiffness), so it checks that nothing changes when it
# does not switch. Bounds 5x the worse.
LOGISTIC_BOUND, SOFTMAX_BOUND = 1.2e-10, 8e-11

CASES = [("tanh", 1, False), ("tanh", 2, True), ("erf", 1, True), ("erf", 2, False),
         ("linear", 1, True), ("linear", 2, True)]


# kappa = 8 at init scale 2 makes the flow stiff: auto switches on every trajectory, between
# t = 0 (linear: stiff from the start) and t = 8.2 (tanh). Worst
# errors measured at rtol 1e-10 (relative to each layer's largest parameter), rodas4 / auto:
# tanh 2.5e-11 / 4.0e-12, tanh c=2 bias 4.2e-12 / 1.5e-12, erf bias 4.7e-12 / 2.9e-12,
# erf c=2 2.9e-12 / 7.1e-12, linear bias 3.3e-12 / 3.2e-12, linear c=2 bias 9.0e-13 / 5.3e-13.
# Each bound is 5x the worse of its case's two.
BOUND = {("tanh", 1, False): 1.3e-10, ("tanh", 2, True): 2.1e-11, ("erf", 1, True): 2.4e-11,
         ("erf", 2, False): 3.6e-11, ("linear", 1, True): 1.7e-11, ("linear", 2, True): 4.5e-12}


@pytest.mark.parametrize("solver", ["rodas4", "auto"])
@pytest.mark.parametrize(("act", "c", "bias"), CASES)
def test_against_radau(act: str, c: int, bias: bool, solver: str) -> None:
    res, net, data, train = _run(act, c, bias, solver)
    assert (res.status == 0).all(), res.status
    assert res.t_stiff is not None
    if solver == "rodas4":
        assert np.all(res.t_stiff == 0.0)
    elif act == "linear":  # some are stiff from the start (rho(0) t_max > 1e5): t = 0
        assert np.all(np.isfinite(res.t_stiff)) and np.all(res.t_stiff >= 0), res.t_stiff
    else:  # the hand-over from dopri5 mid-run
        assert np.all(np.isfinite(res.t_stiff)) and np.all(res.t_stiff > 0), res.t_stiff
    err = _worst_error(res, net, data, train)
    assert err <= BOUND[(act, c, bias)], err


@pytest.mark.parametrize(("loss", "c", "bound"), [("logistic", 1, LOGISTIC_BOUND),
                                                  ("softmax", 3, SOFTMAX_BOUND)])
def test_classification_losses_against_radau(loss: str, c: int, bound: float) -> None:
    """The loss Hessian in output space is then per-sample: l''(f_j) / n, c x c blocks."""
    for solver in ("rodas4", "auto"):
        res, net, data, train = _run("tanh", c, True, solver, loss=loss)
        assert (res.status == 0).all(), res.status
        err = _worst_error(res, net, data, train)
        assert err <= bound, (solver, err)


def test_auto_takes_far_fewer_steps_than_dopri5_when_stiff() -> None:
    """The linear case above: dopri5 alone took 36573 and 30125 steps (stability-bound to
    t = 20), auto 475 and 413 (switching at t ~ 0.02)."""
    rec = nf.Record(times=3)
    auto = _run("linear", 1, True, "auto", record=rec)[0]
    dop = _run("linear", 1, True, "dopri5", record=rec)[0]
    assert np.all(auto.steps * 20 < dop.steps), (auto.steps, dop.steps)


def _arrays(res: nf.Result) -> dict[str, np.ndarray]:
    return {k: v for k, v in vars(res).items() if isinstance(v, np.ndarray)}


def _same_bits(a: nf.Result, b: nf.Result, skip: tuple[str, ...] = ()) -> None:
    xa, xb = _arrays(a), _arrays(b)
    assert set(xa) - set(skip) == set(xb) - set(skip)
    for k in set(xa) - set(skip):
        np.testing.assert_array_equal(xa[k], xb[k], err_msg=k)


@pytest.mark.parametrize("solver", ["rodas4", "auto"])
def test_bits_independent_of_threads_and_grouping(solver: str) -> None:
    rec = nf.Record(times=np.linspace(0.0, 20.0, 6), params="all", deltas=True)
    one, *_ = _run("tanh", 2, True, solver, trajectories=4, threads=1, record=rec)
    two, *_ = _run("tanh", 2, True, solver, trajectories=4, threads=2, record=rec)
    _same_bits(one, two)
    if solver == "auto":
        assert np.all(np.isfinite(one.t_stiff)), one.t_stiff
    # Trajectories 2 and 3 on their own (a thread's earlier trajectories must not matter).
    net = nf.TwoLayer(width=WIDTH, act="tanh", kappa=8.0, bias=True)
    train = nf.GradientFlow(t_max=20.0, rtol=1e-10, atol=1e-12, solver=solver, eta_u=ETA_U,
                            eta_w=ETA_W, lambda_u=LAMBDA_U, lambda_w=LAMBDA_W)
    tail = nf.simulate(net, _dataset(2), train, trajectories=2, seed=2, first_trajectory=2,
                       init=nf.Gaussian(s_u=2.0, s_w=2.0, s_b=1.0), path="data", record=rec,
                       threads=1)
    for k, v in _arrays(tail).items():
        if v.ndim >= 1 and v.shape[0] == 2 and _arrays(one)[k].shape[0] == 4:
            np.testing.assert_array_equal(v, _arrays(one)[k][2:], err_msg=k)


def test_rodas4_refuses_relu_and_auto_keeps_relu_on_dopri5() -> None:
    data = _dataset(1)
    net = nf.TwoLayer(width=WIDTH, act="relu", kappa=2.0)
    with pytest.raises(ValueError, match="solver"):
        nf.simulate(net, data, nf.GradientFlow(t_max=1.0, solver="rodas4"), trajectories=1)
    rec = nf.Record(times=5, params="all", deltas=True)
    auto = nf.simulate(net, data, nf.GradientFlow(t_max=5.0, solver="auto"), trajectories=3,
                       seed=4, record=rec)
    dop = nf.simulate(net, data, nf.GradientFlow(t_max=5.0, solver="dopri5"), trajectories=3,
                      seed=4, record=rec)
    assert auto.t_stiff is None and dop.t_stiff is None
    assert auto.events.sum() > 0  # relu's switches were located
    _same_bits(auto, dop)


def test_rodas4_refuses_a_capacitance_matrix_beyond_4096_rows() -> None:
    rng = np.random.default_rng(0)
    data = nf.Dataset(rng.normal(size=(2049, 2)), rng.integers(0, 2, 2049), classes=2)
    net = nf.TwoLayer(width=4, act="tanh")
    with pytest.raises(ValueError, match="solver.*4096"):
        nf.simulate(net, data, nf.GradientFlow(t_max=1.0, solver="rodas4", loss="softmax"),
                    trajectories=1)


def test_state_records_agree_with_dopri5() -> None:
    """Gram, kernel metrics, the linearised twin, the test set and the per-neuron deltas are
    computed from the state at record times, whichever method carried it there."""
    rng = np.random.default_rng(7)
    test = nf.Dataset(rng.normal(size=(6, DIM)), rng.normal(size=6))
    rec = nf.Record(times=np.linspace(0.0, 20.0, 6), gram="train", ntk="metrics",
                    linearized=True, test=test, deltas=True, params="final")
    got = {s: _run("erf", 1, False, s, record=rec)[0] for s in ("rodas4", "auto", "dopri5")}
    ref_ = got["dopri5"]
    for s in ("rodas4", "auto"):
        for k in ("loss", "gram", "ntk_change", "kernel_distance", "kta", "loss_lin", "lin_gap",
                  "test_loss", "test_loss_lin", "test_lin_gap", "delta_mean", "delta_std",
                  "deltas", "move_u", "move_w", "u", "W"):
            a, b = getattr(got[s], k), getattr(ref_, k)
            assert a is not None and b is not None, k
            scale = np.nanmax(np.abs(b)) or 1.0
            assert np.nanmax(np.abs(a - b)) <= 1e-7 * scale, (s, k)
        np.testing.assert_array_equal(got[s].loss_lin, ref_.loss_lin)  # closed form of K_0
