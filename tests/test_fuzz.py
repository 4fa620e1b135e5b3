"""Property-based fuzzing over extreme hyperparameters: no crash, no hang, and every output
either finite or explicitly marked (status, t_fail), never silently NaN."""

from __future__ import annotations

import numpy as np
import scipy.special
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

import ntkflow as nf

LABELS = {"kernel", "alignment", "disalignment", "rescaling", "failed"}
log_floats = lambda lo, hi: st.floats(lo, hi).map(lambda e: 10.0**e)  # noqa: E731


def assert_marked(res: nf.Result) -> None:
    """ok trajectories are finite everywhere; failed ones are finite before t_fail and NaN
    from the first record after it."""
    assert set(np.unique(res.status)) <= {0, 1, 2, 3}  # ok, diverged, step_limit, stalled
    for name in ("loss", "norm_u2", "norm_w2", "alignment", "balance_drift", "delta_mean",
                 "delta_std", "delta_drift"):
        v = getattr(res, name)
        if v is None:  # the per-neuron records with method="reduced"
            continue
        ok = res.status == 0
        assert np.isfinite(v[ok]).all(), name
        for k in np.flatnonzero(~ok):
            assert np.isfinite(res.t_fail[k])
            j = np.searchsorted(res.times, res.t_fail[k])
            assert np.isnan(v[k, j + 1:]).all(), name
    assert np.isnan(res.t_fail[res.status == 0]).all()
    a = res.alignment[np.isfinite(res.alignment)]
    assert ((a >= 0) & (a <= 1)).all()


@settings(max_examples=60)
@given(
    width=st.integers(1, 64),
    dim=st.integers(1, 3),
    kappa=log_floats(-3, 2),
    eta_u=st.one_of(st.just(0.0), log_floats(-3, 3)),
    eta_w=log_floats(-3, 3),
    s_u=st.one_of(st.just(0.0), log_floats(-6, 2)),
    s_w=log_floats(-6, 2),
    spread=st.one_of(st.none(), st.floats(0.0, 3.0)),
    beta=st.floats(-1e3, 1e3),
    solver=st.sampled_from(["euler", "rk4", "dopri5", "gd"]),
    step=log_floats(-4, 1),
    seed=st.integers(0, 2**63),
)
# Healthy and diverging trajectories in the same SIMD-lane group (statuses 0 0 1 1 1 1 and
# 0 0 0 1 1 1).
@example(width=8, dim=1, kappa=0.5, eta_u=1.0, eta_w=1.0, s_u=1.0, s_w=1.0, spread=0.3,
         beta=1.0, solver="gd", step=0.1, seed=3)
@example(width=8, dim=1, kappa=0.5, eta_u=1.0, eta_w=1.0, s_u=1.0, s_w=1.0, spread=0.3,
         beta=1.0, solver="rk4", step=0.1, seed=3)
def test_simulate_never_crashes_and_marks_failures(width, dim, kappa, eta_u, eta_w, s_u, s_w,
                                                   spread, beta, solver, step, seed) -> None:
    net = nf.TwoLayer(width=width, kappa=kappa)
    data = (nf.LatentLine(beta=beta) if dim == 1 else
            nf.Moments(Sigma=np.eye(dim) + 0.5, b=np.full(dim, beta)))
    if solver == "gd":
        train = nf.GradientDescent(lr=step, steps=300, eta_u=eta_u, eta_w=eta_w)
    else:
        # dopri5 stops at 20000 attempts; fixed steps (dt >= 1e-4 on [0, 5]) are bounded.
        train = nf.GradientFlow(eta_u=eta_u, eta_w=eta_w, t_max=5.0, solver=solver, dt=step,
                                max_steps=20_000 if solver == "dopri5" else 10**7)
    n = 6  # on one thread: two SIMD-lane groups of 3 when d = 1 with fixed steps
    if spread is None:
        init = nf.Gaussian(s_u, s_w)
    else:  # trajectory k scaled by 10^(spread k): healthy next to diverging ones
        rng = np.random.default_rng(seed)
        f = 10.0 ** (spread * np.arange(n))
        init = nf.Params(s_u * f[:, None] * rng.normal(size=(n, width)),
                         s_w * f[:, None, None] * rng.normal(size=(n, width, dim)))
    record = nf.Record(times=11, loss_below=1e-6)
    res = nf.simulate(net, data, train, init=init, trajectories=n, seed=seed, record=record,
                      threads=1)
    event(f"statuses {sorted(set(res.status.tolist()))}")
    assert_marked(res)
    labels = nf.classify(res).labels
    assert set(labels) <= LABELS
    assert all(lab == "failed" for lab in labels[res.status != 0])
    # Trajectories that shared SIMD lanes: each row, healthy or not, must be bit for bit the
    # run of that trajectory alone.
    p = res.initial_params()
    for k in range(n):
        solo = nf.simulate(net, data, train, init=nf.Params(p.u0[k:k + 1], p.W0[k:k + 1]),
                           record=record)
        for name in ("loss", "norm_u2", "norm_w2", "alignment", "status", "t_fail", "steps",
                     "delta_mean", "delta_std", "delta_drift"):
            np.testing.assert_array_equal(getattr(solo, name)[0], getattr(res, name)[k],
                                          err_msg=f"{name} of trajectory {k}")


@settings(max_examples=60)
@given(
    width=st.integers(1, 300),
    kappa=log_floats(-3, 1),
    eta_u=log_floats(-2, 2),
    eta_w=log_floats(-2, 2),
    s_u=log_floats(-6, 1),
    s_w=log_floats(-6, 1),
    sigma=log_floats(-2, 2),
    beta=st.floats(-10, 10),
    correlation=st.floats(-1, 1),
    seed=st.integers(0, 2**63),
)
def test_exact_solution_is_finite_everywhere(width, kappa, eta_u, eta_w, s_u, s_w, sigma, beta,
                                             correlation, seed) -> None:
    net = nf.TwoLayer(width=width, kappa=kappa)
    data = nf.LatentLine(beta=beta, sigma=sigma)
    from ntkflow._simulate import draw_initial

    params = draw_initial(nf.Gaussian(s_u, s_w, correlation=correlation), width, 1, 3,
                          seed=seed)
    sol = nf.exact.line(params, net, data, nf.GradientFlow(eta_u=eta_u, eta_w=eta_w))
    path = sol.at(np.array([0.0, 1e-6, 1.0, 1e3, 1e300, np.inf]))
    for name in ("C", "norm_u2", "norm_w2", "ntk", "alignment", "loss", "residual"):
        assert np.isfinite(getattr(path, name)).all(), name
    assert ((path.alignment >= 0) & (path.alignment <= 1)).all()
    # The loss never increases along gradient flow (docs/theory.md §A.5: no overshoot).
    assert (np.diff(path.loss, axis=1) <= 1e-12 * path.loss[:, :1] + 1e-300).all()
    assert set(nf.classify_exact(sol).labels) <= LABELS


# ---- ntk_gram --------------------------------------------------------------------------------

ACTS = ("linear", "relu", "tanh", "erf")


def act_slope_curve(act: str, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """act(Z), act'(Z) and |act''(Z)| (docs/theory.md §C.1: relu' = 1[z > 0], erf is
    plain erf(z))."""
    if act == "relu":
        return np.maximum(Z, 0.0), (Z > 0).astype(float), np.zeros_like(Z)
    if act == "tanh":
        t = np.tanh(Z)
        return t, 1.0 - t * t, np.abs(2.0 * t * (1.0 - t * t))
    if act == "erf":
        with np.errstate(under="ignore"):
            s = 2.0 / np.sqrt(np.pi) * np.exp(-Z * Z)
        return scipy.special.erf(Z), s, np.abs(2.0 * Z * s)
    return Z.copy(), np.ones_like(Z), np.zeros_like(Z)


def gram_reference(u, W, X, X2, act, kappa, eta_u, eta_w):
    """K(x, x') = kappa^2 [eta_u sum_i act(w_i.x) act(w_i.x')
    + eta_w (x.x') sum_i u_i^2 act'(w_i.x) act'(w_i.x')], written from the ntk_gram docstring,
    for one network; and a round-off scale of every entry, the same sums of absolute values
    with each factor widened by its first-order sensitivity to rounding the pre-activation
    z = w.x (|x||w| units of eps: |act'| for act, |act''| for act', plus 1 for tanh's
    1 - t^2, computed with absolute error eps). |K| <= scale entry by entry."""
    X2 = X if X2 is None else X2
    out = []
    for x in (X, X2):
        Z = x @ W.T
        A = np.abs(x) @ np.abs(W).T
        H, S, C = act_slope_curve(act, Z)
        EH = np.abs(H) + np.abs(S) * A
        ES = np.abs(S) + C * A + (1.0 if act == "tanh" else 0.0)
        out.append((H, S, EH, ES))
    (H1, S1, EH1, ES1), (H2, S2, EH2, ES2) = out
    u2 = u * u
    with np.errstate(under="ignore"):
        K = kappa**2 * (eta_u * H1 @ H2.T + eta_w * (X @ X2.T) * ((S1 * u2) @ S2.T))
        scale = kappa**2 * (eta_u * EH1 @ EH2.T
                            + eta_w * (np.abs(X) @ np.abs(X2).T) * ((ES1 * u2) @ ES2.T))
    return K, scale


@settings(max_examples=60)
@given(
    act=st.sampled_from(ACTS),
    width=st.integers(1, 64),
    dim=st.integers(1, 8),
    samples=st.integers(1, 40),
    samples2=st.one_of(st.none(), st.integers(1, 40)),
    lead=st.lists(st.integers(1, 3), max_size=2).map(tuple),
    kappa=log_floats(-3, 2),
    eta_u=st.one_of(st.just(0.0), log_floats(-3, 2)),
    eta_w=st.one_of(st.just(0.0), log_floats(-3, 2)),
    s_u=log_floats(-6, 3),
    s_w=log_floats(-6, 3),
    s_x=log_floats(-6, 3),
    flat_x=st.booleans(),
    seed=st.integers(0, 2**63),
)
def test_ntk_gram_matches_numpy_and_is_a_kernel(act, width, dim, samples, samples2, lead,
                                                kappa, eta_u, eta_w, s_u, s_w, s_x, flat_x,
                                                seed) -> None:
    # Normal draws (never exact zeros, so no relu pre-activation sits on its kink) at scales
    # up to 1e3: entries stay below ~1e25, far from overflow, so every output must be finite
    # (only erf' = exp(-z^2) can underflow: an absolute floor of 1e-300 below).
    rng = np.random.default_rng(seed)
    u = s_u * rng.normal(size=lead + (width,))
    W = s_w * rng.normal(size=lead + (width, dim))
    X = s_x * rng.normal(size=(samples, dim))
    X2 = None if samples2 is None else s_x * rng.normal(size=(samples2, dim))
    kw = dict(act=act, kappa=kappa, eta_u=eta_u, eta_w=eta_w)
    Xin = X.ravel() if dim == 1 and flat_x else X  # a 1-d X is read as dim = 1
    K = nf.ntk_gram(u, W, Xin, X2=X2, threads=1, **kw)
    n2 = samples if X2 is None else samples2
    assert K.shape == lead + (samples, n2)
    assert np.isfinite(K).all()
    # Bits do not depend on the thread count (one network: all threads share its blocks;
    # several: one network per thread).
    np.testing.assert_array_equal(nf.ntk_gram(u, W, Xin, X2=X2, threads=2, **kw), K)
    for idx in np.ndindex(*lead):  # network by network
        Kref, scale = gram_reference(u[idx], W[idx], X, X2, act, kappa, eta_u, eta_w)
        # Round-off of sums of <= width + dim products on either side: ~1e-14 of the scale
        # at most (seen: 2e-15), entry by entry.
        err = np.abs(K[idx] - Kref)
        assert (err <= 1e-10 * scale + 1e-300).all(), (err / (scale + 1e-300)).max()
        if X2 is None:
            assert np.array_equal(K[idx], K[idx].T)  # exactly symmetric
            # K is a sum of Gram matrices (and a Hadamard product of two): PSD up to
            # round-off, which is ~1e-14 of the scale times the size.
            assert np.linalg.eigvalsh(K[idx]).min() >= -1e-10 * scale.max()


# ---- simulate on a dataset (networks with an activation) -----------------------------------

DATA_RECORDS = ("loss", "p", "norm_u2", "norm_w2", "alignment", "balance_drift", "move_u",
                "move_w", "ntk_change", "kernel_distance", "kta", "pattern_change", "loss_lin",
                "gram", "u", "W", "status", "t_fail", "steps", "rejected", "t_hit", "events",
                "test_loss", "test_error", "test_loss_lin", "test_error_lin", "lin_gap",
                "test_lin_gap",
                "delta_mean", "delta_std", "delta_drift")


def frobenius(K: np.ndarray) -> np.ndarray:
    """||K||_F over the last two axes, scaled so that it overflows only if it is > 1e308."""
    s = np.max(np.abs(K), axis=(-2, -1), keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        q = np.where(s > 0, K / np.where(s > 0, s, 1.0), 0.0)
    return s[..., 0, 0] * np.sqrt(np.sum(q * q, axis=(-2, -1)))


def kernel_metrics(K: np.ndarray, y: np.ndarray):
    """ntk_change, kernel_distance and kta of Gram matrices K (..., times, n, n) against the
    first time, from overflow-free norms and normalised inner products (NaN where the
    result's denominator is 0)."""
    K0 = K[..., :1, :, :]
    norm, norm0 = frobenius(K), frobenius(K0)
    with np.errstate(invalid="ignore", divide="ignore"):
        unit = K / norm[..., None, None]
        unit0 = K0 / norm0[..., None, None]
        change = frobenius(K - K0) / norm0
        distance = 1.0 - np.einsum("...ij,...ij->...", unit, unit0)
        kta = np.einsum("i,...ij,j->...", y, unit, y) / (y @ y)
    return change, distance, kta


@settings(max_examples=40)
# Healthy trajectories next to diverged (status 1) and step-limited (relu + dopri5, status 2)
# ones, in every run:
@example(act="relu", width=8, dim=2, samples=10, kappa=1.0, eta_u=1.0, eta_w=1.0, s_x=1.0,
         s_y=1.0, s_u=1.0, s_w=1.0, spread=0.5, solver="gd", step=0.1, ratio=None, seed=1)
@example(act="relu", width=8, dim=2, samples=10, kappa=1.0, eta_u=1.0, eta_w=1.0, s_x=1.0,
         s_y=1.0, s_u=1.0, s_w=1.0, spread=0.5, solver="dopri5", step=0.1, ratio=None, seed=1)
# Bugs this fuzzing found, kept as regressions (all fixed in the package):
# loss_lin was NaN (inf * 0) where the initial residual is exactly 0 (u0 = 0, y = 0) and the
# linearised descent overflows: trajectory 3 gave [0, 0, 0, 0, 0, nan], the truth is 0.
@example(act="linear", width=1, dim=1, samples=1, kappa=1.0, eta_u=1.0, eta_w=1.0, s_x=1.0,
         s_y=0.0, s_u=0.0, s_w=1.0, spread=1.0, solver="gd", step=10.0, ratio=None, seed=0)
# Divergence was detected on the loss only: with erf the loss stays finite (6e189 at step
# 48) while ||W||^2 overflows (W ~ 1e173): status was ok with norm_w2 = inf and
# balance_drift = NaN (trajectory 3); now it is diverged.
@example(act="erf", width=1, dim=3, samples=10, kappa=10.0, eta_u=1.0, eta_w=1.0, s_x=1.0,
         s_y=1.0, s_u=0.0, s_w=10.0, spread=None, solver="gd", step=1.0, ratio=None, seed=12)
# Kernel metrics from unscaled Frobenius norms: Gram entries ~8e153 (loss 4e305, finite) in
# an ok trajectory gave ntk_change = inf, kta = 0 and kernel_distance = 1 (trajectory 1).
@example(act="linear", width=14, dim=4, samples=10, kappa=0.2364065337390194,
         eta_u=0.6145962032383165, eta_w=0.18498408007375, s_x=4.476602095005367,
         s_y=1.6873060233014128, s_u=0.0, s_w=0.7640176120501694, spread=0.917434191480598,
         solver="euler", step=0.0037588238404558214, ratio=475.8891541689754,
         seed=4406208782295501564)
@given(
    act=st.sampled_from(ACTS),
    width=st.integers(1, 32),
    dim=st.integers(1, 4),
    samples=st.integers(1, 20),
    kappa=log_floats(-3, 2),
    eta_u=st.one_of(st.just(0.0), log_floats(-2, 1)),
    eta_w=log_floats(-2, 1),
    s_x=log_floats(-3, 1),
    s_y=st.one_of(st.just(0.0), log_floats(-3, 2)),
    s_u=st.one_of(st.just(0.0), log_floats(-6, 2)),
    s_w=log_floats(-6, 2),
    spread=st.one_of(st.none(), st.floats(0.0, 3.0)),
    solver=st.sampled_from(["gd", "euler", "rk4", "dopri5"]),
    step=log_floats(-3, 2),
    ratio=st.one_of(st.none(), log_floats(-2, 4)),
    seed=st.integers(0, 2**63),
)
# A Gram of ~4e-194: its plain sum of squares underflows, the scaled norms do not.
@example(act="erf", width=1, dim=1, samples=1, kappa=1.0, eta_u=0.0, eta_w=1.0, s_x=1.0,
         s_y=0.0, s_u=10.0, s_w=1.0, spread=None, solver="gd", step=1.0, ratio=None, seed=3)
def test_simulate_on_data_marks_failures_and_isolates_trajectories(
        act, width, dim, samples, kappa, eta_u, eta_w, s_x, s_y, s_u, s_w, spread, solver, step,
        ratio, seed) -> None:
    rng = np.random.default_rng(seed)
    X = s_x * rng.normal(size=(samples, dim))
    y = s_y * rng.normal(size=samples)
    data = nf.Dataset(X=X, y=y)
    net = nf.TwoLayer(width=width, act=act, kappa=kappa)
    n = 4
    if spread is None:
        init = nf.Gaussian(s_u, s_w)
        from ntkflow._simulate import draw_initial

        first = draw_initial(init, width, dim, 1, seed=seed)
        u_first, W_first = first.u0[0], first.W0[0]
    else:  # trajectory k scaled by 10^(spread k): healthy next to diverging ones
        f = 10.0 ** (spread * np.arange(n))
        init = nf.Params(s_u * f[:, None] * rng.normal(size=(n, width)),
                         s_w * f[:, None, None] * rng.normal(size=(n, width, dim)))
        u_first, W_first = init.u0[0], init.W0[0]
    if ratio is not None:
        # step = ratio x the stability limit 2 n / lambda_max(K0) of explicit steps on the
        # linearised model of trajectory 0: both sides of the edge of divergence.
        K0 = gram_reference(u_first, W_first, X, None, act, kappa, eta_u, eta_w)[0]
        lam = np.linalg.eigvalsh(K0).max()
        step = ratio * 2 * samples / lam if lam > 0 else step
    gd = solver == "gd"
    if gd:  # lr up to 1e2 (or 1e4 x the stability limit): many runs diverge
        train = nf.GradientDescent(lr=step, steps=60, eta_u=eta_u, eta_w=eta_w)
    else:  # dt >= 1e-3 on [0, 2]: at most 2000 fixed steps; dopri5 bounded by max_steps
        train = nf.GradientFlow(eta_u=eta_u, eta_w=eta_w, t_max=2.0, solver=solver,
                                dt=max(step, 1e-3), max_steps=2000)
    X_test = s_x * rng.normal(size=(5, dim))  # +-1 labels: test_error is recorded too
    test = nf.Dataset(X_test, np.where(rng.normal(size=5) > 0, 1.0, -1.0))
    record = nf.Record(times=6, params="all", gram="train", linearized=True, loss_below=1e-8,
                       test=test)
    res = nf.simulate(net, data, train, init=init, trajectories=n, seed=seed, record=record,
                      threads=2)
    assert res.path == "data" and res.times[0] == 0
    event(f"{solver}: statuses {sorted(set(res.status.tolist()))}")
    u0, W0 = res.initial_params().u0, res.initial_params().W0
    np.testing.assert_array_equal(res.u[:, 0], u0)  # regenerated bit for bit
    np.testing.assert_array_equal(res.W[:, 0], W0)

    # Other trajectories of the ensemble are unaffected: each row, healthy or failed, is
    # bit for bit the run of that trajectory alone (one thread instead of two).
    for k in range(n):
        if spread is None:
            solo = nf.simulate(net, data, train, init=init, trajectories=1, first_trajectory=k,
                               seed=seed, record=record, threads=1)
        else:
            solo = nf.simulate(net, data, train, init=nf.Params(u0[k:k + 1], W0[k:k + 1]),
                               record=record, threads=1)
        for name in DATA_RECORDS:
            a, b = getattr(res, name), getattr(solo, name)
            if a is None:
                assert b is None, name
                continue
            np.testing.assert_array_equal(b[0], a[k], err_msg=f"{name} of trajectory {k}")

    # The in-run Gram and ntk_gram run the same block kernel on the same parameters.
    ok = res.status == 0
    written = res.times[None, :] < np.where(ok, np.inf, res.t_fail)[:, None]  # before t_fail
    kw = dict(act=act, kappa=kappa, eta_u=eta_u, eta_w=eta_w)
    np.testing.assert_array_equal(res.gram[written],
                                  nf.ntk_gram(res.u[written], res.W[written], X, **kw))

    # Every output finite or explicitly marked: all records NaN from the first record after
    # t_fail (as in assert_marked), finite before it and throughout an ok trajectory, except
    # the NaNs documented where a denominator is 0 (||u0||, ||W0||, ||K_0||_F,
    # ||K_t||_F ||K_0||_F, ||K_t||_F ||y||^2). The core scales Gram matrices by their largest
    # entry before taking norms, so only an all-zero Gram (or y) makes one 0, never underflow
    # (seed 29 once found a Gram of ~4e-194 here); ||y||^2 is a plain sum, as in the core.
    assert_marked(res)
    j_fail = np.where(ok, len(res.times), np.searchsorted(res.times, res.t_fail))
    after = np.arange(len(res.times))[None, :] > j_fail[:, None]
    nonzero = (np.abs(res.gram) > 0).any(axis=(2, 3)).astype(float)
    den = {"ntk_change": np.broadcast_to(nonzero[:, :1], nonzero.shape),
           "kernel_distance": nonzero * nonzero[:, :1], "kta": nonzero * float(y @ y)}
    shape = nonzero.shape
    zero_den = {
        "move_u": np.broadcast_to((np.abs(u0).max(axis=1) == 0)[:, None], shape),
        "move_w": np.broadcast_to((np.abs(W0).max(axis=(1, 2)) == 0)[:, None], shape),
        **{name: d == 0 for name, d in den.items()},
    }
    for name in ("loss", "norm_u2", "norm_w2", "alignment", "balance_drift", "p", "u", "W",
                 "gram", "pattern_change", "test_loss", "test_error",
                 "delta_mean", "delta_std", "delta_drift", *zero_den):
        v = getattr(res, name)
        if v is None:
            assert name == "pattern_change" and act != "relu"
            continue
        v = v.reshape(v.shape[:2] + (-1,))
        assert np.isnan(v[after]).all(), name
        w = v[written]
        if name in zero_den:
            assert (np.isnan(w[:, 0]) == zero_den[name][written]).all(), name
            w = w[~zero_den[name][written]]
        if name == "test_loss":
            # The held-out loss is no part of the flow: it can overflow to +inf on larger
            # test inputs while the training loss is still finite (a relu run at kappa
            # 10^1.75 with two training samples did), and is then +inf, never NaN.
            w = np.where(np.isposinf(w), 0.0, w)
        assert np.isfinite(w).all(), (name, res.status, res.t_fail, getattr(res, name))
    # ... and the kernel metrics are those of the recorded Gram matrices (sums of n^2 terms
    # in another order: round-off; all three are O(1) or relative).
    for name, ref in zip(("ntk_change", "kernel_distance", "kta"),
                         kernel_metrics(res.gram, y), strict=True):
        v, fine = getattr(res, name), written & (den[name] > 1e-150)
        np.testing.assert_allclose(v[fine], ref[fine], rtol=1e-10, atol=1e-12, err_msg=name)
    te = res.test_error[written]
    assert ((te >= 0) & (te <= 1)).all()
    if act == "relu":
        pc = res.pattern_change[written]
        assert ((pc >= 0) & (pc <= 1)).all()
    if res.t_hit is not None:
        hit = np.isfinite(res.t_hit)
        assert ((res.t_hit[hit] >= 0) & (res.t_hit[hit] <= train.t_max)).all()
    # The linearised run depends on the initial state only (whatever the status): never
    # NaN, and infinite only where its explicit descent is unstable (lr lambda_max(K_0) / n
    # > 2) and overflows; at t = 0 it is the loss (eigendecomposition round-off).
    assert not np.isnan(res.loss_lin).any(), res.loss_lin
    if gd:
        unstable = train.lr * np.linalg.eigvalsh(res.gram[:, 0]).max(axis=1) / samples > 2
    else:
        unstable = np.zeros(n, dtype=bool)
    assert (np.isfinite(res.loss_lin) | unstable[:, None]).all()
    np.testing.assert_allclose(res.loss_lin[:, 0], res.loss[:, 0], rtol=1e-10)
