"""python -m bench [scaling | s1 [--simulate]] [--quick | --tiny]
[--only W1|W1-fixed|W1-adaptive|W2|W3|W3-SGD|W4|...]
[--repeats N] [--peers all|none|jax,torch,...] [--threads N] [--json PATH]
[--save auto|yes|no] [--single-thread auto|yes|no]
python -m bench report [--check] [JSON]

Runs the workloads of bench/README.md: ntkflow beside every reference that is installed,
each checked against ntkflow (or the NumPy reference) before its time is reported.
A full run (no --quick/--tiny) also runs every workload again at one thread (a child
process: thread counts are fixed before the peers are imported) and saves everything to
bench/results/run-<date>-<git hash>.json; `report` writes README.md's performance table
from the newest saved run (bench/report.py).
Exit status 0 when every check agreed, 1 when one did not, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import gemm, machine, peers
from ._harness import SLOW_LINE_BUDGET_S, Config

# The workloads, in running order: name -> "module:function" in bench/, each function
# (cfg: Config, gemm_gflops: float) -> {"workload": name, "rows": [...], ...}. Adding a
# workload is one entry here; bench/report.py tabulates whatever a run's JSON holds.
REGISTRY = {
    "W1-fixed": "w1_ensemble:run_fixed",
    "W1-adaptive": "w1_ensemble:run_adaptive",
    "W2": "w2_gram:run",
    "W3": "w3_teacher_student:run",
    "W3-SGD": "w3_sgd:run",
    "W4": "w4_teacher_student_flow:run",
    "W5": "w5_stiff:run",
}
WORKLOADS = tuple(REGISTRY)
RESULTS = Path(__file__).resolve().parent / "results"
ALL_PEERS = frozenset({"jax", "torch", "diffrax", "scipy"})


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", nargs="?", choices=("workloads", "scaling", "s1"),
                   default="workloads",
                   help="the workload table (default), the scaling study of W1-fixed, or S1 "
                        "(sweeps at volume, bench/s1_sweeps.py: about 20 minutes at full size on an idle 2-core machine)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true",
                      help="scaled-down sizes and 3 repeats (labelled QUICK); < 2 min")
    size.add_argument("--tiny", action="store_true",
                      help="tiny sizes, 1 repeat: a smoke test of the harness itself")
    p.add_argument("--only", action="append", metavar="W",
                   help="run only this workload (or family: W1 is both W1 lines): "
                        f"{', '.join(WORKLOADS)}; may be repeated")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed runs after the warm-up (default 5; quick 3; tiny 1)")
    p.add_argument("--peers", default="all",
                   help="which optional references to try: all, none, or a comma list of "
                        "jax,torch,diffrax,scipy")
    p.add_argument("--threads", type=int, default=None,
                   help="ntkflow threads (default: OMP_NUM_THREADS or all cores)")
    p.add_argument("--w3-steps", type=int, default=None, metavar="N",
                   help="run W3 and W3-SGD for N steps instead of their definition's (a multiple "
                        "of the record interval; labelled in the output); per-step rates "
                        "unchanged")
    p.add_argument("--w4-students", type=int, default=None, metavar="N",
                   help="run W4 with N students instead of its definition's (labelled; the "
                        "per-run cap of the accuracy ladders is scaled by the same factor)")
    p.add_argument("--json", type=Path, default=None, metavar="PATH",
                   help="also write every number, the machine and the git hash as JSON")
    p.add_argument("--save", choices=("auto", "yes", "no"), default="auto",
                   help="also save the JSON as bench/results/run-<date>-<git hash>[-mode].json "
                        "(s1: s1[-simulated]-<date>-<git hash>[-mode].json; auto: a full "
                        "run of every workload, or of s1)")
    p.add_argument("--simulate", action="store_true",
                   help="s1 only: the simulated 100-node run (bench/s1_simulated.py): the "
                        "client and store at the rate 100 nodes produce, sleeping tasks")
    p.add_argument("--single-thread", choices=("auto", "yes", "no"), default="auto",
                   help="also run the workloads at one thread for every implementation, in "
                        "a child process (auto: in a full run)")
    return p


def _config(args: argparse.Namespace) -> Config:
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    repeats = args.repeats if args.repeats is not None else {"full": 5, "quick": 3,
                                                              "tiny": 1}[mode]
    if repeats < 1:
        raise SystemExit("--repeats must be >= 1")
    if args.peers == "all":
        peers = ALL_PEERS
    elif args.peers == "none":
        peers = frozenset()
    else:
        peers = frozenset(s.strip() for s in args.peers.split(",") if s.strip())
        bad = peers - ALL_PEERS
        if bad:
            raise SystemExit(f"--peers: unknown {sorted(bad)}; allowed {sorted(ALL_PEERS)}")
    if args.w3_steps is not None and args.w3_steps < 1:
        raise SystemExit("--w3-steps must be >= 1")
    if args.w4_students is not None and args.w4_students < 1:
        raise SystemExit("--w4-students must be >= 1")
    if args.threads is not None and args.threads < 1:
        raise SystemExit("--threads must be >= 1")
    return Config(mode=mode, repeats=repeats, peers=peers, threads=args.threads,
                  w3_steps=args.w3_steps, w4_students=args.w4_students)


def _selected(only: list[str] | None) -> list[str]:
    if not only:
        return list(WORKLOADS)
    out: list[str] = []
    for item in only:
        for name in item.split(","):
            key = name.strip().upper().replace("_", "-")
            # A workload's own name selects it alone (W3 is W3's GD line, not W3-SGD);
            # a prefix selects its family (W1: W1-fixed and W1-adaptive).
            matches = [w for w in WORKLOADS if w.upper() == key] or [
                w for w in WORKLOADS if w.upper().startswith(key + "-")]
            if not matches:
                raise SystemExit(f"--only: unknown workload {name!r}; choose from "
                                 f"W1, {', '.join(WORKLOADS)}")
            out += [w for w in matches if w not in out]
    return out


def _single_thread_argv(args: argparse.Namespace, json_path: Path) -> list[str]:
    """The same run at one thread, for a child process (see _run_single_thread)."""
    out = {"full": [], "quick": ["--quick"], "tiny": ["--tiny"]}[
        "tiny" if args.tiny else "quick" if args.quick else "full"]
    for item in args.only or []:
        out += ["--only", item]
    for flag, val in (("--repeats", args.repeats), ("--w3-steps", args.w3_steps),
                      ("--w4-students", args.w4_students)):
        if val is not None:
            out += [flag, str(val)]
    return out + ["--peers", args.peers, "--threads", "1", "--single-thread", "no",
                  "--save", "no", "--json", str(json_path)]


def _run_single_thread(args: argparse.Namespace) -> dict[str, Any] | None:
    """Every workload again with every implementation at one thread. A child process,
    because the process must be pinned and the libraries' counts set before they load."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "single.json"
        cmd = [sys.executable, "-m", "bench", *_single_thread_argv(args, path)]
        print(f"\n==== single-thread table: {' '.join(cmd[1:])}", flush=True)
        proc = subprocess.run(cmd, cwd=Path(__file__).resolve().parent.parent, check=False)
        if not path.exists():
            print(f"single-thread run failed (exit status {proc.returncode}): no JSON")
            return None
        child: dict[str, Any] = json.loads(path.read_text())
        child["returncode"] = proc.returncode
        return child


def _save_path(report: dict[str, Any]) -> Path:
    """bench/results/run-<UTC date and time>-<git hash>[-<mode>].json: sorting the names
    sorts the runs by time."""
    stamp = report["date"].replace(":", "").replace("-", "")[:13]  # 20261201T0830
    git = str(report["git"])
    short = git[:10] + ("-dirty" if git.endswith("-dirty") else "")
    mode = "" if report["mode"] == "full" else f"-{report['mode']}"
    some = "-only-" + "-".join(report["only"]) if report.get("only") else ""
    return RESULTS / f"run-{stamp}-{short}{mode}{some}.json"


def _s1(args: argparse.Namespace, cfg: Config, raw: list[str]) -> int:
    """S1 or its simulated run: the machine and the numbers in one JSON (no GEMM, no
    peers: S1 measures the sweep's own costs)."""
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    info = machine.info()
    print(machine.describe(info))
    report: dict[str, Any] = {"argv": raw, "date": date, "mode": cfg.mode, "machine": info,
                              "git": info["git"]}
    if args.simulate:
        from . import s1_simulated

        report["s1_simulated"] = s1_simulated.run(cfg)
    else:
        from . import s1_sweeps

        report["s1"] = s1_sweeps.run(cfg)
    text = json.dumps(report, indent=1, default=str)
    targets = [args.json] if args.json is not None else []
    if args.save == "yes" or (args.save == "auto" and cfg.mode == "full"):
        name = _save_path(report).name.replace("run-", "s1-simulated-" if args.simulate
                                               else "s1-", 1)
        targets.append(RESULTS / name)
    for path in targets:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
        print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else argv
    if raw[:1] == ["report"]:
        from . import report as report_mod

        return report_mod.main(raw[1:])
    args = _parser().parse_args(argv)
    cfg = _config(args)
    if args.simulate and args.study != "s1":
        raise SystemExit("--simulate goes with the s1 study: python -m bench s1 --simulate")
    if args.study == "s1":
        return _s1(args, cfg, raw)
    start = time.perf_counter()
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    info = machine.info()
    print(machine.describe(info))
    # Before any peer is imported: XLA sizes its thread pools when its CPU client starts.
    info["peer_threads"] = threads = peers.match_threads(cfg.threads)
    print(f"threads: {threads['summary']}")
    threads["observed"] = peers.observe_threads(cfg.peers, threads["ntkflow"])
    print("threads observed (threads that ran >= 1/4 of the busiest one's CPU time during "
          "a float64 matrix product; ntkflow: nf.ntk_gram): "
          + ", ".join(f"{k} {v}" for k, v in threads["observed"].items()))
    label = {"full": "full sizes", "quick": "QUICK: scaled-down sizes",
             "tiny": "TINY: smoke-test sizes"}[cfg.mode]
    print(f"mode: {label}; timings: median of {cfg.repeats} after 1 warm-up run "
          f"(wall clock; fewer, at least 2, for a line whose runs would take over "
          f"{SLOW_LINE_BUDGET_S:.0f} s, said in its row); peers tried: {', '.join(sorted(cfg.peers)) or 'none'}")
    g = gemm.measure(gemm.sizes(cfg.mode), repeats=5)
    print(f"float64 GEMM (NumPy BLAS, {g['n']}x{g['n']}): median {g['gflops_median']:.1f} "
          f"GFLOP/s (min {g['gflops_min']:.1f}, max {g['gflops_max']:.1f})")
    report: dict[str, Any] = {"argv": raw, "date": date, "mode": cfg.mode,
                              "repeats": cfg.repeats, "threads": threads["ntkflow"],
                              "machine": info, "git": info["git"], "gemm": g}
    if args.study == "scaling":
        from . import scaling

        report["scaling"] = scaling.run(cfg)
        ok = True
    else:
        results = []
        report["workloads"] = results
        report["only"] = _selected(args.only) if args.only else None
        for w in _selected(args.only):
            module, func = REGISTRY[w].split(":")
            run = getattr(importlib.import_module(f".{module}", __package__), func)
            results.append(run(cfg, g["gflops_median"]))
            # A full run lasts hours: what has been measured is on disk at every step, so
            # an interrupted run still leaves its record (marked incomplete).
            _write(report, _targets(args, cfg, report), start, complete=False)
        rows = [r for res in results for r in res["rows"]]
        checked = [r for r in rows if r["status"] in ("ok", "MISMATCH") and not r["reference"]]
        bad = [r["name"] for r in rows if r["status"] in ("MISMATCH", "error")]
        ok = not bad
        print(f"\nagreement: {len(checked) - sum(r['status'] == 'MISMATCH' for r in checked)}"
              f" of {len(checked)} checked implementations agree with their reference"
              + (f"; FAILED: {', '.join(bad)}" if bad else ""))
        single = args.single_thread == "yes" or (args.single_thread == "auto" and
                                                 cfg.mode == "full")
        if single and threads["ntkflow"] > 1:
            report["single_thread"] = child = _run_single_thread(args)
            ok = ok and child is not None and child["returncode"] == 0
    print(f"total wall time {time.perf_counter() - start:.1f} s")
    # Complete: every workload ran to its end (an --only run is a partial record).
    for path in _write(report, _targets(args, cfg, report), start, complete=not args.only):
        print(f"wrote {path}")
    return 0 if ok else 1


def _targets(args: argparse.Namespace, cfg: Config, report: dict[str, Any]) -> list[Path]:
    """--json's path, plus bench/results/ for a full run of every workload (or --save yes)."""
    targets = [args.json] if args.json is not None else []
    if args.study == "workloads" and (args.save == "yes" or (
            args.save == "auto" and cfg.mode == "full" and not args.only)):
        targets.append(_save_path(report))
    return targets


def _write(report: dict[str, Any], targets: list[Path], start: float, *,
           complete: bool) -> list[Path]:
    report["elapsed_s"] = time.perf_counter() - start
    report["complete"] = complete
    text = json.dumps(report, indent=1, default=str)
    for path in targets:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(text + "\n")
        tmp.replace(path)  # a kill mid-write leaves the previous record, not half of one
    return targets


if __name__ == "__main__":
    sys.exit(main())
