"""simulate(): specs in, validated and sized here, integrated by the compiled core."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from . import _core, _memory
from ._validate import integer, require
from .result import Result
from .specs import (
    Data,
    Gaussian,
    GradientDescent,
    GradientFlow,
    Init,
    Params,
    Record,
    Training,
    TwoLayer,
)

_SOLVERS = {"euler": "euler", "rk4": "rk4", "dopri5": "dopri5"}
Method = Literal["full", "reduced"]


def _init_spec(init: Init, seed: int, first_trajectory: int) -> Any:
    spec = _core.InitSpec()
    spec.seed = seed
    spec.first_trajectory = first_trajectory
    if isinstance(init, Params):
        spec.given = True
    else:
        spec.s_u = init.s_u
        spec.s_w = init.s_w
        if init.correlation == "copy":
            spec.copy = True
        else:
            spec.correlation = float(init.correlation)
    return spec


def draw_initial(
    init: Init, width: int, dim: int, trajectories: int, *, seed: int, first_trajectory: int = 0
) -> Params:
    """Initial parameters exactly as ``simulate`` draws them."""
    if isinstance(init, Params):
        return init
    _memory.check(8.0 * trajectories * width * (1 + dim), "the initial parameters",
                  "use fewer trajectories")
    u, W = _core.initial_params(_init_spec(init, seed, first_trajectory), width=width,
                                dim=dim, trajectories=trajectories)
    return Params(u, W)


def simulate(
    net: TwoLayer,
    data: Data,
    train: Training,
    *,
    init: Init | None = None,
    trajectories: int | None = None,
    seed: int = 0,
    record: Record | None = None,
    first_trajectory: int = 0,
    threads: int | None = None,
    method: Method = "full",
) -> Result:
    """Integrate many independent trajectories of one two-layer network.

    Parameters
    ----------
    net : TwoLayer
        Width, activation (``"linear"``) and output scale kappa.
    data : LatentLine, Moments or Dataset
        A linear network sees any data through its moments, reduced once before the time
        loop, so a step costs O(width * dim) whatever the number of samples.
    train : GradientFlow or GradientDescent
    init : Gaussian or Params
        Default ``Gaussian(1, 1)``. With ``Params`` the number of trajectories is theirs.
    trajectories : int
        Number of independent runs, >= 1 (default 1, or the number of given ``Params``).
    seed : int
        Trajectory k of a seed is identical bit for bit for any thread count or chunking.
    record : Record
        Record times and optional records (default ``Record()``: 101 evenly spaced times).
    first_trajectory : int
        Global index of the first trajectory: runs of ``trajectories=n`` with
        ``first_trajectory=0, n, 2n, ...`` are chunks of one larger ensemble.
    threads : int, optional
        OpenMP threads (default: ``OMP_NUM_THREADS`` or all cores).
    method : {"full", "reduced"}
        "full" integrates all width * (1 + dim) parameters. "reduced" integrates the
        width-independent closed system of THEORY §B.1 for ``(W^T u, W^T W, ||u||^2)``:
        the same records (no parameters), exact for any width, O(dim^2) per step.

    Returns
    -------
    Result
        ``loss`` has shape (trajectories, times); see ``Result`` for every field.

    Raises
    ------
    ValueError
        For any invalid or inconsistent argument, before any work starts.
    KeyboardInterrupt
        On Ctrl-C, within about a second.
    """
    init = Gaussian() if init is None else init
    record = Record() if record is None else record
    require(isinstance(net, TwoLayer), "net", "must be a TwoLayer", net)
    require(hasattr(data, "moments"), "data", "must be a LatentLine, Moments or Dataset", data)
    require(isinstance(train, (GradientFlow, GradientDescent)), "train",
            "must be a GradientFlow or GradientDescent", train)
    require(isinstance(init, (Gaussian, Params)), "init", "must be a Gaussian or Params", init)
    require(isinstance(record, Record), "record", "must be a Record", record)
    require(method in ("full", "reduced"), "method", 'must be "full" or "reduced"', method)
    require(net.act == "linear", "net.act",
            'must be "linear": simulate integrates linear networks', net.act)
    seed = integer(seed, "seed", minimum=0)
    require(seed < 2**64, "seed", "must be < 2**64", seed)
    first_trajectory = integer(first_trajectory, "first_trajectory", minimum=0)
    n_threads = 0 if threads is None else integer(threads, "threads", minimum=1)
    dim = int(data.dim)
    width = net.width
    if isinstance(init, Params):
        n = init.trajectories if trajectories is None else integer(
            trajectories, "trajectories", minimum=1)
        require(n == init.trajectories, "trajectories",
                f"must equal the number of given Params ({init.trajectories})", trajectories)
        require(init.width == width, "init", f"Params width must be net.width = {width}",
                init.width)
        require(init.dim == dim, "init", f"Params dim must be the data's dim = {dim}", init.dim)
    else:
        n = 1 if trajectories is None else integer(trajectories, "trajectories", minimum=1)
    times = record.resolve_times(train)
    T = times.size
    ntk_mode = record.ntk
    if ntk_mode == "scalar":
        require(dim == 1, "record.ntk", '"scalar" needs dim = 1 (use "matrix")', ntk_mode)
    if method == "reduced":
        require(record.params is None, "record.params",
                'must be None with method="reduced" (the reduced state has no parameters)',
                record.params)

    # Size everything before allocating anything.
    keep_ntk = ntk_mode != "none"
    per_time = 5 + dim + (dim * dim if keep_ntk else 0)
    tp = T if record.params == "all" else 1
    params_bytes = 8.0 * n * tp * width * (1 + dim) if record.params else 0.0
    state = width * (1 + dim) if method == "full" else dim * (dim + 1) + 1
    workspace = 8.0 * (11 * state + width * (1 + dim) + 4 * dim + dim * dim + width)
    threads_used = n_threads or int(_core.max_threads())
    total = 8.0 * n * T * per_time + 8.0 * n * 6 + params_bytes + workspace * threads_used
    _memory.check(total, f"recording {n} trajectories at {T} times",
                  "record fewer times or trajectories, or run the ensemble in chunks with "
                  "first_trajectory")

    mom = data.moments()
    model = _core.LinearModel()
    model.width = width
    model.dim = dim
    model.kappa = net.kappa
    model.eta_u = train.eta_u
    model.eta_w = train.eta_w
    model.loss_min = float(mom.loss_min)
    sched = _core.Schedule()
    sched.threads = n_threads
    if isinstance(train, GradientFlow):
        sched.solver = getattr(_core.Solver, _SOLVERS[train.solver])
        sched.dt = train.dt
        sched.rtol = train.rtol
        sched.atol = train.atol
        sched.max_steps = train.max_steps
    else:
        sched.solver = _core.Solver.gd
        sched.lr = train.lr
    if record.loss_below is not None:
        sched.loss_threshold = record.loss_below

    rec: dict[str, NDArray[Any]] = {
        "loss": np.empty((n, T)),
        "p": np.empty((n, T, dim)),
        "norm_u2": np.empty((n, T)),
        "norm_w2": np.empty((n, T)),
        "alignment": np.empty((n, T)),
        "balance_drift": np.empty((n, T)),
        "status": np.zeros(n, dtype=np.int8),
        "t_fail": np.full(n, np.nan),
        "steps": np.zeros(n, dtype=np.int64),
        "rejected": np.zeros(n, dtype=np.int64),
    }
    if keep_ntk:
        rec["ntk"] = np.empty((n, T, dim, dim))
    if record.loss_below is not None:
        rec["t_hit"] = np.full(n, np.nan)
    if record.params is not None:
        rec["u"] = np.empty((n, tp, width))
        rec["W"] = np.empty((n, tp, width, dim))

    given = isinstance(init, Params)
    _core.simulate_linear(
        model,
        np.ascontiguousarray(mom.Sigma, dtype=np.float64),
        np.ascontiguousarray(mom.beta, dtype=np.float64),
        _init_spec(init, seed, first_trajectory),
        init.u0 if given else None,
        init.W0 if given else None,
        sched,
        times,
        n,
        rec,
        params_all=record.params == "all",
        reduced=method == "reduced",
    )

    p = rec["p"][..., 0] if dim == 1 else rec["p"]
    ntk = rec.get("ntk")
    if ntk is not None and (ntk_mode == "scalar" or (ntk_mode == "auto" and dim == 1)):
        ntk = ntk[..., 0, 0]
    u = W = None
    if record.params is not None:
        u, W = rec["u"], rec["W"]
        if record.params == "final":
            u, W = u[:, 0], W[:, 0]
    return Result(
        times=times,
        loss=rec["loss"],
        p=p,
        norm_u2=rec["norm_u2"],
        norm_w2=rec["norm_w2"],
        alignment=rec["alignment"],
        ntk=ntk,
        balance_drift=rec["balance_drift"],
        status=rec["status"],
        t_fail=rec["t_fail"],
        steps=rec["steps"],
        rejected=rec["rejected"],
        t_hit=rec.get("t_hit"),
        u=u,
        W=W,
        net=net,
        data=data,
        train=train,
        init=init,
        seed=seed,
        first_trajectory=first_trajectory,
        method=method,
        isa=str(_core.ISA),
    )


def core_network(width: int, dim: int, act: str, kappa: float, eta_u: float,
                 eta_w: float) -> Any:
    """The core's description of a network and its learning rates (validated values)."""
    cnet = _core.Network()
    cnet.width = width
    cnet.dim = dim
    cnet.act = getattr(_core.Activation, act)
    cnet.kappa = kappa
    cnet.eta_u = eta_u
    cnet.eta_w = eta_w
    return cnet
