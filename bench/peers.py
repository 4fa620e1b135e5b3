"""Optional peers, imported on demand: a missing one is reported "skipped (not
installed)", never an error. JAX runs in float64 (jax_enable_x64), like everything here.

Threads: ``match_threads`` (called by the runner before any peer is imported) gives every
implementation ntkflow's thread count n, and ``observe_threads`` checks it by looking:

- n below the usable cores: the process is pinned to n of them (``sched_setaffinity``).
  XLA's CPU client has no working thread-count flag (``--xla_cpu_multi_thread_eigen=false
  intra_op_parallelism_threads=1`` left 3 threads accumulating CPU time in a jax 0.10.2
  matmul on 2 cores, against 1 when pinned),
  but it sizes its pools from the affinity mask, and no library can run on cores it is not
  allowed; the counts below then keep them from oversubscribing the n cores.
- BLAS and OpenMP libraries already loaded (NumPy's OpenBLAS, ntkflow's libgomp):
  ``threadpoolctl.threadpool_limits(n)``, since they read OMP_NUM_THREADS only when loaded;
  OMP_NUM_THREADS=n for those loaded later; PyTorch ``torch.set_num_threads(n)``.
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

_cache: dict[str, Any] = {}
_threads: dict[str, Any] = {}


def _usable_cores() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux: no affinity control, every core counts
        return list(range(os.cpu_count() or 1))


def match_threads(threads: int | None) -> dict[str, Any]:
    """Set every implementation's thread count to ntkflow's (``threads``, else ntkflow's
    default: OMP_NUM_THREADS or all cores). Returns what was set, with a one-line summary."""
    usable = _usable_cores()
    cores = len(usable)
    n = threads
    if n is None:
        try:
            import ntkflow as nf

            n = int(nf.build_info()["max_threads"])
        except Exception:  # noqa: BLE001 - without ntkflow, its documented default
            n = int(os.environ.get("OMP_NUM_THREADS") or cores)
    set_: list[str] = []
    pinned = None
    if n < cores and hasattr(os, "sched_setaffinity"):
        pinned = usable[:n]
        os.sched_setaffinity(0, pinned)
        set_.append(f"pinned to cores {pinned}")
    os.environ["OMP_NUM_THREADS"] = str(n)
    set_.append(f"OMP_NUM_THREADS={n}")
    try:
        from threadpoolctl import threadpool_limits

        _threads["limiter"] = threadpool_limits(n)
        set_.append(f"threadpoolctl limits({n})")
    except ImportError:
        set_.append("threadpoolctl not installed: BLAS already loaded keeps its count")
    _threads.update(ntkflow=n, cores=cores, torch=n)
    xla = (f"sized from the affinity mask ({n} cores)" if pinned is not None
           else f"default (all {cores} usable cores)")
    summary = (f"{n} for ntkflow and every peer ({cores} usable cores); XLA {xla}, "
               f"torch set_num_threads({n}); set here: {', '.join(set_)}")
    return {"ntkflow": n, "cores": cores, "pinned": pinned, "xla": xla, "set": set_,
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "XLA_FLAGS": os.environ.get("XLA_FLAGS"), "summary": summary}


def _task_ticks() -> dict[str, int]:
    """CPU time (clock ticks, user + system) of every thread of this process."""
    out: dict[str, int] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        out[tid] = int(fields[11]) + int(fields[12])
    return out


def busy_threads(fn: Callable[[], Any], seconds: float = 0.3) -> int:
    """Threads of this process that ran for at least a quarter of the busiest thread's
    CPU time while ``fn`` was called repeatedly for ``seconds``: the parallelism a library
    really used. Measured against the busiest thread, not the wall time, because on a
    loaded machine every thread gets a fraction of the wall time (at load 8 on 2 cores a
    quarter of it, which made a one-thread run read as zero). -1 where /proc is missing."""
    if not os.path.isdir("/proc/self/task"):
        return -1
    fn()
    before, t0 = _task_ticks(), time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
    after = _task_ticks()
    ran = [v - before.get(tid, 0) for tid, v in after.items()]
    if max(ran, default=0) <= 0:  # below the clock's tick on every thread
        return 0
    return sum(1 for v in ran if v >= 0.25 * max(ran))


def observe_threads(allowed: frozenset[str], threads: int) -> dict[str, int]:
    """Busy threads of a float64 matrix product in NumPy and each installed peer, and of
    an ntkflow run, after ``match_threads``: what the thread settings really gave."""
    a = np.random.default_rng(0).standard_normal((768, 768))
    probes: dict[str, Callable[[], Any]] = {"numpy": lambda: a @ a}
    try:
        import ntkflow as nf

        X = np.random.default_rng(1).standard_normal((512, 16))
        W = np.random.default_rng(2).standard_normal((4, 512, 16))
        u = np.ones((4, 512))
        probes["ntkflow"] = lambda: nf.ntk_gram(u, W, X, act="relu", kappa=0.05,
                                             threads=threads)
    except Exception:  # noqa: BLE001 - the probe is informative; its absence is printed
        pass
    jax, _ = load("jax", allowed)
    if jax:
        aj = jax.numpy.asarray(a)
        mm = jax.jit(lambda x: x @ x)
        probes["jax"] = lambda: mm(aj).block_until_ready()
    torch, _ = load("torch", allowed)
    if torch:
        at = torch.from_numpy(a)
        probes["torch"] = lambda: at @ at
    return {name: busy_threads(fn) for name, fn in probes.items()}


def load(name: str, allowed: frozenset[str]) -> tuple[Any, str | None]:
    """(module, None) or (None, reason). ``name`` in jax, diffrax, torch, scipy."""
    if name not in allowed:
        return None, "skipped (excluded by --peers)"
    if name in _cache:
        return _cache[name]
    try:
        if name in ("jax", "diffrax"):
            jax = importlib.import_module("jax")
            jax.config.update("jax_enable_x64", True)
            mod = jax if name == "jax" else importlib.import_module("diffrax")
        else:
            mod = importlib.import_module(name)
            if name == "torch" and "torch" in _threads:
                mod.set_num_threads(int(_threads["torch"]))
        out: tuple[Any, str | None] = (mod, None)
    except ImportError as exc:
        out = (None, f"skipped (not installed: {exc.name or name})")
    except Exception as exc:  # noqa: BLE001 - a broken install is reported, not raised
        out = (None, f"skipped (import failed: {type(exc).__name__}: {exc})")
    _cache[name] = out
    return out


def version(dist: str) -> str | None:
    """Installed version from the package metadata, without importing it."""
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


class Compiled:
    """A jitted JAX function on fixed arguments. Its first call compiles it ahead of time
    (``jit(...).lower(args).compile()``: tracing and XLA compilation), timed on its own as
    ``compile_s``, so the harness reports compile time in its own column and the warm
    median excludes it; every call returns ``post`` of the blocked result."""

    def __init__(self, jax: Any, f: Any, args: tuple[Any, ...],
                 post: Callable[[Any], np.ndarray] = np.asarray) -> None:
        self.jax, self.f, self.args, self.post = jax, f, args, post
        self.exe: Any = None
        self.compile_s = float("nan")

    def __call__(self) -> np.ndarray:
        if self.exe is None:
            t0 = time.perf_counter()
            self.exe = self.f.lower(*self.args).compile()
            self.compile_s = time.perf_counter() - t0
        return self.post(self.jax.block_until_ready(self.exe(*self.args)))
