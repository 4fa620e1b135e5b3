"""Timing, agreement checks and the table: shared by every workload.

The protocol (bench/README.md): an implementation is run once as a warm-up, and that
run's answer is checked against the reference (ntkflow, or the NumPy reference where
ntkflow cannot run the workload yet) *before* any time of it is reported; then it is
timed ``repeats`` times and the median, min and max are printed.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Config:
    """What the runner asked for."""

    mode: str = "full"  # "full", "quick" or "tiny"
    repeats: int = 5
    peers: frozenset[str] = frozenset({"jax", "torch", "diffrax", "scipy"})
    threads: int | None = None
    w3_steps: int | None = None  # cut W3's 5000 steps (labelled) when time is short
    w4_students: int | None = None  # cut W4's 64 students (labelled) when time is short

    @property
    def quick(self) -> bool:
        return self.mode != "full"


@dataclass
class Impl:
    """One implementation of a workload.

    run() returns the answer (a NumPy array); ``subset`` is the index array of the
    reference rows it computes, when it runs only part of the ensemble, and then
    ``scale`` = full size / subset size multiplies its times (extrapolation, labelled).
    """

    name: str
    run: Callable[[], Any] | None = None
    skip: str | None = None
    tol: float = 1e-9
    note: str = ""
    subset: Any = None
    scale: float = 1.0
    repeats: int | None = None  # override (a slow loop-over-trajectories reference)
    kind: str = "peer"  # "ntkflow", "numpy" or "peer": only for the JSON
    # A check of its own in place of max_rel_diff <= tol, for answers that cannot equal the
    # reference's (SGD peers draw other batches): (answer, reference) -> (number shown in
    # the "max rel diff" column, ok, what was tested).
    compare: Callable[[Any, Any], tuple[float, bool, str]] | None = None


@dataclass
class Row:
    name: str
    status: str  # "ok", "MISMATCH", "skipped", "not available yet", "error"
    detail: str = ""
    times: list[float] = field(default_factory=list)
    median: float = math.nan
    min: float = math.nan
    max: float = math.nan
    throughput: float = math.nan
    ratio: float = math.nan
    max_rel_diff: float = math.nan
    tol: float = math.nan
    note: str = ""
    reference: bool = False
    vs_exact: float = math.nan
    compile_s: float = math.nan  # JAX: tracing + XLA compilation, outside every timing
    kind: str = "peer"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in self.__dict__.items():
            out[k] = None if isinstance(v, float) and not math.isfinite(v) else v
        return out


def max_rel_diff(actual: Any, expected: Any, *, per_row: bool) -> float:
    """max |actual - expected| / scale.

    per_row: the scale is each row's (trajectory's) largest |expected| over the run, so a
    loss that decays to 1e-18 is compared to its own size over the run rather than
    pointwise (pointwise relative errors of values near zero measure round-off only).
    Otherwise the scale is the largest |expected| of the whole array (Gram matrices).
    """
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if a.shape != e.shape:
        raise ValueError(f"shape {a.shape} != reference shape {e.shape}")
    if per_row:
        scale = np.max(np.abs(e), axis=tuple(range(1, e.ndim)), keepdims=True)
    else:
        scale = np.max(np.abs(e))
    scale = np.where(scale > 0, scale, 1.0)
    err = np.abs(a - e) / scale
    if not np.all(np.isfinite(err)):
        return math.inf
    return float(np.max(err)) if err.size else 0.0


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def fmt_s(x: float) -> str:
    if not math.isfinite(x):
        return "-"
    return f"{x:.3g}" if x < 100 else f"{x:.0f}"


def fmt_g(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{x:.3g}"


class Table:
    """Prints rows as they finish, so a long run shows progress."""

    def __init__(self, unit: str, ratio_to: str) -> None:
        self.unit = unit
        self.ratio_to = ratio_to
        self.rows: list[Row] = []
        head = (f"  {'implementation':<36}{'median s':>10}{'min s':>9}{'max s':>9}"
                f"{'compile s':>10}  {unit:>16}  {'t/t(' + ratio_to + ')':>15}  "
                f"{'max rel diff':>12}  check")
        print(head)
        print("  " + "-" * (len(head) - 2))
        sys.stdout.flush()

    def add(self, row: Row) -> None:
        self.rows.append(row)
        if row.status in ("ok", "MISMATCH"):
            diff = "(reference)" if row.reference else f"{row.max_rel_diff:.2e}"
            check = "ref" if row.reference else row.status
            print(f"  {row.name:<36}{fmt_s(row.median):>10}{fmt_s(row.min):>9}"
                  f"{fmt_s(row.max):>9}{fmt_s(row.compile_s):>10}  "
                  f"{fmt_g(row.throughput):>16}  "
                  f"{fmt_g(row.ratio):>15}  {diff:>12}  {check}"
                  + (f"  [{row.note}]" if row.note else ""))
        else:
            print(f"  {row.name:<36}{row.detail or row.status}")
        sys.stdout.flush()


def run_impls(
    impls: list[Impl],
    cfg: Config,
    *,
    work: float,
    unit: str,
    per_row: bool,
    ratio_to: str = "ntkflow",
    exact: Any = None,
    exact_label: str = "closed form",
) -> list[Row]:
    """Run the implementations in order; the first one that runs is the reference.

    work: units of throughput in one full-size run (trajectory-steps, GFLOP, ...).
    exact: a closed-form answer (or a tight reference, named by ``exact_label``), when there
    is one: every row also gets its own distance to it (in its note), so that a
    disagreement can be attributed.
    """
    table = Table(unit, ratio_to)
    ref_answer: Any = None
    ref_time = math.nan
    for impl in impls:
        if impl.run is None:
            why = impl.skip or "skipped"
            status = ("skipped" if why.startswith("skipped") else "not available yet"
                      if why.startswith("not available") else "error")
            table.add(Row(impl.name, status, detail=why, note=impl.note))
            continue
        try:
            warm, answer = timed(impl.run)  # warm-up (JIT compilation, first-touch memory)
        except Exception as exc:  # noqa: BLE001 - a peer failing must not stop the harness
            table.add(Row(impl.name, "error", detail=f"{type(exc).__name__}: {exc}"))
            continue
        answer = np.asarray(answer)
        vs_exact = math.nan
        if exact is not None:
            vs_exact = max_rel_diff(answer, exact if impl.subset is None
                                    else exact[impl.subset], per_row=per_row)
        is_ref = ref_answer is None
        if is_ref:
            ref_answer = answer
            diff, status, tol = 0.0, "ok", 0.0
        else:
            expected = ref_answer if impl.subset is None else ref_answer[impl.subset]
            if impl.compare is not None:
                diff, agree, tested = impl.compare(answer, expected)
                tol, status = math.nan, "ok" if agree else "MISMATCH"
                impl.note = tested + (f"; {impl.note}" if impl.note else "")
            else:
                try:
                    diff = max_rel_diff(answer, expected, per_row=per_row)
                except ValueError as exc:
                    table.add(Row(impl.name, "error", detail=str(exc)))
                    continue
                tol = impl.tol
                status = "ok" if diff <= tol else "MISMATCH"
        # Only now, with the answer checked, is it timed.
        asked = impl.repeats if impl.repeats is not None else cfg.repeats
        n = timed_runs(asked, warm)
        times = [timed(impl.run)[0] * impl.scale for _ in range(n)]
        if n < asked:  # cut by the budget (a line's own fixed count is not noted)
            impl.note = (f"{n} timed runs (a warm-up took {warm:.0f} s)"
                         + (f"; {impl.note}" if impl.note else ""))
        med = float(np.median(times))
        if is_ref:
            ref_time = med
        row = Row(impl.name, status, times=times, median=med, min=min(times),
                  max=max(times), throughput=work / med, ratio=med / ref_time,
                  max_rel_diff=diff, tol=tol, note=impl.note, reference=is_ref,
                  vs_exact=vs_exact, compile_s=getattr(impl.run, "compile_s", math.nan),
                  kind=impl.kind)
        if math.isfinite(vs_exact):
            row.note = f"vs {exact_label} {vs_exact:.1e}" + (f"; {row.note}" if row.note else "")
        if status == "MISMATCH":
            row.detail = (f"failed: {impl.note}" if impl.compare is not None
                          else f"max rel diff {diff:.3g} > tolerance {tol:g}")
        table.add(row)
    return table.rows


# A line whose warm-up took longer than this share of the budget is timed fewer times
# (never fewer than twice), so that a full run of every workload fits in a session: W3's
# NumPy line takes minutes per run.
SLOW_LINE_BUDGET_S = 240.0


def timed_runs(repeats: int, warm_s: float) -> int:
    """How many timed runs a line gets: ``repeats``, or fewer (at least 2) when that many
    runs of ``warm_s`` seconds would exceed SLOW_LINE_BUDGET_S."""
    if repeats <= 2 or warm_s * repeats <= SLOW_LINE_BUDGET_S:
        return repeats
    return max(2, int(SLOW_LINE_BUDGET_S // warm_s))


def skipped(name: str, why: str) -> Impl:
    """A line for an implementation that cannot run here (printed, never a failure)."""
    return Impl(name, skip=why)


def say(summary: list[str], text: str) -> None:
    """Print a closing line of a workload and keep it for the JSON (and README's table)."""
    print(f"  {text}")
    sys.stdout.flush()
    summary.append(text)


def like_for_like(rows: list[Row], textbook: str, best: str, algorithm: str,
                  summary: list[str]) -> dict[str, Any]:
    """The two readings of a table with ntkflow's textbook line (``textbook``: the method
    as written, stage by stage, what the peers run) and its best line (``best``): every
    peer against the textbook line (implementation speed alone), and the best line over
    the textbook line (``algorithm`` names what it changes: an algorithmic speed-up, not
    implementation speed). Returns the ratios, also printed and kept in ``summary``."""
    by = {r.name: r for r in rows if r.status == "ok"}
    out: dict[str, Any] = {"textbook": textbook, "best": best}
    if textbook not in by:
        return out
    t_text = by[textbook].median
    peers = [r for r in rows if r.status == "ok" and r.kind != "ntkflow"]
    out["peers_over_textbook"] = {r.name: r.median / t_text for r in peers}
    if peers:
        say(summary, "like for like (textbook method against textbook method): "
            + "; ".join(f"{r.name} {r.median / t_text:.3g}x the time of {textbook}"
                        for r in peers))
    if best in by:
        alg = t_text / by[best].median
        out["algorithmic_speedup"] = alg
        say(summary, f"best method: {best} is {alg:.3g}x faster than {textbook}: an "
            f"algorithmic speed-up ({algorithm}), on top of the like-for-like ratios")
    return out


def compare_line(rows: list[Row], fast: str, slow: str, summary: list[str],
                 target: str = "") -> float:
    """Say ``fast``'s speed-up over ``slow`` (median over median, rows by name, both
    checked ok; below 1 it is slower, and the line says so); NaN when either did not run."""
    by = {r.name: r for r in rows if r.status == "ok"}
    if fast not in by or slow not in by:
        return math.nan
    ratio = by[slow].median / by[fast].median
    say(summary, f"{fast}: speed-up {ratio:.3g}x over {slow}"
        + (" (slower)" if ratio < 1 else "") + (f" ({target})" if target else ""))
    return ratio
