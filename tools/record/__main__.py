"""Re-record the shipped benchmarks and reference data (data/, the explorers' reference files) from the checkout.

``python -m tools.record WHAT …``; the recorded files name this command. Usage errors and expected failures are one
line on stderr and exit code 2, as in ``lrdlab``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from lrdlab.cli.common import (
    FOLDER_OUTPUTS,
    CommandLineError,
    OneLineParser,
    add_compute_argument,
    add_granularity_argument,
    add_threads_argument,
    apply_compute_from_args,
    check_outputs,
    honour_tqdm_disable,
    one_granularity,
)
from lrdlab.cli.lm import search_shapes, searches

FOLDERS = {("record", "speed"), ("record", "speed-checks"), ("record", "speed-story"), *FOLDER_OUTPUTS}


def build_parser() -> argparse.ArgumentParser:
    """``python -m tools.record WHAT …``: one sub-command per recorded file family."""
    parser = OneLineParser(prog="python -m tools.record", description=__doc__.splitlines()[0])
    what = parser.add_subparsers(dest="what", required=True)
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
    checks = what.add_parser("speed-checks", help="compute policy, A/A check, backends, rank search, time "
                                                  "breakdown, plan choice per backend (tools.record.speed_checks, "
                                                  "tools.record.search)")
    checks.add_argument("--out", type=Path, default=Path("data"), help="output folder (default data/)")
    checks.add_argument("--only", default=None, help="one part (default: all)",
                        choices=["compute", "aa", "backends", "search", "search-compile", "breakdown",
                                 "plan-choice"])
    story = what.add_parser("speed-story", help="the quick reproduction's techniques stage at each thread count: the "
                                                "README's speed table and F12 (tools.record.speed_story)")
    story.add_argument("--out", type=Path, default=Path("data"), help="output folder (default data/)")
    add_threads_argument(story, many=True, default=[1, 2], default_text="1,2")
    frz = what.add_parser("reference-freezing", help="ship a freezing-study JSON as the freezing explorer's data")
    frz.add_argument("study", type=Path, help="a run_freezing_study JSON file")
    acc = what.add_parser("accuracy", help="F11: accuracy vs compression (weights / +BN / data-aware / fine-tuned)")
    acc.add_argument("--models", nargs="+", default=None, help="study models (default: those with shipped weights)")
    acc.add_argument("--ratios", nargs="+", type=float, default=None)
    acc.add_argument("--granularities", nargs="+", type=int, default=[1])
    acc.add_argument("--calibration-images", type=int, default=512)
    acc.add_argument("--finetune-epochs", type=int, default=1)
    acc.add_argument("--out", type=Path, default=Path("data/accuracy_f11_mnist5k.json"))
    sweep = what.add_parser("finetune-sweep", help="1-epoch fine-tuning recipes from the calibrated 2x ResNet-20")
    sweep.add_argument("--out", type=Path, default=Path("data/finetune_after_calibration_mnist5k.json"))
    pre = what.add_parser("pretrained", help="pack a run of `lrdlab train` as a shipped reference model")
    pre.add_argument("name", help="e.g. resnet20_mnist5k")
    pre.add_argument("run_dir", type=Path, help="the --out folder of `lrdlab train`")
    pre.add_argument("--model", required=True, help="registered model name, e.g. resnet20")
    pre.add_argument("--storage", choices=["fp16", "int8"], default="fp16")
    pre.add_argument("--train-command", default="", help="the `lrdlab train` command that made run_dir")
    grid = what.add_parser("freezing-grid", help="the freezing explorer's grid: mode x period x ratio (resumable)")
    grid.add_argument("--out", type=Path, default=None, help="JSON file (default: the explorer's reference folder)")
    grid.add_argument("--ratios", type=float, nargs="+", default=[2.0, 3.0])
    grid.add_argument("--subset", type=int, default=1024, help="training images used for fine-tuning")
    grid.add_argument("--epochs", type=int, default=4, help="fine-tuning epochs per run")
    tfm = what.add_parser("transformers", help="transformer targets, or the ViT-tiny/MNIST-5k study")
    tfm.add_argument("part", choices=["targets", "study"])
    tfm.add_argument("--out", type=Path, required=True, help="JSON file to write")
    tfm.add_argument("--weights", default=None,
                     help="vit_tiny_mnist5k (shipped) or a trained vit_tiny state_dict file (else: train one)")
    tfm.add_argument("--train-epochs", type=int, default=6)
    tfm.add_argument("--quick", action="store_true", help="study: one ratio, one round (a smoke run)")
    ppl = what.add_parser("lm-perplexity", help="validation perplexity of the shipped llama_pydoc vs compression, per "
                                                "variant (tools/record/lm_study.py record_lm_perplexity)")
    ppl.add_argument("--out", type=Path, default=Path("data/lm_perplexity_pydoc.json"), help="JSON file to write")
    ppl.add_argument("--processes", type=int, default=1, help="one-thread processes the ratios are split over")
    lm = what.add_parser("lm-speed", help="prefill and decode of the 125 M-parameter Llama: unrounded, rounded and "
                                          "decode-searched ranks (tools/record/lm_study.py record_lm_speed)")
    lm.add_argument("--out", type=Path, default=Path("data/lm_decode_llama100m_cpu.json"), help="JSON file to write")
    add_threads_argument(lm, many=True, default_text="1 and all cores")
    add_granularity_argument(lm, many=True, default=[1, 64])
    lm.add_argument("--search", type=search_shapes, default=["decode"], metavar="SHAPE[,SHAPE]",
                    help="token shapes the ranks are searched at (default decode)")
    lm.add_argument("--search-granularity", type=one_granularity, default=16, metavar="G")
    lm.add_argument("--rounds", type=int, default=11, help="interleaved rounds (default 11)")
    lm.add_argument("--prompt", type=int, default=128)
    lm.add_argument("--batch", type=int, default=8, help="the second decode batch (default 8)")
    lm.add_argument("--tokens", type=int, default=8, help="decode tokens per timed call (default 8)")
    for q in (speed, tech, ref, study, checks, frz, acc, sweep, pre, grid, tfm):
        add_threads_argument(q)
    add_compute_argument(parser)
    return parser


def run(args: argparse.Namespace, command: str) -> int:
    """Record what ``args`` asks for; ``command`` is the command line the files name."""
    from lrdlab.measure.compute import current_compute

    print(current_compute(), flush=True)
    if args.what == "speed":
        from tools.record import speed as record

        args.out.mkdir(parents=True, exist_ok=True)
        if args.only in (None, "f1"):
            print("wrote", record.record_f1(args.out, device=args.device))
        if args.only in (None, "resnet50"):
            print("wrote", record.record_resnet50(args.out, image_size=args.image_size, batch=args.batch,
                                                  device=args.device, rounds=args.rounds,
                                                  search_rounds=args.search_rounds, cache_dir=args.cache_dir,
                                                  train=not args.no_train))
    elif args.what == "techniques":
        from tools.record.techniques import record_techniques

        print("wrote", record_techniques(args.study, args.out, model=args.model, batch=args.batch,
                                         image_size=args.image_size, rounds=args.rounds, bn=args.bn, data=args.data,
                                         seeds=args.seeds, base_epochs=args.base_epochs, ft_epochs=args.ft_epochs,
                                         inputs=args.inputs, command=command))
    elif args.what == "freezing":
        from lrdlab.paper.freezing_study import STUDY_FULL, STUDY_QUICK, run_freezing_study, save_study

        sizes = STUDY_QUICK if args.quick else STUDY_FULL
        study = run_freezing_study(replace(sizes, model="resnet20", data="mnist5k", lr=args.lr,
                                           finetune_lr=args.finetune_lr))
        save_study(replace(study, command=command), args.out)
        print("wrote", args.out)
    elif args.what == "speed-checks":
        from tools.record import search as search_records
        from tools.record import speed_checks

        args.out.mkdir(parents=True, exist_ok=True)
        for part, fn in (("compute", speed_checks.record_compute), ("aa", speed_checks.record_aa),
                         ("backends", speed_checks.record_backends), ("search", search_records.record_search),
                         ("search-compile", search_records.record_search_compile),
                         ("breakdown", search_records.record_breakdown),
                         ("plan-choice", search_records.record_plan_choice)):
            if args.only in (None, part):
                print("wrote", fn(args.out))
    elif args.what == "speed-story":
        from tools.record.speed_story import record_speed_story

        print("wrote", record_speed_story(args.out, tuple(args.threads)))
    elif args.what == "finetune-sweep":
        from tools.record.accuracy import finetune_sweep

        finetune_sweep(out=args.out, command=command)
        print("wrote", args.out)
    elif args.what == "accuracy":
        from lrdlab.paper.accuracy_study import RATIOS, run_accuracy_study

        run_accuracy_study(args.models, args.ratios or RATIOS, calibration_images=args.calibration_images,
                           finetune_epochs=args.finetune_epochs, granularities=args.granularities, out=args.out,
                           command=command)
        print("wrote", args.out)
    elif args.what == "pretrained":
        from tools.record.weights import export_pretrained

        info = export_pretrained(args.name, args.run_dir, args.model, storage=args.storage,
                                 command=args.train_command)
        print(f"wrote {args.name}: {info['bytes']:,} bytes, test accuracy {info['test_accuracy']:.2f}%")
    elif args.what == "freezing-grid":
        from lrdlab.explore.freezing_runs import FreezingGridConfig
        from tools.record.freezing_grid import REFERENCE_GRID, record_freezing_grid

        grid_config = FreezingGridConfig(ratios=tuple(args.ratios), subset=args.subset, epochs=args.epochs)
        print("wrote", record_freezing_grid(args.out or REFERENCE_GRID, grid_config, command=command))
    elif args.what == "transformers":
        from tools.record import transformers_study, transformers_targets

        if args.part == "targets":
            transformers_targets.record_targets(args.out, vit_tiny=args.weights, command=command)
        else:
            transformers_study.record_study(args.out, weights=args.weights, train_epochs=args.train_epochs,
                                            quick=args.quick, command=command)
        print("wrote", args.out)
    elif args.what == "lm-perplexity":
        from tools.record.lm_study import record_lm_perplexity

        record_lm_perplexity(args.out, command, processes=args.processes)
        print("wrote", args.out)
    elif args.what == "lm-speed":
        from tools.record.lm_study import record_lm_speed

        record_lm_speed(args.out, command, threads=args.threads or (1, 0), granularities=args.granularity,
                        search=searches(args), prompt=args.prompt, batch=args.batch, decode_tokens=args.tokens,
                        rounds=args.rounds)
        print("wrote", args.out)
    elif args.what == "reference-times":
        from tools.record.reference import build_reference_layer_times

        print("wrote", build_reference_layer_times(layers=args.layers, rounds=args.rounds))
    else:
        from tools.record.reference import build_reference_freezing

        if not args.study.is_file():
            raise ValueError(f"no study file {args.study}: produce one with run_freezing_study(out=...)")
        print("wrote", build_reference_freezing(args.study, command=command))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse, check the outputs, apply the compute mode, record; every expected error is one line, exit code 2."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser().parse_args(argv)
    except CommandLineError as err:
        print(err, file=sys.stderr)
        return 2
    args.command = "record"
    try:
        check_outputs(args, FOLDERS)  # before the work, not after it
        apply_compute_from_args(args)  # before torch loads: the OpenMP wait policy is fixed then
        with honour_tqdm_disable():
            return run(args, "python -m tools.record " + " ".join(argv))
    except (ValueError, OSError) as err:
        print(f"python -m tools.record {args.what}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
