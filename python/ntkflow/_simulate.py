"""simulate(): specs in, validated and sized here, integrated by the compiled core."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from . import _core, _memory
from ._initial import check_outputs_init, core_start, draw_initial
from ._progress import TrajectoryProgress
from ._validate import integer, require
from .result import Result
from .specs import (
    ADAPTIVE,
    AUTO_METRICS_ROWS,
    DATA_RULE,
    SGD,
    Data,
    Dataset,
    Gaussian,
    GradientDescent,
    GradientFlow,
    Init,
    MomentData,
    Params,
    Record,
    Training,
    TwoLayer,
)

# The stiff solver of the dataset path forms an (n c) x (n c) capacitance matrix per thread
# (nonlinear_stiff.hpp, kStiffMaxRows): beyond this many rows auto stays dopri5.
STIFF_MAX_ROWS = 4096

_SOLVERS = {"euler": "euler", "rk4": "rk4", "dopri5": "dopri5", "rodas4": "rodas4",
            "auto": "automatic"}
Method = Literal["full", "stagewise", "reduced"]
_METHODS = {"full": "fused", "stagewise": "stagewise", "reduced": "reduced"}
Path = Literal["auto", "moments", "data"]


def _count(init: Init, trajectories: int | None, net: TwoLayer, dim: int, outputs: int,
           first_trajectory: int) -> int:
    """The number of trajectories, with given ``Params`` checked against the network."""
    if isinstance(init, Params):
        n = init.trajectories if trajectories is None else integer(
            trajectories, "trajectories", minimum=1)
        require(n == init.trajectories, "trajectories",
                f"must equal the number of given Params ({init.trajectories})", trajectories)
        require(init.width == net.width, "init",
                f"Params width must be net.width = {net.width}", init.width)
        require(init.dim == dim, "init", f"Params dim must be the data's dim = {dim}",
                init.dim)
        require(init.outputs == outputs, "init",
                f"Params u0 must have {outputs} output column(s), the targets' "
                "(u0 of shape (trajectories, width, outputs))", init.outputs)
        require(init.b0 is None or net.bias, "init",
                "Params b0 is for a network with bias=True", "b0 given")
    else:
        n = 1 if trajectories is None else integer(trajectories, "trajectories", minimum=1)
        check_outputs_init(init, outputs)
    require(first_trajectory + n <= 2**63, "first_trajectory",
            f"+ trajectories must be <= 2**63 (int64 trajectory indices; trajectories = {n})",
            first_trajectory)
    return n


def initial_params(
    net: TwoLayer,
    init: Init | None = None,
    *,
    trajectories: int | None = None,
    seed: int = 0,
    dim: int | None = None,
    data: Data | None = None,
    first_trajectory: int = 0,
    outputs: int | None = None,
) -> Params:
    """An initialisation without training: the parameters ``simulate`` starts from.

    ``initial_params(net, init, trajectories=n, seed=s, dim=d, first_trajectory=k)`` equals,
    bit for bit, ``simulate(net, data, train, init=init, trajectories=n, seed=s,
    first_trajectory=k).initial_params()`` for any data of dimension d (and d outputs)
    and any training.

    Parameters
    ----------
    net : TwoLayer
        Its width, and its bias (``b0`` is drawn when ``net.bias``).
    init : Gaussian or Params
        Default ``Gaussian(1, 1)``. Given ``Params`` are checked against width and dim and
        returned as they are.
    trajectories : int
        Number of trajectories, >= 1 (default 1, or the number of given ``Params``).
    seed : int
        As in ``simulate``: trajectory k of a seed never depends on chunking.
    dim, data : int or LatentLine / Moments / Dataset
        The input dimension, given directly or as the data it belongs to; exactly one.
    first_trajectory : int
        Global index of the first trajectory, as in ``simulate``.
    outputs : int, optional
        Outputs c (columns of U); default the data's target columns, or 1 with ``dim``.

    Returns
    -------
    Params
        ``u0`` (trajectories, width[, outputs]), ``W0`` (trajectories, width, dim) and,
        with ``net.bias``, ``b0`` (trajectories, width).
    """
    init = Gaussian() if init is None else init
    require(isinstance(net, TwoLayer), "net", "must be a TwoLayer", net)
    require(isinstance(init, (Gaussian, Params)), "init", "must be a Gaussian or Params", init)
    require((dim is None) != (data is None), "dim",
            "or data must be given, not both (either fixes the input dimension)", dim)
    if data is not None:
        require(hasattr(data, "moments"), "data", DATA_RULE, data)
        d = int(data.dim)
        c = int(getattr(data, "outputs", 1))
    else:
        d = integer(dim, "dim", minimum=1)
        c = 1
    if outputs is not None:
        c = integer(outputs, "outputs", minimum=1)
    seed = integer(seed, "seed", minimum=0)
    require(seed < 2**64, "seed", "must be < 2**64", seed)
    first_trajectory = integer(first_trajectory, "first_trajectory", minimum=0)
    n = _count(init, trajectories, net, d, c, first_trajectory)
    if isinstance(init, Params):
        return init
    return draw_initial(init, net.width, d, n, seed=seed, first_trajectory=first_trajectory,
                        outputs=c, bias=net.bias)


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
    path: Path = "auto",
    progress: bool | None = None,
) -> Result:
    """Integrate many independent trajectories of one two-layer network.

    Parameters
    ----------
    net : TwoLayer
        Width, activation and output scale kappa.
    data : LatentLine, Moments or Dataset
        A linear network sees any data through its moments, reduced once before the time
        loop, so a step costs O(width * dim) whatever the number of samples. A network
        with an activation needs a ``Dataset``: a step costs two products of
        samples x width x dim.
    train : GradientFlow, GradientDescent or SGD
        It also carries the objective: loss and weight decay (see ``Objective``). relu
        networks: the flow field jumps where a pre-activation ``w_i . x_j`` crosses 0, and
        the flow can slide along such a surface. The default ``dopri5`` integrates them
        piece by piece, locating every crossing and following the sliding flow
        (``Result.events`` counts the crossings; see ``GradientFlow``); fixed-step ``rk4``
        and descent step across with O(dt) error at each crossing.
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
    method : {"full", "stagewise", "reduced"}
        "full" integrates all width * (1 + dim) parameters. For a linear network every
        Runge-Kutta stage state is the parameter matrix times a small (1+dim)^2 matrix, so
        a whole step is one pass over the parameters (for dim = 1 and width <= 4096,
        eight trajectories at once in SIMD lanes, with fixed steps or with dopri5's step
        sizes per trajectory). "stagewise" integrates the same
        parameters with the same method the textbook way (one field evaluation per stage,
        several passes per step): slower, kept as a cross-check and a benchmark reference.
        "reduced" integrates the width-independent closed system of docs/theory.md §B.1
        for ``(W^T u, W^T W, ||u||^2)``: the same records (no parameters), exact for any
        width, O(dim^2) per step. "stagewise" and "reduced" are for the moments path
        only.
    path : {"auto", "moments", "data"}
        A linear network trained on the square loss is the same model on the samples and
        on their moments. "moments" integrates the moment form (O(width dim^2) per step; on
        a ``Dataset`` the kernel metrics then come from the (dim, dim) NTK records,
        exactly); with several outputs or a bias it trains on the square root of the
        moments, dim rows in place of the samples (docs/theory.md §I.4; no kernel metrics
        with several outputs). "data" integrates on the samples, which Gram records
        (``Record.gram``), the linearised run (``Record.linearized``), a test set
        (``Record.test``), the logistic and softmax losses and SGD need, and which also
        records ``move_u`` and ``move_w``. "auto": "moments" for a linear network unless
        one of these needs the samples; always "data" with an activation.
    progress : bool, optional
        A progress bar on stderr counting finished trajectories (tqdm). None (default):
        shown when stderr is a terminal and tqdm is installed, and only once the call has
        run for about 2 s, so short calls print nothing. True: shown whatever stderr is
        (still after about 2 s; silently nothing when tqdm is not installed). False: never.
        It never changes a result.

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
    _check_kinds(net, data, train, init, record, method, path, progress)
    chosen = _choose_path(net, data, train, record, method, path)
    run = _validated_run(net, data, train, init, record, trajectories, seed,
                         first_trajectory, threads, progress)
    linear_core = chosen == "moments" and not (
        isinstance(data, Dataset) and (net.bias or data.outputs > 1))
    _check_stiff_solver(train, linear_core, method, net)
    if not linear_core:
        assert isinstance(data, Dataset)
        if chosen == "moments":
            require(method == "full", "method",
                    f'"{method}" needs one output and no bias (the moments path of '
                    'linear.cpp); use method="full"', method)
        return _simulate_data(run, moments=chosen == "moments")
    return _simulate_moments(run, method)


def _check_stiff_solver(train: Training, linear_core: bool, method: str, net: TwoLayer
                        ) -> None:
    """rodas4 integrates the linear core (on moments) and smooth activations on a dataset."""
    if not (isinstance(train, GradientFlow) and train.solver == "rodas4"):
        return
    require(net.act != "relu", "solver",
            '"rodas4" needs a smooth activation (linear, tanh, erf): relu\'s flow field '
            'jumps where a pre-activation crosses 0, and dopri5 locates those switches; use '
            '"dopri5" (or "auto", which is dopri5 for relu)', train.solver)
    if linear_core:
        require(method != "stagewise", "method",
                '"stagewise" is the textbook explicit form; rodas4 takes "full" or "reduced"',
                method)


def _stiff_data(run: _Run, rows: int) -> bool:
    """Whether the dataset path runs rodas4 / auto's hand-over: gradient flow with a smooth
    activation and a capacitance matrix of at most STIFF_MAX_ROWS^2 entries (rows = the
    core's samples x outputs)."""
    train = run.train
    return (isinstance(train, GradientFlow) and train.solver in ("auto", "rodas4")
            and run.net.act != "relu" and rows <= STIFF_MAX_ROWS)


@dataclass(frozen=True)
class _Run:
    """A validated ``simulate`` call: what either path integrates, for how many
    trajectories, from which seed, recorded when."""

    net: TwoLayer
    data: Data
    train: Training
    init: Init
    record: Record
    n: int  # trajectories
    seed: int
    first_trajectory: int
    threads: int  # 0: the core's default
    times: NDArray[np.float64]
    progress: bool | None

    @property
    def T(self) -> int:
        """Record times."""
        return int(self.times.size)

    @property
    def param_times(self) -> int:
        """Times at which the parameters are kept (when they are)."""
        return self.T if self.record.params == "all" else 1

    @property
    def teams(self) -> int:
        """Threads that each hold a working state."""
        return min(self.threads or int(_core.max_threads()), self.n)


def _check_kinds(net: TwoLayer, data: Data, train: Training, init: Init, record: Record,
                 method: str, path: str, progress: bool | None) -> None:
    """Each argument of ``simulate`` is of a kind it takes."""
    require(isinstance(net, TwoLayer), "net", "must be a TwoLayer", net)
    require(hasattr(data, "moments"), "data", DATA_RULE, data)
    require(isinstance(train, (GradientFlow, GradientDescent, SGD)), "train",
            "must be a GradientFlow, GradientDescent or SGD", train)
    require(isinstance(init, (Gaussian, Params)), "init", "must be a Gaussian or Params", init)
    require(isinstance(record, Record), "record", "must be a Record", record)
    require(method in _METHODS, "method", 'must be "full", "stagewise" or "reduced"', method)
    require(path in ("auto", "moments", "data"), "path",
            'must be "auto", "moments" or "data"', path)
    require(progress is None or isinstance(progress, (bool, np.bool_)), "progress",
            "must be None, True or False", progress)


def _validated_run(net: TwoLayer, data: Data, train: Training, init: Init, record: Record,
                   trajectories: int | None, seed: int, first_trajectory: int,
                   threads: int | None, progress: bool | None) -> _Run:
    """The counts, seed and record times of a call, checked."""
    seed = integer(seed, "seed", minimum=0)
    require(seed < 2**64, "seed", "must be < 2**64", seed)
    first_trajectory = integer(first_trajectory, "first_trajectory", minimum=0)
    n_threads = 0 if threads is None else _core.team(integer(threads, "threads", minimum=1))
    n = _count(init, trajectories, net, int(data.dim), int(getattr(data, "outputs", 1)),
               first_trajectory)
    times = record.resolve_times(train)
    if isinstance(train, GradientFlow) and train.solver not in ADAPTIVE:
        _check_fixed_steps(train, times)
    return _Run(net, data, train, init, record, n, seed, first_trajectory, n_threads, times,
                progress)


def _simulate_moments(run: _Run, method: str) -> Result:
    """The moments path: a linear network with one output and no bias, integrated on the
    data's moments (O(width dim^2) per step whatever the number of samples)."""
    dim = int(run.data.dim)
    ntk_mode = _moments_ntk_mode(run.record, dim, method)
    neurons = method != "reduced"
    keep_ntk = ntk_mode != "none"
    _check_moments_memory(run, method, keep_ntk, neurons)
    mom = run.data.moments()
    sched = _schedule(run, dim, None)
    rec = _record_buffers(run, dim, keep_ntk, neurons)
    if isinstance(run.train, GradientFlow) and run.train.solver in ("auto", "rodas4"):
        rec["t_stiff"] = np.full(run.n, np.nan)
    _integrate_moments(run, mom, method, sched, rec)
    if keep_ntk and isinstance(run.data, Dataset):
        rec.update(_moment_kernel_metrics(rec["ntk"], run.data.X, run.data.y))
    return _result(run, rec, dim, ntk_mode, method=method, path="moments")


def _moments_ntk_mode(record: Record, dim: int, method: str) -> str:
    """The kernel record of the moments path ("metrics" come from the (dim, dim) kernel,
    cheaply, so they are "auto" here), with what ``method="reduced"`` cannot record."""
    ntk_mode = record.ntk
    if ntk_mode == "scalar":
        require(dim == 1, "record.ntk", '"scalar" needs dim = 1 (use "matrix")', ntk_mode)
    if ntk_mode == "metrics":
        ntk_mode = "auto"
    if method == "reduced":
        require(record.params is None, "record.params",
                'must be None with method="reduced" (the reduced state has no parameters)',
                record.params)
        require(not record.deltas, "record.deltas",
                'must be False with method="reduced" (the reduced state has no parameters, '
                "so no per-neuron delta_i)", record.deltas)
    return ntk_mode


def _check_moments_memory(run: _Run, method: str, keep_ntk: bool, neurons: bool) -> None:
    """The moments path's records and each thread's working state, against the budget."""
    dim, width = int(run.data.dim), run.net.width
    per_time = (5 + dim + (dim * dim if keep_ntk else 0)
                + (3 if neurons and run.record.delta_summaries else 0))
    state = width * (1 + dim) if method != "reduced" else dim * (dim + 1) + 1
    if isinstance(run.train, GradientFlow) and run.train.solver in ("auto", "rodas4"):
        # Rodas4's state [p, M, a, Phi] (docs/theory.md §B.6), its 9 workspace vectors and
        # its d x d matrices, beside the explicit state a hand-over starts from.
        stiff = dim * (dim + 1) + 1 + (0 if method == "reduced" else (1 + dim) ** 2)
        state = max(state, stiff) + state + 3 * dim * dim
    # + delta_i(0) and delta_i(t) per neuron, for each of the 8 SIMD lanes when dim = 1,
    # + for dim = 1 the second (u, w) copy of an 8-lane group that dopri5's attempts go to
    workspace = 8.0 * (11 * state + width * (1 + dim) + 4 * dim + dim * dim + width
                       + (2 * width * (8 if dim == 1 else 1) if neurons else 0)
                       + (16 * width if dim == 1 and method != "reduced" else 0))
    _check_memory(run, per_time, 1 + dim, workspace,
                  f"simulating {run.n} trajectories of width {width}, recorded at {run.T} "
                  "times")


def _integrate_moments(run: _Run, mom: MomentData, method: str,
                       sched: _core.Schedule, rec: dict[str, NDArray[Any]]) -> None:
    """The compiled linear driver, filling ``rec`` in place."""
    net, train = run.net, run.train
    model = _core.LinearModel()
    model.width = net.width
    model.dim = int(run.data.dim)
    model.kappa = net.kappa
    model.eta_u = train.eta_u
    model.eta_w = train.eta_w
    model.lambda_u = train.lambda_u
    model.lambda_w = train.lambda_w
    model.loss_min = float(mom.loss_min)
    with TrajectoryProgress(run.n, run.progress) as hook:
        _core.simulate_linear(
            model,
            np.ascontiguousarray(mom.Sigma, dtype=np.float64),
            np.ascontiguousarray(mom.beta, dtype=np.float64),
            *core_start(run.init, run.seed, run.first_trajectory),
            sched,
            run.times,
            run.n,
            rec,
            params_all=run.record.params == "all",
            method=getattr(_core.LinearMethod, _METHODS[method]),
            progress=hook,
        )


FIXED_STEP_LIMIT = 10_000_000


def step_limit(train: GradientFlow, width: int, dim: int, samples: int | None) -> int:
    """``train.max_steps``, or the default that fits the network: for dopri5 about 3e9
    parameter-sample operations per trajectory (a few seconds of one core), in [1e5, 1e7]."""
    if train.max_steps is not None:
        return train.max_steps
    if train.solver not in ADAPTIVE:
        return FIXED_STEP_LIMIT
    work = width * (1 + dim) * (samples if samples is not None else dim)
    return int(min(1e7, max(1e5, 3e9 / work)))


def _check_fixed_steps(train: GradientFlow, times: NDArray[np.float64]) -> None:
    """Fixed steps are known before the run: refuse a count over max_steps up front rather
    than run for days (or, past 2^63 steps, not at all)."""
    spans = np.diff(times, prepend=0.0)
    spans = spans[spans > 0]
    steps = float(np.sum(np.maximum(1.0, np.ceil(spans / train.dt * (1.0 - 1e-12)))))
    limit = FIXED_STEP_LIMIT if train.max_steps is None else train.max_steps
    require(steps <= limit, "dt",
            f"gives {steps:.4g} {train.solver} steps to t_max = {train.t_max:g}, over "
            f"max_steps = {limit}; use a larger dt (or raise max_steps if so many "
            "steps are meant)", train.dt)


def _check_memory(run: _Run, per_time: int, params_row: int, workspace: float, what: str,
                  gram_bytes: float = 0.0) -> None:
    """The memory check of a simulate call, before anything is allocated: ``per_time``
    doubles of records per trajectory and record time, ``params_row`` doubles of kept
    parameters per neuron, the Gram and delta records, and ``workspace`` bytes for each
    thread. The advice depends on what is most of the request: the parameter records
    (params="all" on a wide network), the working state of each thread (a huge width), or
    the per-time records."""
    n, T, record, teams = run.n, run.T, run.record, run.teams
    params_bytes = (8.0 * n * run.param_times * run.net.width * params_row if record.params
                    else 0.0)
    deltas_bytes = _check_deltas(record, n, T, run.net.width)
    total = (8.0 * n * T * per_time + 8.0 * n * 6 + params_bytes + gram_bytes + deltas_bytes
             + workspace * teams)
    hint = ("record fewer times or trajectories, or run the ensemble in chunks with "
            "first_trajectory")
    if params_bytes > 0.5 * total:
        what += f", with record.params={record.params!r} ({params_bytes / 2**30:.3g} GiB of it)"
        if record.params == "all":
            hint = 'keep only the final parameters (record.params="final"), or ' + hint
    elif workspace * teams > 0.5 * total:
        what += (f", with the working state of {teams} thread(s) "
                 f"({workspace * teams / 2**30:.3g} GiB of it)")
        hint = "use a smaller width" + (" or fewer threads" if teams > 1 else "")
    _memory.check(total, what, hint)


def _check_deltas(record: Record, n: int, T: int, width: int) -> float:
    """Bytes of ``record.deltas``, checked on its own so that the error names it."""
    if not record.deltas:
        return 0.0
    nbytes = 8.0 * n * T * width
    _memory.check(nbytes, f"record.deltas=True ({n} trajectories x {T} times x width {width})",
                  "record fewer times or trajectories, keep only the summaries "
                  "(delta_mean, delta_std, delta_drift: record.deltas=False), or run the "
                  "ensemble in chunks with first_trajectory")
    return nbytes


def _record_buffers(run: _Run, dim: int, keep_ntk: bool, neurons: bool = True,
                    outputs: int = 1) -> dict[str, NDArray[Any]]:
    """The output buffers both core drivers fill: n trajectories at T record times (tp for
    parameters). Allocated here, once, after the memory check; the core writes in place."""
    record, n, T, tp, width = run.record, run.n, run.T, run.param_times, run.net.width
    rec: dict[str, NDArray[Any]] = {
        "loss": np.empty((n, T)),
        "p": np.empty((n, T, dim * outputs)),
        "norm_u2": np.empty((n, T)),
        "norm_w2": np.empty((n, T)),
        "alignment": np.empty((n, T)),
        "balance_drift": np.empty((n, T)),
        "status": np.zeros(n, dtype=np.int8),
        "t_fail": np.full(n, np.nan),
        "steps": np.zeros(n, dtype=np.int64),
        "rejected": np.zeros(n, dtype=np.int64),
        "events": np.zeros(n, dtype=np.int64),
    }
    if neurons:  # the per-neuron delta_i need the parameters (not method="reduced")
        if record.delta_summaries:  # the core skips the records it gets no buffer for
            for name in ("delta_mean", "delta_std", "delta_drift"):
                rec[name] = np.empty((n, T))
        if record.deltas:
            rec["deltas"] = np.empty((n, T, width))
    if keep_ntk:
        rec["ntk"] = np.empty((n, T, dim, dim))
    if record.loss_below is not None:
        rec["t_hit"] = np.full(n, np.nan)
    if record.params is not None:
        rec["u"] = np.empty((n, tp, width * outputs))
        rec["W"] = np.empty((n, tp, width, dim))
    return rec


# Records a Result takes from the core's buffers as they are (None when not recorded).
_AS_RECORDED = ("t_hit", "t_stiff", "delta_mean", "delta_std", "delta_drift", "deltas", "gram",
                "ntk_change", "kernel_distance", "kta", "move_u", "move_w", "pattern_change",
                "loss_lin", "lin_gap", "error", "test_loss", "test_error", "test_loss_lin",
                "test_error_lin", "test_lin_gap")


def _result(run: _Run, rec: dict[str, Any], dim: int, ntk_mode: str, *, method: str,
            path: str, outputs: int = 1, bias: bool = False) -> Result:
    """The Result of either path from the core's record buffers: squeezes dim = 1 and the
    scalar NTK, shapes U (width, outputs), splits the bias column off W, and keeps the
    parameters at the end only when that was asked for. `dim` is the core's (bias
    included)."""
    p = rec["p"]
    if outputs > 1:
        p = p.reshape(p.shape[:2] + (dim, outputs))
    elif dim == 1:
        p = p[..., 0]
    ntk = rec.get("ntk")
    if ntk is not None and (ntk_mode == "scalar" or (ntk_mode == "auto" and dim == 1)):
        ntk = ntk[..., 0, 0]
    u = W = b = None
    if run.record.params is not None:
        u, W = rec["u"], rec["W"]
        if outputs > 1:
            u = u.reshape(u.shape[:2] + (-1, outputs))
        if bias:
            W, b = W[..., :-1], W[..., -1]
        if run.record.params == "final":
            u, W = u[:, 0], W[:, 0]
            b = None if b is None else b[:, 0]
    recorded: dict[str, Any] = {name: rec.get(name) for name in _AS_RECORDED}
    return Result(
        times=run.times,
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
        events=rec["events"],
        u=u,
        W=W,
        b=b,
        net=run.net,
        data=run.data,
        train=run.train,
        init=run.init,
        seed=run.seed,
        first_trajectory=run.first_trajectory,
        method=method,
        path=path,
        isa=str(_core.ISA),
        **recorded,
    )


def _schedule(run: _Run, dim: int, samples: int | None) -> _core.Schedule:
    """The core's solver, step limit, threads and loss threshold."""
    train, record, width = run.train, run.record, run.net.width
    sched = _core.Schedule()
    sched.threads = run.threads
    if isinstance(train, GradientFlow):
        solver = train.solver
        rows = None if samples is None else samples * int(getattr(run.data, "outputs", 1))
        if solver == "auto" and rows is not None and not _stiff_data(run, rows):
            solver = "dopri5"  # relu, or too many rows for the capacitance matrix
        sched.solver = getattr(_core.Solver, _SOLVERS[solver])
        sched.dt = train.dt
        sched.rtol = train.rtol
        sched.atol = train.atol
        sched.max_steps = step_limit(train, width, dim, samples)
    else:  # descent and SGD: the clock counts steps
        sched.solver = _core.Solver.gd
        sched.lr = train.lr
    if record.loss_below is not None:
        sched.loss_threshold = record.loss_below
    return sched


def _choose_path(net: TwoLayer, data: Data, train: Training, record: Record, method: str,
                 path: str) -> str:
    """The integration path, or a ValueError naming what prevents the one asked for."""
    on_samples = isinstance(data, Dataset)
    needs = [name for name, on in (
        ("record.gram", record.gram is not None),
        ("record.linearized", record.linearized),
        ("record.test", record.test is not None),
        (f'loss="{train.loss}"', train.loss != "square"),
        ("SGD", isinstance(train, SGD))) if on]
    require(on_samples or not net.bias, "net.bias",
            "needs a Dataset: the moments of the inputs (x, 1) include the mean of x, which "
            "LatentLine and Moments do not give", net.bias)
    if net.act != "linear":
        require(on_samples, "data",
                f'must be a Dataset for act="{net.act}" (a network with an activation '
                "needs the samples, not only their moments)", type(data).__name__)
        require(path != "moments", "path",
                f'"moments" is for linear networks only (act="{net.act}")', path)
        chosen = "data"
    elif path == "auto":
        chosen = "data" if needs else "moments"
    else:
        chosen = path
    if chosen == "data":
        require(on_samples, "data", 'must be a Dataset for path="data"' + (
            f" (needed by {' and '.join(needs)})" if needs else ""), type(data).__name__)
        require(method == "full", "method",
                f'"{method}" is for the moments path (linear networks) only', method)
    elif needs:
        raise ValueError(f'path "moments" cannot provide {" and ".join(needs)}: they need '
                         'the samples (path="data" with a Dataset)')
    return chosen


def _moment_kernel_metrics(
    ntk: NDArray[np.float64], X: NDArray[np.float64], y: NDArray[np.float64]
) -> dict[str, NDArray[np.float64]]:
    """Kernel metrics of the training Gram ``K_t = X A_t X^T`` from the (dim, dim) kernels
    ``A_t`` (trajectories, times, dim, dim): with ``S = X^T X`` and ``b = X^T y``,
    ``<K_s, K_t>_F = tr(A_s S A_t S)`` and ``y^T K_t y = b^T A_t b``. The change
    ``K_t - K_0`` is taken from ``A_t - A_0`` directly, free of cancellation."""
    S = X.T @ X
    b = X.T @ y
    AS = ntk @ S
    A0S = AS[:, :1]
    DS = (ntk - ntk[:, :1]) @ S

    def inner(P: NDArray[np.float64], Q: NDArray[np.float64]) -> NDArray[np.float64]:
        out: NDArray[np.float64] = np.einsum("...ij,...ji->...", P, Q)
        return out

    kt = np.sqrt(np.maximum(inner(AS, AS), 0.0))
    k0 = kt[:, :1]
    diff = np.sqrt(np.maximum(inner(DS, DS), 0.0))
    dot0 = inner(AS, np.broadcast_to(A0S, AS.shape))
    yky = np.einsum("i,...ij,j->...", b, ntk, b)
    y2 = float(y @ y)
    with np.errstate(invalid="ignore", divide="ignore"):
        change = np.where(k0 > 0, diff / np.where(k0 > 0, k0, 1.0), np.nan)
        den = kt * k0
        distance = np.where(den > 0, 1.0 - dot0 / np.where(den > 0, den, 1.0), np.nan)
        den_y = kt * y2
        kta = np.where(den_y > 0, yky / np.where(den_y > 0, den_y, 1.0), np.nan)
    return {"ntk_change": change, "kernel_distance": distance, "kta": kta}


def _simulate_data(run: _Run, moments: bool = False) -> Result:
    """The dataset path: the full parameters of a network with any activation, outputs,
    bias, loss and training (flow, descent, SGD). With `moments` (a linear network, the
    square loss) the core trains on the square root of the data's moments instead of the
    samples (see _root_moments): the same flow at O((dim + width) dim outputs) per step."""
    plan = _plan_data(run, moments)
    net, train = run.net, run.train
    if isinstance(train, GradientFlow) and train.solver == "rodas4":
        rows = plan.samples * plan.c
        require(rows <= STIFF_MAX_ROWS, "solver",
                f'"rodas4" on a dataset forms a (samples x outputs)^2 = {rows}^2 capacitance '
                f"matrix per thread; it takes at most {STIFF_MAX_ROWS} rows (use \"auto\" "
                'or "dopri5")', train.solver)
    cnet = core_network(net.width, plan.D, net.act, net.kappa, train.eta_u, train.eta_w,
                        plan.c, train.loss, train.lambda_u, train.lambda_w)
    _check_data_memory(run, plan, cnet)
    sched = _schedule(run, plan.D, plan.samples)
    if moments:  # the root's loss is the data loss less its minimum
        sched.loss_threshold = (-1.0 if run.record.loss_below is None
                                else max(run.record.loss_below - plan.loss_min, 0.0))
    rec = _data_buffers(run, plan)
    if isinstance(train, GradientFlow) and train.solver in ("auto", "rodas4") and (
            net.act != "relu"):
        rec["t_stiff"] = np.full(run.n, np.nan)  # NaN: the trajectory never switched
    _integrate_data(run, plan, cnet, sched, rec)
    if plan.loss_min > 0:
        rec["loss"] += plan.loss_min
    if moments and plan.keep_ntk and plan.ntk_mode != "none":
        assert isinstance(run.data, Dataset)
        rec.update(_moment_kernel_metrics(rec["ntk"], _inputs(run.data.X, net.bias),
                                          run.data.y))
    return _result(run, rec, plan.D, plan.ntk_mode, method="full",
                   path="moments" if moments else "data", outputs=plan.c, bias=net.bias)


@dataclass(frozen=True)
class _DataPlan:
    """What the dataset path trains on and records, decided and checked up front."""

    X: NDArray[np.float64]  # the core's training inputs (with a bias, a column of ones)
    Y: NDArray[np.float64]  # and targets
    loss_min: float  # the data loss less the root's (added back to the records)
    D: int  # the core's input dimension: the bias is a last column of ones
    c: int  # outputs
    ntk_mode: str
    keep_ntk: bool  # the (dim, dim) kernel record
    metrics: bool  # the core's kernel metrics of the training Gram matrix
    probe: NDArray[np.float64] | None  # inputs of the probe Gram record
    test: Dataset | None
    batch: int  # SGD's batch size, 0 for the full batch
    train_labels: bool  # targets are labels: the training error is recorded
    test_labels: bool
    test_lin: bool  # the linearised twin on the test set

    @property
    def samples(self) -> int:
        """Rows the core trains on."""
        return int(self.X.shape[0])

    @property
    def g(self) -> int:
        """Rows of a recorded Gram matrix: (training or probe) inputs x outputs."""
        return (self.samples if self.probe is None else int(self.probe.shape[0])) * self.c


def _plan_data(run: _Run, moments: bool) -> _DataPlan:
    """The core's training rows and every record of the dataset path, checked against the
    network, the loss and the training."""
    net, record, train, data = run.net, run.record, run.train, run.data
    assert isinstance(data, Dataset)
    c = data.outputs
    D = data.dim + net.bias
    ntk_mode = record.ntk
    _check_targets(data, train.loss, "data")
    X, Y, loss_min = _inputs(data.X, net.bias), data.y, 0.0
    if moments:
        X, Y, loss_min = _root_moments(X, data.y)
        if c > 1:  # the metrics would be of the root's Gram, not the training set's
            ntk_mode = "none"
    samples = int(X.shape[0])
    kernel = net.act == "linear" and c == 1  # the (dim, dim) kernel record exists
    _check_data_records(run, ntk_mode, kernel, D)
    batch = _sgd_batch(train, record, samples)
    test = record.test
    # The metrics cost O((samples c)^2 width) per record time ((samples)^2 dim for the
    # linear kernel): "auto" takes them only for a small Gram matrix.
    metrics = ntk_mode == "metrics" or (ntk_mode != "none" and (
        kernel or samples * c <= AUTO_METRICS_ROWS))
    keep_ntk = kernel and ntk_mode in ("auto", "scalar", "matrix")
    if moments:  # the core's Gram would be the root's: the metrics come from the kernel
        keep_ntk = keep_ntk or (kernel and metrics)
        metrics = False
    return _DataPlan(
        X=X, Y=Y, loss_min=loss_min, D=D, c=c, ntk_mode=ntk_mode,
        keep_ntk=keep_ntk, metrics=metrics,
        probe=record.probe if record.gram == "probe" else None, test=test, batch=batch,
        # Classification error only where the targets are labels (and the samples are run).
        train_labels=not moments and _labels(data.y),
        test_labels=test is not None and _labels(test.y),
        test_lin=test is not None and record.linearized)


def _check_data_records(run: _Run, ntk_mode: str, kernel: bool, D: int) -> None:
    """The kernel, probe, test and linearised records the network and the loss allow."""
    net, record, train, data = run.net, run.record, run.train, run.data
    assert isinstance(data, Dataset)
    dim, c = data.dim, data.outputs
    if not kernel:
        require(ntk_mode in ("auto", "metrics", "none"), "record.ntk",
                f'must be "auto", "metrics" or "none" for act="{net.act}" with {c} '
                "output(s): the (dim, dim) kernel exists for linear one-output networks only "
                "(see record.gram)", ntk_mode)
    if ntk_mode == "scalar":
        require(D == 1, "record.ntk", '"scalar" needs dim = 1 (use "matrix")', ntk_mode)
    if record.gram == "probe":
        require(record.probe.shape[1] == dim, "record.probe",
                f"must have {dim} columns, the data's dim", record.probe)
    test = record.test
    if test is not None:
        require(test.dim == dim, "record.test",
                f"must have dim {dim}, the training data's (X with {dim} columns)",
                f"dim {test.dim}")
        require(test.outputs == c, "record.test",
                f"must have {c} target column(s), the training data's", f"{test.outputs}")
        _check_targets(test, train.loss, "record.test")
    require(not record.linearized or train.loss == "square", "record.linearized",
            f'needs loss="square": the linearised run is solved exactly for the square loss '
            f'only (loss="{train.loss}")', record.linearized)


def _sgd_batch(train: Training, record: Record, samples: int) -> int:
    """SGD's batch size, checked against the training set (0: full-batch training)."""
    if not isinstance(train, SGD):
        return 0
    batch = train.batch_size
    require(train.replace or batch <= samples, "batch_size",
            f"must be <= the {samples} training samples without replacement "
            "(or use replace=True)", batch)
    require(record.loss_below is None, "record.loss_below",
            "is not available with SGD (it would need the full-data loss after every "
            "step)", record.loss_below)
    return batch


def _check_data_memory(run: _Run, plan: _DataPlan, cnet: _core.Network) -> None:
    """The dataset path's records and each thread's working state, against the budget;
    the Gram record on its own first, so that the error names it."""
    n, T, record, g = run.n, run.T, run.record, plan.g
    if record.gram is not None:
        _memory.check(8.0 * n * T * g * g,
                      f"record.gram={record.gram!r} ({n} trajectories x {T} times x "
                      f"{g} x {g} Gram matrices)",
                      "record fewer times or trajectories, use a smaller probe set, or run "
                      "the ensemble in chunks with first_trajectory")
    relu, test, test_lin = run.net.act == "relu", plan.test, plan.test_lin
    per_time = (5 + plan.D * plan.c + (plan.D * plan.D if plan.keep_ntk else 0)
                + (3 if plan.metrics else 0) + 2
                + (1 if relu else 0) + (2 if record.linearized else 0)
                + (1 if plan.train_labels else 0) + (1 if test is not None else 0)
                + (1 if plan.test_labels else 0) + (2 if test_lin else 0)
                + (1 if test_lin and plan.test_labels else 0)
                + (3 if record.delta_summaries else 0))  # delta_mean, _std, _drift
    gram_bytes = 8.0 * n * T * g * g if record.gram is not None else 0.0
    workspace = float(_core.network_workspace_bytes(
        cnet, plan.samples, g // plan.c if plan.probe is not None else 0,
        record.gram is not None, plan.metrics, record.linearized, relu, True,
        0 if test is None else test.samples, plan.batch))  # move_u / move_w always recorded
    if relu and isinstance(run.train, GradientFlow) and run.train.solver in ("auto", "dopri5"):
        workspace += float(_core.piecewise_workspace_bytes(cnet, plan.samples))
    if _stiff_data(run, plan.samples * plan.c):
        workspace += _stiff_workspace_bytes(run.net.width, plan.D, plan.c, plan.samples)
    _check_memory(run, per_time, plan.c + plan.D, workspace,
                  f"simulating {n} trajectories of width {run.net.width} on {plan.samples} "
                  f"samples, recorded at {T} times", gram_bytes)


def _stiff_workspace_bytes(width: int, dim: int, c: int, samples: int) -> float:
    """Per thread, NetworkStiff's buffers (nonlinear_stiff.hpp, NetworkStiff::bytes): the
    capacitance matrix (samples c)^2, act / act' / act'' / scratch on (samples, width), the
    per-neuron LU blocks (c + dim)^2 and a chunk of the outputs' Jacobian; plus the
    hand-over state."""
    m, q, N = float(width), float(c + dim), float(samples * c)
    nb = float(max(1, min(width, 256 // (c + dim))))
    doubles = (N * N + 4.0 * samples * m + N * c + m * c + m * q * q + 2.0 * N * nb * q
               + 2.0 * m * q + 4.0 * N + m * q)
    return 8.0 * doubles + 4.0 * m * q


def _data_buffers(run: _Run, plan: _DataPlan) -> dict[str, NDArray[Any]]:
    """The records of both drivers, and those only the dataset path fills."""
    n, T, record = run.n, run.T, run.record
    rec = _record_buffers(run, plan.D, plan.keep_ntk, outputs=plan.c)
    names = ["move_u", "move_w"]
    if plan.metrics:
        names += ["ntk_change", "kernel_distance", "kta"]
    if run.net.act == "relu":
        names += ["pattern_change"]
    if record.linearized:
        names += ["loss_lin", "lin_gap"]
    names += ["error"] if plan.train_labels else []
    if plan.test is not None:
        names += ["test_loss"] + (["test_error"] if plan.test_labels else [])
        if plan.test_lin:
            names += ["test_loss_lin", "test_lin_gap"]
            names += ["test_error_lin"] if plan.test_labels else []
    for name in names:
        rec[name] = np.empty((n, T))
    if record.gram is not None:
        rec["gram"] = np.empty((n, T, plan.g, plan.g))
    return rec


def _integrate_data(run: _Run, plan: _DataPlan, cnet: _core.Network,
                    sched: _core.Schedule, rec: dict[str, NDArray[Any]]) -> None:
    """The compiled network driver, filling ``rec`` in place."""
    net, train, test = run.net, run.train, plan.test
    with TrajectoryProgress(run.n, run.progress) as hook:
        _core.simulate_network(
            cnet,
            plan.X,
            plan.Y,
            *core_start(run.init, run.seed, run.first_trajectory, plan.c, net.bias),
            sched,
            run.times,
            run.n,
            rec,
            params_all=run.record.params == "all",
            probe=None if plan.probe is None else _inputs(plan.probe, net.bias),
            test_x=None if test is None else _inputs(test.X, net.bias),
            test_y=None if test is None else test.y,
            progress=hook,
            batch=plan.batch,
            replace=isinstance(train, SGD) and train.replace,
            label_noise=train.label_noise if isinstance(train, SGD) else 0.0,
        )


def _root_moments(X: NDArray[np.float64], Y: NDArray[np.float64]
                  ) -> tuple[NDArray[np.float64], NDArray[np.float64], float]:
    """A linear network with the square loss sees its data only through Sigma = X^T X / n
    and B = X^T Y / n: rows Q = sqrt(r) diag(sqrt(lam)) V^T (Sigma = V diag(lam) V^T, r
    eigenvalues > 0) with targets Q beta (beta the least-squares solution) give the same
    gradient, and a loss smaller by L* = 1/(2n) ||X beta - Y||^2 (returned, to be added
    back). r <= dim rows instead of n: the moments path for any number of outputs."""
    n = X.shape[0]
    Sigma = X.T @ X / n
    lam, V = np.linalg.eigh(0.5 * (Sigma + Sigma.T))
    keep = lam > max(float(lam.max()), 0.0) * X.shape[1] * np.finfo(float).eps * 16
    r = int(np.sum(keep))
    Q = np.ascontiguousarray(np.sqrt(r * lam[keep])[:, None] * V[:, keep].T)
    beta = np.linalg.lstsq(X, Y, rcond=None)[0]
    resid = X @ beta - Y
    return Q, np.ascontiguousarray(Q @ beta), 0.5 * float(np.sum(resid * resid)) / n


def _inputs(X: NDArray[np.float64], bias: bool) -> NDArray[np.float64]:
    """The core's inputs: with a bias, a last column of ones (W's last column is b)."""
    if not bias:
        return X
    return np.ascontiguousarray(np.concatenate([X, np.ones((X.shape[0], 1))], axis=1))


def _labels(y: NDArray[np.float64]) -> bool:
    """Whether targets are class labels: every one exactly +1 or -1 (one output), or
    one-hot rows (several outputs)."""
    if y.ndim == 1:
        return bool(np.all((y == 1.0) | (y == -1.0)))
    return bool(np.all((y == 0.0) | (y == 1.0)) and np.all(y.sum(axis=1) == 1.0))


def _check_targets(data: Dataset, loss: str, name: str) -> None:
    """The targets a loss is defined on: +-1 labels (logistic), rows on the simplex with
    two or more outputs (softmax)."""
    y = data.y
    if loss == "logistic":
        require(y.ndim == 1 and _labels(y), name,
                'must have one target column of +-1 labels for loss="logistic"',
                f"targets of shape {y.shape}")
    elif loss == "softmax":
        require(y.ndim == 2, name,
                'must have two or more target columns for loss="softmax": one-hot rows '
                "(samples, classes), e.g. Dataset(X, labels, classes=k)",
                f"targets of shape {y.shape}")
        sums = y.sum(axis=1)
        require(bool(np.all(y >= 0) and np.all(np.abs(sums - 1.0) <= 1e-12 * y.shape[1])),
                name, 'must have targets on the simplex for loss="softmax" (each row >= 0, '
                "summing to 1: one-hot class vectors)", "other targets")


def sgd_batches(seed: int, trajectory: int, step: int, samples: int, batch_size: int,
                replace: bool = False) -> NDArray[np.int64]:
    """The training-sample indices SGD uses at one step, exactly as ``simulate`` draws
    them: ``batch_size`` indices into [0, samples) for the global trajectory index
    ``trajectory`` (``first_trajectory`` + local index) and the 0-based ``step``."""
    seed = integer(seed, "seed", minimum=0)
    require(seed < 2**64, "seed", "must be < 2**64", seed)
    trajectory = integer(trajectory, "trajectory", minimum=0)
    require(trajectory < 2**63, "trajectory", "must be < 2**63", trajectory)
    step = integer(step, "step", minimum=0)
    require(step < 2**32, "step", "must be < 2**32", step)
    samples = integer(samples, "samples", minimum=1)
    batch_size = integer(batch_size, "batch_size", minimum=1)
    require(replace or batch_size <= samples, "batch_size",
            f"must be <= samples = {samples} without replacement", batch_size)
    _memory.check(8.0 * (batch_size + (0 if replace else samples)),
                  f"sgd_batches for {samples} samples (the shuffle holds them all)",
                  "ask for fewer samples")
    out: NDArray[np.int64] = _core.sgd_batch(seed, trajectory, step, samples, batch_size,
                                             bool(replace))
    return out


def core_network(width: int, dim: int, act: str, kappa: float, eta_u: float, eta_w: float,
                 outputs: int = 1, loss: str = "square", lambda_u: float = 0.0,
                 lambda_w: float = 0.0) -> _core.Network:
    """The core's description of a network, its learning rates and its objective
    (validated values; dim counts a bias column)."""
    cnet = _core.Network()
    cnet.width = width
    cnet.dim = dim
    cnet.outputs = outputs
    cnet.act = getattr(_core.Activation, act)
    cnet.loss = getattr(_core.Loss, loss)
    cnet.kappa = kappa
    cnet.eta_u = eta_u
    cnet.eta_w = eta_w
    cnet.lambda_u = lambda_u
    cnet.lambda_w = lambda_w
    return cnet
