"""The papers' subcommand: ``lrdlab reproduce`` (re-recording the shipped results is ``python -m tools.record`` in
the checkout)."""

from __future__ import annotations

import argparse
from pathlib import Path

from lrdlab.cli.common import add_threads_argument


# --- reproduce -------------------------------------------------------------------------------------
def add_reproduce(sub) -> None:
    p = sub.add_parser("reproduce", help="the papers' tables and figures on this machine: report.md + figures")
    p.add_argument("--quick", action="store_true", help="the small version (< 10 min on 2 CPU cores)")
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
