"""The ``lrdlab`` command line. JSON output (``--format json`` / ``--json``) is a stable interface.

Subcommands of the library live in :mod:`lrdlab.cli.library`, the language models' in :mod:`lrdlab.cli.lm`, the
papers' (``lrdlab reproduce``; re-recording the shipped results is ``python -m tools.record`` in the checkout) here,
the shared arguments in :mod:`lrdlab.cli.common`.

Each subcommand is a pair ``add_<name>(subparsers)`` / ``run_<name>(args) -> int`` registered in
:data:`SUBCOMMANDS`; heavy imports happen inside the ``run_`` functions so ``--help`` is quick and the compute
mode (``--compute`` / ``$LRDLAB_COMPUTE``) is applied before torch loads.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lrdlab.cli import library
from lrdlab.cli import lm as lm_cli
from lrdlab.cli.common import (
    CommandLineError,
    OneLineParser,
    add_compute_argument,
    add_threads_argument,
    apply_compute_from_args,
    check_outputs,
    honour_tqdm_disable,
)


def add_reproduce(sub) -> None:
    p = sub.add_parser("reproduce", help="the papers' tables and figures on this machine: report.md + figures")
    p.add_argument("--quick", action="store_true", help="the small version: the embedded data, short training, "
                   "few timing rounds (the report ends with each stage's time)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--data", default="mnist5k", help="mnist5k (embedded, default), cifar10 or imagenet:PATH")
    p.add_argument("--out", type=Path, default=None, help="output directory (default reports/quick or reports/full)")
    add_threads_argument(p)


def run_reproduce(args: argparse.Namespace) -> int:
    from lrdlab.measure.compute import current_compute
    from lrdlab.measure.timing import check_device
    from lrdlab.paper.reproduce import Settings, reproduce

    check_device(args.device)
    out = args.out or Path("reports") / ("quick" if args.quick else "full")
    print(current_compute(), flush=True)
    reproduce(Settings(quick=args.quick, device=args.device, data=args.data, out=str(out), threads=args.threads))
    return 0


SUBCOMMANDS = {
    "plan": (library.add_plan, library.run_plan),
    "stats": (library.add_stats, library.run_stats),
    "decompose": (library.add_decompose, library.run_decompose),
    "models": (library.add_models, library.run_models),
    "reproduce": (add_reproduce, run_reproduce),
    "bench": (library.add_bench, library.run_bench),
    "optimize": (library.add_optimize, library.run_optimize),
    "choose": (library.add_choose, library.run_choose),
    "train": (library.add_train, library.run_train),
    "merge": (library.add_merge, library.run_merge),
    "bench-lm": (lm_cli.add_bench_lm, lm_cli.run_bench_lm),
}


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="lrdlab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add, _ in SUBCOMMANDS.values():
        add(sub)
    add_compute_argument(parser)
    return parser


def _check_numbers(args: argparse.Namespace) -> None:
    """Sizes and counts that argparse reads as ints but that must be positive."""
    for key in ("image_size", "num_classes", "batch", "epochs", "repeats", "rounds", "period", "subset",
                "granularity", "branches"):
        value = getattr(args, key, None)
        if isinstance(value, int) and value < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be >= 1 (got {value})")


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand. Every expected error, argparse's included, is one line on stderr and exit code 2."""
    try:
        args = build_parser().parse_args(argv)
    except CommandLineError as err:
        print(err, file=sys.stderr)
        return 2
    args.command_line = "lrdlab " + " ".join(sys.argv[1:] if argv is None else argv)  # what recorded files name
    threads_before = sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None  # in-process runs
    try:
        _check_numbers(args)
        check_outputs(args)  # before the work, not after it
        apply_compute_from_args(args)  # before torch loads: the OpenMP wait policy is fixed then
        with honour_tqdm_disable():
            return SUBCOMMANDS[args.command][1](args)
    except (ValueError, OSError) as err:  # OSError: missing / unreadable / unwritable files
        message = " ".join(str(err).split())  # one line
        print(f"lrdlab {args.command}: error: {message}", file=sys.stderr)
        return 2
    finally:
        if threads_before is not None:
            sys.modules["torch"].set_num_threads(threads_before)
