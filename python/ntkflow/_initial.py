"""The initial parameters: the core's description of an init (a Gaussian drawn from
(seed, trajectory index), or given ``Params``), and the draw itself, bit for bit the
parameters ``simulate`` starts from. Used by ``simulate``, ``Result.initial_params``, the
sweeps and the config runner."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from . import _core, _memory
from ._validate import integer, require
from .specs import Gaussian, Init, Params


def init_spec(init: Init, seed: int, first_trajectory: int, outputs: int = 1,
              bias: bool = False) -> _core.InitSpec:
    """The core's InitSpec: the Gaussian's scales, or a flag that the parameters are given."""
    spec = _core.InitSpec()
    spec.seed = seed
    spec.first_trajectory = first_trajectory
    spec.outputs = outputs
    spec.bias = bias
    if isinstance(init, Params):
        spec.given = True
    else:
        spec.s_u = init.s_u
        spec.s_w = init.s_w
        spec.s_b = init.s_b
        if init.correlation == "copy":
            spec.copy = True
        else:
            spec.correlation = float(init.correlation)
    return spec


def _augmented_w(init: Params, bias: bool) -> NDArray[np.float64]:
    """The core's W of given parameters: with a bias, b0 (zeros if absent) as a last column."""
    if not bias:
        return np.asarray(init.W0)
    b = np.zeros(init.u0.shape[:2]) if init.b0 is None else init.b0
    return np.ascontiguousarray(np.concatenate([init.W0, b[:, :, None]], axis=2))


def core_start(init: Init, seed: int, first_trajectory: int, outputs: int = 1,
               bias: bool = False) -> tuple[_core.InitSpec, NDArray[np.float64] | None,
                                            NDArray[np.float64] | None]:
    """The core's init arguments: its InitSpec and the given u0, W0 (or None, None)."""
    spec = init_spec(init, seed, first_trajectory, outputs, bias)
    if isinstance(init, Params):
        return spec, np.ascontiguousarray(init.u0), _augmented_w(init, bias)
    return spec, None, None


def check_outputs_init(init: Gaussian, outputs: int) -> None:
    """Correlated and copied inits pair u_i with w_i: they need one output."""
    if outputs > 1:
        require(init.correlation != "copy" and float(init.correlation) == 0.0,
                "init.correlation",
                f"must be 0 for a network with {outputs} outputs (a correlation pairs the "
                "scalar u_i with w_i)", init.correlation)


_SERIAL_DRAW = 1 << 16
"""Numbers drawn on one thread whatever the default team: starting an OpenMP team costs
more than a small draw (on a loaded 2-core machine a 2-thread team for 4 x 8 numbers took
7 ms against 0.02 ms serial -- most of a tiny sweep task). Each trajectory's numbers
depend only on its index, so the team never changes a bit."""


def _draw_team(numbers: float, threads: int | None = None) -> int:
    """The core's ``threads`` for a draw of this many numbers (0: the default team), at
    most ``threads`` when the caller runs on that many."""
    return 1 if numbers < _SERIAL_DRAW else (threads or 0)


def draw_initial(
    init: Init, width: int, dim: int, trajectories: int, *, seed: int, first_trajectory: int = 0,
    outputs: int = 1, bias: bool = False, threads: int | None = None,
) -> Params:
    """Initial parameters exactly as ``simulate`` draws them (``b0`` with ``bias``); small
    draws on one thread (``_SERIAL_DRAW``), others on ``threads`` (default: all). The
    bits never depend on the team."""
    if isinstance(init, Params):
        return init
    # Checked here too, not only in simulate: the config runner and the sweeps call this
    # directly, and the core's own message does not say which count was wrong.
    trajectories = integer(trajectories, "trajectories", minimum=1)
    width = integer(width, "width", minimum=1)
    dim = integer(dim, "dim", minimum=1)
    seed = integer(seed, "seed", minimum=0)
    require(seed < 2**64, "seed", "must be < 2**64", seed)
    first_trajectory = integer(first_trajectory, "first_trajectory", minimum=0)
    check_outputs_init(init, outputs)
    numbers = float(trajectories) * width * (outputs + dim + bias)
    _memory.check(8.0 * numbers, "the initial parameters", "use fewer trajectories")
    u, W = _core.initial_params(init_spec(init, seed, first_trajectory, outputs, bias),
                                width=width, dim=dim + bias, trajectories=trajectories,
                                threads=_draw_team(numbers, threads))
    if outputs > 1:
        u = u.reshape(trajectories, width, outputs)
    if bias:
        return Params(u, np.ascontiguousarray(W[:, :, :dim]), np.ascontiguousarray(W[:, :, dim]))
    return Params(u, W)
