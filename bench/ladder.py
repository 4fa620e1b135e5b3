"""Accuracy ladders: an implementation tightened step by step (dt halved, rtol divided by
~3) until it is as close to a reference answer as ntkflow's line is, then timed at that
setting. W4 (against a tight ntkflow reference) and W1-adaptive (against the closed form)
walk them; a line that reaches the cap first is reported not matched, with the accuracy it
reached.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._harness import timed


class Line:
    """One implementation at one setting (a ladder of settings for the tuned ones)."""

    def __init__(self, name: str, make: Callable[[Any, np.ndarray], Callable[[], np.ndarray]],
                 settings: list[Any], label: Callable[[Any], str], *, jit: bool,
                 kind: str = "peer", growth: float | None = None,
                 stop_unfinished: bool = False) -> None:
        self.name, self.make, self.settings, self.label = name, make, settings, label
        # For a line that returns non-finite values when it stops at a step limit or time
        # budget (not when it diverges, as a coarse fixed step can): a tighter setting
        # only takes more steps, so the ladder ends at the first unfinished run.
        self.stop_unfinished = stop_unfinished
        # Cost factor from one setting to the next: known for a dt ladder (halving dt
        # doubles the steps), measured from the last two runs for an rtol ladder.
        self.jit, self.kind, self.growth = jit, kind, growth


def dev_rows(ans: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per trajectory (axis 0): its largest relative deviation over every recorded
    quantity (axis 1) and time (axis 2), each quantity against its own largest |ref| over
    the run, as everywhere in the harness."""
    scale = np.max(np.abs(ref), axis=2, keepdims=True)
    scale = np.where(scale > 0, scale, 1.0)
    return np.max(np.abs(ans - ref) / scale, axis=(1, 2))


def _calibrate(line: Line, sub: np.ndarray, S: int, ref: np.ndarray, target: np.ndarray,
               cap: float, max_settings: int, reuse_idx: np.ndarray, rows: str,
               start: int = 0, prev_proj: float = math.nan
               ) -> tuple[Any, bool, list[dict[str, Any]], Any, str]:
    """Walk the ladder on the students ``sub`` from setting ``start`` (``prev_proj``: the
    projected time of the setting before it, if one ran). Returns the chosen setting,
    whether it met the target on them, the ladder's log, (when sub is ``reuse_idx``, the
    rows timed) the chosen run's (callable, first-call time, answer) for reuse: it is then
    the warm-up; and why the ladder stopped short, if it did."""
    log: list[dict[str, Any]] = []
    chosen, met, reuse = None, False, None
    stop = f"within the ladder's {max_settings} settings"
    growth = line.growth if line.growth is not None else math.nan
    for s in line.settings[start:max_settings]:
        if math.isfinite(prev_proj) and math.isfinite(growth) and prev_proj * growth > cap:
            log.append({"setting": line.label(s), "skipped": f"projected "
                        f"{prev_proj * growth:.0f} s > cap {cap:.0f} s"})
            stop = "within the cap"
            print(f"    {line.label(s)}: not run (projected {prev_proj * growth:.0f} s on "
                  f"{S} {rows} > cap {cap:.0f} s)")
            break
        fn = line.make(s, sub)
        t_first, ans = timed(fn)
        if line.stop_unfinished and not np.isfinite(ans).all():
            log.append({"setting": line.label(s), "unfinished": True, "first_call_s": t_first})
            print(f"    {line.label(s)}: did not finish (step limit or budget) in "
                  f"{t_first:.3g} s on {sub.size} {rows}")
            chosen, met, stop = s, False, "unfinished at its first setting" if chosen is None \
                else "unfinished at a tighter setting"
            reuse = (fn, t_first, ans) if np.array_equal(sub, reuse_idx) else None
            break
        t_run = timed(fn)[0] if line.jit else t_first
        devs = dev_rows(ans, ref[sub])
        proj = t_run * S / sub.size
        ok = bool(devs.max() <= target[sub].max())
        log.append({"setting": line.label(s), "max_dev": float(devs.max()),
                    "target": float(target[sub].max()), "run_s": t_run,
                    "projected_s": proj, "first_call_s": t_first, "met": ok})
        print(f"    {line.label(s)}: max dev {devs.max():.2e} (target "
              f"{target[sub].max():.2e}) in {t_run:.3g} s on {sub.size} {rows}, projected "
              f"{proj:.3g} s on {S}" + ("  <- matched" if ok else ""))
        sys.stdout.flush()
        if proj > cap:
            stop = "within the cap"
        if proj > cap and chosen is not None:
            log[-1]["over_cap"] = True
            break
        if line.growth is None and math.isfinite(prev_proj) and prev_proj > 0:
            growth = max(proj / prev_proj, 1.0)
        prev_proj = proj
        chosen, met = s, ok
        reuse = (fn, t_first, ans) if np.array_equal(sub, reuse_idx) else None
        if ok or proj > cap:
            break
    return chosen, met, log, reuse, stop


@dataclass
class Tuned:
    """A line at its chosen setting: ``met`` on the calibration rows, ``full_met`` on the
    timed rows; ``times`` are the timed runs' seconds multiplied by ``scale`` (projected to
    the whole ensemble when only part of it was timed)."""

    setting: Any
    met: bool
    full_met: bool
    log: list[dict[str, Any]]
    stop: str
    fn: Callable[[], np.ndarray]
    first_s: float
    answer: np.ndarray
    times: list[float]
    scale: float


def tune(line: Line, sub: np.ndarray, S: int, ref: np.ndarray, target: np.ndarray, cap: float,
         max_settings: int, repeats: Callable[[float], int],
         run_idx: np.ndarray | None = None, rows: str = "students") -> Tuned:
    """Walk ``line``'s ladder on the rows ``sub`` (answers (rows, quantities, times) against
    ``ref``; ``target`` per row), then run the chosen setting on ``run_idx`` (all S rows by
    default), check it against the target there and time it ``repeats(first call s)``
    times, scaled to S rows."""
    idx = np.arange(S) if run_idx is None else run_idx
    log: list[dict[str, Any]] = []
    start, prev_proj = 0, math.nan
    while True:
        found, found_met, part, reuse, stop = _calibrate(line, sub, S, ref, target, cap,
                                                         max_settings, idx, rows, start,
                                                         prev_proj)
        log += part
        if found is None:  # the next setting's projection was over the cap: keep the last
            break
        chosen, met = found, found_met
        if reuse is not None:
            fn, t_first, ans = reuse
        else:
            fn = line.make(chosen, idx)
            t_first, ans = timed(fn)
        devs = dev_rows(ans, ref[idx])
        full_met = bool(devs.max() <= target[idx].max())
        at = line.settings.index(chosen)
        if full_met or not met or at + 1 >= max_settings or t_first * S / idx.size > cap:
            break
        # The calibration rows met the target but the whole ensemble did not: the ladder
        # goes on from the next setting with the rows that failed added to them (the worst
        # 16), so the time reported is that of a setting that matches on every row.
        worst = np.argsort(-devs)[:16]
        bad = idx[worst[devs[worst] > target[idx].max()]]
        sub = np.union1d(sub, bad)
        log.append({"setting": line.label(chosen), "full_max_dev": float(devs.max()),
                    "full_target": float(target[idx].max()), "widened_to": int(sub.size)})
        print(f"    {line.label(chosen)} on all {idx.size} {rows}: max dev {devs.max():.2e} > "
              f"target {target[idx].max():.2e}; the ladder goes on with the {bad.size} worst "
              f"added to its calibration {rows} ({sub.size})")
        sys.stdout.flush()
        start, prev_proj = at + 1, t_first * S / idx.size
    scale = S / idx.size
    times = [timed(fn)[0] * scale for _ in range(repeats(t_first))]
    return Tuned(chosen, met, full_met, log, stop, fn, t_first, ans, times, scale)
