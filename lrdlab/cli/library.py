"""The library's subcommands: plan, stats, decompose, models, bench, optimize, choose, train, merge."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from lrdlab.cli.common import (
    add_model_and_plan,
    add_model_arguments,
    add_plan_arguments,
    add_speed_arguments,
    build_model,
    load_or_make_plan,
    plan_from_args,
    print_stats,
    stats_dict,
)


# --- plan ------------------------------------------------------------------------------------------
def add_plan(sub) -> None:
    p = sub.add_parser("plan", help="plan the decomposition of a model and print it")
    add_model_arguments(p)
    add_plan_arguments(p)
    p.add_argument("--format", choices=["table", "json", "csv"], default="table")
    p.add_argument("--out", type=Path, help="also save the plan as JSON here")


def run_plan(args: argparse.Namespace) -> int:
    from lrdlab.lowrank.decompose import planned_structure

    model, shape = build_model(args)
    plan = plan_from_args(model, args)
    if args.out:
        plan.save(args.out)
    if args.format == "csv":
        print(plan.to_frame().to_csv(index=False), end="")
    elif args.format == "json":
        print(json.dumps(stats_dict(model, planned_structure(model, plan), plan, shape), indent=2))
    else:
        print(plan)
    return 0


# --- stats -----------------------------------------------------------------------------------------
def add_stats(sub) -> None:
    p = sub.add_parser("stats", help="params and FLOPs of the original and decomposed model")
    add_model_and_plan(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def run_stats(args: argparse.Namespace) -> int:
    from lrdlab.lowrank.decompose import planned_structure

    model, shape = build_model(args)
    plan = load_or_make_plan(model, args)
    report = stats_dict(model, planned_structure(model, plan), plan, shape)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(plan.summary())
        print_stats(report)
    return 0


# --- decompose -------------------------------------------------------------------------------------
def add_decompose(sub) -> None:
    p = sub.add_parser("decompose", help="decompose a model and save plan.json + state_dict.pt")
    add_model_and_plan(p)
    p.add_argument("--out", type=Path, required=True, help="directory for plan.json and state_dict.pt")


def run_decompose(args: argparse.Namespace) -> int:
    from lrdlab.lowrank.decompose import decompose, save_decomposed

    if args.out.exists() and not args.out.is_dir():  # before minutes of work
        raise ValueError(f"--out {args.out} is a file; give a folder for plan.json and state_dict.pt")
    model, shape = build_model(args)
    plan = load_or_make_plan(model, args)
    decomposed = decompose(model, plan, progress=True)
    save_decomposed(decomposed, plan, args.out)
    print_stats(stats_dict(model, decomposed, plan, shape))
    print(f"saved {args.out / 'plan.json'} and {args.out / 'state_dict.pt'}")
    return 0


# --- models ----------------------------------------------------------------------------------------
def add_models(sub) -> None:
    sub.add_parser("models", help="list the registered models")


def run_models(args: argparse.Namespace) -> int:
    from lrdlab.zoo.models import MODELS

    for name, spec in MODELS.items():
        print(f"{name:16s} input {spec.input_size}  {spec.num_classes:5d} classes  {spec.description}")
    return 0


def add_bench(sub) -> None:
    p = sub.add_parser("bench", help="measured throughput of original vs decomposed model, beside the FLOP ideal")
    add_model_and_plan(p)
    add_speed_arguments(p, many_threads=True)
    p.add_argument("--train", action="store_true", help="also time training steps (forward + backward + SGD)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved A B A B rounds (default 5)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--backend", choices=["eager", "compile", "onnxruntime"], default=None,
                   help="run both models in PyTorch (eager, default), torch.compile'd, or exported to ONNX Runtime "
                        "(needs the onnx extra)")
    p.add_argument("--compile", action="store_true", help="same as --backend compile")
    p.add_argument("--max-rounds", type=int, default=None,
                   help="add rounds until the speed-up's 95%% interval is ±3 points, up to this (default 3×rounds)")
    p.add_argument("--budget", type=float, default=600.0, help="seconds of timing at most (default 600)")
    p.add_argument("--breakdown", action="store_true",
                   help="also time each decomposed layer in place and the rest of the network (eager inference): "
                        "how far the untouched part caps the whole-network speed-up")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--record", type=Path, default=None, metavar="FILE",
                   help="also write the report as a recorded result (machine, load average, this command) to FILE")


def _record_bench(args: argparse.Namespace, report: dict, load_before: tuple[float, ...]) -> None:
    """``--record FILE``: the report in the one recorded format, naming the machine, its load and the command."""
    from lrdlab.measure.machine import machine_info
    from lrdlab.measure.records import write_record

    if args.record is not None:
        write_record(args.record, {"what": f"lrdlab bench {args.model}: the plan against the original, interleaved",
                                   "command": getattr(args, "command_line", ""),
                                   "machine": machine_info(args.device).to_dict(),
                                   "load_average_before": list(load_before),
                                   "load_average_after": list(os.getloadavg()), **report})


def run_bench(args: argparse.Namespace) -> int:
    from lrdlab.measure.bench import bench_plan, bench_threads, threads_table
    from lrdlab.measure.compute import current_compute
    from lrdlab.measure.timing_config import TimingConfig

    backend = args.backend or ("compile" if args.compile else "eager")
    if args.breakdown and (backend != "eager" or args.channels_last):
        raise ValueError("--breakdown times eager PyTorch layers in place: drop --backend/--compile/--channels-last")
    if args.breakdown and args.threads and len(args.threads) > 1:
        raise ValueError("--breakdown runs at one thread count: give --threads N, not a list")
    timing = TimingConfig(rounds=args.rounds, repeats=args.repeats, device=args.device, dtype=args.dtype,
                          backend=backend, channels_last=args.channels_last, max_rounds=args.max_rounds,
                          budget_s=args.budget)  # checked before the model is built
    model, shape = build_model(args)
    plan = load_or_make_plan(model, args)
    searched, load_before = plan.settings.get("optimize", {}).get("threads"), os.getloadavg()
    if searched and (args.threads or [current_compute().threads]) != [searched]:
        print(f"note: this plan's ranks were searched at {searched} thread(s); timed here at "
              f"{','.join(map(str, args.threads or [current_compute().threads]))}", file=sys.stderr)
    if args.threads and len(args.threads) > 1:
        reports = bench_threads(model, plan, (args.batch, *shape[1:]), args.threads, timing, train=args.train,
                                progress=not args.json)
        recorded = {"model": args.model, "threads": args.threads, "reports": [r.to_dict() for r in reports]}
        _record_bench(args, recorded, load_before)
        if args.json:
            print(json.dumps(recorded, indent=2))
        else:
            print("\n\n".join(threads_table(reports, mode) for mode in reports[0].modes()))
        return 0
    bench = bench_plan(model, plan, (args.batch, *shape[1:]), timing, train=args.train, progress=not args.json)
    report = {**bench.to_dict(), "compute": current_compute().to_dict()}
    text = f"{bench}\n{current_compute()}"
    if args.breakdown:
        from lrdlab.measure.breakdown import plan_breakdown

        part = plan_breakdown(model, plan, (args.batch, *shape[1:]), rounds=max(args.rounds, 2), device=args.device,
                              progress=not args.json)
        report["breakdown"] = part.to_dict()
        text += f"\nbreakdown (in place, eager, 95% CI):\n{part}"
    _record_bench(args, report, load_before)
    print(json.dumps(report, indent=2) if args.json else text)
    return 0


# --- optimize --------------------------------------------------------------------------------------
def add_optimize(sub) -> None:
    p = sub.add_parser("optimize", help="measured rank search (robust, or P1's Algorithm 1): optimized plan + T1 table")
    add_model_and_plan(p, "a plan JSON to optimize (default: plan from the options above)")
    add_speed_arguments(p, repeats=10)
    p.add_argument("--backward", action="store_true", help="time forward + backward (training) per layer")
    p.add_argument("--lower", type=float, default=0.75, help="search down to this fraction of the rank (0.75)")
    p.add_argument("--search", choices=["robust", "paper"], default="robust",
                   help="robust: step model + confirmation with 95%% intervals (default); paper: P1's Algorithm 1")
    p.add_argument("--rounds", type=int, default=None,
                   help="interleaved timing passes per layer (default 3 robust, 1 paper)")
    p.add_argument("--cache-dir", default=None, help="layer-time cache (default $LRDLAB_CACHE, else ~/.cache/lrdlab)")
    p.add_argument("--traces", type=Path, help="also write the per-layer traces t(r) as CSV here")
    p.add_argument("--out", type=Path, required=True, help="write the optimized plan JSON here")


def run_optimize(args: argparse.Namespace) -> int:
    from lrdlab.measure.compute import current_compute
    from lrdlab.measure.rank_search import optimize_plan, rank_table
    from lrdlab.measure.search_config import SearchConfig

    model, shape = build_model(args)
    plan = load_or_make_plan(model, args)
    new, traces = optimize_plan(model, plan, (args.batch, *shape[1:]), SearchConfig(
        device=args.device, backward=args.backward, lower=args.lower, repeats=args.repeats, rounds=args.rounds,
        cache_dir=args.cache_dir, method=args.search, granularity=args.granularity,
        dtype=None if args.dtype == "fp32" else args.dtype))
    new.save(args.out)
    if args.traces:
        traces.to_csv(args.traces, index=False)
    print(rank_table(plan, new).to_string(index=False))
    print(new.summary())
    print(f"searched with {current_compute()}")
    print(f"saved {args.out}")
    return 0


# --- choose ----------------------------------------------------------------------------------------
def add_choose(sub) -> None:
    p = sub.add_parser("choose", help="time candidate plans as whole networks on a backend and keep the fastest "
                                      "with 95%% confidence (the first plan is the default)")
    add_model_arguments(p)
    p.add_argument("plans", nargs="+", type=Path, help="plan JSON files, the default first (e.g. searched ranks)")
    add_speed_arguments(p)
    p.add_argument("--backend", choices=["eager", "compile", "onnxruntime"], default="eager",
                   help="where the network will run (default eager)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds before adapting (default 5)")
    p.add_argument("--budget", type=float, default=600.0, help="seconds of timing at most (default 600)")
    p.add_argument("--out", type=Path, help="write the chosen plan JSON here (not written when the original wins)")
    p.add_argument("--json", action="store_true", help="print the choice and its table as JSON")


def run_choose(args: argparse.Namespace) -> int:
    from lrdlab.lowrank.decompose import check_plan
    from lrdlab.lowrank.plan import Plan
    from lrdlab.measure.compare import round_limits
    from lrdlab.measure.compute import current_compute
    from lrdlab.measure.plan_choice import choose_plan
    from lrdlab.measure.timing_config import TimingConfig

    names = [p.stem for p in args.plans]
    if len(set(names)) != len(names):
        raise ValueError(f"plan files need distinct names (got {names}): the table names each plan by its file")
    timing = TimingConfig(rounds=args.rounds, warmup=1, repeats=args.repeats, device=args.device, dtype=args.dtype,
                          backend=args.backend)
    model, shape = build_model(args)
    plans = {name: Plan.load(path) for name, path in zip(names, args.plans)}
    for path, plan in zip(args.plans, plans.values()):
        try:
            check_plan(model, plan)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
    with round_limits(budget_s=args.budget):
        choice = choose_plan(model, plans, (args.batch, *shape[1:]), timing, progress=not args.json)
    if args.json:
        print(json.dumps({**choice.to_dict(), "backend": args.backend, "compute": current_compute().to_dict()},
                         indent=2, default=str))
    else:
        print(choice)
        print(current_compute())
    if args.out and choice.plan is not None:
        choice.plan.save(args.out)
    if args.out and not args.json:
        print(f"saved {args.out}" if choice.plan is not None else f"the original wins: {args.out} not written")
    return 0


# --- train -----------------------------------------------------------------------------------------
def add_train(sub) -> None:
    p = sub.add_parser("train", help="train or fine-tune (original or decomposed, with freezing); torchrun-ready")
    add_model_and_plan(p, "a plan JSON: decompose before training (or give --ratio etc.)")
    p.add_argument("--data", default="mnist5k", help="mnist5k (embedded, default), digits, cifar10, imagenet:PATH")
    p.add_argument("--data-root", type=Path, help="CIFAR-10 folder holding cifar-10-batches-py/")
    p.add_argument("--cache-dir", type=Path, default=None, help="data set cache (default: the lrdlab cache)")
    p.add_argument("--subset", type=int, help="use only this many training images")
    p.add_argument("--weights", help="start from this state_dict file (e.g. a trained original)")
    p.add_argument("--freeze", choices=["none", "regular", "sequential"], default="none")
    p.add_argument("--period", type=int, default=1, help="sequential freezing: rotate every N units (default 1)")
    p.add_argument("--unit", choices=["epoch", "iteration"], default="epoch", help="unit of --period")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch", type=int, default=128, help="global batch size (split across torchrun ranks)")
    p.add_argument("--lr", type=float, default=0.05, help="peak learning rate (OneCycle)")
    p.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd")
    p.add_argument("--schedule", choices=["onecycle", "cosine", "constant"], default="onecycle")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--label-smoothing", type=float, default=0.0, help="cross-entropy label smoothing (default 0)")
    p.add_argument("--shift", type=int, default=0,
                   help="mnist5k/digits: translate training images by up to N random pixels (default 0: off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", type=Path, default=Path("runs/train"), help="output directory (default runs/train)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")


def run_train(args: argparse.Namespace) -> int:
    from lrdlab.finetune.distributed import init_distributed
    from lrdlab.finetune.fit_config import FitConfig
    from lrdlab.finetune.loop import train_and_save
    from lrdlab.zoo import models
    from lrdlab.zoo.data import Images, get_loaders

    init_distributed()
    c, h, _ = models.input_size(args.model)
    small = args.data in ("mnist5k", "digits")
    images = Images(size=args.image_size or (None if small else h), channels=c if small else None, shift=args.shift)
    loaders = get_loaders(args.data, args.batch, images, cache_dir=args.cache_dir, root=args.data_root,
                          subset=args.subset, seed=args.seed)
    model = models.get_model(args.model, num_classes=args.num_classes or loaders.num_classes, weights=args.weights)
    policy = args.plan or args.ratio or args.energy or args.vbmf or args.rank or args.paper
    plan = load_or_make_plan(model, args) if policy else None
    config = FitConfig(epochs=args.epochs, lr=args.lr, optimizer=args.optimizer, schedule=args.schedule,
                       weight_decay=args.weight_decay, label_smoothing=args.label_smoothing, seed=args.seed,
                       label=args.model)
    history = train_and_save(model, loaders, args.out, config, plan=plan, freeze=args.freeze, period=args.period,
                             unit=args.unit, resume=args.resume, device=args.device)
    last = history.iloc[-1]
    print(f"{args.model}: epoch {int(last['epoch'])}, test top-1 {last['accuracy']:.2f}%, "
          f"{history['train_img_s'].median():.0f} img/s (median epoch); wrote {args.out}")
    return 0


# --- merge -----------------------------------------------------------------------------------------
def add_merge(sub) -> None:
    p = sub.add_parser("merge", help="layer merging: bottlenecks Tucker-2 decomposed and merged back to 3 convs")
    add_model_arguments(p)
    add_plan_arguments(p)
    p.add_argument("--bn", choices=["fresh", "fold", "exact"], default="fresh",
                   help="BN/ReLU between merged convs: fresh (new BN, default), fold (no BN), exact (no merge)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def run_merge(args: argparse.Namespace) -> int:
    from lrdlab.lowrank.decompose import decompose
    from lrdlab.lowrank.merge import merge_bottlenecks, merge_report
    from lrdlab.measure.counting import structure_row

    model, shape = build_model(args)
    plan = plan_from_args(model, args)
    blocks = merge_report(model, plan, args.bn)
    models = {"original": model, "vanilla LRD": decompose(model, plan),
              f"layer merging (bn={args.bn})": merge_bottlenecks(model, plan, bn=args.bn)}
    rows = [structure_row(name, m, model, shape) for name, m in models.items()]
    if args.json:
        print(json.dumps({"model": args.model, "bn": args.bn, "input_shape": list(shape), "blocks": blocks,
                          "rows": rows}, indent=2))
        return 0
    print(f"{sum(b['merged'] for b in blocks)} of {len(blocks)} bottlenecks merged (bn={args.bn})")
    for r in rows:
        print(f"{r['method']:28s} layers {r['layers']:4d}  params {r['params']:>12,} ({r['params_pct']:+7.2f}%)  "
              f"FLOPs {r['flops']:>15,} ({r['flops_pct']:+7.2f}%)")
    return 0


