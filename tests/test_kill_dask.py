"""Sweeps on a Dask cluster under SIGKILL (#19): the client process killed at random
points (then resumed in-process), and worker processes killed mid-sweep (the chunk is
retried). One LocalCluster for the file, with Dask's own reschedule of a dead worker's
task turned off (``allowed-failures`` 0), so that the sweep's ``retries`` do the work."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import ntkflow as nf

from .test_store import index_of, same_arrays, summary_without_seconds, tiny_tasks
from .test_sweep import assert_same, leftovers, line_tasks, local_cluster
from .test_sweep import pytestmark as dask_warnings

pytestmark = dask_warnings  # the cluster's own warnings, as in test_sweep

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    # Dask's own reschedules off, so that the sweep's retries do the recovering.
    yield from local_cluster(**{"distributed.scheduler.allowed-failures": 0})


# --------------------------------------------------------------------------- the client

KILL_TASKS = 120  # per kill: the store is still incomplete at the last kill
CLIENT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {here!r})
    import ntkflow as nf
    from distributed import Client
    from test_store import tiny_tasks
    nf.sweeps.CHUNK_SECONDS = 0.05  # many small chunks: kills land between them too
    tasks = tiny_tasks({n})
    client = Client({address!r})
    store = nf.Store({store!r}, batch_tasks=int(sys.argv[1]), batch_seconds=0.01)
    print("ready", flush=True)
    nf.sweep(tasks, store=store, client=client, threads=1)
""")


def test_sigkill_of_the_dask_client_loses_no_committed_task(client: Any,
                                                            tmp_path: Path) -> None:
    """A process running a sweep on the cluster (as its client, writing the store) is
    SIGKILLed at a random time, again and again on the same store; each run resumes the
    last. After every kill: nothing committed before is lost, every segment is complete,
    every newly committed task equals the in-process run bit for bit. Then an in-process
    resume completes the store: every task and summary.csv (each task once) as a clean
    run's. NTKFLOW_DASK_KILL_REPS sets the number of kills (5 by default; 20 were
    run before release)."""
    reps = int(os.environ.get("NTKFLOW_DASK_KILL_REPS", "5"))
    n = KILL_TASKS * reps
    store = tmp_path / "s"
    tasks = tiny_tasks(n)
    clean = nf.sweep(tasks, threads=1)
    clean.summary().to_csv(tmp_path / "clean.csv")
    ref = {t.key: o.arrays for t, o in zip(tasks, clean, strict=True)}
    script = CLIENT.format(here=str(HERE), n=n, store=str(store),
                           address=client.scheduler.address)
    rng = random.Random(1919)
    seen: dict[str, str] = {}
    kills = 0
    for rep in range(reps):
        proc = subprocess.Popen([sys.executable, "-c", script, str(rng.choice([1, 4, 16]))],
                                stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
            time.sleep(rng.uniform(0.05, 1.0))
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        kills += proc.returncode == -signal.SIGKILL
        now = index_of(store)
        assert set(seen) <= set(now), f"kill {rep}: committed tasks were lost"
        for p in (store / "segments").rglob("*.zip"):  # under its final name: complete
            with zipfile.ZipFile(p) as z:
                assert z.testzip() is None, p
        st = nf.Store(store) if (store / "manifest.json").exists() else None
        for key in set(now) - set(seen):
            assert st is not None and same_arrays(st.load(key), ref[key]), key
        seen = now
        print(f"client kill {rep}: {len(seen)} committed", file=sys.stderr)
        if len(seen) == n:
            break
    assert kills >= min(reps, 3), "the sweeps ended before they could be killed"
    done = nf.sweep(tasks, store=store, threads=1)
    assert set(done.skipped) >= set(seen) and done.failed == {}
    for t, out in zip(tasks, done, strict=True):
        assert same_arrays(out.arrays, ref[t.key])
    assert summary_without_seconds(store / "summary.csv") == summary_without_seconds(
        tmp_path / "clean.csv")
    assert not leftovers(store)


# --------------------------------------------------------------------------- the workers


def kill_busy_workers(client: Any, store: Path, delays: list[float],
                      killed: list[str]) -> None:
    """After the sweep's first commit, SIGKILL a worker that has work, once per delay
    (waiting that long first)."""
    deadline = time.monotonic() + 60
    while not index_of(store) and time.monotonic() < deadline:
        time.sleep(0.005)
    for delay in delays:
        time.sleep(delay)
        pids: dict[str, int] = client.run(os.getpid)
        busy = [w for w, keys in client.processing().items() if keys and w in pids]
        if busy and len(pids) >= 2:  # one always lives on: the sweep cannot hang
            os.kill(pids[busy[0]], signal.SIGKILL)
            killed.append(busy[0])


def workers_back(client: Any) -> None:
    """Wait for the nannies to restart the killed workers; on a machine too loaded for a
    nanny to restart its worker in time, go on with those there are."""
    try:
        client.wait_for_workers(2, timeout=60)
    except TimeoutError:
        client.wait_for_workers(1, timeout=60)


def sweep_with_kills(client: Any, tasks: list[nf.Task], store: Path, delays: list[float],
                     retries: int) -> tuple[nf.Sweep, list[str]]:
    workers_back(client)
    killed: list[str] = []
    killer = threading.Thread(target=kill_busy_workers,
                              args=(client, store, delays, killed))
    killer.start()
    try:
        done = nf.sweep(tasks, client=client, store=nf.Store(store, batch_tasks=1),
                        retries=retries)
    finally:
        killer.join()
    return done, killed


def test_sigkill_of_workers_is_retried_to_the_same_bits(client: Any,
                                                        tmp_path: Path) -> None:
    """Worker processes SIGKILLed at random times during sweeps (three sweeps by
    default, NTKFLOW_DASK_KILL_REPS if set; one or two kills each; Dask itself does not
    reschedule here): the sweep retries the lost chunks and completes every task, bit for
    bit the in-process run."""
    tasks = line_tasks(8, width=1024, trajectories=150)  # ~0.1-0.3 s each
    ref = nf.sweep(tasks, threads=1)
    rng = random.Random(7)
    total = 0
    for rep in range(int(os.environ.get("NTKFLOW_DASK_KILL_REPS", "3"))):
        store = tmp_path / f"s{rep}"
        delays = [rng.uniform(0.0, 0.3) for _ in range(rng.choice([1, 2]))]
        done, killed = sweep_with_kills(client, tasks, store, delays, retries=3)
        total += len(killed)
        assert done.failed == {}, f"rep {rep}: {done.failed}"
        assert_same(ref, done)
        assert not leftovers(store)
    assert total >= 2, "too few workers were killed mid-sweep"


def test_without_retries_a_dead_worker_fails_its_chunk_and_rerun_completes(
        client: Any, tmp_path: Path) -> None:
    """retries=0: the chunk of a killed worker is recorded as failed (KilledWorker), the
    rest of the sweep finishes; rerun() computes those tasks, with the in-process bits."""
    tasks = line_tasks(8, width=1024, trajectories=150)
    ref = nf.sweep(tasks, threads=1)
    done, killed = sweep_with_kills(client, tasks, tmp_path / "s", [0.05], retries=0)
    assert killed, "no worker was killed mid-sweep"
    assert done.failed and {f.error for f in done.failed.values()} == {"KilledWorker"}
    workers_back(client)
    fixed = done.rerun(client=client)
    assert set(fixed.computed) == set(done.failed) and fixed.failed == {}
    assert_same(ref, fixed)
