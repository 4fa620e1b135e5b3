"""W3: teacher-student full-batch gradient descent with relu networks.

Teacher: 3 hidden relu units, unit-norm rows v_k, output weights a = (+1, -1, +1), no kappa:
y = sum_k a_k relu(v_k . x). d = 32, n = 256 inputs on the unit sphere. 64 relu students of
width 256, kappa = 1/sqrt(width), u ~ N(0, 1), W ~ N(0, 1/d); learning rate 0.05, 5000
full-batch steps of L = 1/(2n) sum_j (f(x_j) - y_j)^2, loss recorded every 50 steps
(before the update of that step: at step numbers 0, 50, ..., 5000).

ntkflow records what the peers record: ``Record(ntk="none")``. Its default on a Dataset
("auto") adds the training Gram matrix's kernel metrics at every record time, O(n^2 m)
each, which no peer computes; the norms and alignment it still keeps cost O(md) per
record, nothing beside 50 steps of O(nmd).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._harness import Config, Impl, compare_line, run_impls, say, skipped
from .peers import Compiled, load

D, N_SAMPLES, TEACHER_UNITS, LR = 32, 256, 3, 0.05
# (students, width, steps, record every) per mode
SIZES = {"full": (64, 256, 5000, 50), "quick": (4, 256, 100, 50),
         "tiny": (4, 32, 100, 10)}


def flops_per_student_step(n: int, m: int, d: int) -> float:
    """Z = X W^T 2nmd; backward D^T X 2nmd; f = kappa A u and A^T e: 2 x 2nm; relu, mask,
    residual scaling ~4nm. Total 4nmd + 8nm."""
    return 4.0 * n * m * d + 8.0 * n * m


def make_data(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    X = rng.standard_normal((N_SAMPLES, D))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    V = rng.standard_normal((TEACHER_UNITS, D))
    V /= np.linalg.norm(V, axis=1, keepdims=True)
    a = np.array([1.0, -1.0, 1.0])
    y = np.maximum(X @ V.T, 0.0) @ a
    return X, y


def numpy_gd(u0: np.ndarray, W0: np.ndarray, X: np.ndarray, y: np.ndarray, kappa: float,
             steps: int, every: int) -> np.ndarray:
    """NumPy: all students' hidden units side by side, so the forward and backward passes
    are one (n, S m) and one (S m, d) matrix product per step. u0 (S, m), W0 (S, m, d)
    -> loss (S, steps/every + 1)."""
    S, m, d = W0.shape
    n = X.shape[0]
    u = u0.copy()
    W = W0.reshape(S * m, d).copy()
    out = np.empty((S, steps // every + 1))
    for t in range(steps + 1):
        Z = X @ W.T  # (n, S m)
        A = np.maximum(Z, 0.0)
        f = kappa * np.einsum("nsm,sm->sn", A.reshape(n, S, m), u)  # (S, n)
        e = f - y
        if t % every == 0:
            out[:, t // every] = 0.5 * np.einsum("sn,sn->s", e, e) / n
        if t == steps:
            break
        e *= kappa / n  # dL/df times kappa
        gu = np.einsum("nsm,sn->sm", A.reshape(n, S, m), e)
        Dm = (Z > 0).reshape(n, S, m) * (u[None] * e.T[:, :, None])  # (n, S, m)
        gW = Dm.reshape(n, S * m).T @ X  # (S m, d)
        u -= LR * gu
        W -= LR * gW
    return out


def jax_gd(jax: Any, u0: np.ndarray, W0: np.ndarray, X: np.ndarray, y: np.ndarray,
           kappa: float, steps: int, every: int) -> Any:
    """JAX: one student's loss and jax.grad, vmap over students, lax.scan over records."""
    jnp, lax = jax.numpy, jax.lax
    Xj, yj = jnp.asarray(X), jnp.asarray(y)

    def loss(params: Any) -> Any:
        u, W = params
        f = kappa * jnp.maximum(Xj @ W.T, 0.0) @ u
        return 0.5 * jnp.mean((f - yj) ** 2)

    vg = jax.value_and_grad(loss)

    def step(params: Any) -> Any:
        _, g = vg(params)
        return (params[0] - LR * g[0], params[1] - LR * g[1])

    def one(u: Any, W: Any) -> Any:
        def block(p: Any, _: Any) -> Any:
            l0 = loss(p)
            p = lax.fori_loop(0, every, lambda _, q: step(q), p)
            return p, l0

        p, ls = lax.scan(block, (u, W), None, length=steps // every)
        return jnp.concatenate([ls, loss(p)[None]])

    f = jax.jit(jax.vmap(one))
    args = (jnp.asarray(u0), jnp.asarray(W0))
    return Compiled(jax, f, args)


def torch_gd(torch: Any, u0: np.ndarray, W0: np.ndarray, X: np.ndarray, y: np.ndarray,
             kappa: float, steps: int, every: int) -> Any:
    """PyTorch with the same layout as the NumPy reference (every student's hidden units
    side by side: two 2-D matrix products per step), gradients written out (no autograd).
    (torch.bmm over students on an expanded X was 5x slower here.)"""
    S, m, d = W0.shape
    n = X.shape[0]
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    U0 = torch.from_numpy(u0.copy())
    Wf0 = torch.from_numpy(W0.reshape(S * m, d).copy())

    def run() -> np.ndarray:
        with torch.inference_mode():
            u, W = U0.clone(), Wf0.clone()
            out = torch.empty((S, steps // every + 1), dtype=torch.float64)
            for t in range(steps + 1):
                Z = Xt @ W.T  # (n, S m)
                A = torch.relu(Z).view(n, S, m)
                f = kappa * torch.einsum("nsm,sm->sn", A, u)
                e = f - yt
                if t % every == 0:
                    out[:, t // every] = 0.5 * (e * e).sum(1) / n
                if t == steps:
                    break
                e.mul_(kappa / n)
                gu = torch.einsum("nsm,sn->sm", A, e)
                Dm = (Z > 0).view(n, S, m) * (u.unsqueeze(0) * e.T.unsqueeze(2))
                gW = Dm.view(n, S * m).T @ Xt  # (S m, d)
                u.sub_(LR * gu)
                W.sub_(LR * gW)
            return out.numpy()

    return run


def sizes(cfg: Config, table: dict[str, tuple[int, int, int, int]]
          ) -> tuple[int, int, int, int, str]:
    """(students, width, steps, record every) of the mode, with --w3-steps applied, and the
    header's note on the size ("" at full size)."""
    S, m, steps, every = table[cfg.mode]
    note = {"full": "", "quick": "  [QUICK: scaled down]",
            "tiny": "  [TINY: smoke test]"}[cfg.mode]
    if cfg.w3_steps is not None and cfg.w3_steps != steps:
        if cfg.w3_steps % every:
            raise SystemExit(f"--w3-steps must be a multiple of {every}")
        note += f"  [STEPS CUT from {steps} by --w3-steps]"
        steps = cfg.w3_steps
    return S, m, steps, every, note


def run(cfg: Config, gemm_gflops: float) -> dict[str, Any]:
    S, m, steps, every, note = sizes(cfg, SIZES)
    kappa = 1 / math.sqrt(m)
    print(f"\nW3: teacher-student GD, relu teacher ({TEACHER_UNITS} units), d = {D}, "
          f"n = {N_SAMPLES}; {S} relu students x width {m}, lr {LR}, {steps} steps, loss "
          f"every {every}{note}")
    rng = np.random.default_rng(3)
    X, y = make_data(rng)
    record = np.arange(0, steps + 1, every, dtype=float)
    flops = flops_per_student_step(N_SAMPLES, m, D) * S * steps
    print(f"  work {flops / 1e9:.3g} GFLOP (4nmd + 8nm per student-step); float64 GEMM "
          f"rate {gemm_gflops:.3g} GFLOP/s")

    import ntkflow as nf

    def ntk_run() -> Any:
        net = nf.TwoLayer(width=m, act="relu", kappa=kappa)
        return nf.simulate(net, nf.Dataset(X=X, y=y), nf.GradientDescent(lr=LR, steps=steps),
                           init=nf.Gaussian(1.0, 1.0), trajectories=S, seed=0,
                           record=nf.Record(times=record, ntk="none"), threads=cfg.threads)

    impls: list[Impl] = []
    try:
        res = ntk_run()
        params = res.initial_params()
        u0, W0 = np.asarray(params.u0), np.asarray(params.W0)
        impls.append(Impl("ntkflow simulate (relu, GD)", lambda: ntk_run().loss,
                          kind="ntkflow"))
        ratio_to = "ntkflow"
    except ValueError as exc:
        if "act" not in str(exc):
            raise
        impls.append(skipped("ntkflow simulate (relu, GD)",
                             "not available yet (simulate takes linear networks only: "
                             f"{exc})"))
        ratio_to = "numpy"
        u0 = rng.standard_normal((S, m))
        W0 = rng.standard_normal((S, m, D)) / math.sqrt(D)

    # Same update, different summation orders; 5000 steps of GD contract round-off unless
    # a relu switches on a rounding difference, which does not happen at these sizes.
    tol = 1e-8
    impls.append(Impl("numpy (students fused in one GEMM)",
                      lambda: numpy_gd(u0, W0, X, y, kappa, steps, every), tol=tol,
                      kind="numpy"))
    jax, why = load("jax", cfg.peers)
    impls.append(Impl("jax jit+vmap+grad+lax.scan",
                      jax_gd(jax, u0, W0, X, y, kappa, steps, every), tol=tol)
                 if jax else skipped("jax jit+vmap+grad+lax.scan", why or ""))
    torch, why = load("torch", cfg.peers)
    impls.append(Impl("torch (explicit grads)",
                      torch_gd(torch, u0, W0, X, y, kappa, steps, every), tol=tol)
                 if torch else skipped("torch (explicit grads)", why or ""))

    rows = run_impls(impls, cfg, work=flops / 1e9, unit="GFLOP/s", per_row=True,
                     ratio_to=ratio_to)
    for r in rows:
        if r.status in ("ok", "MISMATCH"):
            r.note = (r.note + "; " if r.note else "") + \
                f"{S * steps / r.median:.3g} student-steps/s, " \
                f"{100 * r.throughput / gemm_gflops:.0f}% of GEMM"
    summary: list[str] = []
    jax_name = "jax jit+vmap+grad+lax.scan"
    speedup = compare_line(rows, "ntkflow simulate (relu, GD)", jax_name, summary,
                           "issue #17's target: >= 3x")
    ntk = next((r for r in rows if r.reference and r.status == "ok"), None)
    if ntk is not None and ratio_to == "ntkflow":
        say(summary, f"ntkflow at {100 * ntk.throughput / gemm_gflops:.0f}% of the GEMM rate "
            f"on W3's products (nominal 4nmd + 8nm flops per student-step; target about 80%)")
    return {"workload": "W3", "students": S, "width": m, "steps": steps,
            "unit": "GFLOP/s", "flops": flops, "ratio_to": ratio_to, "summary": summary,
            "speedup_vs_jax": speedup, "rows": [r.to_json() for r in rows]}
