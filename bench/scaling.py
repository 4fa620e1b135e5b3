"""Scaling of ntkflow on W1-fixed (model A, rk4 dt = 0.01, 1000 steps, 101 records):
time against the number of trajectories and against the width, and the speed-up from
1 to 2 threads, each summarised by the exponent of a least-squares fit of log time; and
the peak memory of a large run against the size of what it records.

Ideal: exponent 1 in trajectories and in width (work is trajectories x width x steps);
exponent -1 in threads; peak memory <= 1.2 x records + 100 MB.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from typing import Any

import numpy as np

from ._harness import Config
from .w1_ensemble import BETA, DT, ETA_U, ETA_W, N_TIMES, SIGMA, T_MAX

# (trajectory counts at WIDTH_FOR_TRAJ, widths at TRAJ_FOR_WIDTH) per mode
TRAJECTORIES = {"full": [256, 512, 1024, 2048, 4096, 8192], "quick": [64, 128, 256, 512],
                "tiny": [8, 16, 32]}
WIDTHS = {"full": [64, 256, 1024, 4096, 16384], "quick": [64, 256, 1024, 4096],
          "tiny": [16, 64, 256]}
WIDTH_FOR_TRAJ = {"full": 1024, "quick": 1024, "tiny": 64}
TRAJ_FOR_WIDTH = {"full": 256, "quick": 64, "tiny": 8}


def _time(n: int, m: int, threads: int | None, repeats: int) -> float:
    import time

    import ntkflow as nf

    net = nf.TwoLayer(width=m, act="linear", kappa=1 / math.sqrt(m))
    data = nf.LatentLine(beta=BETA, sigma=SIGMA)
    train = nf.GradientFlow(eta_u=ETA_U, eta_w=ETA_W, t_max=T_MAX, solver="rk4", dt=DT)
    rec = nf.Record(times=np.linspace(0.0, T_MAX, N_TIMES), ntk="none")

    def once() -> float:
        t0 = time.perf_counter()
        nf.simulate(net, data, train, init=nf.Gaussian(1.0, 1.0), trajectories=n, seed=0,
                    record=rec, threads=threads)
        return time.perf_counter() - t0

    once()  # warm-up
    return float(np.median([once() for _ in range(repeats)]))


# Run in a fresh interpreter so that the peak belongs to this run alone. Linux: writing 5
# to clear_refs resets VmHWM (the peak resident set) to the current resident set.
_MEMORY_PROBE = """
import json, math, sys, numpy as np, ntkflow as nf
n, m = int(sys.argv[1]), int(sys.argv[2])
net = nf.TwoLayer(width=m, act="linear", kappa=1 / math.sqrt(m))
train = nf.GradientFlow(t_max=10.0, solver="rk4", dt=0.01)
rec = nf.Record(times=np.linspace(0.0, 10.0, 101), params="final")
def run(k):
    return nf.simulate(net, nf.LatentLine(beta=1.0), train, init=nf.Gaussian(1.0, 1.0),
                       trajectories=k, seed=0, record=rec)
run(8)  # loads the core and starts the OpenMP threads
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status("VmRSS:")
res = run(n)
peak = status("VmHWM:")
records = sum(v.nbytes for v in vars(res).values() if isinstance(v, np.ndarray))
print(json.dumps({"before": before, "peak": peak, "records": records}))
"""


def peak_memory(n: int, m: int) -> dict[str, Any]:
    """Peak resident memory added by one simulate() call against the bytes it returns."""
    out = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(n), str(m)],
                         capture_output=True, text=True, check=True)
    r = json.loads(out.stdout)
    extra = r["peak"] - r["before"]
    limit = 1.2 * r["records"] + 100e6
    return {"trajectories": n, "width": m, "records_bytes": r["records"],
            "peak_extra_bytes": extra, "limit_bytes": limit, "within": extra <= limit}


def exponent(x: list[float], t: list[float]) -> float:
    """Slope of log t against log x (least squares)."""
    return float(np.polyfit(np.log(x), np.log(t), 1)[0])


def run(cfg: Config) -> dict[str, Any]:
    mode = cfg.mode
    repeats = min(cfg.repeats, 3)
    label = {"full": "", "quick": "  [QUICK: smaller ranges]", "tiny": "  [TINY]"}[mode]
    print(f"\nscaling of ntkflow W1-fixed (rk4 dt {DT:g}, {round(T_MAX / DT)} steps), "
          f"median of {repeats} after a warm-up{label}")
    out: dict[str, Any] = {"repeats": repeats}

    m0 = WIDTH_FOR_TRAJ[mode]
    ns = TRAJECTORIES[mode]
    print(f"  trajectories (width {m0}, threads {cfg.threads or 'default'}):")
    tn = []
    for n in ns:
        tn.append(_time(n, m0, cfg.threads, repeats))
        print(f"    {n:>6} trajectories  {tn[-1]:8.3g} s  "
              f"{n * 1000 / tn[-1]:.3g} traj-steps/s", flush=True)
    e_n = exponent(ns, tn)
    e_n_top = exponent(ns[-3:], tn[-3:])
    print(f"  -> time ~ trajectories^{e_n:.3f} (largest three: ^{e_n_top:.3f}; ideal 1)")
    out["trajectories"] = {"width": m0, "n": ns, "seconds": tn, "exponent": e_n,
                           "exponent_largest3": e_n_top}

    n0 = TRAJ_FOR_WIDTH[mode]
    ms = WIDTHS[mode]
    print(f"  width ({n0} trajectories):")
    tm = []
    for m in ms:
        tm.append(_time(n0, m, cfg.threads, repeats))
        print(f"    width {m:>6}  {tm[-1]:8.3g} s  "
              f"{n0 * 1000 * m / tm[-1]:.3g} (traj-steps x width)/s", flush=True)
    e_m = exponent(ms, tm)
    e_m_top = exponent(ms[-3:], tm[-3:])
    print(f"  -> time ~ width^{e_m:.3f} (largest three: ^{e_m_top:.3f}; ideal 1)")
    out["width"] = {"trajectories": n0, "m": ms, "seconds": tm, "exponent": e_m,
                    "exponent_largest3": e_m_top}

    n1, m1 = (1024, 1024) if mode == "full" else (ns[-1], m0)
    t1 = _time(n1, m1, 1, repeats)
    t2 = _time(n1, m1, 2, repeats)
    e_t = math.log(t2 / t1) / math.log(2.0)
    print(f"  threads ({n1} trajectories x width {m1}): 1 thread {t1:.3g} s, 2 threads "
          f"{t2:.3g} s -> speed-up {t1 / t2:.2f}x, time ~ threads^{e_t:.3f} (ideal -1)")
    out["threads"] = {"trajectories": n1, "width": m1, "t1": t1, "t2": t2,
                      "speedup": t1 / t2, "exponent": e_t}

    nm, mm = {"full": (8192, 1024), "quick": (2048, 1024), "tiny": (64, 64)}[mode]
    try:
        mem = peak_memory(nm, mm)
    except (OSError, subprocess.CalledProcessError, ValueError) as exc:
        print(f"  peak memory: not measured ({type(exc).__name__}: {exc})")
    else:
        mb = 1e-6
        print(f"  peak memory ({nm} trajectories x width {mm}, 101 records of every "
              f"observable + final parameters): records {mem['records_bytes'] * mb:.0f} MB, "
              f"peak added by the call {mem['peak_extra_bytes'] * mb:.0f} MB, limit 1.2 x "
              f"records + 100 MB = {mem['limit_bytes'] * mb:.0f} MB -> "
              f"{'within' if mem['within'] else 'OVER'}")
        out["memory"] = mem
    return out
