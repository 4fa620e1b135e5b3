"""S1 (#19): sweeps at volume -- what the sweep and its store cost per task.

    python -m bench s1 [--quick | --tiny] [--json PATH]       (saves bench/results/s1-*.json)
    python -m bench s1 --simulate [--quick]                   (bench/s1_simulated.py)
    python -m bench.s1_sweeps [--tiny-tasks N] [--long-tasks N] [--dask-tiny N]
                              [--store-tasks N] [--json PATH]

1. The store alone at 100,000 tasks (20,000 quick): one tiny task's arrays, relabelled
   with each task's key and spec, committed through the sweep's writer -- the store's
   cost per task without the integration beside it (whose noise under load hides a
   difference of a fraction of a millisecond; it includes appending each commit's rows
   to summary.csv), then summary.csv of every task written in full (what a repair or a
   superseding sweep writes) and the resume of the finished sweep through nf.sweep.
2. Tiny tasks (width 8, 4 trajectories, dopri5 rtol 1e-10, 50 log-spaced records, horizon
   from the closed form): 100,000 (10,000 quick) in-process, without a store and with
   one: the wall time per task (the sweep's overhead: the integration itself is ~0.2 ms),
   the store's cost per task (the difference), then the resume of the finished sweep (the
   same call again: nothing to compute) and a resume after one commit is removed.
3. Dask's cost per tiny task, amortised through the sweep's chunks: 20,000 of the tiny
   tasks (2,000 quick; enough for the per-task number to settle: the first chunks hold
   one task each until the cost model is calibrated) in-process, then on a LocalCluster
   of 1 and 2 single-threaded worker processes; the overhead is the Dask wall time minus
   the in-process time divided by the workers, per task.
4. Tasks of about 1 s on an idle core (width 2048, 1024 trajectories; 256, 6 quick)
   in-process at one thread and on the same clusters: the speed-up of 2 workers over 1.
Every store and Dask run is checked bit for bit against the in-process run without a
store. One run of each; the load average is reported at start and end -- on a shared
machine the per-task costs are the numbers to compare, not wall times. The closing table
holds the issue's targets. Full size takes about 20 minutes on an idle 2-core machine.
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
    "full": (100_000, 256, 20_000, 100_000),
    "quick": (10_000, 6, 2_000, 20_000),
    "tiny": (500, 4, 50, 2_000),
}
TARGETS = {  # the done-when (#19): (what, key path in the output, bound, "<=" or ">=")
    "store_ms": ("store cost per tiny task, ms (sweep with - without a store)",
                 ("tiny", "store_ms_per_task"), 1.0, "<="),
    "store_alone_ms": ("store alone: commit cost per task, ms wall",
                       ("store_only", "store_ms_per_task"), 1.0, "<="),
    "resume_s": ("resume of the finished tiny sweep, s", ("tiny", "resume_s"), 5.0, "<="),
    "dask1_ms": ("Dask overhead per tiny task, 1 worker, ms",
                 ("dask_tiny", "dask1", "overhead_ms_per_task"), 1.0, "<="),
    "dask2_ms": ("Dask overhead per tiny task, 2 workers, ms",
                 ("dask_tiny", "dask2", "overhead_ms_per_task"), 1.0, "<="),
    "speedup": ("speed-up of 2 workers over 1 on the ~1 s tasks",
                ("long", "speedup_2_over_1_workers"), 1.8, ">="),
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
    # summary.csv of every task in full: O(tasks), now only on a repair or a superseding sweep
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


def _cluster(workers: int) -> Any:
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                           host="127.0.0.1", dashboard_address=None,
                           silence_logs=logging.ERROR)
    return cluster, Client(cluster)


def run_dask(n_long: int, n_dask_tiny: int) -> dict[str, Any]:
    """The ~1 s tasks in-process and on 1 and 2 workers (the speed-up), and Dask's cost
    per tiny task (the overhead the chunks amortise)."""
    out: dict[str, Any] = {}
    long = tasks(n_long, LONG_WIDTH, LONG_TRAJECTORIES)
    tiny = tasks(n_dask_tiny, 8, 4)
    ref_long = ref_tiny = None
    if n_long:
        nf.sweep(long[:1], threads=1)
        t1, ref_long = _clock(lambda: nf.sweep(long, threads=1))
        _say(f"{n_long} tasks of width {LONG_WIDTH}, {LONG_TRAJECTORIES} trajectories: "
             f"in-process threads=1 {t1:.1f} s ({t1 / n_long:.2f} s/task)")
        out["long"] = {"tasks": n_long, "width": LONG_WIDTH,
                       "trajectories": LONG_TRAJECTORIES, "threads1_s": t1}
    if n_dask_tiny:
        nf.sweep(tiny[:50], threads=1)
        t_tiny, ref_tiny = _clock(lambda: nf.sweep(tiny, threads=1))
        _say(f"{n_dask_tiny} tiny tasks in-process: {1e3 * t_tiny / n_dask_tiny:.3f} ms/task")
        out["dask_tiny"] = {"tasks": n_dask_tiny, "in_process_s": t_tiny}
    try:
        import distributed  # noqa: F401
    except ImportError:
        _say("  dask.distributed not installed: no LocalCluster runs")
        return out
    for workers in (1, 2):
        t0 = time.perf_counter()
        cluster, client = _cluster(workers)
        start = time.perf_counter() - t0
        try:
            nf.sweep(tasks(20, 8, 4), client=client)  # warm-up: workers import ntkflow
            msg = f"  LocalCluster {workers} x 1 thread (start-up {start:.1f} s):"
            if n_long:
                td, rd = _clock(lambda c=client: nf.sweep(long, client=c))  # type: ignore[misc]
                ok = same(ref_long, rd)  # type: ignore[arg-type]
                out["long"][f"dask{workers}"] = {"startup_s": start, "long_s": td,
                                                 "identical": ok}
                msg += (f" ~1 s tasks {td:.1f} s ({out['long']['threads1_s'] / td:.2f}x "
                        f"in-process), identical: {ok};")
            if n_dask_tiny:
                c0 = time.process_time()
                tt, rt = _clock(lambda c=client: nf.sweep(tiny, client=c))  # type: ignore[misc]
                cpu = time.process_time() - c0
                ok = same(ref_tiny, rt)  # type: ignore[arg-type]
                worked = sum(o.seconds for o in rt)
                over = (tt - out["dask_tiny"]["in_process_s"] / workers) / n_dask_tiny
                out["dask_tiny"][f"dask{workers}"] = {
                    "wall_s": tt, "ms_per_task": 1e3 * tt / n_dask_tiny,
                    "overhead_ms_per_task": 1e3 * over,
                    "worker_task_seconds": worked,
                    "client_cpu_ms_per_task": 1e3 * cpu / n_dask_tiny, "identical": ok}
                msg += (f" tiny tasks {1e3 * tt / n_dask_tiny:.3f} ms/task, overhead "
                        f"{1e3 * over:.3f} ms/task (client process CPU incl. the "
                        f"scheduler {1e3 * cpu / n_dask_tiny:.3f}), identical: {ok}")
            _say(msg)
        finally:
            client.close()
            cluster.close()
    if n_long:
        out["long"]["speedup_2_over_1_workers"] = (out["long"]["dask1"]["long_s"] /
                                                   out["long"]["dask2"]["long_s"])
        _say(f"  2 workers over 1 on the ~1 s tasks: "
             f"{out['long']['speedup_2_over_1_workers']:.2f}x")
    return out


def _lookup(out: dict[str, Any], path: tuple[str, ...]) -> Any:
    for p in path:
        if not isinstance(out, dict) or p not in out:
            return None
        out = out[p]
    return out


def targets(out: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets against this run's numbers (value None: not measured)."""
    rows = []
    for name, (what, path, bound, sense) in TARGETS.items():
        v = _lookup(out, path)
        met = None if v is None else (v <= bound if sense == "<=" else v >= bound)
        rows.append({"name": name, "what": what, "value": v, "target": f"{sense} {bound}",
                     "met": met})
    return rows


def print_targets(rows: list[dict[str, Any]], load: Any) -> None:
    _say(f"\nS1 against the issue's targets (load average at the end {load}; under load "
         "the wall-time rows are upper bounds):")
    _say(f"  {'':62} {'value':>9} {'target':>8}  met")
    for r in rows:
        v = "-" if r["value"] is None else f"{r['value']:.3f}"
        met = {None: "not measured", True: "yes", False: "NO"}[r["met"]]
        _say(f"  {r['what']:62} {v:>9} {r['target']:>8}  {met}")


def measure(n_tiny: int, n_long: int, n_dask_tiny: int, n_store: int) -> dict[str, Any]:
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the worker processes
    out: dict[str, Any] = {"workload": "S1", "loadavg_start": os.getloadavg(),
                           "cores": os.cpu_count(), "ntkflow": nf.__version__}
    _say(f"S1: load average {os.getloadavg()} on {os.cpu_count()} cores")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ntkflow-s1-") as tmp:
        if n_store and hasattr(nf.store, "_Writer"):  # the version-2 store
            out["store_only"] = run_store_only(n_store, Path(tmp))
        if n_tiny:
            out["tiny"] = run_tiny(n_tiny, Path(tmp))
        if n_long or n_dask_tiny:
            out.update(run_dask(n_long, n_dask_tiny))
    out["loadavg_end"] = os.getloadavg()
    out["elapsed_s"] = time.perf_counter() - t0
    out["targets"] = targets(out)
    print_targets(out["targets"], out["loadavg_end"])
    _say(f"S1 done in {out['elapsed_s']:.0f} s")
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
    from . import machine

    info = machine.info()
    out = measure(args.tiny_tasks, args.long_tasks, args.dask_tiny, args.store_tasks)
    out["machine"] = info
    out["argv"] = sys.argv[1:] if argv is None else argv
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
