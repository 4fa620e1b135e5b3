"""What a Dask sweep costs and gains against the in-process loop.

    python bench/bench_sweep.py [--quick]

1. Overhead per task: 64 tiny tasks (width 8, 4 trajectories), in-process vs a
   LocalCluster of 2 worker processes x 1 thread (loopback TCP).
2. Speed-up: 16 tasks of ~0.3 s (width 2048, 300 trajectories, dopri5 rtol 1e-10),
   in-process with threads=1 and threads=2 vs 2 workers x 1 thread (OMP_NUM_THREADS=1).
Median of --repeat runs after a warm-up; cluster start-up reported, not counted. Every
run's numbers are checked bit for bit against the first in-process run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import time
from typing import Any

import ntkflow as nf


def tasks(n: int, width: int, trajectories: int) -> list[nf.Task]:
    return [nf.Task(net=nf.TwoLayer(width=width, kappa=width**-0.5),
                    data=nf.LatentLine(beta=1.0 + 0.01 * i), train=nf.GradientFlow(rtol=1e-10),
                    trajectories=trajectories, seed=i,
                    record=nf.Record(times=50, spacing="log", loss_below=1e-6),
                    horizon="auto") for i in range(n)]


def same(a: nf.Sweep, b: nf.Sweep) -> bool:
    return all(x.arrays[k].tobytes() == y.arrays[k].tobytes()
               for x, y in zip(a, b, strict=True) for k in x.arrays if k != "seconds")


def timed(fn: Any, repeat: int) -> tuple[float, Any]:
    fn()  # warm-up
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    from distributed import Client, LocalCluster

    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the worker processes
    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "loadavg": os.getloadavg(), "build": nf.build_info()}
    print(json.dumps(info, default=str))
    t0 = time.perf_counter()
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           host="127.0.0.1", dashboard_address=None,
                           silence_logs=logging.ERROR)
    client = Client(cluster)
    print(f"LocalCluster(2 x 1 thread) start-up: {time.perf_counter() - t0:.2f} s")
    out: dict[str, Any] = {"machine": info}
    try:
        tiny = tasks(64, 8, 4)
        t_loc, ref = timed(lambda: nf.sweep(tiny, threads=1), args.repeat)
        t_dask, got = timed(lambda: nf.sweep(tiny, client=client), args.repeat)
        assert same(ref, got)
        print(f"64 tiny tasks: in-process {t_loc:.3f} s ({1e3 * t_loc / 64:.2f} ms/task), "
              f"Dask {t_dask:.3f} s ({1e3 * t_dask / 64:.2f} ms/task): overhead "
              f"~{1e3 * (t_dask - t_loc / 2) / 64 * 2:.1f} ms per task per worker")
        out["tiny"] = {"local_s": t_loc, "dask_s": t_dask}
        n, width, traj = (8, 1024, 200) if args.quick else (16, 2048, 300)
        big = tasks(n, width, traj)
        t1, ref = timed(lambda: nf.sweep(big, threads=1), args.repeat)
        t2, r2 = timed(lambda: nf.sweep(big, threads=2), args.repeat)
        td, rd = timed(lambda: nf.sweep(big, client=client), args.repeat)
        assert same(ref, r2) and same(ref, rd)
        print(f"{n} tasks (width {width}, {traj} trajectories): in-process threads=1 "
              f"{t1:.2f} s, threads=2 {t2:.2f} s ({t1 / t2:.2f}x), Dask 2 workers x 1 "
              f"thread {td:.2f} s ({t1 / td:.2f}x vs threads=1, {t2 / td:.2f}x vs "
              f"threads=2); all bit-identical")
        out["sweep"] = {"tasks": n, "threads1_s": t1, "threads2_s": t2, "dask_s": td}
    finally:
        client.close()
        cluster.close()
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             check=False).stdout.strip()
    except OSError:  # pragma: no cover
        rev = ""
    out["git"] = rev
    out["loadavg_end"] = os.getloadavg()
    with open("bench_sweep.json", "w") as fh:
        json.dump(out, fh, indent=1, default=str)


if __name__ == "__main__":
    main()
