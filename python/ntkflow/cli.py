"""The ``ntkflow`` command line: ``demo``, ``run CONFIG.toml``, ``info``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__

# Not the current folder: from a checkout the figure would show up in `git status` and in
# an sdist. The folder is in .gitignore and in pyproject's sdist.exclude.
DEMO_OUT = "ntkflow_demo"


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(out=args.out, trajectories=args.trajectories, quiet=args.quiet,
                    plot=not args.no_plot, seed=args.seed, threads=args.threads)


def _run(args: argparse.Namespace) -> int:
    from .config import run

    files = run(args.config, args.out, quiet=args.quiet, store=args.store,
                scheduler=args.scheduler)
    for f in files:
        print(f"wrote {f}")
    return 0


def _info(_args: argparse.Namespace) -> int:
    from . import build_info

    for key, value in build_info().items():
        print(f"{key:>14}: {value}")
    return 0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1; got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ntkflow",
        description="Ensembles of finite-width two-layer networks under gradient flow: "
        "simulate, compare with exact solutions, follow the NTK, classify the mechanism "
        "of feature learning.",
    )
    parser.add_argument("--version", action="version", version=f"ntkflow {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="the four mechanisms of feature learning, simulated, checked against the "
        "exact solution and classified",
        description="Simulate ensembles of linear two-layer networks in four settings of "
        "docs/theory.md §E.4 (K1 kernel, A1 alignment, D1 disalignment, R2 "
        "rescaling), compare every trajectory with the closed-form solution, classify "
        "each one, print a table and write ntkflow_demo.png into --out "
        "(default: a folder ntkflow_demo/, so that nothing lands beside your files).",
    )
    demo.add_argument("--out", default=DEMO_OUT, metavar="DIR",
                      help=f"folder for the figure, created if missing (default: {DEMO_OUT})")
    demo.add_argument("--trajectories", type=_positive, default=1000, metavar="N",
                      help="trajectories per setting (default: 1000)")
    demo.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    demo.add_argument("--threads", type=_positive, default=None,
                      help="OpenMP threads (default: all cores)")
    demo.add_argument("--no-plot", action="store_true", help="skip the figure")
    demo.add_argument("--quiet", action="store_true",
                      help="no progress bar or timing, table only")
    demo.set_defaults(func=_demo)
    run = sub.add_parser(
        "run",
        help="run a simulation, width study or phase diagram described in a TOML file",
        description="Run CONFIG.toml (kind = \"simulate\", \"width_study\" or "
        "\"phase_diagram\"; see examples/ in the source tree) and write its data (.npz, "
        ".csv; .parquet too with [output] parquet = true) and figures (.png) into --out.",
    )
    run.add_argument("config", metavar="CONFIG.toml", help="the configuration file")
    run.add_argument("--out", default=".", metavar="DIR",
                     help="output folder, created if missing (default: .)")
    run.add_argument("--quiet", action="store_true", help="no progress bar or summaries")
    run.add_argument("--store", default=None, metavar="DIR",
                     help="width study / phase diagram: keep every finished ensemble in "
                     "DIR (committed in batches; a kill leaves each complete or absent) "
                     "and resume from it when run again; overrides the config's store key")
    run.add_argument("--scheduler", default=None, metavar="ADDRESS",
                     help="width study / phase diagram: run each ensemble as a task on "
                     "this Dask scheduler (e.g. tcp://host:8786; needs "
                     "pip install 'ntkflow[dask]')")
    run.set_defaults(func=_run)
    info = sub.add_parser("info", help="build and machine information",
                          description="Print how the compiled core was built and which "
                          "instruction-set level is in use.")
    info.set_defaults(func=_info)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except (ValueError, OSError, ImportError) as exc:
        print(f"ntkflow {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ntkflow {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
