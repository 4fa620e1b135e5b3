"""How fast is an ensemble of ReLU students trained by gradient descent on a teacher?

    python bench/bench_teacher_student.py           # 64 students, 5000 steps
    python bench/bench_teacher_student.py --quick   # 16 students, 1000 steps

n = 256 inputs on the unit sphere of R^32; teacher y = sum_k a_k relu(v_k . x) with 3
unit-norm rows v_k and a = (+1, -1, +1); students of width 256 with kappa = 1/sqrt(256),
u ~ N(0, 1), W ~ N(0, 1/d) (nf.Gaussian(1, 1)); full-batch gradient descent, lr 0.05,
loss recorded every 50 steps. ntkflow runs the whole ensemble; the reference is a NumPy
loop over the same ensemble, batched over students (np.matmul on (students, n, width)
stacks), run for fewer steps (--ref-steps) from the same initial parameters: the two are
checked against each other over those steps and the ratio is per step.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from bench_gram import blas_settings, machine, timed

import ntkflow as nf


def teacher_data(n: int, d: int, seed: int = 0) -> nf.Dataset:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    V = rng.normal(size=(3, d))
    V /= np.linalg.norm(V, axis=1, keepdims=True)
    a = np.array([1.0, -1.0, 1.0])
    return nf.Dataset(X=X, y=np.maximum(X @ V.T, 0.0) @ a)


def numpy_descent(u, W, X, y, kappa, lr, steps, every):
    """Batched gradient descent of students u (S, m), W (S, m, d); losses every `every`."""
    u, W = u.copy(), W.copy()
    n = X.shape[0]
    losses = []
    for s in range(steps + 1):
        Z = np.matmul(X, W.transpose(0, 2, 1))  # (S, n, m)
        H = np.maximum(Z, 0.0)
        r = kappa * np.matmul(H, u[:, :, None])[:, :, 0] - y  # (S, n)
        if s % every == 0:
            losses.append(0.5 * np.einsum("sn,sn->s", r, r) / n)
        if s == steps:
            break
        gu = kappa / n * np.matmul(H.transpose(0, 2, 1), r[:, :, None])[:, :, 0]
        B = (Z > 0) * r[:, :, None]
        gW = kappa / n * u[:, :, None] * np.matmul(B.transpose(0, 2, 1), X)
        u -= lr * gu
        W -= lr * gW
    return u, W, np.array(losses).T


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--students", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--ref-steps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    S = args.students or (16 if args.quick else 64)
    steps = args.steps or (1000 if args.quick else 5000)
    n, d, m, lr, every = 256, 32, 256, 0.05, 50
    if steps % every or args.ref_steps % every:
        ap.error(f"--steps and --ref-steps must be multiples of {every} (the record interval)")
    info = machine()
    print("machine:", json.dumps(info, indent=1, default=str))
    data = teacher_data(n, d)
    net = nf.TwoLayer(width=m, act="relu", kappa=1 / np.sqrt(m))
    init = nf.Gaussian(1.0, 1.0)

    def run(n_steps: int, ntk: str = "none") -> nf.Result:
        return nf.simulate(net, data, nf.GradientDescent(lr=lr, steps=n_steps), init=init,
                           trajectories=S, seed=1, threads=args.threads,
                           record=nf.Record(times=np.arange(0, n_steps + 1, every),
                                            ntk=ntk, params="final"))

    # Agreement over the reference's steps, from the same initial parameters.
    short = run(args.ref_steps)
    start = short.initial_params()  # regenerated bit for bit from (seed, trajectory)
    u0, W0 = start.u0, start.W0
    u_ref, W_ref, loss_ref = numpy_descent(u0, W0, data.X, data.y, net.kappa, lr,
                                           args.ref_steps, every)
    err = max(float(np.max(np.abs(short.loss - loss_ref) / loss_ref)),
              float(np.max(np.abs(short.W - W_ref)) / np.max(np.abs(W_ref))))
    print(f"{S} students, {args.ref_steps} steps: max relative difference to NumPy {err:.2e}")
    assert err < 1e-9, "ntkflow and the NumPy loop disagree"

    settings = blas_settings()
    t_np: dict[str, list[float]] = {name: [] for name in settings}
    t_ours: list[float] = []
    t_metrics: list[float] = []
    res = res_k = short
    for _ in range(args.repeats):  # interleaved: a load change hits all alike
        t0 = time.perf_counter()
        res = run(steps)
        t_ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        res_k = run(steps, ntk="auto")
        t_metrics.append(time.perf_counter() - t0)
        for name, ctx in settings.items():
            t_np[name].append(timed(lambda: numpy_descent(
                u0, W0, data.X, data.y, net.kappa, lr, args.ref_steps, every), ctx))
    assert np.array_equal(res_k.loss, res.loss) and np.all(res.status == 0)
    med = {name: float(np.median(v)) for name, v in t_np.items()}
    low = {name: float(np.min(v)) for name, v in t_np.items()}
    best = min(med, key=med.__getitem__)
    a, a_min = float(np.median(t_ours)), float(np.min(t_ours))
    print(f"ntkflow: {S} students x {steps} steps in median {a:.2f} s of {args.repeats} "
          f"(best {a_min:.2f} s; {a / steps * 1e3:.3f} ms per ensemble step), all "
          f"{np.round(t_ours, 2)}")
    print(f"ntkflow with the kernel metrics at all {res.times.size} record times "
          f"(Record ntk='auto', O(n^2 m) each): median {float(np.median(t_metrics)):.2f} s, "
          f"all {np.round(t_metrics, 2)}")
    for name in settings:
        print(f"NumPy batched loop, BLAS {name}: {med[name] / args.ref_steps * 1e3:.3f} ms per "
              f"ensemble step (median of {args.repeats} x {args.ref_steps} steps; best "
              f"{low[name] / args.ref_steps * 1e3:.3f})")
    per_step_np = med[best] / args.ref_steps
    print(f"-> NumPy (BLAS {best}, the faster) would take {per_step_np * steps:.1f} s for "
          f"{steps} steps; ratio NumPy / ntkflow per step = {per_step_np * steps / a:.2f}x "
          f"(medians), {low[best] / args.ref_steps * steps / a_min:.2f}x (best of each)")
    print(f"final loss: median {np.median(res.loss[:, -1]):.3e} "
          f"(initial {np.median(res.loss[:, 0]):.3e}); pattern change median "
          f"{np.median(res.pattern_change[:, -1]):.2f}")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    path = out / f"bench_teacher_student_{info['git']}_{int(time.time())}.json"
    path.write_text(json.dumps({
        "machine": info, "students": S, "steps": steps, "ref_steps": args.ref_steps,
        "agreement": err, "ntkflow_s": t_ours, "ntkflow_metrics_s": t_metrics,
        "load_after": os.getloadavg(),
        "numpy_s_per_ref_run": t_np, "speedup": per_step_np * steps / a}, indent=1,
        default=str))
    print("saved", path)


if __name__ == "__main__":
    main()
