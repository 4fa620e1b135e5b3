"""How fast is ntk_gram? A ReLU network's NTK Gram matrix against the same formula in NumPy.

    python bench/bench_gram.py            # n = 2048, d = 64, width 4096
    python bench/bench_gram.py --quick    # n = 512, width 1024

Inputs x ~ N(0, I/d), u, W ~ N(0, 1), kappa = 1/sqrt(width). The NumPy reference is the
direct formula K = kappa^2 [H H^T + (G G^T) o (X X^T)] with H = relu(X W^T),
G = 1[X W^T > 0] diag(u) on NumPy's BLAS (which turns A @ A.T into SYRK). Both are timed in
the same process, interleaved, after one warm-up each; the medians are compared after
checking that both give the same matrix. With threadpoolctl installed, NumPy is timed with
its BLAS on all threads and on one, and the faster is the reference (on a busy machine a
multi-threaded BLAS can lose to itself). Results go to bench/results/ as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import ntkflow as nf

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # optional: without it NumPy runs with its default BLAS threads
    threadpool_limits = None


def blas_settings() -> dict[str, Callable[[], contextlib.AbstractContextManager[object]]]:
    """NumPy's BLAS thread settings to try: default, and one thread when controllable."""
    out: dict[str, Callable[[], contextlib.AbstractContextManager[object]]] = {
        "default": contextlib.nullcontext}
    if threadpool_limits is not None:
        out["1 thread"] = lambda: threadpool_limits(limits=1, user_api="blas")
    return out


def timed(fn: Callable[[], object], ctx: Callable[[], contextlib.AbstractContextManager[object]]
          ) -> float:
    with ctx():
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0


def machine() -> dict[str, object]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    blas = "unknown"
    try:
        cfg = np.show_config(mode="dicts")["Build Dependencies"]["blas"]  # type: ignore[index]
        blas = f"{cfg.get('name')} {cfg.get('version')}"
    except Exception:  # noqa: BLE001 - informational only
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True,
                                cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": blas,
        "ntkflow": nf.build_info(),
        "git": commit,
    }


def numpy_gram(u: np.ndarray, W: np.ndarray, X: np.ndarray, kappa: float) -> np.ndarray:
    Z = X @ W.T
    H = np.maximum(Z, 0.0)
    G = (Z > 0) * u
    K: np.ndarray = kappa**2 * (H @ H.T + (G @ G.T) * (X @ X.T))
    return K


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="n = 512, width 1024")
    ap.add_argument("--samples", type=int, default=None)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="ntkflow threads (default all)")
    args = ap.parse_args()
    n = args.samples or (512 if args.quick else 2048)
    m = args.width or (1024 if args.quick else 4096)
    d = args.dim
    info = machine()
    print("machine:", json.dumps(info, indent=1, default=str))
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, d)) / np.sqrt(d)
    u = rng.normal(size=m)
    W = rng.normal(size=(m, d))
    kappa = 1 / np.sqrt(m)

    def ours() -> np.ndarray:
        return nf.ntk_gram(u, W, X, act="relu", kappa=kappa, threads=args.threads)

    def theirs() -> np.ndarray:
        return numpy_gram(u, W, X, kappa)

    K, K_ref = ours(), theirs()  # warm-up, and the agreement check
    err = float(np.max(np.abs(K - K_ref)) / np.max(np.abs(K_ref)))
    print(f"n = {n}, d = {d}, width = {m}: max |K - K_numpy| / max |K_numpy| = {err:.2e}")
    assert err < 1e-12, "ntk_gram and the NumPy formula disagree"
    assert np.array_equal(K, K.T)
    settings = blas_settings()
    ours_settings = {"default": args.threads} if args.threads else {"default": None, "1 thread": 1}
    t_ours: dict[str, list[float]] = {name: [] for name in ours_settings}
    t_np: dict[str, list[float]] = {name: [] for name in settings}
    for _ in range(args.repeats):  # interleaved: a load change hits all alike
        for name, th in ours_settings.items():
            t_ours[name].append(timed(lambda th=th: nf.ntk_gram(
                u, W, X, act="relu", kappa=kappa, threads=th), contextlib.nullcontext))
        for name, ctx in settings.items():
            t_np[name].append(timed(theirs, ctx))
    med_o = {name: float(np.median(v)) for name, v in t_ours.items()}
    med = {name: float(np.median(v)) for name, v in t_np.items()}
    best_o = min(med_o, key=med_o.__getitem__)
    best = min(med, key=med.__getitem__)
    flops = 2.0 * n * (n + 1) / 2 * m * 2 + 2.0 * n * m * d  # two lower-triangle products + Z
    for name, v in t_ours.items():
        print(f"ntkflow.ntk_gram, OpenMP {name}: median {med_o[name]:.3f} s of {args.repeats} "
              f"({flops / med_o[name] / 1e9:.1f} GFLOP/s counting the symmetric half), all "
              f"{np.round(v, 3)}")
    for name, v in t_np.items():
        print(f"NumPy formula, BLAS {name}: median {med[name]:.3f} s, all {np.round(v, 3)}")
    a, b = med_o["default"], med["default"]
    print(f"ratio ntkflow / NumPy, default threads on both = {a / b:.3f}")
    print(f"ratio ntkflow / NumPy, the faster setting of each ({best_o} / {best}) = "
          f"{med_o[best_o] / med[best]:.3f}")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    path = out / f"bench_gram_{info['git']}_{int(time.time())}.json"
    path.write_text(json.dumps({
        "machine": info, "samples": n, "dim": d, "width": m, "agreement": err,
        "ntkflow_s": t_ours, "numpy_s": t_np, "ratio_default": a / b,
        "ratio_best": med_o[best_o] / med[best]}, indent=1, default=str))
    print("saved", path)


if __name__ == "__main__":
    main()
