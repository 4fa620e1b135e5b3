"""S1 (#19): sweeps at volume -- what the sweep and its store cost per task.

    python -m bench s1 [--quick | --tiny] [--json PATH]
    python -m bench.s1_sweeps [--tiny-tasks N] [--long-tasks N] [--dask-tiny N] [--json PATH]

1. Tiny tasks (width 8, 4 trajectories, dopri5 rtol 1e-10, 50 log-spaced records, horizon
   from the closed form): 100,000 (10,000 quick) in-process, without a store and with
   one: the wall time per task (the sweep's overhead: the integration itself is ~0.1 ms),
   the store's cost per task (the difference), then the resume of the finished sweep (the
   same call again: nothing to compute) and a resume after one task's commit is removed.
2. The store alone at 100,000 tasks (version 2 only): one tiny task's arrays, relabelled
   with each task's key and spec, committed through the sweep's writer -- the store's
   cost per task without the integration beside it (whose noise under load hides a
   difference of a fraction of a millisecond; since #19's store hygiene it includes
   appending each commit's rows to summary.csv), then summary.csv of every task written
   in full (before: what a sweep that computed anything wrote as it ended; now only a
   repair or a superseding sweep does) and the resume of the finished sweep through
   nf.sweep.
3. Tasks of about 1 s (width 2048, 1024 trajectories; 256, 32 quick) in-process at one
   thread, and on a LocalCluster of 1 and 2 single-threaded workers when dask.distributed
   is installed: the speed-up of 2 workers over 1, and Dask's cost per tiny task on a
   subset of the tiny tasks.
Every store and Dask run is checked bit for bit against the in-process run without a
store. One run of each (these are long); the load average is reported at start and end
-- on a shared machine the per-task costs are the numbers to compare, not wall times.
Works with either store layout (it only calls nf.sweep), so the same script measures
before and after a change of the store.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import ntkflow as nf

SIZES = {  # tiny tasks, ~1 s tasks, tiny tasks on Dask, tasks of the commit-path store
    "full": (100_000, 256, 2_000, 100_000),
    "quick": (10_000, 32, 500, 100_000),
    "tiny": (500, 4, 50, 2_000),
}
LONG_WIDTH, LONG_TRAJECTORIES = 2048, 1024


def tasks(n: int, width: int, trajectories: int) -> list[nf.Task]:
    return [nf.Task(net=nf.TwoLayer(width=width, kappa=width**-0.5),
                    data=nf.LatentLine(beta=1.0 + 0.01 * (i % 100)),
                    train=nf.GradientFlow(rtol=1e-10), trajectories=trajectories, seed=i,
                    record=nf.Record(times=50, spacing="log", loss_below=1e-6),
                    horizon="auto") for i in range(n)]


def same(a: nf.Sweep, b: nf.Sweep) -> bool:
    return all(set(x.arrays) == set(y.arrays) and
               all(x.arrays[k].tobytes() == y.arrays[k].tobytes()
                   for k in x.arrays if k != "seconds")
               for x, y in zip(a, b, strict=True))


def _clock(fn: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _cpu(fn: Any) -> tuple[float, float, Any]:
    """Wall and CPU time of this process: on a loaded machine the CPU time is the cost."""
    c0 = time.process_time()
    t, out = _clock(fn)
    return t, time.process_time() - c0, out


def _say(msg: str) -> None:
    print(msg, flush=True)


def _store_layout(path: Path) -> dict[str, Any]:
    files = [p for p in path.rglob("*") if p.is_file()]
    return {"files": len(files), "bytes": sum(p.stat().st_size for p in files),
            "version": json.loads((path / "manifest.json").read_text()).get("version")}


def _drop_last_commit(path: Path) -> int:
    """Forget the newest commit (version 2: its index line and segment; version 1: one
    task file), as if the sweep had been killed before it: the resume must find and
    recompute exactly those tasks."""
    index = path / "index.jsonl"
    if index.exists():
        lines = index.read_text().splitlines(keepends=True)
        last = json.loads(lines[-1])
        index.write_text("".join(lines[:-1]))
        (path / "segments" / last["segment"]).unlink()
        return len(last["keys"])
    next(iter(sorted((path / "tasks").glob("*.npz")))).unlink()
    return 1


def run_tiny(n: int, tmp: Path) -> dict[str, Any]:
    t_make, tiny = _clock(lambda: tasks(n, 8, 4))
    _say(f"{n} tiny tasks: made in {t_make:.2f} s ({1e6 * t_make / n:.0f} us/task)")
    nf.sweep(tiny[:50], threads=1)  # warm-up: imports, first-call costs
    t_mem, c_mem, ref = _cpu(lambda: nf.sweep(tiny, threads=1))
    _say(f"  in-process, no store: {t_mem:.2f} s = {1e3 * t_mem / n:.3f} ms/task "
         f"(CPU {1e3 * c_mem / n:.3f})")
    store = tmp / "tiny"
    t_store, c_store, got = _cpu(lambda: nf.sweep(tiny, threads=1, store=store))
    cost = (t_store - t_mem) / n
    _say(f"  in-process, store:    {t_store:.2f} s = {1e3 * t_store / n:.3f} ms/task "
         f"(CPU {1e3 * c_store / n:.3f}); store cost {1e3 * cost:.3f} ms/task wall, "
         f"{1e3 * (c_store - c_mem) / n:.3f} CPU")
    t_read, ok = _clock(lambda: same(ref, got))
    _say(f"  read back all {n} tasks and compared bits: {t_read:.2f} s, identical: {ok}")
    t_resume, again = _clock(lambda: nf.sweep(tiny, threads=1, store=store))
    assert again.computed == () and len(again.skipped) == n, "resume recomputed tasks"
    _say(f"  resume of the finished sweep: {t_resume:.3f} s "
         f"({1e6 * t_resume / n:.1f} us/task)")
    lost = _drop_last_commit(store)
    t_partial, part = _clock(lambda: nf.sweep(tiny, threads=1, store=store))
    assert len(part.computed) == lost, (len(part.computed), lost)
    _say(f"  resume after the last commit ({lost} tasks) was removed: {t_partial:.3f} s")
    layout = _store_layout(store)
    _say(f"  store: {layout['files']} files, {layout['bytes'] / 1e6:.1f} MB, "
         f"layout version {layout['version']}")
    shutil.rmtree(store)
    return {"tasks": n, "make_s": t_make, "no_store_s": t_mem, "store_s": t_store,
            "overhead_ms_per_task": 1e3 * t_mem / n, "store_ms_per_task": 1e3 * cost,
            "no_store_cpu_s": c_mem, "store_cpu_s": c_store,
            "store_cpu_ms_per_task": 1e3 * (c_store - c_mem) / n,
            "read_back_s": t_read, "identical": ok, "resume_s": t_resume,
            "resume_after_lost_commit_s": t_partial, "lost_commit_tasks": lost,
            "store_layout": layout}


def run_store_only(n: int, tmp: Path) -> dict[str, Any]:
    from ntkflow.sweeps import execute

    t_make, many = _clock(lambda: tasks(n, 8, 4))
    template = execute(many[0], None, 1)
    store = nf.Store(tmp / "store-only")
    c0 = time.process_time()
    t0 = time.perf_counter()
    lock, writer = store._begin(many)
    t_begin = time.perf_counter() - t0
    try:
        for t in many:
            writer.add(t.key, {**template, "key": np.str_(t.key),
                               "spec": np.str_(json.dumps(t.describe(), allow_nan=False))})
        writer.close()
    finally:
        lock.close()
    t_write = time.perf_counter() - t0
    cpu = time.process_time() - c0  # what the load average does not inflate
    _say(f"store alone, {n} tasks: begin {t_begin:.2f} s, all commits {t_write:.2f} s = "
         f"{1e3 * t_write / n:.3f} ms/task wall, {1e3 * cpu / n:.3f} ms/task CPU "
         f"({writer.commits} commits)")
    # as a sweep ends: summary.csv of every task (O(tasks), once per sweep that computed)
    t_sum, _ = _clock(lambda: nf.Store(store.path).write_summary())
    _say(f"  summary.csv of {n} tasks: {t_sum:.2f} s ({1e3 * t_sum / n:.3f} ms/task)")
    t_resume, again = _clock(lambda: nf.sweep(many, store=store.path))
    assert again.computed == () and len(again.skipped) == n
    _say(f"  resume of the finished {n}-task sweep: {t_resume:.3f} s")
    layout = _store_layout(store.path)
    shutil.rmtree(store.path)
    return {"tasks": n, "make_s": t_make, "begin_s": t_begin, "write_s": t_write,
            "store_ms_per_task": 1e3 * t_write / n, "store_cpu_ms_per_task": 1e3 * cpu / n,
            "commits": writer.commits,
            "resume_s": t_resume, "summary_csv_s": t_sum, "store_layout": layout}


def run_long(n: int, n_dask_tiny: int, tmp: Path) -> dict[str, Any]:
    long = tasks(n, LONG_WIDTH, LONG_TRAJECTORIES)
    nf.sweep(long[:1], threads=1)
    t1, ref = _clock(lambda: nf.sweep(long, threads=1))
    _say(f"{n} tasks of width {LONG_WIDTH}, {LONG_TRAJECTORIES} trajectories: in-process "
         f"threads=1 {t1:.1f} s ({t1 / n:.2f} s/task)")
    t_st, got = _clock(lambda: nf.sweep(long, threads=1, store=tmp / "long"))
    _say(f"  with a store: {t_st:.1f} s, identical: {same(ref, got)}")
    out: dict[str, Any] = {"tasks": n, "width": LONG_WIDTH,
                           "trajectories": LONG_TRAJECTORIES, "threads1_s": t1,
                           "store_s": t_st, "identical_store": same(ref, got)}
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        _say("  dask.distributed not installed: no LocalCluster runs")
        return out
    tiny = tasks(n_dask_tiny, 8, 4)
    t_tiny, tiny_ref = _clock(lambda: nf.sweep(tiny, threads=1))
    for workers in (1, 2):
        t0 = time.perf_counter()
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               host="127.0.0.1", dashboard_address=None,
                               silence_logs=logging.ERROR)
        client = Client(cluster)
        start = time.perf_counter() - t0
        try:
            nf.sweep(tiny[:20], client=client)  # warm-up: workers import ntkflow
            td, rd = _clock(lambda c=client: nf.sweep(long, client=c))  # type: ignore[misc]
            tt, rt = _clock(lambda c=client: nf.sweep(tiny, client=c))  # type: ignore[misc]
        finally:
            client.close()
            cluster.close()
        ok = same(ref, rd) and same(tiny_ref, rt)
        _say(f"  LocalCluster {workers} x 1 thread (start-up {start:.1f} s): {td:.1f} s "
             f"({t1 / td:.2f}x in-process); {n_dask_tiny} tiny tasks "
             f"{1e3 * tt / n_dask_tiny:.2f} ms/task (in-process {1e3 * t_tiny / n_dask_tiny:.2f}"
             f"); identical: {ok}")
        out[f"dask{workers}"] = {"startup_s": start, "long_s": td, "tiny_tasks": n_dask_tiny,
                                 "tiny_s": tt, "tiny_in_process_s": t_tiny,
                                 "tiny_ms_per_task": 1e3 * tt / n_dask_tiny,
                                 "identical": ok}
    if "dask1" in out and "dask2" in out:
        out["speedup_2_over_1_workers"] = out["dask1"]["long_s"] / out["dask2"]["long_s"]
        _say(f"  2 workers over 1: {out['speedup_2_over_1_workers']:.2f}x")
    return out


def measure(n_tiny: int, n_long: int, n_dask_tiny: int, n_store: int) -> dict[str, Any]:
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the worker processes
    out: dict[str, Any] = {"workload": "S1", "loadavg_start": os.getloadavg(),
                           "cores": os.cpu_count(), "ntkflow": nf.__version__}
    _say(f"S1: load average {os.getloadavg()} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="ntkflow-s1-") as tmp:
        if n_store and hasattr(nf.store, "_Writer"):  # the version-2 store
            out["store_only"] = run_store_only(n_store, Path(tmp))
        if n_tiny:
            out["tiny"] = run_tiny(n_tiny, Path(tmp))
        if n_long:
            out["long"] = run_long(n_long, n_dask_tiny, Path(tmp))
    out["loadavg_end"] = os.getloadavg()
    _say(f"S1 done: load average {out['loadavg_end']}")
    return out


def run(cfg: Any) -> dict[str, Any]:
    """``python -m bench s1``: the sizes of ``cfg.mode``."""
    return measure(*SIZES[cfg.mode])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.s1_sweeps", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny-tasks", type=int, default=SIZES["full"][0])
    ap.add_argument("--long-tasks", type=int, default=SIZES["full"][1])
    ap.add_argument("--dask-tiny", type=int, default=SIZES["full"][2])
    ap.add_argument("--store-tasks", type=int, default=SIZES["full"][3])
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    for name in ("tiny_tasks", "long_tasks", "dask_tiny", "store_tasks"):
        if getattr(args, name) < 0:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 0")
    out = measure(args.tiny_tasks, args.long_tasks, args.dask_tiny, args.store_tasks)
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
