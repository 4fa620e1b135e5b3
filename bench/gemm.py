"""The machine's float64 matrix-product rate: NumPy's BLAS on large square matrices.

It is the yardstick for "fraction of the machine reached": no float64 kernel on this CPU
does much better than a large GEMM.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np


def measure(n: int = 4096, repeats: int = 5) -> dict[str, Any]:
    """Median GFLOP/s of C = A @ B, A and B (n, n), counting 2 n^3 flops."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n))
    b = rng.standard_normal((n, n))
    c = np.empty((n, n))
    np.matmul(a, b, out=c)  # warm-up: BLAS threads, page faults
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.matmul(a, b, out=c)
        rates.append(2.0 * n**3 / (time.perf_counter() - t0) / 1e9)
    return {"n": n, "repeats": repeats, "gflops_median": float(np.median(rates)),
            "gflops_min": float(min(rates)), "gflops_max": float(max(rates))}


def sizes(mode: str) -> int:
    return {"full": 4096, "quick": 2048, "tiny": 512}[mode]
