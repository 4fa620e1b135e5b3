"""W4 (issue #14): teacher-student gradient FLOW with relu networks, train and test loss.

W3's data (d = 32, n = 256 inputs on the unit sphere, relu teacher with 3 unit-norm units
and output weights (+1, -1, +1)) plus 1024 held-out test points drawn the same way (from
the same generator, after W3's draws, so the training set is W3's bit for bit). 64 relu
students of width 256, kappa = 1/sqrt(width), u ~ N(0, 1), W ~ N(0, 1/d), gradient flow
with eta_u = eta_w = 1 on [0, 250] of L = 1/(2n) sum_j (f(x_j) - y_j)^2; the training and
the test loss at 101 evenly spaced times. Nothing else is computed by anyone.

    du_i/dt = -(kappa/n) sum_j e_j relu(z_ij),   dw_i/dt = -(kappa/n) u_i sum_j e_j 1[z_ij > 0] x_j
    e_j = f(x_j) - y_j,  z_ij = w_i . x_j

Matched accuracy. The reference answer is ntkflow dopri5 at rtol 1e-12, atol 1e-15 (it
locates every relu switch and slides on Filippov's field, docs/theory.md §H). Every line
reports its largest relative deviation from it (each trajectory's loss against its own
largest value over the run, as everywhere in the harness), separately for train and test.
ntkflow's default (dopri5, rtol 1e-9) sets the target: each other line walks a ladder of
settings (dt halved, or rtol divided by ~3) from coarse to fine, on a calibration subset of
the students in full mode (the whole ensemble otherwise), and stops at the first setting
whose largest deviation on those students is within ntkflow default's largest deviation on
the same students, or before a run projected to the whole ensemble would exceed the cap
(600 s in full mode): then it is reported "not matched" with the accuracy it reached. The
chosen setting is then run on the whole ensemble, its first call timed on its own (for JAX
it includes tracing and compilation, also timed alone: ``compile_s``), checked, and timed
again ``repeats`` times.

Methods without switch location (fixed steps; adaptive steps that only reject across a
switch) converge at first order at best across relu switches, so they may need very small
steps: that is the point of the workload.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from ._harness import Config, fmt_g, fmt_s, max_rel_diff, say, timed
from .ladder import Line, dev_rows, tune
from .peers import Compiled, load

D, TEACHER_UNITS = 32, 3
ETA_U = ETA_W = 1.0
N_TIMES = 101
REF_RTOL, REF_ATOL = 1e-12, 1e-15
# (students, width, training samples, test samples, t_max) per mode
SIZES = {"full": (64, 256, 256, 1024, 250.0), "quick": (4, 128, 256, 1024, 25.0),
         "tiny": (2, 16, 32, 64, 5.0)}
# Longest projected run of one line on the whole ensemble (s): the ladder stops before it.
CAP_S = {"full": 600.0, "quick": 4.0, "tiny": 1.0}  # quick: W4 adds ~1.5 min to --quick
# At most this many settings per ladder (the smoke test only checks that the ladder runs).
LADDER_MAX = {"full": 20, "quick": 20, "tiny": 3}
# Students the ladder calibrates on (None: all of them).
CALIB = {"full": 4, "quick": None, "tiny": None}
DT_START = 0.16  # the fixed-step ladders' coarsest step (stable: the flow's rate is ~1)
# Any integrator worth the name is this close to the flow; further off is a bug.
SANITY_TOL = 1e-2


def make_data(rng: np.random.Generator, n: int, n_test: int) -> tuple[np.ndarray, ...]:
    """W3's draws (X, then the teacher V) followed by the test inputs: for n = 256 the
    training set is w3_teacher_student.make_data's exactly."""
    def sphere(k: int) -> np.ndarray:
        Z = rng.standard_normal((k, D))
        return Z / np.linalg.norm(Z, axis=1, keepdims=True)

    X = sphere(n)
    V = sphere(TEACHER_UNITS)
    a = np.array([1.0, -1.0, 1.0])
    Xt = sphere(n_test)
    return X, np.maximum(X @ V.T, 0.0) @ a, Xt, np.maximum(Xt @ V.T, 0.0) @ a


def steps_per_record(times: np.ndarray, dt: float) -> tuple[int, float]:
    gap = float(times[1] - times[0])
    k = int(math.ceil(gap / dt - 1e-9))
    return k, gap / k


# --------------------------------------------------------------------------- JAX peers


def _jax_model(jax: Any, X: np.ndarray, y: np.ndarray, test: tuple[Any, Any] | None,
               kappa: float) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """One student's vector field and its recorded losses (train, and test if recorded)."""
    jnp = jax.numpy
    Xj, yj = jnp.asarray(X), jnp.asarray(y)
    n = X.shape[0]

    def field(y_: Any) -> Any:
        u, W = y_
        Z = Xj @ W.T  # (n, m)
        A = jnp.maximum(Z, 0.0)
        g = (kappa / n) * (kappa * (A @ u) - yj)
        du = -ETA_U * (A.T @ g)
        dW = -ETA_W * u[:, None] * (jnp.where(Z > 0, g[:, None], 0.0).T @ Xj)
        return (du, dW)

    def one_loss(u: Any, W: Any, Xs: Any, ys: Any) -> Any:
        e = kappa * (jnp.maximum(Xs @ W.T, 0.0) @ u) - ys
        return 0.5 * jnp.mean(e * e)

    if test is None:
        def losses(y_: Any) -> Any:
            return (one_loss(y_[0], y_[1], Xj, yj),)
    else:
        Xt, yt = jnp.asarray(test[0]), jnp.asarray(test[1])

        def losses(y_: Any) -> Any:
            return (one_loss(y_[0], y_[1], Xj, yj), one_loss(y_[0], y_[1], Xt, yt))

    return field, losses


def _stack(out: Any) -> np.ndarray:
    """(train, [test]) each (students, times) -> (students, 1 or 2, times)."""
    return np.stack([np.asarray(o) for o in out], axis=1)


def jax_rk4(jax: Any, field: Any, losses: Any, times: np.ndarray, dt: float) -> Any:
    """Hand-written classical rk4: lax.scan over record intervals, fori_loop over the
    steps inside one (steps land on the record times), jit(vmap) over students."""
    jnp, lax = jax.numpy, jax.lax
    n_sub, h = steps_per_record(times, dt)

    def axpy(y_: Any, a: float, k: Any) -> Any:
        return (y_[0] + a * k[0], y_[1] + a * k[1])

    def step(_: Any, y_: Any) -> Any:
        k1 = field(y_)
        k2 = field(axpy(y_, h / 2, k1))
        k3 = field(axpy(y_, h / 2, k2))
        k4 = field(axpy(y_, h, k3))
        return tuple(y_[i] + h / 6 * (k1[i] + 2 * k2[i] + 2 * k3[i] + k4[i]) for i in (0, 1))

    def one(u: Any, W: Any) -> Any:
        def interval(y_: Any, _: Any) -> Any:
            y_ = lax.fori_loop(0, n_sub, step, y_)
            return y_, losses(y_)

        _, ls = lax.scan(interval, (u, W), None, length=times.size - 1)
        l0 = losses((u, W))
        return tuple(jnp.concatenate([a[None], b]) for a, b in zip(l0, ls, strict=True))

    return jax.jit(jax.vmap(one))


def diffrax_solve(jax: Any, diffrax: Any, field: Any, losses: Any, times: np.ndarray, *,
                  rtol: float | None = None, dt: float | None = None) -> Any:
    """diffrax, jit(vmap) over students, SaveAt(ts=record times, fn=losses): only the
    losses are kept. rtol: Dopri5 + PIDController(rtol, atol = rtol * 1e-3); dt: Bosh3
    (diffrax has no classical rk4; Bosh3 is its 3rd-order explicit RK, 3 field
    evaluations per step with FSAL) on a StepTo grid that lands on the record times."""
    jnp = jax.numpy
    term = diffrax.ODETerm(lambda _t, y_, _a: field(y_))
    saveat = diffrax.SaveAt(ts=jnp.asarray(times), fn=lambda _t, y_, _a: losses(y_))
    t1 = float(times[-1])
    if rtol is not None:
        solver: Any = diffrax.Dopri5()
        ctrl: Any = diffrax.PIDController(rtol=rtol, atol=rtol * 1e-3)
        dt0: float | None = None
        max_steps = 10_000_000
    else:
        assert dt is not None
        n_sub, _ = steps_per_record(times, dt)
        grid = np.linspace(0.0, t1, (times.size - 1) * n_sub + 1)
        grid[::n_sub] = times  # land exactly on the record times
        solver, ctrl, dt0 = diffrax.Bosh3(), diffrax.StepTo(ts=jnp.asarray(grid)), None
        max_steps = grid.size
    adjoint = diffrax.ForwardMode() if hasattr(diffrax, "ForwardMode") else \
        diffrax.RecursiveCheckpointAdjoint()

    def one(u: Any, W: Any) -> Any:
        sol = diffrax.diffeqsolve(term, solver, t0=0.0, t1=t1, dt0=dt0, y0=(u, W),
                                  stepsize_controller=ctrl, saveat=saveat,
                                  max_steps=max_steps, adjoint=adjoint)
        return sol.ys

    return jax.jit(jax.vmap(one))


# --------------------------------------------------------------------------- the runner


def _dev(ans: np.ndarray, ref: np.ndarray) -> tuple[float, ...]:
    """Largest relative deviation, per recorded loss (train, [test])."""
    return tuple(max_rel_diff(ans[:, k], ref[:, k], per_row=True)
                 for k in range(ref.shape[1]))


def run(cfg: Config, gemm_gflops: float) -> dict[str, Any]:
    del gemm_gflops
    import ntkflow as nf

    S, m, n, n_test, t_max = SIZES[cfg.mode]
    if cfg.w4_students is not None and cfg.w4_students != S:
        cut = f"  [STUDENTS CUT from {S} by --w4-students; cap scaled to match]"
        cap = CAP_S[cfg.mode] * cfg.w4_students / S
        S = cfg.w4_students
    else:
        cut, cap = "", CAP_S[cfg.mode]
    kappa = 1 / math.sqrt(m)
    times = np.linspace(0.0, t_max, N_TIMES)
    label = {"full": "", "quick": "  [QUICK: scaled down]", "tiny": "  [TINY: smoke test]"}
    print(f"\nW4: teacher-student gradient flow, relu teacher ({TEACHER_UNITS} units), d = {D},"
          f" n = {n} train + {n_test} test; {S} relu students x width {m}, eta = 1, "
          f"[0, {t_max:g}], train+test loss at {N_TIMES} times{label[cfg.mode]}{cut}")
    X, y, Xt, yt = make_data(np.random.default_rng(3), n, n_test)
    net = nf.TwoLayer(width=m, act="relu", kappa=kappa)
    data = nf.Dataset(X=X, y=y)
    init = nf.Gaussian(1.0, 1.0)
    try:
        record = nf.Record(times=times, ntk="none", test=nf.Dataset(X=Xt, y=yt))
        with_test = True
    except TypeError:
        record = nf.Record(times=times, ntk="none")
        with_test = False
        print("  test loss: not available in this build (nf.Record has no `test`): ntkflow "
              "and every peer record the training loss only")

    def ntk(train: Any, idx: np.ndarray | None = None) -> Any:
        kw: dict[str, Any] = {"init": init, "trajectories": S, "seed": 0}
        if idx is not None:  # a calibration subset: the same students, by global index
            assert np.array_equal(idx, np.arange(idx.size))
            kw["trajectories"] = idx.size
        return nf.simulate(net, data, train, record=record, threads=cfg.threads, **kw)

    def answer(res: Any) -> np.ndarray:
        out = [res.loss] + ([res.test_loss] if with_test else [])
        return np.stack([np.asarray(o) for o in out], axis=1)

    ref_train = nf.GradientFlow(eta_u=ETA_U, eta_w=ETA_W, t_max=t_max, rtol=REF_RTOL,
                                atol=REF_ATOL)
    default = nf.GradientFlow(eta_u=ETA_U, eta_w=ETA_W, t_max=t_max)
    print(f"  reference: ntkflow dopri5 rtol {REF_RTOL:g} atol {REF_ATOL:g} (run once)")
    t_ref, ref_res = timed(lambda: ntk(ref_train))
    ref = answer(ref_res)
    print(f"    {t_ref:.3g} s; steps median {int(np.median(ref_res.steps))}, located switches "
          f"median {int(np.median(ref_res.events))}, rejected total "
          f"{int(ref_res.rejected.sum())}; status {ref_res.status_counts()}")
    params = ref_res.initial_params()
    u0, W0 = np.asarray(params.u0), np.asarray(params.W0)

    rows: list[dict[str, Any]] = [{
        "name": "ntkflow dopri5 (reference)", "status": "ok", "reference": True,
        "setting": f"rtol {REF_RTOL:g} atol {REF_ATOL:g}", "median": t_ref, "min": t_ref,
        "max": t_ref, "times": [t_ref], "kind": "ntkflow",
        "steps_median": float(np.median(ref_res.steps)),
        "events_median": float(np.median(ref_res.events))}]

    # ntkflow default: the target every other line is tuned to.
    t_first, dres = timed(lambda: ntk(default))
    dans = answer(dres)
    target = dev_rows(dans, ref)
    times_d = [timed(lambda: ntk(default))[0] for _ in range(_repeats(cfg, t_first))]
    t_ntk = float(np.median(times_d))
    rows.append(_row("ntkflow default (dopri5, located switches)",
                     f"rtol {default.rtol:g} atol {default.atol:g}", dans, ref, times_d,
                     t_first, t_ntk, jit=False, matched=True, kind="ntkflow",
                     extra={"steps_median": float(np.median(dres.steps)),
                            "events_median": float(np.median(dres.events)),
                            "rejected_total": int(dres.rejected.sum())}))
    print(f"  ntkflow default: {t_ntk:.3g} s (median of {len(times_d)}), steps median "
          f"{int(np.median(dres.steps))}, located switches median "
          f"{int(np.median(dres.events))}; distance to the reference "
          f"{target.max():.2e} (the target)")

    # dt: record spacing / k, k = 16 at full size (0.156), the coarsest k whose step is at
    # most DT_START at the others, then halved.
    gap = float(times[1] - times[0])
    k0 = math.ceil(gap / DT_START - 1e-9)
    dts = [gap / (k0 * 2**k) for k in range(0, 20)]
    rtols = [10.0 ** (-6 - 0.5 * k) for k in range(0, 15)]  # 1e-6 ... 1e-13

    lines: list[Line | tuple[str, str]] = [Line(
        "ntkflow rk4 (fixed dt)",
        lambda dt, idx: (lambda: answer(ntk(nf.GradientFlow(
            eta_u=ETA_U, eta_w=ETA_W, t_max=t_max, solver="rk4", dt=dt), idx))),
        dts, lambda dt: f"dt {dt:.3g}", jit=False, kind="ntkflow", growth=2.0)]

    jax, why = load("jax", cfg.peers)
    if jax:
        field, losses = _jax_model(jax, X, y, (Xt, yt) if with_test else None, kappa)

        def jax_call(f: Any, idx: np.ndarray) -> Callable[[], np.ndarray]:
            args = (jax.numpy.asarray(u0[idx]), jax.numpy.asarray(W0[idx]))
            return Compiled(jax, f, args, post=_stack)

        lines.append(Line("jax rk4 (lax.scan, jit+vmap)",
                          lambda dt, idx: jax_call(jax_rk4(jax, field, losses, times, dt),
                                                   idx),
                          dts, lambda dt: f"dt {dt:.3g}", jit=True, growth=2.0))
    else:
        lines.append(("jax rk4 (lax.scan, jit+vmap)", why or ""))
    diffrax, why2 = load("diffrax", cfg.peers) if jax else (None, why)
    for name, kw in (("diffrax Dopri5+PID (jit+vmap)", "rtol"),
                     ("diffrax Bosh3 fixed dt (jit+vmap)", "dt")):
        if diffrax:
            lines.append(Line(
                name,
                (lambda s, idx, kw=kw: jax_call(diffrax_solve(
                    jax, diffrax, field, losses, times, **{kw: s}), idx)),
                rtols if kw == "rtol" else dts,
                (lambda s: f"rtol {s:.2g}") if kw == "rtol" else (lambda s: f"dt {s:.3g}"),
                jit=True, growth=None if kw == "rtol" else 2.0))
        else:
            lines.append((name, why2 or ""))

    k = CALIB[cfg.mode]
    sub = np.arange(min(k, S) if k else S)
    print(f"  each line below walks its ladder on {sub.size} of {S} students (target: "
          f"ntkflow default's distance on those students; cap {cap:.0f} s per run on {S})")
    for line in lines:
        if isinstance(line, tuple):
            print(f"  {line[0]}: {line[1]}")
            rows.append({"name": line[0], "status": "skipped", "detail": line[1],
                         "reference": False})
            continue
        print(f"  {line.name}:")
        try:
            tuned = tune(line, sub, S, ref, target, cap, LADDER_MAX[cfg.mode],
                         lambda first: _repeats(cfg, first))
        except Exception as exc:  # noqa: BLE001 - a peer failing must not stop the harness
            print(f"    error: {type(exc).__name__}: {exc}")
            rows.append({"name": line.name, "status": "error", "reference": False,
                         "detail": f"{type(exc).__name__}: {exc}"})
            continue
        row = _row(line.name, line.label(tuned.setting), tuned.answer, ref, tuned.times,
                   tuned.first_s, t_ntk, jit=line.jit, matched=tuned.met and tuned.full_met,
                   kind=line.kind, extra={"ladder": tuned.log,
                                          "matched_on_calibration": tuned.met,
                                          "compile_s": getattr(tuned.fn, "compile_s", None)})
        if not tuned.met:
            row["note"] = (f"did not reach matched accuracy {tuned.stop}; "
                           f"reached {row['max_rel_diff']:.1e}")
        elif not tuned.full_met:
            row["note"] = (f"matched on {sub.size} calibration students, not on all {S} "
                           f"(x{row['max_rel_diff'] / target.max():.2g} of the target)")
        rows.append(row)

    summary: list[str] = []
    _print_table(rows, t_ntk, target.max(), with_test, summary)
    return {"workload": "W4", "summary": summary, "students": S, "width": m, "samples": n, "test_samples":
            n_test if with_test else None, "t_max": t_max, "with_test": with_test,
            "target": float(target.max()), "cap_s": cap, "calibration_students": sub.size,
            "unit": "s", "ratio_to": "ntkflow", "rows": rows}


def _repeats(cfg: Config, first: float) -> int:
    """cfg.repeats, but in full mode runs longer than a minute are timed twice at most."""
    if cfg.mode == "full" and first > 60:
        return min(cfg.repeats, 2)
    return cfg.repeats


def _row(name: str, setting: str, ans: np.ndarray, ref: np.ndarray, times_l: list[float],
         t_first: float, t_ntk: float, *, jit: bool, matched: bool, kind: str,
         extra: dict[str, Any]) -> dict[str, Any]:
    devs = _dev(ans, ref)
    dev = max(devs)
    med = float(np.median(times_l))
    row = {"name": name, "setting": setting, "status": "ok" if dev <= SANITY_TOL else
           "MISMATCH", "reference": False, "times": times_l, "median": med,
           "min": min(times_l), "max": max(times_l), "first_call_s": t_first,
           "compile_s": None, "ratio": med / t_ntk,
           "max_rel_diff": dev, "dev_train": devs[0],
           "dev_test": devs[1] if len(devs) > 1 else None, "tol": SANITY_TOL,
           "matched": matched, "kind": kind, "note": ""}
    if row["status"] == "MISMATCH":
        row["detail"] = f"max rel diff {dev:.3g} > sanity tolerance {SANITY_TOL:g}"
    row.update(extra)
    return row


def _print_table(rows: list[dict[str, Any]], t_ntk: float, target: float,
                 with_test: bool, summary: list[str]) -> None:
    print(f"\n  W4 at matched accuracy (target: ntkflow default's distance to the reference, "
          f"{target:.2e})")
    head = (f"  {'implementation':<44}{'setting':>24}{'median s':>10}{'min s':>9}"
            f"{'max s':>9}{'1st call s':>11}{'compile s':>10}  {'t/t(ntkflow)':>12}  {'dev train':>9}  "
            f"{'dev test':>9}  matched")
    print(head)
    print("  " + "-" * (len(head) - 2))
    for r in rows:
        if r["status"] not in ("ok", "MISMATCH"):
            print(f"  {r['name']:<44}{r.get('detail') or r['status']}")
            continue
        if r["reference"]:
            print(f"  {r['name']:<44}{r['setting']:>24}{fmt_s(r['median']):>10}"
                  f"{'':>9}{'':>9}{'':>11}{'':>10}  {'':>12}  {'(ref)':>9}  {'(ref)':>9}")
            continue
        test = f"{r['dev_test']:.2e}" if with_test else "n/a"
        first = fmt_s(r["first_call_s"])
        comp = fmt_s(r["compile_s"]) if r.get("compile_s") is not None else "-"
        print(f"  {r['name']:<44}{r['setting']:>24}{fmt_s(r['median']):>10}"
              f"{fmt_s(r['min']):>9}{fmt_s(r['max']):>9}{first:>11}{comp:>10}  "
              f"{fmt_g(r['ratio']):>12}  {r['dev_train']:>9.2e}  {test:>9}  "
              f"{'yes' if r['matched'] else 'NO'}"
              + (f"  [{r['note']}]" if r.get("note") else "")
              + ("  MISMATCH" if r["status"] == "MISMATCH" else ""))
    peers = [r for r in rows if r.get("kind") == "peer" and r["status"] == "ok"]
    matched = [r for r in peers if r["matched"]]
    if matched:
        best = min(matched, key=lambda r: r["median"])
        say(summary, f"fastest peer at matched accuracy: {best['name']} ({best['setting']}), "
            f"{best['median'] / t_ntk:.3g}x ntkflow default's time (issue #14's target: >= 5)")
    elif peers:
        best = min(peers, key=lambda r: r["max_rel_diff"])
        say(summary, f"no peer reached the matched accuracy within the cap; the most accurate, "
            f"{best['name']} ({best['setting']}), reached {best['max_rel_diff']:.1e} "
            f"(target {target:.1e}) at {best['median'] / t_ntk:.3g}x ntkflow default's time "
            f"(at matched accuracy the ratio can only be larger)")
    sys.stdout.flush()
