"""Optional peers, imported on demand: a missing one is reported "skipped (not
installed)", never an error. JAX runs in float64 (jax_enable_x64), like everything here.

Threads: ``match_threads`` (called by the runner before any peer is imported) gives every
peer ntkflow's thread count: OMP_NUM_THREADS (OpenMP and BLAS libraries loaded later, and
PyTorch through ``torch.set_num_threads``) and, for one thread, XLA_FLAGS
``--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1``. XLA's CPU client
has no flag for "n of the cores": with n = all usable cores (the default of both) nothing
needs setting; with 1 < n < cores the peers keep XLA's default and the summary says so.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

_cache: dict[str, Any] = {}
_threads: dict[str, Any] = {}


def match_threads(threads: int | None) -> dict[str, Any]:
    """Set the peers' thread counts to ntkflow's (``threads``, else ntkflow's default:
    OMP_NUM_THREADS or all cores). Returns what was set, with a one-line summary."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    n = threads
    if n is None:
        try:
            import ntkflow as nf

            n = int(nf.build_info()["max_threads"])
        except Exception:  # noqa: BLE001 - without ntkflow, its documented default
            n = int(os.environ.get("OMP_NUM_THREADS") or cores)
    set_: list[str] = []
    if "OMP_NUM_THREADS" not in os.environ or threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(n)
        set_.append(f"OMP_NUM_THREADS={n}")
    xla = "default (all usable cores)"
    if n == 1:
        flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        old = os.environ.get("XLA_FLAGS", "")
        if flags not in old:
            os.environ["XLA_FLAGS"] = (old + " " + flags).strip()
        xla = os.environ["XLA_FLAGS"]
        set_.append(f"XLA_FLAGS={xla!r}")
    elif n < cores:
        xla = f"default (all {cores} cores: XLA has no flag for {n} of them)"
    _threads.update(ntkflow=n, cores=cores, xla=xla, torch=n)
    summary = (f"ntkflow {n} of {cores} usable cores; peers: XLA {xla}, torch "
               f"set_num_threads({n}), OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}"
               + (f" (set here: {', '.join(set_)})" if set_ else " (inherited)"))
    return {"ntkflow": n, "cores": cores, "xla": xla, "set": set_,
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "XLA_FLAGS": os.environ.get("XLA_FLAGS"), "summary": summary}


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
