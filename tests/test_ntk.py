"""NTK Gram matrices (THEORY §C.1): ntk_gram against finite differences of the network
function and against the formula in NumPy."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.special
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import ntkflow as nf

ACTS = ("linear", "relu", "tanh", "erf")


def act_fn(act: str, z: np.ndarray) -> np.ndarray:
    if act == "linear":
        return z
    if act == "relu":
        return np.maximum(z, 0.0)
    if act == "tanh":
        return np.tanh(z)
    return scipy.special.erf(z)


def network(theta: np.ndarray, X: np.ndarray, act: str, kappa: float, m: int) -> np.ndarray:
    """f(X) for the flat parameter vector theta = [u (m), W (m x d)]."""
    u, W = theta[:m], theta[m:].reshape(m, -1)
    return kappa * act_fn(act, X @ W.T) @ u


def jacobian_fd(theta, X, act, kappa, m, h):
    """Central differences of f with respect to every parameter: (samples, params)."""
    J = np.empty((X.shape[0], theta.size))
    for p in range(theta.size):
        e = np.zeros_like(theta)
        e[p] = h
        J[:, p] = (network(theta + e, X, act, kappa, m) - network(theta - e, X, act, kappa, m)) / (
            2 * h)
    return J


@settings(max_examples=60)
@given(
    act=st.sampled_from(ACTS),
    width=st.integers(1, 12),
    dim=st.integers(1, 5),
    n=st.integers(1, 6),
    n2=st.integers(1, 4),
    kappa=st.floats(0.1, 2.0),
    eta_u=st.floats(0.0, 3.0),
    eta_w=st.floats(0.0, 3.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_gram_matches_finite_differences(act, width, dim, n, n2, kappa, eta_u, eta_w,
                                         seed) -> None:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, dim))
    X2 = rng.normal(size=(n2, dim))
    u = rng.normal(size=width)
    W = rng.normal(size=(width, dim)) / np.sqrt(dim)
    h = 1e-6
    if act == "relu":  # keep every pre-activation clear of the kink by far more than h
        Z = np.concatenate([X, X2]) @ W.T
        assume(np.min(np.abs(Z)) > 1e-3)
    assume(eta_u + eta_w > 0.05)
    theta = np.concatenate([u, W.ravel()])
    eta = np.concatenate([np.full(width, eta_u), np.full(width * dim, eta_w)])
    J1 = jacobian_fd(theta, X, act, kappa, width, h)
    J2 = jacobian_fd(theta, X2, act, kappa, width, h)
    K = nf.ntk_gram(u, W, X, act=act, kappa=kappa, eta_u=eta_u, eta_w=eta_w)
    K12 = nf.ntk_gram(u, W, X, act=act, kappa=kappa, eta_u=eta_u, eta_w=eta_w, X2=X2)
    assert K.shape == (n, n) and K12.shape == (n, n2)
    # Central differences, h = 1e-6 on O(1) parameters: truncation h^2 f''' ~ 1e-12 and
    # rounding eps |f| / h ~ 1e-10 relative per Jacobian entry; 1e-6 (the requirement)
    # leaves three orders of margin. Worst seen over 400 random cases: 4.5e-10 (erf).
    for got, ref in ((K, (J1 * eta) @ J1.T), (K12, (J1 * eta) @ J2.T)):
        scale = np.linalg.norm(ref)
        assume(scale > 1e-8)
        assert np.linalg.norm(got - ref) <= 1e-6 * scale, np.linalg.norm(got - ref) / scale
    # Computed on the lower triangle and mirrored: exactly symmetric. PSD to round-off
    # (a Gram matrix of the weighted Jacobian): eigenvalues >= -1e-12 of the largest.
    np.testing.assert_array_equal(K, K.T)
    lam = np.linalg.eigvalsh(K)
    assert lam.min() >= -1e-12 * max(lam.max(), 1e-300)


def test_gram_formula_on_many_blocks_matches_numpy() -> None:
    # n = 600 spans three 256-row blocks (and a remainder), width and dim odd sizes.
    rng = np.random.default_rng(5)
    n, n2, d, m = 600, 300, 7, 37
    X, X2 = rng.normal(size=(n, d)), rng.normal(size=(n2, d))
    u, W = rng.normal(size=m), rng.normal(size=(m, d)) / np.sqrt(d)
    for act in ACTS:
        Z, Z2 = X @ W.T, X2 @ W.T
        dact = {"linear": lambda z: np.ones_like(z), "relu": lambda z: (z > 0) * 1.0,
                "tanh": lambda z: 1 - np.tanh(z) ** 2,
                "erf": lambda z: 2 / np.sqrt(np.pi) * np.exp(-z * z)}[act]
        G, G2 = dact(Z) * u, dact(Z2) * u
        ref = 0.3**2 * (0.7 * act_fn(act, Z) @ act_fn(act, Z2).T
                        + 1.9 * (G @ G2.T) * (X @ X2.T))
        got = nf.ntk_gram(u, W, X, act=act, kappa=0.3, eta_u=0.7, eta_w=1.9, X2=X2)
        # The same sums in another order (blocked GEMM vs BLAS): round-off only.
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12 * np.abs(ref).max())
        sym = nf.ntk_gram(u, W, X, act=act, kappa=0.3, eta_u=0.7, eta_w=1.9)
        np.testing.assert_allclose(sym, nf.ntk_gram(u, W, X, act=act, kappa=0.3, eta_u=0.7,
                                                    eta_w=1.9, X2=X), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("act", ["relu", "erf"])
def test_batch_and_thread_count_give_the_same_bits(act: str) -> None:
    rng = np.random.default_rng(1)
    n, d, m = 530, 5, 24  # three row blocks: the multi-thread path splits one matrix
    X = rng.normal(size=(n, d))
    u = rng.normal(size=(3, 2, m))
    W = rng.normal(size=(3, 2, m, d))
    one = nf.ntk_gram(u[0, 0], W[0, 0], X, act=act, kappa=0.2, threads=1)
    split = nf.ntk_gram(u[0, 0], W[0, 0], X, act=act, kappa=0.2, threads=2)  # batch < threads
    np.testing.assert_array_equal(split, one)
    batch = nf.ntk_gram(u, W, X, act=act, kappa=0.2, threads=2)  # whole matrices per thread
    assert batch.shape == (3, 2, n, n)
    np.testing.assert_array_equal(batch[0, 0], one)
    np.testing.assert_array_equal(batch, nf.ntk_gram(u, W, X, act=act, kappa=0.2, threads=1))


def test_bad_input_names_the_parameter() -> None:
    rng = np.random.default_rng(0)
    X, u, W = rng.normal(size=(5, 3)), rng.normal(size=4), rng.normal(size=(4, 3))
    with pytest.raises(ValueError, match="X2"):
        nf.ntk_gram(u, W, X, act="relu", kappa=1.0, X2=np.ones((2, 4)))
    with pytest.raises(ValueError, match="^W"):
        nf.ntk_gram(u, W[:3], X, act="relu", kappa=1.0)
    with pytest.raises(ValueError, match="^X"):
        nf.ntk_gram(u, W, np.ones((5, 2)), act="relu", kappa=1.0)
    bad = X.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="^X must be finite"):
        nf.ntk_gram(u, W, bad, act="relu", kappa=1.0)
    with pytest.raises(ValueError, match="^act"):
        nf.ntk_gram(u, W, X, act="sigmoid", kappa=1.0)
    with pytest.raises(ValueError, match="^kappa"):
        nf.ntk_gram(u, W, X, act="relu", kappa=0.0)
    nf.set_memory_budget(2**20)
    try:
        with pytest.raises(nf.MemoryBudgetError, match="ntk_gram"):
            nf.ntk_gram(np.zeros((8, 4)), np.zeros((8, 4, 3)), np.zeros((200, 3)),
                        act="relu", kappa=1.0)
    finally:
        nf.set_memory_budget(None)
