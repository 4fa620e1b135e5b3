"""dopri5 in SIMD lanes (cpp/src/linear_lanes.hpp): model A (d = 1) with width <= 4096
integrates up to 8 trajectories side by side, each lane with its own step size, record
landing and accept/reject decisions.

References: the closed form nf.exact.line; the single-trajectory path LinearFused<2>
(integrate_dopri5), reached through the private switch NTKFLOW_PRIVATE_NO_LANES=1, for
step counts and statuses; and the same trajectory run in other groups and on other thread
counts, bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest

import ntkflow as nf


def single(monkeypatch, fn):
    """fn() on the one-trajectory-at-a-time path (LinearFused<2>)."""
    with monkeypatch.context() as mp:
        mp.setenv("NTKFLOW_PRIVATE_NO_LANES", "1")
        return fn()


def scaled_error(a: np.ndarray, b: np.ndarray) -> float:
    a = a.reshape(a.shape[0], -1)
    b = b.reshape(b.shape[0], -1)
    return float(np.max(np.abs(a - b) / np.max(np.abs(b), axis=1, keepdims=True)))


def test_lanes_dopri5_matches_the_closed_form() -> None:
    # Width 200, 16 trajectories (two full groups), rtol 1e-9, atol 1e-12, 41 records on
    # [0, 20]. Measured worst errors relative to each trajectory's scale: loss 1.1e-10,
    # p 1.9e-10, ||u||^2 1.4e-11; at rtol 1e-8 (10x looser) 1.1e-9, 2.0e-9 and 1.6e-10,
    # which the bounds below reject.
    net = nf.TwoLayer(width=200, kappa=1 / np.sqrt(200))
    data = nf.LatentLine(beta=1.0)
    train = nf.GradientFlow(t_max=20.0, solver="dopri5", rtol=1e-9, atol=1e-12)
    res = nf.simulate(net, data, train, trajectories=16, seed=2, init=nf.Gaussian(0.5, 0.5),
                      record=nf.Record(times=41))
    path = nf.exact.line(res, net, data, train).at(res.times)
    assert np.all(res.status == 0)
    assert scaled_error(res.loss, path.loss) < 5e-10
    assert scaled_error(res.p, path.C) < 5e-10
    assert scaled_error(res.norm_u2, path.norm_u2) < 5e-11


def _line_run(n, first=0, threads=None, init=None, train=None, record=None):
    net = nf.TwoLayer(width=37, kappa=0.2)
    train = train or nf.GradientFlow(t_max=4.0, solver="dopri5", rtol=1e-9, atol=1e-12)
    record = record or nf.Record(times=9, params="all", loss_below=1e-3)
    return nf.simulate(net, nf.LatentLine(beta=0.9), train, trajectories=n, seed=5,
                       first_trajectory=first, threads=threads, record=record,
                       init=init if init is not None else nf.Gaussian(1.0, 1.0))


FIELDS = ("loss", "p", "alignment", "delta_std", "delta_drift", "u", "W", "steps",
          "rejected", "t_hit", "status")


def test_lane_groups_and_threads_do_not_change_dopri5_bits() -> None:
    # Trajectory k's records must not depend on which trajectories share its group (groups
    # shrink with the ensemble size and the thread count) nor on the threads.
    big = _line_run(24, threads=1)
    assert big.rejected.sum() > 0  # the runs exercise rejections, not only acceptances
    for part, first in ((_line_run(24, threads=2), 0), (_line_run(13, threads=1), 0),
                        (_line_run(13, first=5, threads=2), 5), (_line_run(1, first=17), 17),
                        (_line_run(3, first=21, threads=2), 21)):
        n = part.loss.shape[0]
        for name in FIELDS:
            np.testing.assert_array_equal(getattr(part, name), getattr(big, name)[first:first + n],
                                          err_msg=name)


def test_failing_lanes_leave_their_neighbours_alone(monkeypatch) -> None:
    # In one group of 8: a lane whose loss overflows at t = 0 (diverged at 0) and a lane
    # started 4x larger, which needs 135 attempts and so runs into max_steps = 120 (the
    # others need at most 100). The healthy lanes' bits must be those of a run without
    # them, and the failing lanes get the single-trajectory path's statuses and times.
    train = nf.GradientFlow(t_max=4.0, solver="dopri5", rtol=1e-9, atol=1e-12,
                            max_steps=120)
    big = _line_run(8, train=train)
    p = big.initial_params()
    u0, W0 = p.u0.copy(), p.W0.copy()
    u0[2] *= 1e200
    W0[2] *= 1e200
    u0[5] *= 4.0
    W0[5] *= 4.0
    mixed = _line_run(8, train=train, init=nf.Params(u0, W0))
    alone = single(monkeypatch, lambda: _line_run(8, train=train, init=nf.Params(u0, W0)))
    assert mixed.status[2] == 1 and mixed.t_fail[2] == 0.0 and np.all(np.isnan(mixed.loss[2]))
    assert mixed.status[5] == 2 and mixed.steps[5] + mixed.rejected[5] == 120
    np.testing.assert_array_equal(mixed.status, alone.status)
    np.testing.assert_array_equal(mixed.steps, alone.steps)
    # (measured 1.9e-7 apart after 120 attempts: step sizes round differently)
    np.testing.assert_allclose(mixed.t_fail[5], alone.t_fail[5], rtol=1e-6)
    healthy = [0, 1, 3, 4, 6, 7]
    assert np.all(big.status[healthy] == 0)
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(mixed, name)[healthy],
                                      getattr(big, name)[healthy], err_msg=name)


@pytest.mark.parametrize("case", ["plain", "step_limit", "loss_below", "decay", "tight"])
def test_step_counts_and_statuses_match_the_single_trajectory_path(monkeypatch, case) -> None:
    # Same method, same decisions: accepted and rejected steps, statuses, failure times,
    # threshold times. Only rounding differs (sums over the width in another order), so the
    # records agree to round-off and, on these well-conditioned runs, the counts exactly.
    flow = dict(t_max=4.0, solver="dopri5", rtol=1e-9, atol=1e-12)
    record = nf.Record(times=9, params="final")
    if case == "step_limit":
        flow["max_steps"] = 12
    elif case == "loss_below":
        record = nf.Record(times=9, params="final", loss_below=1e-4)
    elif case == "decay":
        flow.update(lambda_u=0.1, lambda_w=0.05)
    elif case == "tight":  # ~1000 steps per trajectory with errors near round-off
        flow.update(rtol=1e-14, atol=1e-300)
    train = nf.GradientFlow(**flow)
    lanes = _line_run(13, train=train, record=record)
    one = single(monkeypatch, lambda: _line_run(13, train=train, record=record))
    np.testing.assert_array_equal(lanes.status, one.status)
    if case == "tight":
        # Error estimates at round-off level round differently in the two paths: counts
        # agreed exactly at rtol 1e-14 and within one step of ~2000 at rtol 1e-16.
        assert np.all(lanes.steps > 300)
        np.testing.assert_allclose(lanes.steps, one.steps, rtol=2e-3, atol=1)
    else:
        for name in ("steps", "rejected"):
            np.testing.assert_array_equal(getattr(lanes, name), getattr(one, name),
                                          err_msg=name)
    if case == "step_limit":
        assert np.all(lanes.status == 2)
        assert np.all(lanes.steps + lanes.rejected == 12)
        # The failure time: the same step sequence up to rounding of the step sizes, which
        # the cancellation in the error estimate amplifies (measured 1e-8 after 12 steps).
        np.testing.assert_allclose(lanes.t_fail, one.t_fail, rtol=1e-6, atol=0)
    if case == "loss_below":
        assert np.all(np.isfinite(lanes.t_hit))
        np.testing.assert_allclose(lanes.t_hit, one.t_hit, rtol=1e-6, atol=0)
    ok = lanes.status == 0
    if ok.any():
        scale = np.max(np.abs(one.loss[ok]), axis=1, keepdims=True)
        np.testing.assert_allclose(lanes.loss[ok] / scale, one.loss[ok] / scale, rtol=0,
                                   atol=1e-12)
        np.testing.assert_allclose(lanes.u[ok], one.u[ok], rtol=0, atol=1e-12)


def test_lanes_take_dopri5_above_and_below_the_width_limit(monkeypatch) -> None:
    # Width 4096 runs in lanes, 4097 one trajectory at a time: the same method either side.
    for width in (4096, 4097):
        net = nf.TwoLayer(width=width, kappa=1 / np.sqrt(width))
        train = nf.GradientFlow(t_max=3.0, solver="dopri5", rtol=1e-9, atol=1e-12)

        def run():
            return nf.simulate(net, nf.LatentLine(), train, trajectories=3, seed=1,
                               record=nf.Record(times=4))

        a, b = run(), single(monkeypatch, run)
        np.testing.assert_array_equal(a.steps, b.steps)
        np.testing.assert_allclose(a.loss, b.loss, rtol=1e-11, atol=0)
        if width == 4097:  # both calls took LinearFused<2>
            np.testing.assert_array_equal(a.loss, b.loss)
