"""Ctrl-C stops a long run within a second; concurrent calls from Python threads are safe."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import ntkflow as nf

CHILD = textwrap.dedent(
    """
    import sys, time
    import ntkflow as nf
    net = nf.TwoLayer(width={width}, kappa=0.01)
    train = nf.GradientFlow(t_max=1e4, solver="rk4", dt=1e-3)   # far longer than the test
    print("ready", flush=True)
    try:
        nf.simulate(net, nf.LatentLine(), train, trajectories={n}, record=nf.Record(times=3))
        print("finished", flush=True)
    except KeyboardInterrupt:
        print("interrupted", time.monotonic(), flush=True)
    res = nf.simulate(net, nf.LatentLine(), nf.GradientFlow(t_max=1.0), trajectories=2)
    print("usable", int(res.status.sum() == 0), flush=True)
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize(("width", "n"), [(4096, 64), (200_000, 2)])
def test_sigint_stops_a_long_run_within_a_second(width: int, n: int) -> None:
    # (200000, 2): two long trajectories on two threads, so the calling thread also has to
    # listen while it waits for the other one.
    proc = subprocess.Popen([sys.executable, "-c", CHILD.format(width=width, n=n)],
                            stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="2"))
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(1.5)  # well inside the run
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    lines = out.split("\n")
    assert lines[0].startswith("interrupted"), out
    latency = float(lines[0].split()[1]) - sent
    assert latency < 1.0, latency  # CLOCK_MONOTONIC is shared between processes
    print(f"interrupt latency {latency * 1e3:.0f} ms")
    assert "usable 1" in out and proc.returncode == 0


def test_concurrent_calls_from_python_threads_match_serial_calls() -> None:
    net = nf.TwoLayer(width=64, kappa=0.125)
    train = nf.GradientFlow(t_max=5.0)

    def run(seed: int) -> nf.Result:
        return nf.simulate(net, nf.LatentLine(beta=0.5), train, trajectories=64, seed=seed)

    serial = [run(s) for s in range(6)]
    results: dict[int, nf.Result] = {}

    def worker(seed: int) -> None:
        results[seed] = run(seed)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in range(6):
        np.testing.assert_array_equal(results[s].loss, serial[s].loss)
        np.testing.assert_array_equal(results[s].p, serial[s].p)
