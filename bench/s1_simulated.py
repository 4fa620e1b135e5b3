"""S1, simulated (#19): can the sweep's client and store keep up with 100 nodes?

    python -m bench s1 --simulate [--quick]          (full: ~3 min; quick: ~1 min)
    python -m bench.s1_simulated [--quick] [--json PATH]

Assumption: 100 nodes x 32 cores running tasks of 1-10 s finish 320-3200 tasks a second.
This machine has 2 cores, so the nodes are simulated: a Dask scheduler in its own process
and 4 worker processes x 16 threads (64 slots) whose tasks *sleep* (no CPU) for a
duration drawn per task, then return one real tiny task's packed store file (its
.npz bytes, ~13 KB, and its summary row, under the task's key). Everything on the client
is the real path: ``nf.sweep(tasks, client=..., store=...)`` -- chunking from ``cost``
calibrated by the returned seconds, at most two chunks per slot in flight, completion
order, the batched store commits. The one substitution is on the workers: the sweep's
``_execute_chunk`` (looked up by name when a worker unpickles a chunk) is replaced there
by ``_sleeping_chunk``; workers skip packing the file, work that 100 nodes spread over
3200 cores but that here would take the client's cores. No hook in the package is
needed.

Runs (each measured on the store the sweep wrote and on the processes' CPU clocks):
1. rate: mean task durations giving 320, 1000 and 3200 tasks/s on the 64 slots (200,
   64 and 20 ms), chunks of the sweep's CHUNK_SECONDS: is the offered rate committed?
2. ceiling: 1 ms tasks (64,000 tasks/s offered): the most the client + store commit.
3. scheduler: CHUNK_SECONDS lowered so that every chunk is one 20 ms task (3200 chunks/s
   offered): the most chunks/s the scheduler and client handle.
4. direct: run 1's 3200/s through a Client(direct_to_workers=True), which fetches the
   results from the workers itself instead of through the scheduler (the default for a
   client outside the cluster).
Reported per run: tasks/s committed (from the segments' commit times, middle 80% of the
tasks), the client's CPU per task (its whole process: sweep, Dask client, store; the
begin and summary.csv, O(tasks) once per sweep, are timed apart), the scheduler's CPU
per chunk, the client's peak RSS growth, chunks and their mean size.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import ntkflow as nf
from ntkflow import sweeps

from .s1_sweeps import tasks

ROOT = Path(__file__).resolve().parent.parent
WORKERS, THREADS = 4, 16  # 64 sleeping slots
NODES, CORES = 100, 32
# (name, mean task seconds, CHUNK_SECONDS or None for the sweep's own, tasks full/quick);
# "direct": a client that gathers results from the workers, not through the scheduler
RUNS = [
    ("rate 320/s", 64 / 320, None, (8_000, 2_000)),
    ("rate 1000/s", 64 / 1000, None, (25_000, 6_000)),
    ("rate 3200/s", 64 / 3200, None, (60_000, 15_000)),
    ("ceiling (1 ms tasks)", 0.001, None, (60_000, 15_000)),
    ("scheduler (1 task a chunk)", 64 / 3200, 1e-6, (10_000, 3_000)),
    ("direct: rate 3200/s", 64 / 3200, None, (60_000, 15_000)),
]

_TEMPLATE: dict[str, Any] = {}  # on a worker: the packed file, its row, the mean duration


def _install(data: bytes, row: dict[str, Any], mean: float) -> str:
    """On every worker: sleeping chunks instead of computed ones."""
    _TEMPLATE.update(data=data, row=row, mean=mean)
    sweeps._execute_chunk = _sleeping_chunk  # type: ignore[assignment]
    return "ok"


def _duration(seed: int, mean: float) -> float:
    """0.5-1.5 x mean, spread evenly over the seeds (golden-ratio sequence)."""
    return mean * (0.5 + (seed * 0.6180339887498949) % 1.0)


def _sleeping_chunk(chunk: list[Any], isa: str, threads: Any, for_store: bool) -> list[Any]:
    assert for_store, "the simulated run always has a store"
    out = []
    for t in chunk:
        t0 = time.perf_counter()
        time.sleep(_duration(t.seed, _TEMPLATE["mean"]))
        out.append((_TEMPLATE["data"], {**_TEMPLATE["row"], "key": t.key},
                    time.perf_counter() - t0))
    return out


def _cluster(tmp: Path) -> tuple[list[subprocess.Popen[bytes]], str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    sfile = tmp / "scheduler.json"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    sched = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler",
                              "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                              "--scheduler-file", str(sfile)], env=env, **quiet)
    for _ in range(600):
        if sfile.exists() and sfile.stat().st_size:
            break
        time.sleep(0.05)
    workers = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker",
                                "--scheduler-file", str(sfile), "--nworkers", str(WORKERS),
                                "--nthreads", str(THREADS), "--no-dashboard",
                                "--host", "127.0.0.1"], env=env, **quiet)
    return [sched, workers], str(sfile)


def _cpu(pid: int) -> float:
    """CPU seconds of a process (/proc/<pid>/stat: utime + stime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _commit_rate(store: Path, n: int) -> tuple[float, int]:
    """Tasks/s committed over the middle 80% of the tasks: the segments' commit times
    (mtime) against the tasks they hold; and the number of commits."""
    entries = [json.loads(line) for line in
               (store / "index.jsonl").read_text().splitlines()]
    times = np.array([(store / "segments" / e["segment"]).stat().st_mtime_ns / 1e9
                      for e in entries])
    done = np.cumsum([len(e["keys"]) for e in entries])
    lo, hi = np.searchsorted(done, 0.1 * n), np.searchsorted(done, 0.9 * n)
    if hi <= lo or times[hi] <= times[lo]:
        return float("nan"), len(entries)
    return float((done[hi] - done[lo]) / (times[hi] - times[lo])), len(entries)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _one(client: Any, sched_pid: int, name: str, mean: float, chunk_s: float | None,
         n: int, template: tuple[bytes, dict[str, Any]], tmp: Path) -> dict[str, Any]:
    client.run(_install, template[0], template[1], mean)
    many = tasks(n, 8, 4)
    offered = WORKERS * THREADS / mean
    slug = "".join(c if c.isalnum() else "-" for c in name)
    store = nf.Store(tmp / slug)
    saved = sweeps.CHUNK_SECONDS
    if chunk_s is not None:
        sweeps.CHUNK_SECONDS = chunk_s
    chunks: list[int] = []
    submit = client.submit

    def counting_submit(fn: Any, c: Any, *args: Any, **kw: Any) -> Any:
        chunks.append(len(c))
        return submit(fn, c, *args, **kw)

    client.submit = counting_submit
    rss0, c0, s0, t0 = _rss_mb(), time.process_time(), _cpu(sched_pid), time.perf_counter()
    try:
        got = nf.sweep(many, client=client, store=store)
    finally:
        client.submit = submit
        sweeps.CHUNK_SECONDS = saved
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    sched_cpu = _cpu(sched_pid) - s0
    assert len(got.computed) == n
    # what the sweep did besides the commits, timed apart (O(tasks), once per sweep)
    t_begin = _clock_begin(tmp / f"{slug}-begin", many)
    t_sum, _ = _timed(lambda: nf.Store(store.path).write_summary())
    rate, commits = _commit_rate(store.path, n)
    bytes_ = sum(p.stat().st_size for p in (store.path / "segments").rglob("*.zip"))
    out = {"name": name, "tasks": n, "mean_task_s": mean, "offered_tasks_per_s": offered,
           "chunk_seconds": sweeps.CHUNK_SECONDS if chunk_s is None else chunk_s,
           "wall_s": wall, "committed_tasks_per_s": rate, "commits": commits,
           "chunks": len(chunks), "mean_chunk_tasks": n / max(1, len(chunks)),
           "chunks_per_s": len(chunks) / wall,
           "client_cpu_s": cpu, "client_cpu_ms_per_task": 1e3 * cpu / n,
           "begin_cpu_s": t_begin, "summary_csv_cpu_s": t_sum,
           "client_cpu_ms_per_task_without_begin_summary":
               1e3 * max(0.0, cpu - t_begin - t_sum) / n,
           "scheduler_cpu_s": sched_cpu,
           "scheduler_cpu_ms_per_chunk": 1e3 * sched_cpu / max(1, len(chunks)),
           "client_peak_rss_growth_mb": _rss_mb() - rss0,
           "store_bytes_per_task": bytes_ / n, "loadavg": os.getloadavg()}
    print(f"  {name:28} {n:>7} tasks, offered {offered:>7.0f}/s: committed {rate:>7.0f}/s; "
          f"{len(chunks):>6} chunks ({n / max(1, len(chunks)):.0f} tasks, "
          f"{len(chunks) / wall:.0f}/s); client CPU {1e3 * cpu / n:.3f} ms/task "
          f"({out['client_cpu_ms_per_task_without_begin_summary']:.3f} without begin + "
          f"summary); scheduler CPU {out['scheduler_cpu_ms_per_chunk']:.2f} ms/chunk; "
          f"RSS +{out['client_peak_rss_growth_mb']:.0f} MB; wall {wall:.1f} s", flush=True)
    return out


def _timed(fn: Any) -> tuple[float, Any]:
    """CPU seconds of this process (under load the wall time is not the cost)."""
    c0 = time.process_time()
    out = fn()
    return time.process_time() - c0, out


def _clock_begin(path: Path, many: list[Any]) -> float:
    """The begin of a new store for these tasks (manifest, tasks.jsonl: every task's
    description), as the sweep made it: CPU seconds."""
    c0 = time.process_time()
    lock, writer = nf.Store(path)._begin(many)
    writer.close()
    lock.close()
    return time.process_time() - c0


def measure(quick: bool) -> dict[str, Any]:
    from distributed import Client

    template_task = tasks(1, 8, 4)[0]
    arrays = sweeps.execute(template_task, None, 1)
    from ntkflow._summary import summary_row
    from ntkflow.store import _npz_bytes

    template = (_npz_bytes(arrays), summary_row(arrays))
    out: dict[str, Any] = {
        "assumption": f"{NODES} nodes x {CORES} cores, tasks of 1-10 s: "
                      f"{NODES * CORES // 10}-{NODES * CORES} tasks/s",
        "slots": WORKERS * THREADS, "task_file_bytes": len(template[0]),
        "loadavg_start": os.getloadavg(), "cores": os.cpu_count(), "runs": []}
    print(f"S1 simulated: {out['assumption']}; {WORKERS} worker processes x {THREADS} "
          f"sleeping threads, scheduler in its own process; task file "
          f"{len(template[0])} bytes; load average {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="ntkflow-s1sim-") as tmp_name:
        tmp = Path(tmp_name)
        procs, sfile = _cluster(tmp)
        try:
            logging.getLogger("distributed").setLevel(logging.ERROR)
            for direct in (False, True):
                client = Client(scheduler_file=sfile, timeout=60, direct_to_workers=direct)
                client.wait_for_workers(WORKERS, timeout=120)
                for name, mean, chunk_s, sizes in RUNS:
                    if name.startswith("direct") == direct:
                        out["runs"].append(_one(client, procs[0].pid, name, mean, chunk_s,
                                                sizes[1] if quick else sizes[0], template,
                                                tmp))
                client.close()
        finally:
            for p in reversed(procs):
                p.terminate()
            for p in reversed(procs):
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
    out["loadavg_end"] = os.getloadavg()
    _conclude(out)
    return out


def _conclude(out: dict[str, Any]) -> None:
    runs = {r["name"]: r for r in out["runs"]}
    ceiling = runs["ceiling (1 ms tasks)"]
    cpu = ceiling["client_cpu_ms_per_task_without_begin_summary"]
    out["client_ceiling_tasks_per_s"] = ceiling["committed_tasks_per_s"]
    out["client_cpu_bound_tasks_per_s"] = 1e3 / cpu if cpu > 0 else float("inf")
    sched = runs["scheduler (1 task a chunk)"]
    out["scheduler_chunks_per_s"] = sched["chunks_per_s"]
    print(f"client + store ceiling: {ceiling['committed_tasks_per_s']:.0f} tasks/s committed "
          f"(1 core / client CPU per task: {out['client_cpu_bound_tasks_per_s']:.0f}/s); "
          f"scheduler with one task a chunk: {sched['chunks_per_s']:.0f} chunks/s, "
          f"{sched['scheduler_cpu_ms_per_chunk']:.2f} ms scheduler CPU a chunk; "
          f"load average {out['loadavg_end']}", flush=True)


def run(cfg: Any) -> dict[str, Any]:
    """``python -m bench s1 --simulate``."""
    return measure(cfg.mode != "full")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.s1_simulated", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    out = measure(args.quick)
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
