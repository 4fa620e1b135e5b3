"""solver="auto" in SIMD lanes (cpp/src/linear_lanes.hpp): model A runs dopri5 in lanes
with integrate_dopri5's stiffness test per lane, and a stiff lane continues alone on the
scalar Rodas4 path (docs/theory.md §B.6).

References: dopri5 in lanes (the same arithmetic until a hand-over, bit for bit); the
closed form nf.exact.line; the one-trajectory-at-a-time path (LinearFused<2> then Rodas4,
through the private switch NTKFLOW_PRIVATE_NO_LANES=1) for the switching decisions; and
the same trajectory in other groups and on other thread counts, bit for bit.
"""

from __future__ import annotations

import numpy as np

import ntkflow as nf
from ntkflow._initial import draw_initial

from . import reference as ref

FIELDS = ("loss", "p", "alignment", "delta_std", "delta_drift", "deltas", "u", "W", "steps",
          "rejected", "t_hit", "status", "t_fail")


def single(monkeypatch, fn):
    """fn() on the one-trajectory-at-a-time path."""
    with monkeypatch.context() as mp:
        mp.setenv("NTKFLOW_PRIVATE_NO_LANES", "1")
        return fn()


def _line_run(train, n=24, first=0, threads=None, init=None):
    net = nf.TwoLayer(width=37, kappa=0.2)
    record = nf.Record(times=9, params="all", loss_below=1e-3, deltas=True)
    return nf.simulate(net, nf.LatentLine(beta=0.9), train, trajectories=n, seed=5,
                       first_trajectory=first, threads=threads, record=record,
                       init=init if init is not None else nf.Gaussian(1.0, 1.0))


def test_auto_without_a_switch_is_dopri5_in_lanes_bit_for_bit(monkeypatch) -> None:
    # On [0, 4] no trajectory gets stiff (they do from t ~ 26 on, see below), so auto must
    # be dopri5 in lanes exactly: the stiffness test only reads the Gram entries.
    flow = dict(t_max=4.0, rtol=1e-9, atol=1e-12)
    auto = _line_run(nf.GradientFlow(solver="auto", **flow), threads=2)
    dop = _line_run(nf.GradientFlow(solver="dopri5", **flow), threads=2)
    assert np.all(np.isnan(auto.t_stiff)) and auto.solver.startswith("auto: dopri5 (no")
    assert dop.rejected.sum() > 0
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(auto, name), getattr(dop, name), err_msg=name)
    # The private switch still sends auto to the old path, whose sums round differently.
    old = single(monkeypatch, lambda: _line_run(nf.GradientFlow(solver="auto", **flow)))
    assert not np.array_equal(old.loss, auto.loss)
    np.testing.assert_array_equal(old.steps, auto.steps)


def _mixed_init(n=24):
    """Trajectories that never switch on [0, 40] (rich, scale 0.02), that are stiff from
    t = 0 (scale 300: rho(0) t_max ~ 1e7) and that switch mid-run (scale 1)."""
    p = draw_initial(nf.Gaussian(1.0, 1.0), 37, 1, n, seed=5)
    scale = np.ones(n)
    scale[::3] = 0.02
    scale[[7, 20]] = 300.0
    return p.u0 * scale[:, None], p.W0 * scale[:, None, None]


def test_hand_overs_in_lanes_do_not_depend_on_groups_or_threads(monkeypatch) -> None:
    train = nf.GradientFlow(t_max=40.0, rtol=1e-9, atol=1e-12)
    u0, W0 = _mixed_init()

    def run(first=0, n=24, threads=None):
        init = nf.Params(u0[first:first + n], W0[first:first + n])
        return _line_run(train, n=n, threads=threads, init=init)

    big = run(threads=1)
    assert np.all(big.status == 0)
    never, start = np.isnan(big.t_stiff), big.t_stiff == 0.0
    assert never.sum() == 8 and np.flatnonzero(start).tolist() == [7, 20]
    assert np.all(big.t_stiff[~never & ~start] > 20.0)  # mid-run hand-overs
    for part, first in ((run(threads=2), 0), (run(0, 13), 0), (run(5, 13, threads=2), 5),
                        (run(17, 1), 17), (run(19, 3, threads=2), 19)):
        n = part.loss.shape[0]
        for name in FIELDS + ("t_stiff",):
            np.testing.assert_array_equal(getattr(part, name), getattr(big, name)[first:first + n],
                                          err_msg=name)
    # The same decisions as one trajectory at a time: which trajectories switch, when
    # (to rounding: step sizes differ in their last digits), and the step counts after.
    old = single(monkeypatch, lambda: run(threads=1))
    np.testing.assert_array_equal(np.isnan(old.t_stiff), never)
    np.testing.assert_array_equal(old.t_stiff == 0.0, start)
    np.testing.assert_allclose(old.t_stiff[~never], big.t_stiff[~never], rtol=1e-4)
    np.testing.assert_array_equal(old.steps, big.steps)
    np.testing.assert_array_equal(old.rejected, big.rejected)


def test_a_hand_over_in_lanes_against_the_closed_form(monkeypatch) -> None:
    # The lazy start of tests/test_stiff.py (s = 2 on [0, 50], rtol 1e-10), 16 trajectories
    # in two full groups of 8, every one handed over at t ~ 0.2-0.3. Measured worst errors
    # relative to each trajectory's scale: loss 3.56e-10, C 8.7e-10, as on the scalar path
    # (the same to 3 digits; rodas4 alone: 3.5e-10, 5.8e-10); the bounds are 2x those, and
    # at rtol 1e-9 the errors (3.5e-9, 1.1e-8) exceed them.
    net, line = nf.TwoLayer(width=64), nf.LatentLine(beta=1.3, sigma=0.8)
    train = nf.GradientFlow(t_max=50.0, rtol=1e-10, atol=1e-20)
    kw = dict(init=nf.Gaussian(2.0, 2.0), trajectories=16, seed=3, threads=1,
              record=nf.Record(times=60, spacing="log"))
    res = nf.simulate(net, line, train, **kw)
    assert np.all(res.status == 0)
    assert np.all(res.t_stiff > 0.1) and np.all(res.t_stiff < 1.0), res.t_stiff
    path = nf.exact.line(res, net, line, train).at(res.times)
    ref.assert_close_to_scale(res.loss, path.loss, 7e-10, "loss")
    ref.assert_close_to_scale(res.p, path.C, 1.8e-9, "C")
    # The switch comes at the same step as on the scalar path: steps taken before and after
    # agree, and t_stiff moves by far less than one step there. A step at the switch is at
    # least 2.5 / rho, rho = kappa^2 sigma (eta_w |u|^2 + eta_u |w|^2) <= its largest record.
    old = single(monkeypatch, lambda: nf.simulate(net, line, train, **kw))
    np.testing.assert_array_equal(old.steps, res.steps)
    np.testing.assert_array_equal(old.rejected, res.rejected)
    rho = net.kappa**2 * line.sigma * (train.eta_w * res.norm_u2 + train.eta_u * res.norm_w2)
    shortest = 2.5 / rho.max(axis=1)
    assert np.all(np.abs(old.t_stiff - res.t_stiff) < 0.01 * shortest), (
        np.abs(old.t_stiff - res.t_stiff) / shortest)
