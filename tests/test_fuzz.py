"""Property-based fuzzing over extreme hyperparameters: no crash, no hang, and every output
either finite or explicitly marked (status, t_fail), never silently NaN."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import ntkflow as nf

LABELS = {"kernel", "alignment", "disalignment", "rescaling", "failed"}
log_floats = lambda lo, hi: st.floats(lo, hi).map(lambda e: 10.0**e)  # noqa: E731


def assert_marked(res: nf.Result) -> None:
    """ok trajectories are finite everywhere; failed ones are finite before t_fail and NaN
    from the first record after it."""
    assert set(np.unique(res.status)) <= {0, 1, 2}
    for name in ("loss", "norm_u2", "norm_w2", "alignment", "balance_drift"):
        v = getattr(res, name)
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
    beta=st.floats(-1e3, 1e3),
    solver=st.sampled_from(["euler", "rk4", "dopri5", "gd"]),
    step=log_floats(-4, 1),
    seed=st.integers(0, 2**63),
)
def test_simulate_never_crashes_and_marks_failures(width, dim, kappa, eta_u, eta_w, s_u, s_w,
                                                   beta, solver, step, seed) -> None:
    net = nf.TwoLayer(width=width, kappa=kappa)
    data = (nf.LatentLine(beta=beta) if dim == 1 else
            nf.Moments(Sigma=np.eye(dim) + 0.5, b=np.full(dim, beta)))
    if solver == "gd":
        train = nf.GradientDescent(lr=step, steps=300, eta_u=eta_u, eta_w=eta_w)
    else:
        train = nf.GradientFlow(eta_u=eta_u, eta_w=eta_w, t_max=5.0, solver=solver, dt=step,
                                max_steps=20_000)
    res = nf.simulate(net, data, train, init=nf.Gaussian(s_u, s_w), trajectories=4, seed=seed,
                      record=nf.Record(times=11, loss_below=1e-6))
    assert_marked(res)
    labels = nf.classify(res).labels
    assert set(labels) <= LABELS
    assert all(lab == "failed" for lab in labels[res.status != 0])


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
    # The loss never increases along gradient flow (THEORY §A.5: no overshoot).
    assert (np.diff(path.loss, axis=1) <= 1e-12 * path.loss[:, :1] + 1e-300).all()
    assert set(nf.classify_exact(sol).labels) <= LABELS
