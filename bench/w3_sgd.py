"""W3-SGD (issue #15): W3's teacher-student setting trained by minibatch SGD.

W3's data and students (relu teacher with 3 unit-norm units and output weights (+1, -1, +1),
d = 32, n = 256 inputs on the unit sphere; 64 relu students of width 256, kappa =
1/sqrt(width), u ~ N(0, 1), W ~ N(0, 1/d); learning rate 0.05 and W3's 5000 steps), but
every step moves each student along the gradient of the loss on its own batch of 32 of the
256 samples, drawn without replacement, fresh at every step:

    L_B = 1/(2B) sum_{j in batch} (f(x_j) - y_j)^2,   theta -= lr * dL_B/dtheta

The loss on the whole training set is recorded every 50 steps (before the update of that
step: step numbers 0, 50, ..., 5000), as in W3. ntkflow is asked for these records without
its kernel metrics (``Record(ntk="none")``: on a dataset "auto" adds the training Gram
matrix's metrics, O(n^2 m) per record, which cost as much as the 50 minibatch steps between
two records here); its other per-record summaries (norms, alignment) stay, and are cheap.

Agreement. The peers draw their batches with their own generators, so their answers cannot
equal ntkflow's (whose batches are keyed by (seed, trajectory, step) in the core). Checked
instead, each from the same initial parameters:
- the NumPy reference, on a few students, with ntkflow's exact batches
  (``nf.sgd_batches``, drawn before the timed runs): the loss records to 1e-10;
- every peer's final-loss distribution against ntkflow's, student by student from the same
  initialisation (paired): a two-sample Kolmogorov-Smirnov test (p >= 1e-3) and a paired
  t statistic of the final losses (|t| <= 4). The "max rel diff" column shows the relative
  difference of the mean final losses, informative only: the tests decide.

Work: a nominal 4Bmd + 8Bm flops per student-step (W3's count with the batch B in place of
n) plus, per record, the full-set forward pass 2nmd + 4nm, the same for everyone.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._harness import Config, Impl, compare_line, run_impls, skipped
from .peers import Compiled, load
from .w3_teacher_student import LR, N_SAMPLES, make_data, sizes

BATCH = 32
# (students, width, steps, record every) per mode; quick keeps 16 students so that the
# distribution check has something to test.
SIZES = {"full": (64, 256, 5000, 50), "quick": (16, 256, 500, 50),
         "tiny": (8, 32, 100, 10)}
EXACT_STUDENTS = {"full": 4, "quick": 4, "tiny": 4}  # NumPy with ntkflow's batches
EXACT_TOL = 1e-10
KS_P_MIN, T_MAX = 1e-3, 4.0
SEED = 0


def flops(n: int, b: int, m: int, d: int, steps: int, records: int) -> float:
    """Nominal flops of one student's run: steps of 4bmd + 8bm, records of 2nmd + 4nm."""
    return steps * (4.0 * b * m * d + 8.0 * b * m) + records * (2.0 * n * m * d + 4.0 * n * m)


def numpy_sgd(u0: np.ndarray, W0: np.ndarray, X: np.ndarray, y: np.ndarray, kappa: float,
              steps: int, every: int, batches: np.ndarray) -> np.ndarray:
    """NumPy: students stacked (np.matmul on (S, B, .) arrays), the given batches
    (S, steps, B) -> full-set loss (S, steps/every + 1)."""
    S, m, d = W0.shape
    n = X.shape[0]
    B = batches.shape[2]
    u = u0.copy()
    W = W0.copy()
    out = np.empty((S, steps // every + 1))
    for t in range(steps + 1):
        if t % every == 0:
            f = kappa * np.einsum("snm,sm->sn", np.maximum(X @ W.transpose(0, 2, 1), 0.0), u)
            e = f - y
            out[:, t // every] = 0.5 * np.einsum("sn,sn->s", e, e) / n
        if t == steps:
            break
        idx = batches[:, t]
        Xb, yb = X[idx], y[idx]  # (S, B, d), (S, B)
        Z = Xb @ W.transpose(0, 2, 1)  # (S, B, m)
        A = np.maximum(Z, 0.0)
        e = kappa * np.einsum("sbm,sm->sb", A, u) - yb
        e *= kappa / B  # dL_B/df times kappa
        gu = np.einsum("sbm,sb->sm", A, e)
        Dm = (Z > 0) * (e[:, :, None] * u[:, None, :])  # (S, B, m)
        gW = Dm.transpose(0, 2, 1) @ Xb  # (S, m, d)
        u -= LR * gu
        W -= LR * gW
    return out


def ntkflow_batches(nf: Any, students: np.ndarray, steps: int, n: int) -> np.ndarray:
    """ntkflow's batches of these students (trajectory indices), every step: (S, steps, B)."""
    out = np.empty((len(students), steps, BATCH), dtype=np.int64)
    for i, k in enumerate(students):
        for s in range(steps):
            out[i, s] = nf.sgd_batches(SEED, int(k), s, n, BATCH, False)
    return out


def jax_sgd(jax: Any, u0: np.ndarray, W0: np.ndarray, X: np.ndarray, y: np.ndarray,
            kappa: float, steps: int, every: int) -> Any:
    """JAX: one student's batch loss and jax.grad, vmap over students, lax.scan over the
    records (a fori_loop over the steps between two). Each step's batch is drawn in JAX:
    ``jax.random.choice(fold_in(student key, step), n, (B,), replace=False)``."""
    jnp, lax = jax.numpy, jax.lax
    Xj, yj = jnp.asarray(X), jnp.asarray(y)
    n = X.shape[0]

    def loss(params: Any, Xs: Any, ys: Any) -> Any:
        u, W = params
        f = kappa * jnp.maximum(Xs @ W.T, 0.0) @ u
        return 0.5 * jnp.mean((f - ys) ** 2)

    grad = jax.grad(loss)

    def one(u: Any, W: Any, key: Any) -> Any:
        def step(s: Any, p: Any) -> Any:
            idx = jax.random.choice(jax.random.fold_in(key, s), n, (BATCH,), replace=False)
            g = grad(p, Xj[idx], yj[idx])
            return (p[0] - LR * g[0], p[1] - LR * g[1])

        def block(p: Any, b: Any) -> Any:
            l0 = loss(p, Xj, yj)
            p = lax.fori_loop(b * every, (b + 1) * every, step, p)
            return p, l0

        p, ls = lax.scan(block, (u, W), jnp.arange(steps // every))
        return jnp.concatenate([ls, loss(p, Xj, yj)[None]])

    f = jax.jit(jax.vmap(one))
    keys = jax.random.split(jax.random.PRNGKey(1), u0.shape[0])
    args = (jnp.asarray(u0), jnp.asarray(W0), keys)
    return Compiled(jax, f, args)


def torch_sgd(torch: Any, u0: np.ndarray, W0: np.ndarray, X: np.ndarray, y: np.ndarray,
              kappa: float, steps: int, every: int) -> Any:
    """PyTorch: students batched (torch.bmm on (S, B, .) stacks), gradients written out
    under inference_mode. Each step's batches, one per student, are drawn in torch:
    ``torch.rand(S, n).argsort(1)[:, :B]`` (a uniform B-subset per row, as randperm)."""
    S, m, d = W0.shape
    n = X.shape[0]
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    U0, Wt0 = torch.from_numpy(u0.copy()), torch.from_numpy(W0.copy())

    def run() -> np.ndarray:
        gen = torch.Generator().manual_seed(1)
        with torch.inference_mode():
            u, W = U0.clone(), Wt0.clone()
            out = torch.empty((S, steps // every + 1), dtype=torch.float64)
            for t in range(steps + 1):
                if t % every == 0:
                    A = torch.relu(torch.matmul(Xt, W.transpose(1, 2)))  # (S, n, m)
                    e = kappa * torch.bmm(A, u.unsqueeze(2)).squeeze(2) - yt
                    out[:, t // every] = 0.5 * (e * e).sum(1) / n
                if t == steps:
                    break
                idx = torch.rand((S, n), generator=gen, dtype=torch.float64).argsort(1)[:, :BATCH]
                Xb, yb = Xt[idx], yt[idx]  # (S, B, d), (S, B)
                Z = torch.bmm(Xb, W.transpose(1, 2))  # (S, B, m)
                A = torch.relu(Z)
                e = kappa * torch.bmm(A, u.unsqueeze(2)).squeeze(2) - yb
                e.mul_(kappa / BATCH)
                gu = torch.bmm(A.transpose(1, 2), e.unsqueeze(2)).squeeze(2)
                Dm = (Z > 0) * (e.unsqueeze(2) * u.unsqueeze(1))
                gW = torch.bmm(Dm.transpose(1, 2), Xb)  # (S, m, d)
                u.sub_(LR * gu)
                W.sub_(LR * gW)
            return out.numpy()

    return run


def distribution_check(answer: Any, reference: Any) -> tuple[float, bool, str]:
    """Final losses of a peer (its own batches) vs ntkflow's, student by student from the
    same initialisation: two-sample KS and paired t. Returns (relative difference of the
    means, ok, what was tested)."""
    a = np.asarray(answer)[:, -1]
    r = np.asarray(reference)[:, -1]
    if a.shape != r.shape or not np.all(np.isfinite(a)):
        return math.inf, False, f"final losses not comparable (shape {a.shape}, finite " \
            f"{bool(np.all(np.isfinite(a)))})"
    from scipy import stats

    ks = stats.ks_2samp(a, r)
    dlt = a - r
    se = dlt.std(ddof=1) / math.sqrt(len(dlt)) if len(dlt) > 1 else math.inf
    t = float(dlt.mean() / se) if se > 0 else (0.0 if dlt.mean() == 0 else math.inf)
    rel = abs(a.mean() - r.mean()) / abs(r.mean())
    ok = bool(ks.pvalue >= KS_P_MIN and abs(t) <= T_MAX)
    return rel, ok, (f"final loss mean {a.mean():.4g} vs ntkflow {r.mean():.4g} (sd "
                     f"{a.std(ddof=1):.2g} vs {r.std(ddof=1):.2g}); KS p {ks.pvalue:.2g} "
                     f"(>= {KS_P_MIN:g}), paired t {t:+.2f} (|t| <= {T_MAX:g})")


def run(cfg: Config, gemm_gflops: float) -> dict[str, Any]:
    S, m, steps, every, note = sizes(cfg, SIZES)
    kappa = 1 / math.sqrt(m)
    print(f"\nW3-SGD: W3's teacher-student setting by minibatch SGD, batch {BATCH} of "
          f"{N_SAMPLES} without replacement; {S} relu students x width {m}, lr {LR}, "
          f"{steps} steps, full-set loss every {every}{note}")
    rng = np.random.default_rng(3)
    X, y = make_data(rng)
    D = X.shape[1]
    record = np.arange(0, steps + 1, every, dtype=float)
    work = flops(N_SAMPLES, BATCH, m, D, steps, len(record)) * S
    print(f"  work {work / 1e9:.3g} GFLOP (4Bmd + 8Bm per student-step, 2nmd + 4nm per "
          f"record); float64 GEMM rate {gemm_gflops:.3g} GFLOP/s")

    import ntkflow as nf

    def ntk_run() -> Any:
        net = nf.TwoLayer(width=m, act="relu", kappa=kappa)
        return nf.simulate(net, nf.Dataset(X=X, y=y),
                           nf.SGD(lr=LR, steps=steps, batch_size=BATCH, replace=False),
                           init=nf.Gaussian(1.0, 1.0), trajectories=S, seed=SEED,
                           record=nf.Record(times=record, ntk="none"), threads=cfg.threads)

    impls: list[Impl] = []
    sub = np.arange(min(EXACT_STUDENTS[cfg.mode], S))
    if hasattr(nf, "SGD") and hasattr(nf, "sgd_batches"):
        res = ntk_run()
        params = res.initial_params()
        u0, W0 = np.asarray(params.u0), np.asarray(params.W0)
        impls.append(Impl("ntkflow simulate (relu, SGD)", lambda: ntk_run().loss,
                          kind="ntkflow"))
        ratio_to = "ntkflow"
        batches = ntkflow_batches(nf, sub, steps, N_SAMPLES)
        impls.append(Impl(f"numpy, ntkflow's batches ({len(sub)} of {S})",
                          lambda: numpy_sgd(u0[sub], W0[sub], X, y, kappa, steps, every,
                                            batches),
                          tol=EXACT_TOL, subset=sub, scale=S / len(sub), kind="numpy",
                          note="batches from nf.sgd_batches, drawn before timing; "
                               "time scaled to all students"))
    else:
        impls.append(skipped("ntkflow simulate (relu, SGD)",
                             "not available yet (this ntkflow has no nf.SGD / "
                             "nf.sgd_batches)"))
        ratio_to = "numpy"
        u0 = rng.standard_normal((S, m))
        W0 = rng.standard_normal((S, m, D)) / math.sqrt(D)
        own = np.random.default_rng(5)
        batches = np.stack([np.stack([own.permutation(N_SAMPLES)[:BATCH]
                                      for _ in range(steps)]) for _ in range(S)])
        impls.append(Impl("numpy (own batches, all students)",
                          lambda: numpy_sgd(u0, W0, X, y, kappa, steps, every, batches),
                          kind="numpy", note="batches drawn before timing"))

    jax, why = load("jax", cfg.peers)
    name = "jax jit+vmap+grad+lax.scan (own batches)"
    impls.append(Impl(name, jax_sgd(jax, u0, W0, X, y, kappa, steps, every),
                      compare=distribution_check)
                 if jax else skipped(name, why or ""))
    torch, why = load("torch", cfg.peers)
    name = "torch bmm, explicit grads (own batches)"
    impls.append(Impl(name, torch_sgd(torch, u0, W0, X, y, kappa, steps, every),
                      compare=distribution_check)
                 if torch else skipped(name, why or ""))

    rows = run_impls(impls, cfg, work=work / 1e9, unit="GFLOP/s", per_row=True,
                     ratio_to=ratio_to)
    per_step: dict[str, float] = {}
    for r in rows:
        if r.status in ("ok", "MISMATCH"):
            per_step[r.name] = r.median / (S * steps)
            r.note = (r.note + "; " if r.note else "") + \
                f"{1e6 * r.median / (S * steps):.3g} us per student-step, " \
                f"{100 * r.throughput / gemm_gflops:.0f}% of GEMM"
    out: dict[str, Any] = {"workload": "W3-SGD", "students": S, "width": m, "steps": steps,
                           "batch": BATCH, "unit": "GFLOP/s", "flops": work,
                           "ratio_to": ratio_to, "rows": [r.to_json() for r in rows]}
    peers_ok = [r for r in rows if r.status == "ok" and not r.reference and
                r.name.startswith(("jax", "torch"))]
    ref = next((r for r in rows if r.reference), None)
    out["summary"] = summary = []
    if ref is not None and ratio_to == "ntkflow" and peers_ok:
        fastest = min(peers_ok, key=lambda r: r.median)
        speedup = compare_line(rows, ref.name, fastest.name, summary,
                               f"the fastest peer; {1e6 * ref.median / (S * steps):.3g} against "
                               f"{1e6 * fastest.median / (S * steps):.3g} us per student-step; "
                               f"target >= 2x")
        out.update(us_per_student_step=1e6 * ref.median / (S * steps), fastest_peer=fastest.name,
                   fastest_peer_us_per_student_step=1e6 * fastest.median / (S * steps),
                   speedup_vs_fastest=speedup)
    return out
