"""The ``ntkflow`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(out=args.out, trajectories=args.trajectories, quiet=args.quiet,
                    plot=not args.no_plot)


def _info(_args: argparse.Namespace) -> int:
    from . import build_info

    for key, value in build_info().items():
        print(f"{key:>14}: {value}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ntkflow",
        description="Ensembles of finite-width two-layer networks under gradient flow: "
        "simulate, compare with exact solutions, follow the NTK.",
    )
    parser.add_argument("--version", action="version", version=f"ntkflow {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="the four regimes of feature learning, simulated and checked against the "
        "exact solution",
        description="Simulate ensembles of linear two-layer networks in four settings "
        "(kernel, alignment, disalignment, rescaling; THEORY §E.4), compare every "
        "trajectory with the closed-form solution, print a table and write a figure.",
    )
    demo.add_argument("--out", default=".", help="folder for the figure (default: .)")
    demo.add_argument("--trajectories", type=int, default=1000,
                      help="trajectories per setting (default: 1000)")
    demo.add_argument("--no-plot", action="store_true", help="skip the figure")
    demo.add_argument("--quiet", action="store_true", help="print the table only")
    demo.set_defaults(func=_demo)
    info = sub.add_parser("info", help="build and machine information")
    info.set_defaults(func=_info)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except (ValueError, OSError) as exc:
        print(f"ntkflow {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ntkflow {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
