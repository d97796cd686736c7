"""``lrdlab reproduce``: the papers' tables and figures, measured on this machine, in one command.

The study is a list of stages. Each stage computes plain results (JSON) once and caches them under
``OUT/cache/``; an interrupted run resumes from the cache. Rendering (tables, figures, report) is
redone from the cached results every time, so it is cheap and always consistent.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lrdlab.explore import numbers as paper
from lrdlab.lowrank.decompose import decompose, planned_structure
from lrdlab.lowrank.plan import Layers, Ratio, make_plan
from lrdlab.lowrank.plan_config import PAPER_EXCLUDE
from lrdlab.measure.counting import FLOP_COUNTER, count_flops, count_layers, count_params, percent_change
from lrdlab.measure.records import read_record, write_record
from lrdlab.measure.timing_config import TimingConfig
from lrdlab.paper.tables import render
from lrdlab.zoo.models import get_model

if TYPE_CHECKING:
    from lrdlab.paper.freezing_study import FreezingStudyConfig


@dataclass(frozen=True)
class Settings:
    """What the study runs on, and how big it is."""

    quick: bool = True
    device: str = "cpu"
    data: str = "mnist5k"
    out: str = "reports/quick"
    threads: int | None = None  # torch threads of every measurement (None: as the compute mode leaves them)
    speed_modes: tuple[str, ...] = ("train", "inference")  # what the techniques stage times
    freezing: FreezingStudyConfig | None = None  # F7/F8's sizes (None: the mode's own, see :attr:`freezing_study`)

    @property
    def gpu(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def bench_shape(self) -> tuple[int, int, int, int]:
        """Whole-model timing input for the ResNet-50 speed tables (T2, F9)."""
        if self.gpu:
            return (64, 3, 224, 224)
        return (8, 3, 112, 112) if self.quick else (8, 3, 224, 224)

    @property
    def layer_batch(self) -> int:
        """Batch of the per-layer searches (Algorithm 1, F1) at the paper's 224×224 activations."""
        return 32 if self.gpu else (1 if self.quick else 4)

    @property
    def freezing_study(self) -> FreezingStudyConfig:
        """F7/F8's sizes: quick trains on the whole embedded data set for fewer epochs; full is the recorded study."""
        from lrdlab.paper.freezing_study import STUDY_FULL, STUDY_QUICK

        preset = self.freezing or (replace(STUDY_QUICK, epochs=4, subset=None) if self.quick else STUDY_FULL)
        return replace(preset, model="resnet20", data=self.data)

    @property
    def repeats(self) -> int:
        return 10

    @property
    def rounds(self) -> int:
        """Interleaved A B A B … rounds of every comparison (more rounds: less noise)."""
        return 3 if self.quick else 5


# --- stages: computing (cached) -----------------------------------------------------------------------


def stage_paper_models(settings: Settings, results: dict[str, Any]) -> dict[str, Any]:
    """T1 "2x ranks" and T2's structural columns (layers, params, FLOPs) for ResNet-50/101/152 at 224×224."""
    rows, ranks = [], {}
    for name in ("resnet50", "resnet101", "resnet152"):
        model = get_model(name).eval()
        plan = make_plan(model, Ratio(2), Layers(exclude=PAPER_EXCLUDE), model_name=name)
        small = planned_structure(model, plan)
        shape = (1, 3, 224, 224)
        f0, f1 = count_flops(model, shape), count_flops(small, shape)
        p0, p1 = count_params(model), count_params(small)
        rows.append({"model": name, "layers_original": count_layers(model), "layers": count_layers(small),
                     "params_pct": percent_change(p0, p1), "flops_pct": percent_change(f0, f1),
                     "gflops_original": f0 / 1e9, "gmacs_original": f0 / 2e9})
        if name == "resnet152":
            ranks = {row.name: row.ranks for row in plan.layers if row.decomposed}
    return {"models": rows, "resnet152_ranks": ranks, "flop_counter": FLOP_COUNTER}


def stage_decompose_time(settings: Settings, results: dict[str, Any]) -> dict[str, Any]:
    """Wall time to decompose all bottleneck convs + fc of ResNet-50 at 2x with HOSVD (median of 3)."""
    model = get_model("resnet50").eval()
    plan = make_plan(model, Ratio(2), Layers(exclude=PAPER_EXCLUDE))
    times = []
    for _ in range(3):
        start = time.perf_counter()
        decompose(model, plan, progress=False)
        times.append(time.perf_counter() - start)
    return {"times_s": times, "median_s": sorted(times)[1], "layers": len(plan.decomposed_layers),
            "threads": torch.get_num_threads()}


def stage_rank_time(settings: Settings, results: dict[str, Any]) -> dict[str, Any]:
    """F1/F2: the [512, 512, 3, 3] conv (ResNet-152 layer4, 7×7 input at 224 px) by Tucker-2 at r = 242…269."""
    from lrdlab.measure.sweeps import rank_time_sweep

    ranks = list(range(paper.FIG2_CLIFF["ranks"][0], paper.FIG2_CLIFF["ranks"][1] + 1))
    shape = (settings.layer_batch * (8 if not settings.gpu else 1), 512, 7, 7)
    timing = TimingConfig(rounds=settings.rounds, warmup=3, repeats=settings.repeats, device=settings.device,
                          dtype="bf16" if settings.gpu else None)
    df = rank_time_sweep(512, 512, 3, ranks, shape, timing)
    return {"input_shape": list(shape), "sweep": df.to_dict(orient="records")}


def stage_optimize(settings: Settings, results: dict[str, Any]) -> dict[str, Any]:
    """T1 optimized ranks and F3 traces: Algorithm 1 over ResNet-152 (and ResNet-50, sharing the shape cache)."""
    from lrdlab.measure.rank_search import optimize_plan
    from lrdlab.measure.search_config import SearchConfig

    out: dict[str, Any] = {}
    cache_dir = Path(settings.out) / "cache" / "layer_times"
    shape = (settings.layer_batch, 3, 224, 224)
    for name in ("resnet152", "resnet50"):
        model = get_model(name).eval()
        plan = make_plan(model, Ratio(2), Layers(exclude=PAPER_EXCLUDE), model_name=name)
        # P1's Algorithm 1 as written (the reproduction); lrdlab's default is the robust search
        optimized, traces = optimize_plan(model, plan, shape, SearchConfig(
            device=settings.device, lower=0.75, repeats=settings.repeats, rounds=settings.rounds, cache_dir=cache_dir,
            method="paper"))
        out[name] = {"plan": optimized.to_dict(), "traces": traces.to_dict(orient="records")}
    out["ranks"] = {row["name"]: ("ORG" if row["method"] is None else row["ranks"][0])
                    for row in out["resnet152"]["plan"]["layers"] if row["reason"].startswith(("optimized", "ORG"))}
    out["input_shape"] = list(shape)
    return out


def stage_granularity(settings: Settings, results: dict[str, Any]) -> dict[str, Any]:
    """F9: ResNet-50 at 2x with ranks rounded to multiples of g, measured against the original."""
    from lrdlab.measure.sweeps import granularity_sweep

    timing = TimingConfig(rounds=settings.rounds, warmup=1, device=settings.device)
    df = granularity_sweep(get_model("resnet50").eval(), settings.bench_shape, ratio=2, exclude=PAPER_EXCLUDE,
                           timing=timing, train=True)
    return {"input_shape": list(settings.bench_shape), "sweep": df.to_dict(orient="records")}


def stage_freezing(settings: Settings, results: dict[str, Any]) -> dict[str, Any]:
    """F7/F8 (P2-style): ResNet-20 trained on the data, decomposed at 2x, fine-tuned with none/regular/sequential."""
    from lrdlab.paper.freezing_study import run_freezing_study

    weights = Path(settings.out) / "cache" / "resnet20_trained.pt"
    result = run_freezing_study(settings.freezing_study, device=settings.device, progress=True, save_original=weights)
    return result.to_dict()


def stage_techniques(settings: Settings, results: dict[str, Any]) -> dict[str, Any]:
    """T2/F4/F5: original, vanilla LRD, optimized ranks, layer freezing and layer merging of ResNet-50, measured."""
    from lrdlab.lowrank.plan import Plan
    from lrdlab.measure.compute import current_compute, load_average
    from lrdlab.paper.techniques import speed_columns, structure_row, technique_models

    torch.manual_seed(0)
    model = get_model("resnet50").eval()
    plan = make_plan(model, Ratio(2), Layers(exclude=PAPER_EXCLUDE), model_name="resnet50")
    models = technique_models(model, plan)
    optimized = Plan.from_dict(results["optimize"]["resnet50"]["plan"])
    models = {**dict(list(models.items())[:2]), "optimized ranks": decompose(model, optimized),
              **dict(list(models.items())[2:])}
    count_shape = (1, 3, 224, 224)
    rows = [structure_row(name, m, model, count_shape) for name, m in models.items()]
    timing = speed_columns(models, settings.bench_shape, TimingConfig(rounds=settings.rounds, warmup=1, repeats=3),
                           modes=settings.speed_modes)
    for row in rows:
        row.update(timing[row["method"]])
    return {"input_shape": list(settings.bench_shape), "rows": rows,
            "compute": {**current_compute().to_dict(), "load_average": load_average()}}


def stage_branches(settings: Settings, results: dict[str, Any]) -> dict[str, Any]:
    """F6: branched Tucker N ∈ {1, 2, 4, 8} on ResNet-50 (structure, speed); accuracy on a small net in full mode."""
    from lrdlab.paper.techniques import BranchConfig, accuracy_study, branch_sweep

    n, c, h, w = settings.bench_shape
    timing = TimingConfig(rounds=settings.rounds, warmup=1, repeats=2)
    out = {"resnet50": branch_sweep("resnet50", BranchConfig(branches=(1, 2, 4, 8)), batch=n, image_size=h,
                                    timing=timing).to_dict()}
    if not settings.quick:
        out["accuracy"] = accuracy_study(data=settings.data, progress=True).to_dict()
    return out


def stage_breakdown(settings: Settings, results: dict[str, Any]) -> dict[str, Any]:
    """Where the time goes: ResNet-50 at 2x (vanilla, optimized ranks), each decomposed layer in place vs the rest."""
    from lrdlab.lowrank.plan import Plan
    from lrdlab.measure.breakdown import plan_breakdown

    model = get_model("resnet50").eval()
    plans = {"vanilla 2x": make_plan(model, Ratio(2), Layers(exclude=PAPER_EXCLUDE), model_name="resnet50")}
    if "optimize" in results:
        plans["optimized ranks"] = Plan.from_dict(results["optimize"]["resnet50"]["plan"])
    out = {name: plan_breakdown(model, plan, settings.bench_shape, rounds=4 * settings.rounds,
                                device=settings.device, progress=False).to_dict() for name, plan in plans.items()}
    return {"input_shape": list(settings.bench_shape), "plans": out}


def stage_accuracy(settings: Settings, results: dict[str, Any]) -> dict[str, Any]:
    """F11: accuracy of the shipped trained models right after decomposition, by ratio and variant."""
    from lrdlab.paper.accuracy_study import RATIOS, run_accuracy_study

    # quick: ResNet-20, three ratios, no fine-tuning (~1 min on 2 cores); full: every shipped model (ResNet-20,
    # ViT-tiny), every ratio, 1 epoch of fine-tuning
    models, ratios, epochs = (["resnet20"], (1.5, 2.0, 3.0), 0) if settings.quick else (None, RATIOS, 1)
    return run_accuracy_study(models, ratios, finetune_epochs=epochs, progress=False,
                              command="lrdlab reproduce" + (" --quick" if settings.quick else "")).to_dict()


def stage_language_model(settings: Settings, results: dict[str, Any]) -> dict[str, Any]:
    """SmolLM2-135M-Instruct live: dense against weights-only and SVD-LLM decompositions at the same ranks, and
    ``lrdlab.decompose_loss_weighted`` at the same budget on the same calibration windows (quick: 2x, 6
    calibration and 4 validation windows of 256 tokens, one generation each; full: 1.25x and 2x, 16 and 16
    windows, IDLE's history too, three generations each)."""
    from lrdlab.explore.lm_lab import VARIANTS, LiveCheck, live_check, smollm2
    from lrdlab.measure.compute import load_average

    before = load_average()
    try:
        lm = smollm2()
    except ValueError as err:  # the [lm] extra is not installed: the report says so and shows the recorded table
        return {"skipped": str(err)}
    check = LiveCheck(variants=VARIANTS) if settings.quick else LiveCheck(
        ratios=(1.25, 2.0), variants=VARIANTS, calibration=16, evaluation=16, prompts=3, history=None)
    out = live_check(lm.model, lm.tokenizer, check)
    return {"rows": out.rows.to_dict(orient="records"), "generations": out.generations,
            "orders": {name: asdict(out.order(name, name.replace("SVD-LLM", "weights only")))
                       for name in out.nll if name.startswith("SVD-LLM")},
            "weighted_orders": {name: asdict(out.order(name, name.replace("loss-weighted", "SVD-LLM")))
                                for name in out.nll if name.startswith("loss-weighted")},
            "calibration_tokens": out.calibration_tokens, "evaluation_tokens": out.evaluation_tokens,
            "windows": check.evaluation, "seq_len": check.seq_len, "threads": torch.get_num_threads(),
            "load_before": before, "load_after": load_average()}


STAGES: list[tuple[str, str, Callable[[Settings, dict[str, Any]], dict[str, Any]]]] = [
    ("paper_models", "ranks, layers, params and FLOPs of ResNet-50/101/152 at 2x", stage_paper_models),
    ("decompose_time", "time to decompose ResNet-50", stage_decompose_time),
    ("rank_time", "F1/F2: time vs Tucker rank of the [512,512,3,3] conv", stage_rank_time),
    ("optimize", "T1/F3: Algorithm 1 rank search on ResNet-152 and ResNet-50", stage_optimize),
    ("granularity", "F9: rank granularity sweep on ResNet-50", stage_granularity),
    ("breakdown", "where the time goes: each decomposed layer in place vs the rest", stage_breakdown),
    ("accuracy", "F11: accuracy right after decomposition (weights / +BN / data-aware)", stage_accuracy),
    ("freezing", "F7/F8: fine-tuning with no / regular / sequential freezing", stage_freezing),
    ("techniques", "T2/F4/F5: each technique on ResNet-50, measured", stage_techniques),
    ("branches", "F6: branched Tucker sweep", stage_branches),
    ("language_model", "SmolLM2-135M: perplexity and text, dense vs 2x (weights only, SVD-LLM, "
     "loss-weighted)", stage_language_model),
]


def run_stages(settings: Settings, stages=None) -> dict[str, dict[str, Any]]:
    """Run (or load from the cache) every stage, printing progress; returns {stage: results}."""
    cache = Path(settings.out) / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    results = {}
    stages = STAGES if stages is None else stages
    for i, (name, what, fn) in enumerate(stages, 1):
        path = cache / f"{name}.json"
        if path.exists():
            results[name] = read_record(path)
            print(f"[{i}/{len(stages)}] {what}: cached ({path})", flush=True)
            continue
        print(f"[{i}/{len(stages)}] {what} …", flush=True)
        start = time.perf_counter()
        results[name] = fn(settings, results)
        results[name]["_seconds"] = time.perf_counter() - start
        write_record(path, results[name])
        print(f"      done in {results[name]['_seconds']:.0f} s", flush=True)
    return results


def reproduce(settings: Settings) -> Path:
    """Run the whole study (resuming from the cache) and write the report; returns report.md's path."""
    from lrdlab.measure.compare import round_limits
    from lrdlab.measure.compute import compute_policy

    torch.manual_seed(0)
    # quick: a fixed number of interleaved rounds per comparison (the intervals say how wide they are);
    # full: rounds are added until each interval is ±3 points, or 10 minutes per comparison
    limits = round_limits(factor=1, budget_s=120.0) if settings.quick else round_limits()
    with limits, compute_policy(settings.threads):  # the threads stay as the compute mode left them unless given
        results = run_stages(settings)
    path = render(settings, results)
    print(f"report: {path}  (and {path.with_suffix('.html')})")
    return path
