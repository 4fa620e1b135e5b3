"""python -m bench [scaling] [--quick | --tiny]
[--only W1|W1-fixed|W1-adaptive|W2|W3|W3-SGD|W4]
[--repeats N] [--peers all|none|jax,torch,...] [--threads N] [--json PATH]

Runs the workloads of bench/README.md: ntkflow beside every reference that is installed,
each checked against ntkflow (or the NumPy reference) before its time is reported.
Exit status 0 when every check agreed, 1 when one did not, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from . import gemm, machine, peers
from ._harness import Config

WORKLOADS = ("W1-fixed", "W1-adaptive", "W2", "W3", "W3-SGD", "W4")
ALL_PEERS = frozenset({"jax", "torch", "diffrax", "scipy"})


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", nargs="?", choices=("workloads", "scaling"), default="workloads",
                   help="the workload table (default) or the scaling study of W1-fixed")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true",
                      help="scaled-down sizes and 3 repeats (labelled QUICK); < 2 min")
    size.add_argument("--tiny", action="store_true",
                      help="tiny sizes, 1 repeat: a smoke test of the harness itself")
    p.add_argument("--only", action="append", metavar="W",
                   help="run only this workload: W1 (both), W1-fixed, W1-adaptive, W2, W3, "
                        "W3-SGD, W4; "
                        "may be repeated")
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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cfg = _config(args)
    start = time.perf_counter()
    info = machine.info()
    print(machine.describe(info))
    # Before any peer is imported: XLA reads XLA_FLAGS when its CPU client starts.
    info["peer_threads"] = peers.match_threads(cfg.threads)
    print(f"threads: {info['peer_threads']['summary']}")
    label = {"full": "full sizes", "quick": "QUICK: scaled-down sizes",
             "tiny": "TINY: smoke-test sizes"}[cfg.mode]
    print(f"mode: {label}; timings: median of {cfg.repeats} after 1 warm-up run "
          f"(wall clock); peers tried: {', '.join(sorted(cfg.peers)) or 'none'}")
    g = gemm.measure(gemm.sizes(cfg.mode), repeats=5)
    print(f"float64 GEMM (NumPy BLAS, {g['n']}x{g['n']}): median {g['gflops_median']:.1f} "
          f"GFLOP/s (min {g['gflops_min']:.1f}, max {g['gflops_max']:.1f})")
    report: dict[str, Any] = {"argv": sys.argv[1:] if argv is None else argv,
                              "mode": cfg.mode, "repeats": cfg.repeats, "machine": info,
                              "git": info["git"], "gemm": g}
    if args.study == "scaling":
        from . import scaling

        report["scaling"] = scaling.run(cfg)
        ok = True
    else:
        from . import (
            w1_ensemble,
            w2_gram,
            w3_sgd,
            w3_teacher_student,
            w4_teacher_student_flow,
        )

        runners = {"W1-fixed": w1_ensemble.run_fixed, "W1-adaptive": w1_ensemble.run_adaptive,
                   "W2": w2_gram.run, "W3": w3_teacher_student.run, "W3-SGD": w3_sgd.run,
                   "W4": w4_teacher_student_flow.run}
        results = [runners[w](cfg, g["gflops_median"]) for w in _selected(args.only)]
        report["workloads"] = results
        rows = [r for res in results for r in res["rows"]]
        checked = [r for r in rows if r["status"] in ("ok", "MISMATCH") and not r["reference"]]
        bad = [r["name"] for r in rows if r["status"] in ("MISMATCH", "error")]
        ok = not bad
        print(f"\nagreement: {len(checked) - sum(r['status'] == 'MISMATCH' for r in checked)}"
              f" of {len(checked)} checked implementations agree with their reference"
              + (f"; FAILED: {', '.join(bad)}" if bad else ""))
    elapsed = time.perf_counter() - start
    report["elapsed_s"] = elapsed
    print(f"total wall time {elapsed:.1f} s")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1, default=str))
        print(f"wrote {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
