"""README.md's performance table, generated from a saved run (bench/results/run-*.json).

    python -m bench report            # rewrite the table in README.md from the newest run
    python -m bench report --check    # exit 1 if README.md's table is not that output
    python -m bench report PATH.json  # from this run instead

The newest run is the newest full run (sizes as defined in bench/README.md) when there
is one, else the newest run of any mode (its mode is then printed in the table's header).
Every workload in the JSON gets a table, whatever its name: the columns are the fields
that every workload's rows share (name, median, ratio to its reference, compile time,
check), and its closing lines (``summary``) follow it. The table sits between the markers
below; tests/test_bench_report.py checks that README.md holds exactly this output.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
README = ROOT / "README.md"
START = "<!-- bench-table:start -->"
END = "<!-- bench-table:end -->"


def newest_run(results: Path = RESULTS) -> Path:
    """The newest complete full run (every workload, to its end), else the newest
    complete run of any mode, else the newest run (names sort by time): a run interrupted
    or limited to some workloads (``--only``) is kept as a record but tabulates the
    README only when nothing complete exists. Runs saved before runs were marked complete
    or not count as complete."""
    runs = sorted(results.glob("run-*.json"))
    if not runs:
        raise FileNotFoundError(f"no saved run (run-*.json) in {results}")
    meta = [json.loads(p.read_text()) for p in runs]
    done = [p for p, r in zip(runs, meta) if r.get("complete", True)]
    full = [p for p, r in zip(runs, meta) if r.get("complete", True) and r.get("mode") == "full"]
    return (full or done or runs)[-1]


def _s(x: Any) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.3g}" if x < 100 else f"{x:.0f}"


def _setting(x: Any) -> str:
    """A row's setting: text as given ("rtol 1e-10"), a bare number (W5's rtol in runs
    saved before it said so) as the number."""
    if x is None or x == "":
        return ""
    return x if isinstance(x, str) else f"{x:.3g}"


def _check(r: dict[str, Any]) -> str:
    if r["status"] not in ("ok", "MISMATCH"):
        return str(r.get("detail") or r["status"])
    if r.get("reference"):
        return "reference"
    out = r["status"]
    if "matched" in r:
        out += ", matched accuracy" if r["matched"] else ", accuracy NOT matched"
    return out


def _workload_table(w: dict[str, Any], single: dict[str, Any] | None, threads: Any) -> str:
    one = {r["name"]: r for r in (single or {}).get("rows", [])}
    settings = any(r.get("setting") for r in w["rows"])
    head = ["implementation"] + (["setting"] if settings else []) + [
        f"median s ({threads} threads)", "time / ref", "JAX compile s"]
    if single is not None:
        head += ["median s (1 thread)", "time / ref (1 thread)"]
    head.append("check")
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in w["rows"]:
        cells = [r["name"]] + ([_setting(r.get("setting"))] if settings else [])
        ran = r["status"] in ("ok", "MISMATCH")
        cells += [_s(r.get("median")) if ran else "-",
                  _s(r.get("ratio")) if ran and not r.get("reference") else "-",
                  _s(r.get("compile_s"))]
        if single is not None:
            o = one.get(r["name"], {})
            ran1 = o.get("status") in ("ok", "MISMATCH")
            cells += [_s(o.get("median")) if ran1 else "-",
                      _s(o.get("ratio")) if ran1 and not o.get("reference") else "-"]
        cells.append(_check(r))
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    extra = list(w.get("summary", []))
    if single is not None:
        extra += [f"at 1 thread: {t}" for t in single.get("summary", [])]
    return "\n".join(lines + ([""] + [f"- {t}" for t in extra] if extra else []))


def table(report: dict[str, Any], source: str) -> str:
    """The markdown between the markers, from a run's JSON (``source`` names its file)."""
    m = report["machine"]
    b = m.get("ntkflow_build")
    build = f"ntkflow {b['version']} ({b['isa']})" if isinstance(b, dict) else "ntkflow ?"
    th = m.get("peer_threads", {})
    observed = ", ".join(f"{k} {v}" for k, v in th.get("observed", {}).items())
    single = report.get("single_thread")
    mode = {"full": "full sizes", "quick": "QUICK (scaled-down sizes)",
            "tiny": "TINY (smoke-test sizes)"}.get(report["mode"], report["mode"])
    if not report.get("complete", True):
        ran = ", ".join(w["workload"] for w in report.get("workloads", []))
        mode += f", INCOMPLETE (measured only: {ran or 'nothing'})"
    out = [f"<!-- generated by `python -m bench report` from {source}: do not edit by hand -->",
           "",
           f"Run {report.get('date', '?')}, git `{str(report['git'])[:12]}`, {mode}, "
           f"median of {report['repeats']} after a warm-up; {m['cpu']}, "
           f"{m['cores_usable']} cores, load average {' '.join(map(str, m['loadavg']))} at "
           f"start; {build}; float64 GEMM {report['gemm']['gflops_median']:.1f} GFLOP/s"
           + (f" ({single['gemm']['gflops_median']:.1f} at 1 thread)" if single else "")
           + ".",
           "",
           f"Threads: {th.get('summary', '?')}. Observed busy threads: {observed or '?'}"
           + ("; at 1 thread: " + ", ".join(
               f"{k} {v}" for k, v in single["machine"]["peer_threads"]
               .get("observed", {}).items()) if single else "") + ".",
           "",
           "`time / ref` is the median over the median of the ntkflow line the workload "
           "compares with (its first line; in W4 ntkflow default, the first below the "
           "accuracy reference); above 1 ntkflow is faster. JAX compile time is "
           "outside every median. Definitions of every workload and column: "
           "[bench/README.md](bench/README.md)."]
    singles = {w["workload"]: w for w in (single or {}).get("workloads", [])}
    for w in report.get("workloads", []):
        out += ["", f"**{w['workload']}**", "",
                _workload_table(w, singles.get(w["workload"]) if single else None,
                                report.get("threads", m.get("cores_usable")))]
    return "\n".join(out)


def splice(text: str, body: str) -> str:
    """``text`` with everything between the markers replaced by ``body``."""
    i, j = text.find(START), text.find(END)
    if i < 0 or j < i:
        raise ValueError(f"README has no {START} ... {END} block")
    return text[:i + len(START)] + "\n" + body + "\n" + text[j:]


def current(text: str) -> str:
    """What is between the markers now."""
    i, j = text.find(START), text.find(END)
    if i < 0 or j < i:
        raise ValueError(f"README has no {START} ... {END} block")
    return text[i + len(START):j].strip("\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("json", nargs="?", type=Path, default=None,
                   help="a saved run (default: the newest in bench/results/)")
    p.add_argument("--check", action="store_true",
                   help="do not write: exit 1 if README.md's table differs from the output")
    p.add_argument("--readme", type=Path, default=README)
    args = p.parse_args(argv)
    path = args.json or newest_run()
    try:
        source = path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        source = path.name
    body = table(json.loads(path.read_text()), source)
    text = args.readme.read_text()
    if args.check:
        same = current(text) == body
        print(f"{args.readme}: table {'matches' if same else 'DIFFERS from'} {source}")
        return 0 if same else 1
    args.readme.write_text(splice(text, body))
    print(f"wrote the table of {source} into {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
