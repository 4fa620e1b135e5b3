"""W2: the empirical NTK Gram matrix of a relu network on a training set.

    K = kappa^2 [H H^T + (G G^T) o (X X^T)],  H = relu(X W^T),  G = 1[X W^T > 0] diag(u)

n = 2048 inputs x ~ N(0, I/d), d = 64, width 4096, kappa = 1/sqrt(width), u, W ~ N(0, 1).
(G G^T = S S^T with S = 1[X W^T > 0] diag(|u|), so both terms are symmetric rank-m
products: a BLAS SYRK computes each in half the flops of a GEMM.)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._harness import Config, Impl, compare_line, run_impls, skipped
from .peers import Compiled, load

SIZES = {"full": (2048, 64, 4096), "quick": (1024, 64, 2048), "tiny": (128, 16, 256)}
# Networks in the batched line: its output alone is BATCH n^2 doubles (512 MiB in full).
BATCH = {"full": 16, "quick": 64, "tiny": 4}


def nominal_flops(n: int, d: int, m: int) -> float:
    """Flops of the closed form exploiting symmetry: X W^T 2nmd, two SYRKs of rank m over
    n(n+1)/2 entries 2 x n(n+1)m, X X^T (SYRK) n(n+1)d, elementwise ~3nm + 3n^2. The same
    count for every implementation: GFLOP/s are effective rates (one that does not use
    symmetry executes about twice as many flops)."""
    return 2 * n * m * d + 2 * n * (n + 1) * m + n * (n + 1) * d + 3 * n * m + 3 * n * n


def numpy_gram(u: np.ndarray, W: np.ndarray, X: np.ndarray, kappa: float) -> np.ndarray:
    """NumPy + SciPy BLAS: SYRK for the three symmetric products, one symmetric fill."""
    from scipy.linalg.blas import dsyrk

    Z = X @ W.T  # (n, m)
    H = np.maximum(Z, 0.0)
    S = (Z > 0) * np.abs(u)  # G G^T = S S^T
    # dsyrk on the Fortran view A^T (m, n) with trans=1 gives the upper triangle of A A^T
    # without copying A.
    K = dsyrk(1.0, H.T, trans=1)
    K += dsyrk(1.0, S.T, trans=1) * dsyrk(1.0, X.T, trans=1)
    K *= kappa**2
    iu = np.triu_indices_from(K, 1)
    K.T[iu] = K[iu]  # K is Fortran-ordered: fill the lower triangle from the upper
    return K


def numpy_gram_plain(u: np.ndarray, W: np.ndarray, X: np.ndarray, kappa: float) -> np.ndarray:
    """NumPy only (no SciPy): NumPy's matmul recognises A @ A.T and calls SYRK itself."""
    Z = X @ W.T
    H = np.maximum(Z, 0.0)
    S = (Z > 0) * np.abs(u)
    return kappa**2 * (H @ H.T + (S @ S.T) * (X @ X.T))


def _jax_gram_fn(jax: Any, kappa: float) -> Any:
    jnp = jax.numpy

    def gram(u_: Any, W_: Any, X_: Any) -> Any:
        Z = X_ @ W_.T
        H = jnp.maximum(Z, 0.0)
        G = (Z > 0) * u_
        return kappa**2 * (H @ H.T + (G @ G.T) * (X_ @ X_.T))

    return gram


def jax_gram(jax: Any, u: np.ndarray, W: np.ndarray, X: np.ndarray, kappa: float) -> Any:
    f = jax.jit(_jax_gram_fn(jax, kappa))
    args = tuple(jax.numpy.asarray(a) for a in (u, W, X))
    return Compiled(jax, f, args)


def jax_gram_batch(jax: Any, ub: np.ndarray, Wb: np.ndarray, X: np.ndarray,
                   kappa: float) -> Any:
    """jit(vmap) of the single-network Gram over a batch of networks (shared inputs); the
    whole batch is computed and waited for, its first Gram returned for the check."""
    f = jax.jit(jax.vmap(_jax_gram_fn(jax, kappa), in_axes=(0, 0, None)))
    args = tuple(jax.numpy.asarray(a) for a in (ub, Wb, X))
    return Compiled(jax, f, args, post=lambda K: np.asarray(K[0]))


def torch_gram(torch: Any, u: np.ndarray, W: np.ndarray, X: np.ndarray, kappa: float) -> Any:
    U, Wt, Xt = (torch.from_numpy(np.ascontiguousarray(a)) for a in (u, W, X))

    def run() -> np.ndarray:
        with torch.inference_mode():
            Z = Xt @ Wt.T
            H = torch.relu(Z)
            G = (Z > 0) * U
            return (kappa**2 * (H @ H.T + (G @ G.T) * (Xt @ Xt.T))).numpy()

    return run


def run(cfg: Config, gemm_gflops: float) -> dict[str, Any]:
    n, d, m = SIZES[cfg.mode]
    kappa = 1 / math.sqrt(m)
    label = {"full": "", "quick": "  [QUICK: scaled down]", "tiny": "  [TINY: smoke test]"}
    print(f"\nW2: NTK Gram of a relu network, n = {n} inputs, d = {d}, width {m}: "
          f"K (n x n){label[cfg.mode]}")
    rng = np.random.default_rng(2)
    X = rng.standard_normal((n, d)) / math.sqrt(d)
    W = rng.standard_normal((m, d))
    u = rng.standard_normal(m)
    flops = nominal_flops(n, d, m)
    print(f"  nominal work {flops / 1e9:.3g} GFLOP (symmetric products counted once, see "
          f"nominal_flops); float64 GEMM rate {gemm_gflops:.3g} GFLOP/s")

    import ntkflow as nf

    # A batch whose first network is W2's: each batched line's first Gram is checked
    # against the single call, and the time shown is per network (batch time / B).
    B = BATCH[cfg.mode]
    ub = np.concatenate([u[None], rng.standard_normal((B - 1, m))])
    Wb = np.concatenate([W[None], rng.standard_normal((B - 1, m, d))])
    impls: list[Impl] = []
    if hasattr(nf, "ntk_gram"):
        impls.append(Impl("ntkflow nf.ntk_gram",
                          lambda: nf.ntk_gram(u, W, X, act="relu", kappa=kappa,
                                              threads=cfg.threads),
                          kind="ntkflow"))
        impls.append(Impl(f"ntkflow batch of {B}, per network",
                          lambda: nf.ntk_gram(ub, Wb, X, act="relu", kappa=kappa,
                                              threads=cfg.threads)[0],
                          scale=1.0 / B, tol=1e-12, kind="ntkflow",
                          repeats=min(cfg.repeats, 3),
                          note=f"{B} networks in one call, time / {B}"))
        ratio_to = "ntkflow"
    else:
        impls.append(skipped("ntkflow nf.ntk_gram",
                             "not available yet (nf.ntk_gram is not in this build)"))
        ratio_to = "numpy"
    # Different summation orders over m = 4096 terms: round-off ~ 1e-13 of the scale.
    scipy, why = load("scipy", cfg.peers)
    if scipy:
        impls.append(Impl("numpy+scipy SYRK (symmetric)",
                          lambda: numpy_gram(u, W, X, kappa), tol=1e-11, kind="numpy"))
    else:
        impls.append(Impl("numpy A@A.T (symmetric via NumPy)",
                          lambda: numpy_gram_plain(u, W, X, kappa), tol=1e-11, kind="numpy",
                          note=f"scipy {why}"))
    jax, why = load("jax", cfg.peers)
    impls.append(Impl("jax jit", jax_gram(jax, u, W, X, kappa), tol=1e-11)
                 if jax else skipped("jax jit", why or ""))
    name = f"jax jit+vmap batch of {B}, per network"
    impls.append(Impl(name, jax_gram_batch(jax, ub, Wb, X, kappa), tol=1e-11, scale=1.0 / B,
                      repeats=min(cfg.repeats, 3), note=f"{B} networks in one call, time / {B}")
                 if jax else skipped(name, why or ""))
    torch, why = load("torch", cfg.peers)
    impls.append(Impl("torch", torch_gram(torch, u, W, X, kappa), tol=1e-11)
                 if torch else skipped("torch", why or ""))

    rows = run_impls(impls, cfg, work=flops / 1e9, unit="GFLOP/s", per_row=False,
                     ratio_to=ratio_to)
    for r in rows:
        if r.status in ("ok", "MISMATCH"):
            r.note = (r.note + "; " if r.note else "") + \
                f"{100 * r.throughput / gemm_gflops:.0f}% of GEMM"
    summary: list[str] = []
    compare_line(rows, f"ntkflow batch of {B}, per network", name, summary,
                 "batch against batch, per network")
    return {"workload": "W2", "n": n, "d": d, "width": m, "unit": "GFLOP/s (nominal)",
            "nominal_flops": flops, "ratio_to": ratio_to, "batch": B, "summary": summary,
            "rows": [r.to_json() for r in rows]}
