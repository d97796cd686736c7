"""The ``lrdlab`` command line. JSON output (``--format json`` / ``--json``) is a stable interface.

Each subcommand is a pair ``_add_<name>(subparsers)`` / ``_run_<name>(args) -> int`` registered in
:data:`SUBCOMMANDS`; heavy imports happen inside the ``_run_`` functions so ``--help`` is quick.
"""

from __future__ import annotations

import argparse
import json
import sys
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
    import fnmatch

    from lrdlab.lowrank.plan import candidate_layers, make_plan

    exclude = list(args.exclude or [])
    ratio = args.ratio
    if args.paper:  # the paper's exclusions where this model has such layers (CIFAR ResNets have no downsample conv)
        names = [n for n, _ in candidate_layers(model)]
        exclude += [p for p in PAPER_EXCLUDE
                    if p not in exclude and any(fnmatch.fnmatchcase(n, p) for n in names)]
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


# --- plan ------------------------------------------------------------------------------------------
def _add_plan(sub) -> None:
    p = sub.add_parser("plan", help="plan the decomposition of a model and print it")
    _add_model_arguments(p)
    _add_plan_arguments(p)
    p.add_argument("--format", choices=["table", "json", "csv"], default="table")
    p.add_argument("--out", type=Path, help="also save the plan as JSON here")


def _run_plan(args: argparse.Namespace) -> int:
    from lrdlab.lowrank.decompose import planned_structure

    model, shape = _build(args)
    plan = _plan_from_args(model, args)
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
def _add_stats(sub) -> None:
    p = sub.add_parser("stats", help="params and FLOPs of the original and decomposed model")
    _add_model_and_plan(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")


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


def _run_stats(args: argparse.Namespace) -> int:
    from lrdlab.lowrank.decompose import planned_structure

    model, shape = _build(args)
    plan = _load_or_make_plan(model, args)
    report = stats_dict(model, planned_structure(model, plan), plan, shape)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(plan.summary())
        _print_stats(report)
    return 0


# --- decompose -------------------------------------------------------------------------------------
def _add_decompose(sub) -> None:
    p = sub.add_parser("decompose", help="decompose a model and save plan.json + state_dict.pt")
    _add_model_and_plan(p)
    p.add_argument("--out", type=Path, required=True, help="directory for plan.json and state_dict.pt")


def _run_decompose(args: argparse.Namespace) -> int:
    from lrdlab.lowrank.decompose import decompose, save_decomposed

    if args.out.exists() and not args.out.is_dir():  # before minutes of work
        raise ValueError(f"--out {args.out} is a file; give a folder for plan.json and state_dict.pt")
    model, shape = _build(args)
    plan = _load_or_make_plan(model, args)
    decomposed = decompose(model, plan, progress=True)
    save_decomposed(decomposed, plan, args.out)
    _print_stats(stats_dict(model, decomposed, plan, shape))
    print(f"saved {args.out / 'plan.json'} and {args.out / 'state_dict.pt'}")
    return 0


# --- models ----------------------------------------------------------------------------------------
def _add_models(sub) -> None:
    sub.add_parser("models", help="list the registered models")


def _run_models(args: argparse.Namespace) -> int:
    from lrdlab.zoo.models import MODELS

    for name, spec in MODELS.items():
        print(f"{name:16s} input {spec.input_size}  {spec.num_classes:5d} classes  {spec.description}")
    return 0


# --- reproduce -------------------------------------------------------------------------------------
def _add_reproduce(sub) -> None:
    p = sub.add_parser("reproduce", help="the papers' tables and figures on this machine: report.md + figures")
    p.add_argument("--quick", action="store_true", help="the small version (< 10 min on 2 CPU cores)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--data", default="mnist5k", help="mnist5k (embedded, default), cifar10 or imagenet:PATH")
    p.add_argument("--out", type=Path, default=None, help="output directory (default reports/quick or reports/full)")


def _run_reproduce(args: argparse.Namespace) -> int:
    from lrdlab.measure.timing import check_device
    from lrdlab.paper.reproduce import Settings, reproduce

    check_device(args.device)
    out = args.out or Path("reports") / ("quick" if args.quick else "full")
    reproduce(Settings(quick=args.quick, device=args.device, data=args.data, out=str(out)))
    return 0


# --- bench -----------------------------------------------------------------------------------------
def _add_speed_arguments(p: argparse.ArgumentParser, repeats: int = 3) -> None:
    p.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="autocast dtype (default fp32)")
    p.add_argument("--repeats", type=int, default=repeats, help=f"timed runs per measurement (default {repeats})")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def _set_threads(args: argparse.Namespace) -> None:
    import torch

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1 (got {args.threads})")
        torch.set_num_threads(args.threads)


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="measured throughput of original vs decomposed model, beside the FLOP ideal")
    _add_model_and_plan(p)
    _add_speed_arguments(p)
    p.add_argument("--train", action="store_true", help="also time training steps (forward + backward + SGD)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved A B A B rounds (default 5)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _run_bench(args: argparse.Namespace) -> int:
    from lrdlab.measure.sweeps import bench_plan, format_bench

    _set_threads(args)
    model, shape = _build(args)
    plan = _load_or_make_plan(model, args)
    report = bench_plan(model, plan, (args.batch, *shape[1:]), device=args.device, train=args.train,
                        rounds=args.rounds, repeats=args.repeats, dtype=None if args.dtype == "fp32" else args.dtype,
                        channels_last=args.channels_last, compile=args.compile, progress=not args.json)
    print(json.dumps(report, indent=2) if args.json else format_bench(report))
    return 0


# --- optimize --------------------------------------------------------------------------------------
def _add_optimize(sub) -> None:
    p = sub.add_parser("optimize", help="measured rank search (paper Algorithm 1): optimized plan + T1 table")
    _add_model_and_plan(p, "a plan JSON to optimize (default: plan from the options above)")
    _add_speed_arguments(p, repeats=10)
    p.add_argument("--backward", action="store_true", help="time forward + backward (training) per layer")
    p.add_argument("--lower", type=float, default=0.75, help="search down to this fraction of the rank (0.75)")
    p.add_argument("--rounds", type=int, default=1, help="interleaved timing passes per layer (default 1)")
    p.add_argument("--cache-dir", default="auto", help="layer-time cache (default $LRDLAB_CACHE, else ~/.cache/lrdlab)")
    p.add_argument("--traces", type=Path, help="also write the per-layer traces t(r) as CSV here")
    p.add_argument("--out", type=Path, required=True, help="write the optimized plan JSON here")


def _run_optimize(args: argparse.Namespace) -> int:
    from lrdlab.measure.rank_search import optimize_plan, rank_table

    _set_threads(args)
    model, shape = _build(args)
    plan = _load_or_make_plan(model, args)
    new, traces = optimize_plan(
        model, plan, (args.batch, *shape[1:]), device=args.device,
        dtype=None if args.dtype == "fp32" else args.dtype, backward=args.backward, lower=args.lower,
        granularity=args.granularity, repeats=args.repeats, rounds=args.rounds, cache_dir=args.cache_dir,
    )
    new.save(args.out)
    if args.traces:
        traces.to_csv(args.traces, index=False)
    print(rank_table(plan, new).to_string(index=False))
    print(new.summary())
    print(f"saved {args.out}")
    return 0


# --- train -----------------------------------------------------------------------------------------
def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train or fine-tune (original or decomposed, with freezing); torchrun-ready")
    _add_model_and_plan(p, "a plan JSON: decompose before training (or give --ratio etc.)")
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
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", type=Path, default=Path("runs/train"), help="output directory (default runs/train)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")


def _run_train(args: argparse.Namespace) -> int:
    from lrdlab.finetune.distributed import init_distributed
    from lrdlab.finetune.loop import train_and_save
    from lrdlab.zoo import models
    from lrdlab.zoo.data import get_loaders

    init_distributed()
    c, h, _ = models.input_size(args.model)
    small = args.data in ("mnist5k", "digits")
    loaders = get_loaders(args.data, args.batch, cache_dir=args.cache_dir, root=args.data_root, subset=args.subset,
                          image_size=args.image_size or (None if small else h), channels=c if small else None,
                          seed=args.seed)
    model = models.get_model(args.model, num_classes=args.num_classes or loaders.num_classes, weights=args.weights)
    policy = args.plan or args.ratio or args.energy or args.vbmf or args.rank or args.paper
    plan = _load_or_make_plan(model, args) if policy else None
    history = train_and_save(model, loaders, args.out, plan=plan, freeze=args.freeze, period=args.period,
                             unit=args.unit, epochs=args.epochs, lr=args.lr, resume=args.resume, device=args.device,
                             seed=args.seed, optimizer=args.optimizer, schedule=args.schedule,
                             weight_decay=args.weight_decay, label=args.model)
    last = history.iloc[-1]
    print(f"{args.model}: epoch {int(last['epoch'])}, test top-1 {last['accuracy']:.2f}%, "
          f"{history['train_img_s'].median():.0f} img/s (median epoch); wrote {args.out}")
    return 0


# --- merge -----------------------------------------------------------------------------------------
def _add_merge(sub) -> None:
    p = sub.add_parser("merge", help="layer merging: bottlenecks Tucker-2 decomposed and merged back to 3 convs")
    _add_model_arguments(p)
    _add_plan_arguments(p)
    p.add_argument("--bn", choices=["fresh", "fold", "exact"], default="fresh",
                   help="BN/ReLU between merged convs: fresh (new BN, default), fold (no BN), exact (no merge)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _run_merge(args: argparse.Namespace) -> int:
    from lrdlab.lowrank.decompose import decompose
    from lrdlab.lowrank.merge import merge_bottlenecks, merge_report
    from lrdlab.paper.techniques import structure_row

    model, shape = _build(args)
    plan = _plan_from_args(model, args)
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


# --- record ----------------------------------------------------------------------------------------
def _add_record(sub) -> None:
    p = sub.add_parser("record", help="re-record the shipped benchmarks and reference data (data/, explorers)")
    what = p.add_subparsers(dest="what", required=True)
    speed = what.add_parser("speed", help="ResNet-50 speed (vanilla/optimized/granularity) and the F1 sweep")
    speed.add_argument("--out", type=Path, default=Path("data"), help="output folder (default data/)")
    speed.add_argument("--only", choices=["resnet50", "f1"], default=None, help="one part (default: both)")
    speed.add_argument("--device", default="cpu")
    speed.add_argument("--image-size", type=int, default=112)
    speed.add_argument("--batch", type=int, default=8)
    speed.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the whole-model timing")
    speed.add_argument("--search-rounds", type=int, default=3, help="interleaved passes of the rank search")
    speed.add_argument("--no-train", action="store_true", help="inference only")
    speed.add_argument("--cache-dir", default="auto", help="layer-time cache (default: the lrdlab cache)")
    tech = what.add_parser("techniques", help="P1 Table 2 (table), F6 (branch), accuracy study, combine")
    tech.add_argument("study", choices=["table", "branch", "accuracy", "combine"])
    tech.add_argument("--out", type=Path, required=True, help="JSON file to write")
    tech.add_argument("--inputs", nargs=2, default=["data/branch_resnet50_cpu.json",
                                                    "data/techniques_accuracy_mnist5k.json"])
    tech.add_argument("--model", default="resnet50")
    tech.add_argument("--batch", type=int, default=8)
    tech.add_argument("--image-size", type=int, default=224)
    tech.add_argument("--rounds", type=int, default=3)
    tech.add_argument("--bn", default="fresh", help="merge option for the table's layer-merging row")
    tech.add_argument("--data", default="mnist5k")
    tech.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    tech.add_argument("--base-epochs", type=int, default=5)
    tech.add_argument("--ft-epochs", type=int, default=2)
    ref = what.add_parser("reference-times", help="layer times the rank explorer ships with (this machine)")
    ref.add_argument("--layers", nargs="+", default=None, help="resnet50 layers (default: layer4.1.conv2)")
    ref.add_argument("--rounds", type=int, default=7)
    study = what.add_parser("freezing", help="F7/F8: train ResNet-20, decompose, fine-tune with each freezing mode")
    study.add_argument("--out", type=Path, default=Path("data/freezing_mnist5k.json"), help="JSON file to write")
    study.add_argument("--quick", action="store_true", help="the quick study (2 epochs on 1,024 images)")
    study.add_argument("--lr", type=float, default=0.1)
    study.add_argument("--finetune-lr", type=float, default=0.02)
    frz = what.add_parser("reference-freezing", help="ship a freezing-study JSON as the freezing explorer's data")
    frz.add_argument("study", type=Path, help="a run_freezing_study JSON file")
    tfm = what.add_parser("transformers", help="issue-14 transformer targets, or the ViT-tiny/MNIST-5k study")
    tfm.add_argument("part", choices=["targets", "study"])
    tfm.add_argument("--out", type=Path, required=True, help="JSON file to write")
    tfm.add_argument("--weights", type=Path, default=None, help="trained vit_tiny state_dict (else: train one)")
    tfm.add_argument("--train-epochs", type=int, default=6)
    tfm.add_argument("--quick", action="store_true", help="study: one ratio, one round (a smoke run)")
    for q in (speed, tech, ref, study, frz, tfm):
        q.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def _run_record(args: argparse.Namespace) -> int:
    from lrdlab.paper import record

    _set_threads(args)
    command = "lrdlab " + " ".join(sys.argv[1:])
    if args.what == "speed":
        args.out.mkdir(parents=True, exist_ok=True)
        if args.only in (None, "f1"):
            print("wrote", record.record_f1(args.out, device=args.device))
        if args.only in (None, "resnet50"):
            print("wrote", record.record_resnet50(args.out, image_size=args.image_size, batch=args.batch,
                                                  device=args.device, rounds=args.rounds,
                                                  search_rounds=args.search_rounds, cache_dir=args.cache_dir,
                                                  train=not args.no_train))
    elif args.what == "techniques":
        record.record_techniques(args.study, args.out, model=args.model, batch=args.batch, image_size=args.image_size,
                                 rounds=args.rounds, bn=args.bn, data=args.data, seeds=args.seeds,
                                 base_epochs=args.base_epochs, ft_epochs=args.ft_epochs, inputs=args.inputs,
                                 command=command)
    elif args.what == "freezing":
        from lrdlab.paper.freezing_study import STUDY_FULL, STUDY_QUICK, run_freezing_study

        sizes = STUDY_QUICK if args.quick else STUDY_FULL
        run_freezing_study(model="resnet20", data="mnist5k", lr=args.lr, finetune_lr=args.finetune_lr, out=args.out,
                           **sizes)
        print("wrote", args.out)
    elif args.what == "transformers":
        from lrdlab.paper import transformers_study, transformers_targets

        if args.part == "targets":
            transformers_targets.record_targets(args.out, vit_tiny=args.weights, command=command)
        else:
            transformers_study.record_study(args.out, weights=args.weights, train_epochs=args.train_epochs,
                                            quick=args.quick, command=command)
        print("wrote", args.out)
    elif args.what == "reference-times":
        print("wrote", record.build_reference_layer_times(layers=args.layers, rounds=args.rounds))
    else:
        if not args.study.is_file():
            raise ValueError(f"no study file {args.study}: produce one with run_freezing_study(out=...)")
        print("wrote", record.build_reference_freezing(args.study))
    return 0


SUBCOMMANDS = {
    "plan": (_add_plan, _run_plan),
    "stats": (_add_stats, _run_stats),
    "decompose": (_add_decompose, _run_decompose),
    "models": (_add_models, _run_models),
    "reproduce": (_add_reproduce, _run_reproduce),
    "bench": (_add_bench, _run_bench),
    "optimize": (_add_optimize, _run_optimize),
    "train": (_add_train, _run_train),
    "merge": (_add_merge, _run_merge),
    "record": (_add_record, _run_record),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lrdlab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add, _ in SUBCOMMANDS.values():
        add(sub)
    return parser


def _check_numbers(args: argparse.Namespace) -> None:
    """Sizes and counts that argparse reads as ints but that must be positive."""
    for key in ("image_size", "num_classes", "batch", "epochs", "repeats", "rounds", "period", "subset",
                "granularity", "branches"):
        value = getattr(args, key, None)
        if isinstance(value, int) and value < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be >= 1 (got {value})")


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand. Every expected error is one line on stderr and exit code 2."""
    args = build_parser().parse_args(argv)
    try:
        _check_numbers(args)
        return SUBCOMMANDS[args.command][1](args)
    except (ValueError, OSError) as err:  # OSError: missing / unreadable / unwritable files
        message = " ".join(str(err).split())  # one line
        print(f"lrdlab {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
