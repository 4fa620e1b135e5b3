"""Sweeps: many ensembles, each one task, run in-process or on a Dask cluster.

A ``Task`` is a small frozen description of one ensemble (network, data, training, init,
trajectories, seed, records, method, and what to compute). Its ``key`` is a hash of that
description: the task's name on a Dask cluster and its name in a ``Store``. A task's
numbers depend only on its description (the seed is part of it, never the task's position
in the sweep), and the core is bit-reproducible for a given seed whatever the thread
count, so a task gives the same bits wherever and whenever it runs -- on the same
compiled instruction-set level (``NTKFLOW_ISA``), which the sweep checks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import pickle
import time
import traceback
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from . import _core
from . import exact as _exact
from ._initial import draw_initial
from ._progress import progress as _progress
from ._simulate import Method, simulate
from ._summary import rows_table, summary_row
from ._table import Table
from ._validate import integer, real, require
from .mechanisms import Classification, classify, classify_exact
from .result import Result
from .specs import (
    DATA_RULE,
    Data,
    Dataset,
    Gaussian,
    GradientDescent,
    GradientFlow,
    Init,
    LatentLine,
    Moments,
    Params,
    Record,
    SGD,
    Training,
    TwoLayer,
)
from .store import Store

Compute = Literal["classify", "records", "exact"]
Horizon = Literal["train", "auto"]
TASK_FORMAT = 1
"""Version of the task description; part of every key."""

DASK_MISSING = ("running a sweep on a Dask cluster needs dask.distributed, which is not "
                "installed: pip install 'ntkflow[dask]'")

_RECORDS = ("times", "loss", "p", "norm_u2", "norm_w2", "alignment", "ntk",
            "balance_drift", "t_fail", "steps", "rejected", "u", "W")
# The records a run makes on request (kernel metrics, the twin, a test set, per-neuron
# conserved quantities, relu events, the bias): compute="records" keeps those it made.
_OPTIONAL_RECORDS = ("events", "gram", "ntk_change", "kernel_distance", "kta", "move_u",
                     "move_w", "pattern_change", "loss_lin", "lin_gap", "error",
                     "test_loss", "test_error", "test_loss_lin", "test_error_lin",
                     "test_lin_gap", "delta_mean", "delta_std", "delta_drift", "deltas",
                     "b", "t_stiff")
FINAL_RECORDS: tuple[str, ...] = ("test_loss", "test_error", "error")
"""Records whose final values a simulated task keeps, as ``final_<name>`` (trajectories,),
when the run recorded them: the held-out loss and error, and the training error."""


# --------------------------------------------------------------------------- exact helpers


def _horizon(sol: Any) -> float:
    """docs/theory.md §A.5: t_esc + 40 / Gamma, the largest over the ensemble (finite
    ones)."""
    t = np.asarray(sol.escape_time) + 40.0 / np.asarray(sol.rate)
    t = t[np.isfinite(t)]
    require(t.size > 0, "t_max", '"auto" found no finite horizon (no trajectory escapes: '
            'Gamma = 0 or an unreachable target); give a number', "auto")
    return float(np.max(t))


def _exact_t_hit(sol: Any, t_end: float, level: float) -> NDArray[np.float64]:
    """First time the exact loss reaches ``level``: the loss decreases monotonically, so
    bracket it on 600 log-spaced times and interpolate log(loss) linearly in t (relative
    error of the time ~1e-3 on this grid; NaN if not reached by t_end)."""
    grid = np.concatenate([[0.0], np.geomspace(t_end * 1e-7, t_end, 600)])
    L = sol.at(grid).loss
    below = L <= level
    first = np.where(below.any(axis=1), below.argmax(axis=1), -1)
    out = np.full(L.shape[0], np.nan)
    for k in np.flatnonzero(first >= 0):
        j = first[k]
        if j == 0:
            out[k] = 0.0
            continue
        l0, l1 = L[k, j - 1], L[k, j]
        t0, t1 = grid[j - 1], grid[j]
        if l1 > 0 and l0 > l1 and level > 0:
            f = (math.log(l0) - math.log(level)) / (math.log(l0) - math.log(l1))
        else:
            f = 1.0
        out[k] = t0 + f * (t1 - t0)
    return out


# --------------------------------------------------------------------------- description


def _value(v: Any) -> Any:
    """A JSON value for a spec field: arrays by content hash, floats exactly (repr)."""
    if isinstance(v, np.ndarray):
        a = np.ascontiguousarray(v)
        return {"array_sha256": hashlib.sha256(a.tobytes()).hexdigest(),
                "shape": list(a.shape), "dtype": str(a.dtype)}
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v)
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, Dataset):  # Record.test
        return _describe(v)
    raise TypeError(f"cannot describe a spec field of type {type(v).__name__}")


# Spec fields added after TASK_FORMAT 1, with the value that means "as before they
# existed": described only when set otherwise, so that the keys of older stores stay valid.
_ADDED_FIELDS: dict[str, Any] = {"bias": False, "loss": "square", "s_b": 0.0,
                                 "classes": None, "lambda_u": 0.0, "lambda_w": 0.0}


def _describe(obj: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": type(obj).__name__}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.name.startswith("_") or f.name in skip:
            continue
        if f.name in _ADDED_FIELDS and _same(value, _ADDED_FIELDS[f.name]):
            continue
        out[f.name] = _value(value)
    return out


def _same(value: Any, default: Any) -> bool:
    return value is default if default is None else (
        type(value) is type(default) and value == default)


def _canonical(desc: Mapping[str, Any]) -> str:
    return json.dumps(desc, sort_keys=True, separators=(",", ":"), allow_nan=False)


# --------------------------------------------------------------------------- Task


@dataclass(frozen=True, kw_only=True, eq=False)
class Task:
    """One grid point of a sweep: an ensemble and what to compute from it.

    Parameters
    ----------
    net, data, train, init, trajectories, seed, record, method, first_trajectory
        As in ``simulate``. The seed is part of the task: a task's numbers never depend
        on its position in a sweep.
    compute : {"classify", "records", "exact"}
        "classify": simulate, then ``classify``; keep per trajectory the labels, scores,
        final loss, status and ``t_hit`` (O(trajectories) numbers). "records": the same
        plus every record of the ``Result`` (``TaskOutput.result()`` rebuilds it).
        "exact": no integration; ``classify_exact`` from the closed form at t = inf
        (linear, dim 1, Gaussian init, both learning rates > 0), the final loss at
        ``train.t_max`` (at t = inf with ``horizon="auto"``).
    horizon : {"train", "auto"}
        "auto" replaces ``train.t_max`` by t_esc + 40/Gamma (docs/theory.md §A.5) from
        the closed form of this ensemble (linear, dim 1); ``train.t_max`` is then
        ignored.
    eps, tau : float
        Classification thresholds.

    Attributes
    ----------
    key : str
        16 hex digits of the SHA-256 of ``describe()``: equal descriptions, equal keys.
    """

    net: TwoLayer
    data: Data
    train: Training
    init: Init = field(default_factory=Gaussian)
    trajectories: int = 1
    seed: int = 0
    record: Record = field(default_factory=Record)
    method: Method = "full"
    compute: Compute = "classify"
    horizon: Horizon = "train"
    first_trajectory: int = 0
    eps: float = 0.05
    tau: float = 0.1
    key: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        def s(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        require(isinstance(self.net, TwoLayer), "net", "must be a TwoLayer", self.net)
        require(isinstance(self.data, (LatentLine, Moments, Dataset)), "data", DATA_RULE,
                self.data)
        require(isinstance(self.train, (GradientFlow, GradientDescent, SGD)), "train",
                "must be a GradientFlow, GradientDescent or SGD", self.train)
        require(isinstance(self.init, (Gaussian, Params)), "init",
                "must be a Gaussian or Params", self.init)
        require(isinstance(self.record, Record), "record", "must be a Record", self.record)
        s("trajectories", integer(self.trajectories, "trajectories", minimum=1))
        s("seed", integer(self.seed, "seed", minimum=0))
        require(self.seed < 2**64, "seed", "must be < 2**64", self.seed)
        s("first_trajectory", integer(self.first_trajectory, "first_trajectory", minimum=0))
        require(self.method in ("full", "stagewise", "reduced"), "method",
                'must be "full", "stagewise" or "reduced"', self.method)
        require(self.compute in ("classify", "records", "exact"), "compute",
                'must be "classify", "records" or "exact"', self.compute)
        require(self.horizon in ("train", "auto"), "horizon", 'must be "train" or "auto"',
                self.horizon)
        s("eps", real(self.eps, "eps", low=0.0, low_open=True))
        s("tau", real(self.tau, "tau", low=0.0, high=1.0))
        if isinstance(self.init, Params):
            require(self.init.trajectories == self.trajectories, "trajectories",
                    f"must equal the number of given Params ({self.init.trajectories})",
                    self.trajectories)
        if self.compute == "exact" or self.horizon == "auto":
            what = 'compute="exact"' if self.compute == "exact" else 'horizon="auto"'
            require(int(self.data.dim) == 1, "data", f"must be one-dimensional for {what}",
                    self.data)
            require(isinstance(self.train, GradientFlow) and self.train.eta_u > 0
                    and self.train.eta_w > 0, "train",
                    f"must be a GradientFlow with eta_u, eta_w > 0 for {what}", self.train)
            for name in ("lambda_u", "lambda_w"):  # the closed form has no weight decay
                require(getattr(self.train, name) == 0.0, f"train.{name}",
                        f"must be 0 for {what} (exact.line has no weight decay)",
                        getattr(self.train, name))
            require(isinstance(self.init, Gaussian), "init", f"must be a Gaussian for {what}",
                    self.init)
        if self.horizon == "train" and self.compute != "exact":
            self.record.resolve_times(self.train)  # record times within t_max, now
        s("key", hashlib.sha256(_canonical(self.describe()).encode()).hexdigest()[:16])

    def describe(self) -> dict[str, Any]:
        """Everything that determines the task's numbers, as plain JSON values (arrays by
        content hash). Threads are not part of it: they never change a bit."""
        skip = ("t_max",) if self.horizon == "auto" else ()
        return {
            "format": TASK_FORMAT,
            "net": _describe(self.net),
            "data": _describe(self.data),
            "train": _describe(self.train, skip),
            "init": _describe(self.init),
            "trajectories": self.trajectories,
            "first_trajectory": self.first_trajectory,
            "seed": self.seed,
            # Record fields added later are described only when set, so that the keys of
            # existing stores stay valid (no test set, deltas=False, delta_summaries=True: as
            # before they existed).
            "record": _describe(self.record, tuple(
                name for name, unset in (("test", self.record.test is None),
                                         ("deltas", not self.record.deltas),
                                         ("delta_summaries", self.record.delta_summaries))
                if unset)),
            "method": self.method,
            "compute": self.compute,
            "horizon": self.horizon,
            "eps": self.eps,
            "tau": self.tau,
        }

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Task) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    def run(self, threads: int | None = None) -> TaskOutput:
        """Compute this task here, now (``threads`` OpenMP threads)."""
        return TaskOutput(self, execute(self, None, threads))


def execute(task: Task, isa: str | None, threads: int | None) -> dict[str, Any]:
    """Compute a task; the plain arrays its store file holds. ``isa``: the level the
    caller runs; a worker on another level refuses (different rounding, other bits)."""
    _check_isa(isa)
    t0 = time.perf_counter()
    net, data, train, init, n = task.net, task.data, task.train, task.init, task.trajectories
    auto = task.horizon == "auto"
    loss_below = task.record.loss_below
    out: dict[str, Any] = {}  # NumPy arrays and 0-d NumPy scalars
    sol = None
    if task.compute == "exact" or auto:
        assert isinstance(init, Gaussian) and isinstance(train, GradientFlow)
        params = draw_initial(init, net.width, 1, n, seed=task.seed,
                              first_trajectory=task.first_trajectory, threads=threads)
        flow = GradientFlow(eta_u=train.eta_u, eta_w=train.eta_w, t_max=1.0)
        sol = _exact.line(params, net, data, flow)
    if task.compute == "exact":
        assert sol is not None
        c = classify_exact(sol, task.eps, task.tau)
        if auto:  # t = inf needs no horizon; only timing a level the limit reaches does
            final = sol.limit().loss[:, 0]  # (the loss decreases monotonically to it)
            timed = loss_below is not None and bool(np.any(final <= loss_below))
            horizon = _horizon(sol) if timed else math.inf
        else:
            horizon = train.t_max
            final = sol.at(np.array([horizon])).loss[:, 0]
            timed = loss_below is not None
        hit = (_exact_t_hit(sol, horizon, loss_below) if timed and loss_below is not None
               else np.full(n, np.nan))
        out.update(status=np.zeros(n, dtype=np.int8), final_loss=np.asarray(final),
                   t_hit=hit, t_max=np.float64(math.inf if auto else horizon),
                   source=np.str_("exact"))
    else:
        if auto:
            assert isinstance(train, GradientFlow)
            train = dataclasses.replace(train, t_max=_horizon(sol))
        res = simulate(net, data, train, init=init, trajectories=n, seed=task.seed,
                       record=task.record, threads=threads, method=task.method,
                       first_trajectory=task.first_trajectory, progress=False)
        c = classify(res, task.eps, task.tau)
        out.update(status=res.status, final_loss=res.loss[:, -1].copy(),
                   t_hit=(res.t_hit.copy() if res.t_hit is not None else np.full(n, np.nan)),
                   t_max=np.float64(train.t_max), source=np.str_("simulate"))
        for k in FINAL_RECORDS:  # only what was recorded: other tasks' files stay as they were
            v = getattr(res, k)
            if v is not None:
                out[f"final_{k}"] = v[:, -1].copy()
        if task.compute == "records":
            for k in (*_RECORDS, *_OPTIONAL_RECORDS):
                v = getattr(res, k)
                if v is not None:
                    out[f"record_{k}"] = v
            if res.path is not None:
                out["record_path"] = np.str_(res.path)
    out["labels"] = np.asarray(c.labels)
    out["ok"] = np.asarray(c.ok)
    out["score_names"] = np.array(list(c.scores), dtype=str)
    for k, v in c.scores.items():
        out[f"score_{k}"] = np.asarray(v)
    out["classification_source"] = np.str_(c.source)
    out["rule"] = np.str_(c.rule)
    out["notes"] = np.array(list(c.notes), dtype=str)
    out["eps"] = np.float64(c.eps)
    out["tau"] = np.float64(c.tau)
    out["kernel_test"] = np.str_(c.kernel_test)
    out["eps_lin"] = np.float64(c.eps_lin)
    out["key"] = np.str_(task.key)
    out["spec"] = np.str_(json.dumps(task.describe(), allow_nan=False))
    out["isa"] = np.str_(_core.ISA)
    out["seconds"] = np.float64(time.perf_counter() - t0)
    return out


def _check_isa(isa: str | None) -> None:
    if isa is not None and str(_core.ISA) != isa:
        raise RuntimeError(
            f"this worker runs ntkflow's {_core.ISA} core but the client runs {isa}: "
            f"results would differ in the last bits; set NTKFLOW_ISA={isa} on every "
            "worker (and the client) of a mixed cluster")


@dataclass(frozen=True)
class TaskFailure:
    """A task that raised instead of finishing: the exception's type and message, and
    its traceback. Recorded in the store in place of the task's arrays."""

    error: str
    message: str
    traceback: str = field(default="", repr=False)

    def __str__(self) -> str:
        return f"{self.error}: {self.message}"

    def error_for(self, message: str) -> Exception:
        """An exception of the task's type when it is a built-in one (a ValueError stays
        a ValueError for callers that catch it, wherever the task ran), else a
        RuntimeError, saying ``message``."""
        import builtins

        cls = getattr(builtins, self.error, None)
        if isinstance(cls, type) and issubclass(cls, Exception):
            try:
                return cls(message)
            except TypeError:  # (an exception type whose constructor needs more)
                pass
        return RuntimeError(message)


def _attempt(task: Task, isa: str | None, threads: int | None) -> dict[str, Any] | TaskFailure:
    """``execute``, with an exception of the task's own caught and returned: one task
    that raises fails alone, and raises the same wherever it runs (so it is not retried).
    A worker on the wrong ISA level raises instead: that is the worker's fault."""
    _check_isa(isa)
    try:
        return execute(task, None, threads)
    except Exception as exc:
        return TaskFailure(type(exc).__name__, str(exc), traceback.format_exc(limit=-8))


@dataclass(frozen=True, eq=False)
class TaskOutput:
    """A finished task: its description and the plain arrays it computed.

    ``output["final_loss"]`` etc. are the arrays of the store file (see the README's
    store layout); ``classification()`` and ``result()`` rebuild the library's objects.
    """

    task: Task
    arrays: Mapping[str, NDArray[Any]] = field(repr=False)

    def __getitem__(self, name: str) -> NDArray[Any]:
        require(name in self.arrays, "name", f"must be one of {tuple(self.arrays)}", name)
        return self.arrays[name]

    @property
    def seconds(self) -> float:
        return float(self.arrays["seconds"])

    def classification(self) -> Classification:
        a = self.arrays
        scores = {}
        for k in a["score_names"].tolist():
            v = np.array(a[f"score_{k}"], dtype=np.float64)
            v.setflags(write=False)
            scores[str(k)] = v
        labels = np.array(a["labels"], dtype="<U12")
        ok = np.array(a["ok"], dtype=bool)
        labels.setflags(write=False)
        ok.setflags(write=False)
        # Stores written before the twin test always used rho* (path rule) or rho_T.
        rho = "rho_star" if str(a["rule"]) == "path" else "rho_T"
        return Classification(labels, scores, ok, float(a["eps"]), float(a["tau"]),
                              str(a["classification_source"]), str(a["rule"]),
                              tuple(str(s) for s in a["notes"].tolist()),
                              str(a.get("kernel_test", rho)), float(a.get("eps_lin", 0.05)))

    def result(self) -> Result:
        """The simulated ``Result`` (``compute="records"`` only)."""
        require(self.task.compute == "records", "compute",
                'must be "records" to rebuild the Result', self.task.compute)
        a: dict[str, Any] = {k: self.arrays.get(f"record_{k}") for k in _RECORDS}
        # Stores written before these were kept have none of them: None, as not recorded.
        optional: dict[str, Any] = {k: self.arrays[f"record_{k}"]
                                    for k in _OPTIONAL_RECORDS
                                    if f"record_{k}" in self.arrays}
        path = str(self.arrays["record_path"]) if "record_path" in self.arrays else None
        t = self.task
        train = t.train
        if t.horizon == "auto":
            assert isinstance(train, GradientFlow)
            train = dataclasses.replace(train, t_max=float(self.arrays["t_max"]))
        return Result(times=a["times"], loss=a["loss"], p=a["p"], norm_u2=a["norm_u2"],
                      norm_w2=a["norm_w2"], alignment=a["alignment"], ntk=a["ntk"],
                      balance_drift=a["balance_drift"], status=self.arrays["status"],
                      t_fail=a["t_fail"], steps=a["steps"], rejected=a["rejected"],
                      t_hit=(self.arrays["t_hit"] if t.record.loss_below is not None
                             else None),
                      u=a["u"], W=a["W"], net=t.net, data=t.data, train=train, init=t.init,
                      seed=t.seed, first_trajectory=t.first_trajectory, method=t.method,
                      isa=str(self.arrays["isa"]), path=path, **optional)


# --------------------------------------------------------------------------- sweep


@dataclass(frozen=True, eq=False)
class Sweep:
    """Result of ``sweep``: one ``TaskOutput`` per task, in the order given.

    Attributes
    ----------
    tasks : tuple of Task
    store : Store or None
        Where the outputs live (read on access) when the sweep had a store.
    computed : tuple of str
        Keys of the tasks computed by this call.
    skipped : tuple of str
        Keys of the tasks already finished in the store (resumed, not recomputed).
    seconds : float
        Wall time of the call.
    failed : dict of str to TaskFailure
        The sweep's tasks that raised (in this call, or in the store's earlier runs and
        not finished since): key -> the exception's type, message and traceback.
        ``len(sweep.failed)`` of them have no output; ``rerun()`` computes them again.
    """

    tasks: tuple[Task, ...]
    store: Store | None
    computed: tuple[str, ...]
    skipped: tuple[str, ...]
    seconds: float
    failed: Mapping[str, TaskFailure] = field(default_factory=dict)
    _memory: dict[str, dict[str, NDArray[Any]]] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, i: int) -> TaskOutput:
        t = self.tasks[i]
        if t.key in self.failed:
            raise self.failed[t.key].error_for(
                f"task {i} ({t.key}) failed: {self.failed[t.key]}; Sweep.rerun() "
                "computes the failed tasks again")
        arrays = self._memory.get(t.key)
        if arrays is None:
            assert self.store is not None
            arrays = self.store.load(t.key)
        return TaskOutput(t, arrays)

    def __iter__(self) -> Iterator[TaskOutput]:
        return (self[i] for i in range(len(self)))

    def summary(self) -> Table:
        """One row per finished task (failed ones have none): spec, label fractions,
        score medians, seconds."""
        return rows_table([summary_row(self[i].arrays) for i, t in enumerate(self.tasks)
                           if t.key not in self.failed])

    def rerun(self, failed_only: bool = True, *, client: Any = None,
              threads: int | None = None, retries: int = 2,
              progress: bool = False) -> Sweep:
        """Compute again the tasks that failed (``failed_only``), or every task, into
        the same store (or memory): after a fix of what made them fail, the outputs are
        the bits a run in which they never failed gives. Other tasks are not recomputed.
        ``client``, ``threads``, ``retries``, ``progress``: as in ``sweep``. Returns the
        new ``Sweep`` (its ``failed``: the tasks that failed again)."""
        redo = set(self.failed) if failed_only else {t.key for t in self.tasks}
        out = sweep(self.tasks, store=self.store, client=client, threads=threads,
                    retries=retries, progress=progress, _redo=redo)
        if self.store is not None:
            return out
        memory = {**{k: v for k, v in self._memory.items() if k not in redo},
                  **out._memory}
        return dataclasses.replace(out, _memory=memory)


def _client(client: Any) -> tuple[Any, bool]:
    """A dask.distributed.Client from a Client or a scheduler address; and whether we
    own it (and close it)."""
    try:
        import distributed
    except ImportError:
        raise ImportError(DASK_MISSING) from None
    if isinstance(client, str):
        return distributed.Client(client), True  # type: ignore[no-untyped-call]
    require(isinstance(client, distributed.Client), "client",
            "must be a dask.distributed.Client or a scheduler address such as "
            "'tcp://host:8786'", client)
    return client, False


def sweep(
    specs: Sequence[Task],
    *,
    store: str | Path | Store | None = None,
    client: Any = None,
    resume: bool = True,
    threads: int | None = None,
    retries: int = 2,
    progress: bool = False,
    desc: str = "sweep",
    _redo: Collection[str] | None = None,
) -> Sweep:
    """Run every task of a grid: in this process (OpenMP inside each task), or on a Dask
    cluster in chunks of tasks (about ``CHUNK_SECONDS`` of work each, sized from ``cost``
    and the measured times; results come back in completion order, at most two chunks
    per worker thread in flight; with a store, workers pack the files and the client
    only writes them).

    Parameters
    ----------
    specs : sequence of Task
        The grid. Equal tasks (same key) are computed once and share their output.
    store : path or Store, optional
        A folder (created if missing) where finished tasks are committed in batches
        (atomically: a task is complete or absent after any kill; at most about a
        second of finished work is lost to a kill, see ``Store``'s batch_* parameters),
        with the sweep's specs -- see ``Store``. A store of other specs is refused,
        naming what differs; a version-1 store is refused with how to migrate it.
    client : dask.distributed.Client or str, optional
        Run on this cluster (a Client, or a scheduler address like ``"tcp://host:8786"``,
        connected to and closed here). Needs ``pip install 'ntkflow[dask]'``. Every
        worker must run the same ntkflow build at the same instruction-set level
        (``NTKFLOW_ISA``) as this process; a worker that does not is refused.
    resume : bool
        Skip tasks already committed to the store, finished or failed
        (``Sweep.rerun()`` retries the failed); False recomputes them (their new commits
        supersede the old ones, whose segments are then removed).
    threads : int, optional
        OpenMP threads per task (default: ``OMP_NUM_THREADS`` or all cores of wherever
        the task runs; Dask's nanny sets ``OMP_NUM_THREADS=1`` unless the environment
        gives it). Never changes a number.
    retries : int
        On Dask, how many times a chunk of tasks is submitted again when it failed as a
        whole -- its worker died (``KilledWorker``, after Dask's own
        ``distributed.scheduler.allowed-failures`` reschedules) or the cluster lost it;
        after that its tasks are recorded as failed. A task that raises is not retried:
        it is recorded as failed (type, message, traceback), alone, and the sweep goes
        on (in-process too); see ``Sweep.failed`` and ``Sweep.rerun``.
    progress : bool
        A bar over tasks with elapsed time and an estimate (tqdm, on a terminal).

    Returns
    -------
    Sweep
        Outputs in the order of ``specs``; ``computed``, ``skipped`` and ``failed``.

    Raises
    ------
    ValueError
        Bad specs, or a store holding a sweep of other specs or another ISA level.
    ImportError
        ``client`` given without dask.distributed installed.
    """
    t0 = time.perf_counter()
    tasks = tuple(specs)
    for i, t in enumerate(tasks):
        require(isinstance(t, Task), f"specs[{i}]", "must be a Task", t)
    unique = tuple(dict.fromkeys(tasks))  # equal tasks (same key) are computed once
    threads = None if threads is None else integer(threads, "threads", minimum=1)
    retries = integer(retries, "retries", minimum=0)
    dask_client = owned = None
    if client is not None:
        dask_client, owned = _client(client)
    st = None if store is None else (store if isinstance(store, Store) else Store(store))
    memory: dict[str, dict[str, Any]] = {}
    computed: list[str] = []
    failed: dict[str, TaskFailure] = {}
    lock = writer = None
    try:
        done: set[str] = set()
        if st is not None:
            lock, writer = st._begin(unique)
            if resume:
                done = st._done_keys(t.key for t in unique)
        if _redo is not None:  # a rerun: only these
            done = {t.key for t in unique if t.key not in _redo}
        todo = [t for t in unique if t.key not in done]

        def finish(key: str, arrays: Any) -> None:
            if isinstance(arrays, TaskFailure):
                failed[key] = arrays
                if writer is not None:
                    writer.add_failure(key, arrays.error, arrays.message,
                                       arrays.traceback)
            elif writer is None:
                # Pickled by our own Dask worker (a cluster runs pickled code anyway).
                memory[key] = pickle.loads(arrays[0]) if isinstance(arrays, tuple) else arrays
            elif isinstance(arrays, tuple):  # packed by a Dask worker
                writer.add_bytes(key, arrays[0], arrays[1])
            else:
                writer.add(key, arrays)
            computed.append(key)

        try:
            with _progress(len(unique), desc, progress,
                           initial=len(unique) - len(todo)) as bar:
                if dask_client is None:
                    for t in todo:
                        finish(t.key, _attempt(t, None, threads))
                        bar.update(1)
                else:
                    _run_dask(dask_client, todo, threads, finish, bar, writer is not None,
                              retries)
        finally:  # what finished is kept, also when the user interrupts
            if writer is not None:
                writer.close()
        if st is not None:
            st._end()
            keys = {t.key for t in unique}
            failed = {k: TaskFailure(**v) for k, v in st.failed().items() if k in keys} \
                if st._state().failed else {}
    finally:
        if lock is not None:
            lock.close()
        if owned and dask_client is not None:
            dask_client.close()
    return Sweep(tasks, st, tuple(computed), tuple(t.key for t in unique if t.key in done),
                 time.perf_counter() - t0, failed, memory)


def cost(task: Task) -> float:
    """A proxy of a task's work, proportional to its run time for tasks alike except in
    it: trajectories x width x (1 + dim) x samples (where the flow field sums over them:
    a Dataset on a non-linear network; linear ones use the moments) x steps (fixed-step
    and descent methods; adaptive ones are taken as a fixed number of steps per unit of
    t_max, which the sweep calibrates against measured times)."""
    net, data, train = task.net, task.data, task.train
    work = float(task.trajectories) * net.width * (1 + int(data.dim))
    if isinstance(data, Dataset) and net.act != "linear":
        work *= data.samples
    if isinstance(train, (GradientDescent, SGD)):
        work *= train.steps
    elif train.solver in ("rk4", "euler"):
        work *= max(1.0, train.t_max / train.dt)
    if task.compute == "exact":
        work = float(task.trajectories) * 600  # the closed form on a 600-point grid
    return work


def _execute_chunk(tasks: Sequence[Task], isa: str, threads: int | None,
                   for_store: bool) -> list[Any]:
    """A chunk's tasks, one after the other on a worker, each packed in one bytes object:
    for a store (its .npz bytes, summary row, seconds), so that the client only writes;
    else (its arrays pickled, None, seconds). Dask would otherwise ship one frame per
    array (~28 for a tiny task: 0.43 ms a task), and reading .npz bytes back costs about
    as much (np.load parses each header), where unpickling costs microseconds."""
    from .store import _npz_bytes

    out: list[Any] = []
    for t in tasks:
        arrays = _attempt(t, isa, threads)
        if isinstance(arrays, TaskFailure):
            out.append(arrays)
        elif for_store:
            out.append((_npz_bytes(arrays), summary_row(arrays), float(arrays["seconds"])))
        else:
            out.append((pickle.dumps(arrays, protocol=5), None, float(arrays["seconds"])))
    return out


CHUNK_SECONDS = 2.0
"""Work per Dask task in a sweep: tasks are grouped into chunks of about this many seconds
(Dask costs ~1-10 ms per task it schedules, the sweep's own overhead another few)."""


def _run_dask(client: Any, todo: Sequence[Task], threads: int | None, finish: Any,
              bar: Any, for_store: bool, retries: int = 2) -> None:
    """Chunks of about CHUNK_SECONDS of work, sized from ``cost`` calibrated by the times
    of the chunks that came back: the first tasks go one per chunk. At most two chunks per
    worker thread are in flight, so the client holds a bounded number of results, and
    results are handled in completion order. A chunk that fails as a whole (its tasks'
    own exceptions come back as TaskFailure) is submitted again up to ``retries`` times,
    then its tasks are recorded as failed."""
    from collections import deque

    from distributed import as_completed

    isa = str(_core.ISA)
    queue = deque(todo)
    slots = max(1, sum(w.get("nthreads", 1)
                       for w in client.scheduler_info()["workers"].values()))
    in_flight = 2 * slots
    spent = [0.0, 0.0]  # seconds and cost of what came back

    def chunk() -> list[Task]:
        if spent[1] <= 0.0 or spent[0] <= 0.0:
            return [queue.popleft()]
        rate = spent[0] / spent[1]
        out: list[Task] = []
        budget = CHUNK_SECONDS
        while queue and (not out or rate * cost(queue[0]) <= budget):
            t = queue.popleft()
            budget -= rate * cost(t)
            out.append(t)
        return out

    chunks: dict[str, tuple[Any, list[Task], int]] = {}

    def submit(c: list[Task] | None = None, attempt: int = 0) -> Any:
        c = chunk() if c is None else c
        fut = client.submit(_execute_chunk, c, isa, threads, for_store,
                            key=f"ntkflow-{c[0].key}-{len(c)}-{attempt}", pure=False)
        chunks[fut.key] = (fut, c, attempt)
        return fut

    running = as_completed(  # type: ignore[no-untyped-call]
        [submit() for _ in range(min(in_flight, len(queue)))])
    try:
        for fut in running:
            _, c, attempt = chunks.pop(fut.key)
            try:
                outs = fut.result()
            except Exception as exc:  # the chunk as a whole: a dead worker, a lost task
                fut.release()
                if attempt < retries:
                    running.add(submit(c, attempt + 1))  # type: ignore[no-untyped-call]
                    continue
                outs = [TaskFailure(type(exc).__name__, f"{exc} (its chunk of {len(c)} "
                                    f"tasks failed {attempt + 1} times on the cluster)",
                                    traceback.format_exc(limit=-8))] * len(c)
            fut.release()
            for t, o in zip(c, outs, strict=True):
                finish(t.key, o)
                if not isinstance(o, TaskFailure):
                    spent[0] += o[2]
                    spent[1] += cost(t)
            bar.update(len(c))
            if queue:
                running.add(submit())  # type: ignore[no-untyped-call]
    except BaseException:
        client.cancel([f for f, _, _ in chunks.values()])
        raise
