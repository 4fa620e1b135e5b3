"""nf.initial_params: the initialisation simulate starts from, without training."""

from __future__ import annotations

import numpy as np
import pytest

import ntkflow as nf


@pytest.mark.parametrize("seed", [0, 1, 2**40 + 3])
@pytest.mark.parametrize("dim", [1, 3])
@pytest.mark.parametrize("init", [nf.Gaussian(1.0, 0.5), nf.Gaussian(0.3, 2.0, correlation=0.6),
                                  nf.Gaussian(1.0, 1.0, correlation="copy")],
                         ids=["plain", "correlated", "copy"])
def test_initial_params_are_the_bits_simulate_starts_from(seed, dim, init) -> None:
    net = nf.TwoLayer(width=6, kappa=0.5)
    data = (nf.LatentLine(beta=1.0) if dim == 1
            else nf.Moments(Sigma=np.eye(dim), b=np.ones(dim)))
    train = nf.GradientFlow(t_max=1.0, solver="rk4", dt=0.1)
    # Chunks of one ensemble of 7: first_trajectory picks the stream, not the position.
    for first, n in ((0, 7), (0, 3), (3, 4), (5, 1)):
        p = nf.initial_params(net, init, trajectories=n, seed=seed, dim=dim,
                              first_trajectory=first)
        assert p.u0.shape == (n, 6) and p.W0.shape == (n, 6, dim)
        res = nf.simulate(net, data, train, init=init, trajectories=n, seed=seed,
                          first_trajectory=first, record=nf.Record(times=3, params="all"))
        np.testing.assert_array_equal(p.u0, res.initial_params().u0)
        np.testing.assert_array_equal(p.W0, res.initial_params().W0)
        np.testing.assert_array_equal(p.u0, res.u[:, 0])  # the t = 0 record, exactly
        np.testing.assert_array_equal(p.W0, res.W[:, 0])
        whole = nf.initial_params(net, init, trajectories=7, seed=seed, data=data)
        np.testing.assert_array_equal(p.u0, whole.u0[first:first + n])
        np.testing.assert_array_equal(p.W0, whole.W0[first:first + n])


def test_initial_params_on_the_dataset_path() -> None:
    rng = np.random.default_rng(0)
    data = nf.Dataset(X=rng.normal(size=(5, 2)), y=rng.normal(size=5))
    net = nf.TwoLayer(width=4, act="relu")
    p = nf.initial_params(net, trajectories=3, seed=9, data=data)
    res = nf.simulate(net, data, nf.GradientDescent(lr=0.1, steps=3), trajectories=3,
                      seed=9, record=nf.Record(params="all"))
    np.testing.assert_array_equal(p.u0, res.u[:, 0])
    np.testing.assert_array_equal(p.W0, res.W[:, 0])


def test_given_params_are_checked_and_returned() -> None:
    net = nf.TwoLayer(width=3)
    given = nf.Params(np.ones((2, 3)), np.ones((2, 3, 1)))
    assert nf.initial_params(net, given, dim=1) is given
    with pytest.raises(ValueError, match="trajectories"):
        nf.initial_params(net, given, trajectories=3, dim=1)
    with pytest.raises(ValueError, match="init"):
        nf.initial_params(net, given, dim=2)
    with pytest.raises(ValueError, match="init"):
        nf.initial_params(nf.TwoLayer(width=4), given, dim=1)


def test_bad_arguments_are_refused() -> None:
    net = nf.TwoLayer(width=3)
    with pytest.raises(ValueError, match="dim"):
        nf.initial_params(net)  # neither dim nor data
    with pytest.raises(ValueError, match="dim"):
        nf.initial_params(net, dim=1, data=nf.LatentLine())
    with pytest.raises(ValueError, match="dim"):
        nf.initial_params(net, dim=0)
    with pytest.raises(ValueError, match="trajectories"):
        nf.initial_params(net, dim=1, trajectories=0)
    with pytest.raises(ValueError, match="seed"):
        nf.initial_params(net, dim=1, seed=-1)
    with pytest.raises(ValueError, match="net"):
        nf.initial_params("net", dim=1)  # type: ignore[arg-type]
    assert "initial_params" in nf.__all__


@pytest.mark.parametrize("trajectories, width", [(4, 8), (64, 1100)])
def test_small_draws_run_on_one_thread_with_the_same_bits(trajectories, width) -> None:
    # A draw under _SERIAL_DRAW numbers asks the core for one thread (a team costs more
    # than the draw); the bits must be the core's at any team size, below and above it.
    from ntkflow import _core
    from ntkflow._initial import _SERIAL_DRAW, _draw_team, draw_initial, init_spec

    init = nf.Gaussian(1.0, 0.5)
    numbers = trajectories * width * 2
    assert _draw_team(numbers) == (1 if numbers < _SERIAL_DRAW else 0)
    assert (4 * 8 * 2 < _SERIAL_DRAW) and (64 * 1100 * 2 >= _SERIAL_DRAW)
    p = draw_initial(init, width, 1, trajectories, seed=7)
    for threads in (1, 2, 3):
        u, W = _core.initial_params(init_spec(init, 7, 0, 1, False), width=width, dim=1,
                                    trajectories=trajectories, threads=threads)
        np.testing.assert_array_equal(p.u0, u)
        np.testing.assert_array_equal(p.W0, W)
