"""Self-checks of tests/reference_setups.py, the references the issue #15 tests trust:
the generator against published vectors and the installed core, the batch sampler's
properties, the gradients against finite differences, the losses at large outputs, and
the runs against each other."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.stats

import ntkflow as nf

from . import reference_setups as R

ACTS = ("linear", "relu", "tanh", "erf")
# (loss, c): square with 1 and 3 outputs, logistic needs c = 1, softmax c >= 2.
LOSSES = (("square", 1), ("square", 3), ("logistic", 1), ("softmax", 3))


def targets(rng, n, c, loss):
    """Y (n, c): Gaussian for square, +-1 for logistic, one-hot (first half) and soft
    simplex rows (second half) for softmax."""
    if loss == "square":
        return rng.normal(size=(n, c))
    if loss == "logistic":
        return rng.choice([-1.0, 1.0], size=(n, 1))
    Y = R.one_hot(rng.integers(0, c, size=n), c)
    Y[n // 2:] = rng.dirichlet(np.ones(c), size=n - n // 2)
    return Y


def problem(seed, n=7, d=3, m=5, c=1, loss="square", bias=False):
    """X (augmented), Y, U, W; W redrawn until every |x_j . w_i| > 1e-2, so that finite
    differences of relu networks (h = 1e-6) never straddle the kink."""
    rng = np.random.default_rng(seed)
    X = R.augment(rng.normal(size=(n, d)), bias)
    U = rng.normal(size=(m, c))
    W = rng.normal(size=(m, X.shape[1])) / np.sqrt(d)
    while np.min(np.abs(X @ W.T)) <= 1e-2:
        W = rng.normal(size=(m, X.shape[1])) / np.sqrt(d)
    return X, targets(rng, n, c, loss), U, W


# ------------------------------------------------------------------ generator


def test_philox_known_answers() -> None:
    # Random123's kat_vectors for philox4x32_10 (counter, key -> output).
    assert R.philox_block((0, 0), (0, 0, 0, 0)) == (0x6627E8D5, 0xE169C58D, 0xBC57AC4C,
                                                     0x9B00DBD8)
    f = 0xFFFFFFFF
    assert R.philox_block((f, f), (f, f, f, f)) == (0x408F276D, 0x41C83B0E, 0xA20BC7C6,
                                                     0x6D5451FD)
    assert R.philox_block((0xA4093822, 0x299F31D0),
                          (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344)) == (
        0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)


@pytest.mark.parametrize("seed", [0, 1, 987654321, 2**32 + 5, 2**63 + 12345, 2**64 - 1])
def test_philox_port_matches_initial_params_bit_for_bit(seed: int) -> None:
    # Exact equality: the port must give the core's bits, not nearby numbers.
    for m, d, s_u, s_w in ((5, 1, 1.0, 1.0), (3, 4, 0.7, 1.3), (1, 2, 2.5, 0.1)):
        for first, k in ((0, 3), (4, 2), (2**32 - 1, 2), (2**40 + 17, 1)):
            p = nf.initial_params(nf.TwoLayer(width=m), nf.Gaussian(s_u, s_w), trajectories=k,
                                  seed=seed, dim=d, first_trajectory=first)
            R.check_initial_params(p, seed, s_u, s_w, first)


def test_normals_of_a_subrange_are_the_same_numbers() -> None:
    whole = R.normals(42, 3, 0, 11)
    for first, count in ((1, 4), (3, 1), (5, 6), (0, 1)):
        np.testing.assert_array_equal(R.normals(42, 3, first, count), whole[first:first + count])


def test_sgd_stream_is_philox_with_its_own_key_and_counter() -> None:
    seed, traj = 2**40 + 77, 2**33 + 9
    key = ((seed & R.MASK32) ^ 0x53474431, seed >> 32)
    for step, j in ((0, 0), (5, 3), (2**32 - 1, 2**31 + 4)):
        assert R.sgd_block(seed, traj, step, j) == R.philox_block(
            key, (j, step, traj & R.MASK32, traj >> 32))
    # Words: (c0, c1) then (c2, c3) of each block, high word first.
    c = R.sgd_block(seed, traj, 7, 1)
    words = R.sgd_words(seed, traj, 7, 4)
    assert words[2] == (c[0] << 32 | c[1]) and words[3] == (c[2] << 32 | c[3])
    # Not the initialisation stream of the same seed (the key differs).
    assert R.sgd_block(seed, traj, 0, 0) != R.stream_block(seed, traj, 0)


# ------------------------------------------------------------------ batch sampler


@pytest.mark.parametrize("n", [1, 2, 7, 50, 2**31 + 11, 2**40 + 3])
def test_batches_without_replacement_are_distinct_and_in_range(n: int) -> None:
    for B in sorted({1, min(n, 5), min(n, 32)}):
        for step in (0, 1, 99):
            idx = R.sgd_batch(2**35 + 1, 3, step, n, B, replace=False)
            assert idx.dtype == np.int64 and idx.shape == (B,)
            assert np.all((0 <= idx) & (idx < n)) and len(set(idx.tolist())) == B
    if n <= 50:  # the whole set is a permutation
        assert sorted(R.sgd_batch(1, 0, 3, n, n).tolist()) == list(range(n))


def test_batches_with_replacement_are_in_range() -> None:
    for n in (1, 3, 2**31 + 11, 2**62):
        idx = R.sgd_batch(5, 2, 4, n, 40, replace=True)
        assert idx.dtype == np.int64 and np.all((0 <= idx) & (idx < n))


def test_batch_sampler_is_uniform() -> None:
    # 12000 steps of one fixed seed, n = 7, B = 3. Under a correct sampler each position's
    # index is uniform on 7 values and the ordered pair (idx_0, idx_1) uniform on the 42
    # distinct pairs; with replacement each of the 7^2 ordered pairs. Tolerance: chi-square
    # p-value > 1e-3 for each of the 5 statistics (deterministic with the fixed seed; a
    # correct sampler fails one with probability < 0.5 %, a biased one -- e.g. modulo
    # reduction or a swap range off by one -- drives p to ~0 at this size).
    n, B, N = 7, 3, 12000
    draws = np.array([R.sgd_batch(11, 5, s, n, B) for s in range(N)])
    for t in range(B):
        assert scipy.stats.chisquare(np.bincount(draws[:, t], minlength=n)).pvalue > 1e-3
    pairs = np.bincount(draws[:, 0] * n + draws[:, 1], minlength=n * n)
    assert np.all(pairs[np.arange(n) * (n + 1)] == 0)  # never the same index twice
    assert scipy.stats.chisquare(np.delete(pairs, np.arange(n) * (n + 1))).pvalue > 1e-3
    drawn = np.array([R.sgd_batch(11, 5, s, n, 2, replace=True) for s in range(N)])
    both = np.bincount(drawn[:, 0] * n + drawn[:, 1], minlength=n * n)
    assert scipy.stats.chisquare(both).pvalue > 1e-3  # repeats included, at rate 1/n


def test_label_noise_normals_are_standard() -> None:
    # 4000 normals of one step: mean within 4 standard errors, variance within 10 %.
    xi = R.sgd_noise(3, 1, 0, 4000)
    assert abs(xi.mean()) < 4 / np.sqrt(4000) and abs(xi.var() - 1) < 0.1
    np.testing.assert_array_equal(R.sgd_noise(3, 1, 0, 5), xi[:5])
    assert not np.array_equal(R.sgd_noise(3, 1, 1, 5), xi[:5])  # fresh per step


# ------------------------------------------------------------------ gradients


def fd_grads(U, W, X, Y, s, h=1e-6):
    """Central differences of loss_value in every parameter."""
    gU, gW = np.empty_like(U), np.empty_like(W)
    for A, G in ((U, gU), (W, gW)):
        for q in np.ndindex(A.shape):
            old = A[q]
            A[q] = old + h
            up = R.loss_value(U, W, X, Y, s)
            A[q] = old - h
            down = R.loss_value(U, W, X, Y, s)
            A[q] = old
            G[q] = (up - down) / (2 * h)
    return gU, gW


@pytest.mark.parametrize(("loss", "c"), LOSSES)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("act", ACTS)
def test_gradients_match_central_differences(act, bias, loss, c) -> None:
    X, Y, U, W = problem(ACTS.index(act) + 10 * c, c=c, loss=loss, bias=bias)
    s = R.Setup(act=act, kappa=0.8, loss=loss)
    L, gU, gW = R.loss_and_grads(U, W, X, Y, s)
    assert L == pytest.approx(R.loss_value(U, W, X, Y, s), rel=1e-15)
    fU, fW = fd_grads(U, W, X, Y, s)
    # Central differences with h = 1e-6: truncation ~h^2 |L'''| ~ 1e-12 and rounding
    # ~eps |L| / h ~ 1e-10, so 1e-7 of the gradient's size is a wide margin.
    scale = max(np.abs(gU).max(), np.abs(gW).max())
    assert np.abs(gU - fU).max() <= 1e-7 * scale
    assert np.abs(gW - fW).max() <= 1e-7 * scale


def test_decay_enters_the_field_as_its_gradient() -> None:
    X, Y, U, W = problem(3, c=3, loss="softmax", bias=True)
    s0 = R.Setup(act="tanh", loss="softmax", eta_u=0.7, eta_w=1.9)
    s = R.Setup(act="tanh", loss="softmax", eta_u=0.7, eta_w=1.9, lambda_u=0.3, lambda_w=0.05)
    dU0, dW0 = R.field(U, W, X, Y, s0)
    dU, dW = R.field(U, W, X, Y, s)
    np.testing.assert_allclose(dU - dU0, -0.7 * 0.3 * U, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(dW - dW0, -1.9 * 0.05 * W, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize(("loss", "c"), [("logistic", 1), ("softmax", 3), ("softmax", 2)])
def test_losses_are_stable_at_large_outputs(loss, c) -> None:
    # |f| = 1e3: exp overflows in a naive formula; the stable forms give the exact
    # asymptotes (softplus(x) = x for x > 37; lse(f) - y.f = max f - y.f up to e^-1000).
    F = np.array([[1e3] + [-1e3] * (c - 1), [-1e3] + [1e3] * (c - 1)])
    if loss == "logistic":
        Y = np.array([[1.0], [1.0]])
        want_l, want_g = np.array([0.0, 1e3]), np.array([[0.0], [-1.0]])
    else:
        Y = R.one_hot([1, 1], c)
        want_l = np.array([2e3, 0.0 if c == 2 else np.log(c - 1)])
        soft = np.zeros((2, c))
        soft[0, 0] = 1.0
        soft[1, 1:] = 1.0 / (c - 1)
        want_g = soft - Y
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow is exact here
        losses, g = R.sample_losses(F, Y, loss)
    # lse - y.f cancels 1e3 against 1e3 + log 2: one ulp of 1e3 (1.1e-13) is the floor.
    np.testing.assert_allclose(losses, want_l, rtol=1e-15, atol=3e-13)
    np.testing.assert_allclose(g, want_g, rtol=1e-15, atol=1e-15)


# ------------------------------------------------------------------ Gram


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("act", ACTS)
def test_jacobian_gram_matches_plan_formula_and_finite_differences(act, bias, c) -> None:
    X, _, U, W = problem(20 + c, n=6, m=4, c=c, bias=bias)
    kappa, eta_u, eta_w = 0.9, 0.6, 1.7
    K = R.ntk_gram(U, W, X, act, kappa, eta_u, eta_w)
    # The plan's entry formula, summed by hand: index (j, a) -> j c + a.
    H, S = R.act_and_slope(act, X @ W.T)
    n = X.shape[0]
    K2 = np.empty((n * c, n * c))
    for j, a, k, b in itertools.product(range(n), range(c), range(n), range(c)):
        K2[j * c + a, k * c + b] = kappa**2 * (
            eta_u * (a == b) * H[j] @ H[k]
            + eta_w * (X[j] @ X[k]) * np.sum(S[j] * S[k] * U[:, a] * U[:, b]))
    np.testing.assert_allclose(K, K2, rtol=1e-13, atol=1e-14 * np.abs(K2).max())
    # FD Jacobian (h = 1e-6, error ~1e-10 relative): 1e-8 of max |K|.
    Kfd = R.gram(R.fd_jacobian(U, W, X, act, kappa),
                 R.lr_weights(*U.shape, W.shape[1], eta_u, eta_w))
    assert np.abs(K - Kfd).max() <= 1e-8 * np.abs(K).max()
    if c == 1 and not bias:  # today's Gram of the core, same numbers
        K1 = nf.ntk_gram(U[:, 0], W, X, act=act, kappa=kappa, eta_u=eta_u, eta_w=eta_w)
        np.testing.assert_allclose(K, K1, rtol=1e-12, atol=1e-13 * np.abs(K).max())


# ------------------------------------------------------------------ runs against each other


def test_sgd_with_the_whole_set_is_gradient_descent() -> None:
    # B = n without replacement is a permutation of the data: the same mean gradient
    # up to summation order (1e-12 over 30 steps).
    X, Y, U, W = problem(5, n=6, c=3, loss="softmax", bias=True)
    s = R.Setup(act="erf", kappa=1.1, loss="softmax", eta_u=0.5, lambda_w=0.01)
    gd = R.gd_run(U, W, X, Y, s, lr=0.4, steps=30)
    sgd = R.sgd_run(U, W, X, Y, s, lr=0.4, steps=30, seed=3, trajectory=1, batch=6)
    for key in ("U", "W", "loss"):
        np.testing.assert_allclose(sgd[key], gd[key], rtol=1e-12, atol=1e-13)
    assert gd["loss"][-1] < gd["loss"][0]


def test_sgd_run_uses_the_drawn_batches_and_noise() -> None:
    # One step by hand: the batch rows with their noisy targets.
    X, Y, U, W = problem(6, n=9, c=3, bias=False)
    s = R.Setup(act="tanh")
    run = R.sgd_run(U, W, X, Y, s, lr=0.2, steps=1, seed=8, trajectory=4, batch=4,
                    label_noise=0.3)
    idx = R.sgd_batch(8, 4, 0, 9, 4)
    Yb = Y[idx] + 0.3 * R.sgd_noise(8, 4, 0, 12).reshape(4, 3)
    dU, dW = R.field(U, W, X[idx], Yb, s)
    np.testing.assert_array_equal(run["U"][1], U + 0.2 * dU)
    np.testing.assert_array_equal(run["W"][1], W + 0.2 * dW)


def test_sgd_twin_is_the_network_when_only_the_output_layer_learns() -> None:
    # With eta_w = 0 the first layer stays put and F is linear in U: the network is its own
    # linearisation, so the twin (stepped through J_0 in parameter space) and sgd_run give
    # the same outputs on the same batches and noise, up to round-off (1e-12 over 40 steps).
    X, Y, U, W = problem(7, n=8, c=3, bias=True)
    Xt = R.augment(np.random.default_rng(1).normal(size=(5, 3)), True)
    s = R.Setup(act="tanh", kappa=0.8, eta_u=1.3, eta_w=0.0)
    kw = dict(seed=4, trajectory=2, batch=5, replace=True, label_noise=0.2)
    net = R.sgd_run(U, W, X, Y, s, 0.3, 40, **kw)
    twin = R.sgd_twin_run(U, W, X, Y, s, 0.3, 40, X_test=Xt, **kw)
    for x, key in ((X, "f"), (Xt, "f_test")):
        f = np.array([R.forward(u, w, x, s.act, s.kappa)[0]
                      for u, w in zip(net["U"], net["W"], strict=True)])
        np.testing.assert_allclose(twin[key], f, rtol=1e-12, atol=1e-12)
        assert np.abs(f[-1] - f[0]).max() > 0.1  # training moved the outputs
    # With the first layer learning too, tanh's network leaves its twin.
    s = R.Setup(act="tanh", kappa=0.8, eta_u=1.3, eta_w=1.0)
    net = R.sgd_run(U, W, X, Y, s, 0.3, 40, **kw)
    f = R.forward(net["U"][-1], net["W"][-1], X, s.act, s.kappa)[0]
    assert np.abs(R.sgd_twin_run(U, W, X, Y, s, 0.3, 40, **kw)["f"][-1] - f).max() > 1e-3


def test_flow_reference_is_the_limit_of_small_steps() -> None:
    # Descent with lr = 1e-3 for 1000 steps is Euler on [0, 1]: O(lr) from the flow.
    X, Y, U, W = problem(7, c=3, loss="softmax", bias=True)
    s = R.Setup(act="tanh", loss="softmax", eta_u=0.8, eta_w=1.2, lambda_u=0.1, lambda_w=0.2)
    flow = R.flow_solve(U, W, X, Y, s, np.array([0.0, 1.0]))
    gd = R.gd_run(U, W, X, Y, s, lr=1e-3, steps=1000, record=[1000])
    err = np.abs(gd["W"][-1] - flow["W"][-1]).max() / np.abs(flow["W"][-1]).max()
    assert 1e-6 < err < 1e-3


@pytest.mark.parametrize("act", ["linear", "relu"])
@pytest.mark.parametrize("bias", [False, True])
def test_decay_law_of_the_conserved_quantities(act, bias) -> None:
    # 1-homogeneous activations: with lambda_u = mu eta_w, lambda_w = mu eta_u,
    # delta_i(t) = delta_i(0) exp(-2 eta_u eta_w mu t). DOP853 at rtol 1e-12 (relu: up to
    # its first kink crossing, where the field is smooth): 1e-8 of the per-neuron scale.
    X, Y, U, W = problem(8, c=3, bias=bias)
    eta_u, eta_w, mu = 0.7, 1.4, 2.0
    s = R.Setup(act=act, eta_u=eta_u, eta_w=eta_w, lambda_u=mu * eta_w, lambda_w=mu * eta_u)
    # relu: the first kink comes at t ~ 0.01 here (35 pairs, margins ~1e-2), where the
    # deltas have decayed by ~4 %: still a test of the law's rate at 1e-8.
    t_end = R.first_crossing(U, W, X, Y, s, 2.0) if act == "relu" else 2.0
    assert t_end > 5e-3
    times = np.array([0.0, 0.25, 1.0]) * t_end
    flow = R.flow_solve(U, W, X, Y, s, times)
    got = R.deltas(flow["U"], flow["W"], s)
    want = got[0] * np.exp(-2 * eta_u * eta_w * mu * times)[:, None]
    scale = (eta_w * np.sum(flow["U"] ** 2, -1) + eta_u * np.sum(flow["W"] ** 2, -1)).max()
    assert np.abs(got - want).max() <= 1e-8 * scale


def test_reduced_linear_flow_with_decay_matches_the_parameters() -> None:
    # The reduced system of (p, M, a) against the parameter flow (both DOP853 at 1e-12).
    rng = np.random.default_rng(9)
    n, d, m = 8, 3, 4
    X, y = rng.normal(size=(n, d)), rng.normal(size=n)
    U, W = rng.normal(size=(m, 1)), rng.normal(size=(m, d))
    s = R.Setup(kappa=0.9, eta_u=0.6, eta_w=1.3, lambda_u=0.2, lambda_w=0.05)
    times = np.array([0.0, 1.0, 3.0])
    full = R.flow_solve(U, W, X, y[:, None], s, times)
    p, M, a = R.reduced_linear_flow(W.T @ U[:, 0], W.T @ W, U[:, 0] @ U[:, 0], X.T @ X / n,
                                    X.T @ y / n, 0.9, s, times)
    Up, Wp = full["U"][:, :, 0], full["W"]
    np.testing.assert_allclose(p, np.einsum("tmd,tm->td", Wp, Up), rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(M, np.einsum("tmd,tme->tde", Wp, Wp), rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(a, np.sum(Up**2, -1), rtol=1e-9)
