"""Arguments and helpers the subcommands share: the model, the plan options, speed options, threads."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lrdlab.paper.numbers import PAPER_EXCLUDE  # the paper's exclusions (--paper), light to import


def _add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="registered model name, e.g. resnet50 (see `lrdlab models`)")
    p.add_argument("--image-size", type=int, default=None, help="input height = width (default: the model's)")
    p.add_argument("--num-classes", type=int, default=None, help="classifier outputs (default: the model's)")


def _add_plan_arguments(p: argparse.ArgumentParser) -> None:
    policy = p.add_mutually_exclusive_group()
    policy.add_argument("--ratio", type=float, help="per-layer compression target α (default 2: halve the weights)")
    policy.add_argument("--energy", type=float, help="keep this fraction of Σσ² per layer")
    policy.add_argument("--vbmf", action="store_true", help="ranks by empirical variational Bayes (VBMF)")
    policy.add_argument("--rank", type=int, help="one fixed rank for every layer")
    p.add_argument("--granularity", type=int, default=1, help="round ranks to multiples of G (default 1)")
    p.add_argument("--rounding", choices=["down", "up", "nearest"], default="down")
    p.add_argument("--method", default="auto", metavar="FORM",
                   help="form of k×k convs: auto (Tucker-2) or a k×k method of lrdlab.lowrank.methods, e.g. "
                        "channel_svd (Linear and 1×1 convs always use SVD)")
    p.add_argument("--tucker", choices=["hosvd", "hooi"], default="hosvd")
    p.add_argument("--branches", type=int, default=1, help="branched Tucker: groups of the core (default 1)")
    p.add_argument("--include", nargs="*", default=None, metavar="PATTERN", help="only layers matching these globs")
    p.add_argument("--exclude", nargs="*", default=None, metavar="PATTERN",
                   help="skip layers matching these globs, e.g. conv1 '*.downsample.*'")
    p.add_argument("--paper", action="store_true",
                   help="the paper's setting for ResNets: ratio 2, stem and downsample convs excluded")


def _add_model_and_plan(p: argparse.ArgumentParser,
                        plan_help: str = "a plan JSON (default: plan from the options above)") -> None:
    """MODEL, the plan options, and ``--plan FILE`` to use a saved plan instead."""
    _add_model_arguments(p)
    _add_plan_arguments(p)
    p.add_argument("--plan", type=Path, help=plan_help)


def _build(args: argparse.Namespace):
    from lrdlab.zoo import models

    model = models.get_model(args.model, num_classes=args.num_classes).eval()
    c, h, w = models.input_size(args.model)
    if args.image_size:
        h = w = args.image_size
    return model, (1, c, h, w)


def _plan_from_args(model, args: argparse.Namespace):
    from lrdlab.lowrank.plan import applicable_patterns, make_plan

    exclude = list(args.exclude or [])
    ratio = args.ratio
    if args.paper:  # the paper's exclusions where this model has such layers (CIFAR ResNets have no downsample conv)
        exclude += [p for p in applicable_patterns(model, PAPER_EXCLUDE) if p not in exclude]
    if ratio is None and args.energy is None and not args.vbmf and args.rank is None:
        ratio = 2.0
    return make_plan(
        model, ratio=ratio, energy=args.energy, vbmf=args.vbmf, rank=args.rank, granularity=args.granularity,
        rounding=args.rounding, method=args.method, tucker=args.tucker, branches=args.branches,
        include=args.include, exclude=exclude or None, model_name=args.model,
    )




def stats_dict(model, decomposed, plan, input_shape) -> dict[str, Any]:
    """The stable JSON report of a plan: layers, params and FLOPs of original and decomposed model."""
    from lrdlab.measure.counting import FLOP_COUNTER, count_flops, count_params, percent_change

    p0, p1 = count_params(model), count_params(decomposed)
    f0, f1 = count_flops(model, input_shape), count_flops(decomposed, input_shape)
    out = plan.to_dict()
    out["input_shape"] = list(input_shape)
    out["params"] = {"original": p0, "decomposed": p1, "change_pct": round(percent_change(p0, p1), 4)}
    out["flops"] = {"original": f0, "decomposed": f1, "change_pct": round(percent_change(f0, f1), 4),
                    "counter": FLOP_COUNTER}
    return out


def _print_stats(report: dict[str, Any]) -> None:
    p, f = report["params"], report["flops"]
    print(f"model {report['model']}, input {tuple(report['input_shape'])}")
    print(f"params: {p['original']:,} → {p['decomposed']:,} ({p['change_pct']:+.2f}%)")
    print(f"FLOPs:  {f['original']:,} → {f['decomposed']:,} ({f['change_pct']:+.2f}%)  [{f['counter']}]")


def _add_speed_arguments(p: argparse.ArgumentParser, repeats: int = 3) -> None:
    p.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="autocast dtype (default fp32)")
    p.add_argument("--repeats", type=int, default=repeats, help=f"timed runs per measurement (default {repeats})")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: the compute policy, the cores other processes leave free)")


def _set_threads(args: argparse.Namespace) -> None:
    """``--threads N``, else the compute policy (:func:`lrdlab.measure.compute.choose_threads`)."""
    import torch

    from lrdlab.measure.compute import choose_threads

    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1 (got {args.threads})")
    torch.set_num_threads(args.threads or choose_threads())



_POLICY_OPTIONS = ("ratio", "energy", "vbmf", "rank", "paper", "include", "exclude")


def _load_or_make_plan(model, args):
    from lrdlab.lowrank.plan import Plan

    if not getattr(args, "plan", None):
        return _plan_from_args(model, args)
    given = [f"--{k}" for k in _POLICY_OPTIONS if getattr(args, k, None) not in (None, False)]
    if given:
        raise ValueError(f"--plan {args.plan} fixes every layer's ranks, so {', '.join(given)} would be ignored; "
                         f"drop {'them' if len(given) > 1 else 'it'} or drop --plan")
    return Plan.load(args.plan)


