"""``lrdlab reproduce``: the papers' tables and figures, measured on this machine, in one command.

The study is a list of stages. Each stage computes plain results (JSON) once and caches them under
``OUT/cache/``; an interrupted run resumes from the cache. Rendering (tables, figures, report) is
redone from the cached results every time, so it is cheap and always consistent.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from . import paper
from .counting import FLOP_COUNTER, count_flops, count_params, percent_change
from .models import get_model
from .paper import PAPER_EXCLUDE
from .plan import decompose, make_plan, planned_structure


@dataclass(frozen=True)
class Settings:
    """What the study runs on, and how big it is."""

    quick: bool = True
    device: str = "cpu"
    data: str = "mnist5k"
    out: str = "reports/quick"

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
    def repeats(self) -> int:
        return 10

    @property
    def rounds(self) -> int:
        """Interleaved A B A B … rounds of every comparison (more rounds: less noise)."""
        return 3 if self.quick else 5


# --- stages: computing (cached) -----------------------------------------------------------------------


def weight_layers(model: nn.Module) -> int:
    """Conv/Linear layers on the main path (downsample shortcuts not counted, as the paper counts 50 for ResNet-50)."""
    return sum(
        isinstance(m, (nn.Conv2d, nn.Linear)) and ".downsample." not in f".{name}."
        for name, m in model.named_modules()
    )


def stage_paper_models(settings: Settings, results: dict[str, Any]) -> dict[str, Any]:
    """T1 "2x ranks" and T2's structural columns (layers, params, FLOPs) for ResNet-50/101/152 at 224×224."""
    rows, ranks = [], {}
    for name in ("resnet50", "resnet101", "resnet152"):
        model = get_model(name).eval()
        plan = make_plan(model, ratio=2, exclude=PAPER_EXCLUDE, model_name=name)
        small = planned_structure(model, plan)
        shape = (1, 3, 224, 224)
        f0, f1 = count_flops(model, shape), count_flops(small, shape)
        p0, p1 = count_params(model), count_params(small)
        rows.append({"model": name, "layers_original": weight_layers(model), "layers": weight_layers(small),
                     "params_pct": percent_change(p0, p1), "flops_pct": percent_change(f0, f1),
                     "gflops_original": f0 / 1e9, "gmacs_original": f0 / 2e9})
        if name == "resnet152":
            ranks = {row.name: row.ranks for row in plan.layers if row.decomposed}
    return {"models": rows, "resnet152_ranks": ranks, "flop_counter": FLOP_COUNTER}


def stage_decompose_time(settings: Settings, results: dict[str, Any]) -> dict[str, Any]:
    """Wall time to decompose all bottleneck convs + fc of ResNet-50 at 2x with HOSVD (median of 3)."""
    model = get_model("resnet50").eval()
    plan = make_plan(model, ratio=2, exclude=PAPER_EXCLUDE)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        decompose(model, plan, progress=False)
        times.append(time.perf_counter() - start)
    return {"times_s": times, "median_s": sorted(times)[1], "layers": len(plan.decomposed_layers),
            "threads": torch.get_num_threads()}


def stage_rank_time(settings: Settings, results: dict[str, Any]) -> dict[str, Any]:
    """F1/F2: the [512, 512, 3, 3] conv (ResNet-152 layer4, 7×7 input at 224 px) by Tucker-2 at r = 242…269."""
    from .optimize import rank_time_sweep

    ranks = list(range(paper.FIG2_CLIFF["ranks"][0], paper.FIG2_CLIFF["ranks"][1] + 1))
    shape = (settings.layer_batch * (8 if not settings.gpu else 1), 512, 7, 7)
    df = rank_time_sweep(512, 512, 3, ranks, shape, device=settings.device, repeats=settings.repeats,
                         rounds=settings.rounds, dtype="bf16" if settings.gpu else None)
    return {"input_shape": list(shape), "sweep": df.to_dict(orient="records")}


def stage_optimize(settings: Settings, results: dict[str, Any]) -> dict[str, Any]:
    """T1 optimized ranks and F3 traces: Algorithm 1 over ResNet-152 (and ResNet-50, sharing the shape cache)."""
    from .optimize import optimize_plan

    out: dict[str, Any] = {}
    cache_dir = Path(settings.out) / "cache" / "layer_times"
    shape = (settings.layer_batch, 3, 224, 224)
    for name in ("resnet152", "resnet50"):
        model = get_model(name).eval()
        plan = make_plan(model, ratio=2, exclude=PAPER_EXCLUDE, model_name=name)
        optimized, traces = optimize_plan(model, plan, shape, device=settings.device, lower=0.75,
                                          repeats=settings.repeats, rounds=settings.rounds, cache_dir=cache_dir)
        out[name] = {"plan": optimized.to_dict(), "traces": traces.to_dict(orient="records")}
    out["ranks"] = {row["name"]: ("ORG" if row["method"] is None else row["ranks"][0])
                    for row in out["resnet152"]["plan"]["layers"] if row["reason"].startswith(("optimized", "ORG"))}
    out["input_shape"] = list(shape)
    return out


def stage_granularity(settings: Settings, results: dict[str, Any]) -> dict[str, Any]:
    """F9: ResNet-50 at 2x with ranks rounded to multiples of g, measured against the original."""
    from .optimize import granularity_sweep

    df = granularity_sweep(get_model("resnet50").eval(), settings.bench_shape, ratio=2, device=settings.device,
                           train=True, rounds=settings.rounds)
    return {"input_shape": list(settings.bench_shape), "sweep": df.to_dict(orient="records")}


def stage_freezing(settings: Settings, results: dict[str, Any]) -> dict[str, Any]:
    """F7/F8 (P2-style): ResNet-20 trained on the data, decomposed at 2x, fine-tuned with none/regular/sequential."""
    from .train import STUDY_FULL, STUDY_QUICK, run_freezing_study

    # quick: the whole embedded data set, shorter training (~2 min on 2 cores); full: the recorded study
    preset = {**STUDY_QUICK, "epochs": 4, "subset": None} if settings.quick else STUDY_FULL
    weights = Path(settings.out) / "cache" / "resnet20_trained.pt"
    result = run_freezing_study(model="resnet20", data=settings.data, device=settings.device, progress=True,
                                save_original=weights, **preset)
    return {k: (v.to_dict("records") if isinstance(v, pd.DataFrame) else v) for k, v in result.items()}


def stage_techniques(settings: Settings, results: dict[str, Any]) -> dict[str, Any]:
    """T2/F4/F5: original, vanilla LRD, optimized ranks, layer freezing and layer merging of ResNet-50, measured."""
    from .plan import Plan
    from .techniques import speed_columns, structure_row, technique_models

    torch.manual_seed(0)
    model = get_model("resnet50").eval()
    plan = make_plan(model, ratio=2, exclude=PAPER_EXCLUDE, model_name="resnet50")
    models = technique_models(model, plan)
    optimized = Plan.from_dict(results["optimize"]["resnet50"]["plan"])
    models = {**dict(list(models.items())[:2]), "optimized ranks": decompose(model, optimized),
              **dict(list(models.items())[2:])}
    count_shape = (1, 3, 224, 224)
    rows = [structure_row(name, m, model, count_shape) for name, m in models.items()]
    timing = speed_columns(models, settings.bench_shape, rounds=settings.rounds, warmup=1, repeats=3)
    for row in rows:
        row.update(timing[row["method"]])
    return {"input_shape": list(settings.bench_shape), "rows": rows}


def stage_branches(settings: Settings, results: dict[str, Any]) -> dict[str, Any]:
    """F6: branched Tucker N ∈ {1, 2, 4, 8} on ResNet-50 (structure, speed); accuracy on a small net in full mode."""
    from .techniques import accuracy_study, branch_sweep

    n, c, h, w = settings.bench_shape
    out = {"resnet50": branch_sweep("resnet50", (1, 2, 4, 8), batch=n, image_size=h,
                                    rounds=settings.rounds)}
    if not settings.quick:
        out["accuracy"] = accuracy_study(data=settings.data, progress=True)
    return out


STAGES: list[tuple[str, str, Callable[[Settings, dict[str, Any]], dict[str, Any]]]] = [
    ("paper_models", "ranks, layers, params and FLOPs of ResNet-50/101/152 at 2x", stage_paper_models),
    ("decompose_time", "time to decompose ResNet-50", stage_decompose_time),
    ("rank_time", "F1/F2: time vs Tucker rank of the [512,512,3,3] conv", stage_rank_time),
    ("optimize", "T1/F3: Algorithm 1 rank search on ResNet-152 and ResNet-50", stage_optimize),
    ("granularity", "F9: rank granularity sweep on ResNet-50", stage_granularity),
    ("freezing", "F7/F8: fine-tuning with no / regular / sequential freezing", stage_freezing),
    ("techniques", "T2/F4/F5: each technique on ResNet-50, measured", stage_techniques),
    ("branches", "F6: branched Tucker sweep", stage_branches),
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
            results[name] = json.loads(path.read_text())
            print(f"[{i}/{len(stages)}] {what}: cached ({path})", flush=True)
            continue
        print(f"[{i}/{len(stages)}] {what} …", flush=True)
        start = time.perf_counter()
        results[name] = fn(settings, results)
        results[name]["_seconds"] = time.perf_counter() - start
        path.write_text(json.dumps(results[name], indent=1, default=str))
        print(f"      done in {results[name]['_seconds']:.0f} s", flush=True)
    return results


# --- rendering ----------------------------------------------------------------------------------------


def table1(results: dict[str, Any]) -> pd.DataFrame:
    """P1 Table 1 beside this run's 2x ranks (and optimized ranks when the optimize stage ran)."""
    ranks = results["paper_models"]["resnet152_ranks"]
    optimized = results.get("optimize", {}).get("ranks", {})
    rows = []
    for layer, (C, S, k, paper_2x, paper_opt) in paper.TABLE1.items():
        ours = ranks.get(layer, [None])[0]
        rows.append({"layer": layer, "C": C, "S": S, "k": k, "paper 2x rank": paper_2x, "lrdlab 2x rank": ours,
                     "match": "yes" if ours == paper_2x else "NO",
                     "paper optimized": paper_opt, "lrdlab optimized (this machine)": optimized.get(layer, "—")})
    return pd.DataFrame(rows)


def table2_structure(results: dict[str, Any]) -> pd.DataFrame:
    rows = []
    for r in results["paper_models"]["models"]:
        layers, params, flops, *_ = paper.TABLE2[(r["model"], "vanilla")]
        rows.append({"model": r["model"], "layers (paper)": layers, "layers": r["layers"],
                     "params % (paper)": params, "params %": r["params_pct"],
                     "FLOPs % (paper)": flops, "FLOPs %": r["flops_pct"],
                     "FLOPs Δ (points)": r["flops_pct"] - flops})
    return pd.DataFrame(rows)


def render_rank_time(report, res: dict[str, Any]) -> None:
    from . import plots

    df = pd.DataFrame(res["sweep"])
    report.heading("F1/F2 — layer time and parameter reduction vs Tucker rank, [512, 512, 3, 3] conv")
    fig = plots.plot_rank_time(df, original_ms=float(df["original_ms"].iloc[0]),
                               title=f"Tucker-2 [512,512,3,3], input {tuple(res['input_shape'])}")
    report.figure(fig, "F1_rank_time", "F1: time per batch vs rank (median and quartiles; dashed: the original "
                  "conv); marked ranks are cliffs (>5% jump over the rank below).")
    report.figure(plots.plot_params_removed(512, 512, 3, df["rank"].tolist()), "F2_params_removed",
                  "F2: % of the layer's weights removed vs rank (closed form).")
    cliffs = plots.find_cliffs(df["rank"], df["time_ms"])
    t = df.set_index("rank")["time_ms"]
    lo, hi = paper.FIG2_CLIFF["rank_below"], paper.FIG2_CLIFF["rank_above"]
    change = 100 * (t[hi] - t[lo]) / t[hi]
    report.text(f"The paper saw a {paper.FIG2_CLIFF['time_drop_pct']:.0f}% drop in time from rank {hi} to {lo} "
                f"(GPU). Here: {change:+.1f}% ({t[hi]:.2f} → {t[lo]:.2f} ms); cliffs found at ranks "
                f"{cliffs or 'none'}; the original conv takes {df['original_ms'].iloc[0]:.2f} ms.")


def render_optimize(report, res: dict[str, Any]) -> None:
    from . import plots
    from .plan import Plan

    report.heading("F3 — Algorithm 1 traces (measured rank search), ResNet-152")
    traces = pd.DataFrame(res["resnet152"]["traces"])
    wanted = [n for n in ("layer1.0.conv2", "layer4.2.conv2", "fc", "layer4.2.conv1") if n in set(traces["layer"])]
    fig = plots.plot_algorithm1_traces(traces, layers=wanted or None)
    report.figure(fig, "F3_algorithm1", f"F3: t(r), Δt(r), the chosen R_opt and the original time T per layer "
                  f"(input {tuple(res['input_shape'])}).")
    plan = Plan.from_dict(res["resnet152"]["plan"])
    kept = sum(r.reason.startswith("ORG") for r in plan.layers)
    changed = sum(r.reason.startswith("optimized") for r in plan.layers)
    report.text(f"Over ResNet-152's {len(plan.layers)} conv/linear layers the search changed {changed} ranks and "
                f"kept {kept} layers original (ORG: no rank beat the original layer here).")


def render_granularity(report, res: dict[str, Any]) -> None:
    from . import plots

    df = pd.DataFrame(res["sweep"])
    report.heading("F9 — rank granularity sweep, ResNet-50 at 2x")
    report.figure(plots.plot_granularity_sweep(df), "F9_granularity",
                  f"F9: time, speed-up and params removed vs granularity g (input {tuple(res['input_shape'])}).")
    cols = [c for c in ("granularity", "params_removed_pct", "flops_removed_pct", "speedup_pct",
                        "train_speedup_pct", "realised") if c in df.columns]
    report.table(df[cols], "Speed-ups are medians of interleaved per-round ratios against the original; "
                 "realised = fraction of the FLOP-ideal speed-up.")


PAPER_METHODS = {"vanilla LRD": "vanilla", "optimized ranks": "optimized", "layer freezing": "freezing",
                 "layer merging": "merging"}


def table2(rows: list[dict[str, Any]], model: str = "resnet50") -> pd.DataFrame:
    """P1 Table 2 for one model: the paper's numbers, this machine's, and their ratio (ours / paper)."""
    out = []
    for r in rows:
        key = PAPER_METHODS.get(r["method"])
        if key is None:
            continue
        layers, params, flops, train, infer = paper.TABLE2[(model, key)]
        out.append({"method": r["method"], "layers (paper)": layers, "layers": r["layers"],
                    "params % (paper)": params, "params %": r["params_pct"],
                    "FLOPs % (paper)": flops, "FLOPs %": r["flops_pct"],
                    "train speed-up % (paper)": train, "train speed-up %": r["train_speedup_pct"],
                    "train ratio": r["train_speedup_pct"] / train,
                    "infer speed-up % (paper)": infer, "infer speed-up %": r["inference_speedup_pct"],
                    "infer ratio": r["inference_speedup_pct"] / infer})
    return pd.DataFrame(out)


def render_techniques(report, results: dict[str, Any]) -> None:
    from . import plots

    res = results["techniques"]
    rows = res["rows"]
    report.heading("T2 — ResNet-50: each technique's layers, params, FLOPs and measured speed-ups, paper vs lrdlab")
    report.table(table2(rows), f"Speed-ups measured here on input {tuple(res['input_shape'])}, interleaved "
                 "(median of per-round ratios vs the original); the paper's hardware, batch and precision are not "
                 "stated. Ratio = this machine / paper. 'layer freezing' is regular freezing (training only: its "
                 "inference model is vanilla LRD's, so any gap between their inference columns is measurement "
                 "noise — a fair gauge of it).")
    ours = pd.DataFrame([{"model": "this machine", "method": r["method"], "train_speedup_pct": r["train_speedup_pct"],
                          "infer_speedup_pct": r["inference_speedup_pct"]} for r in rows if r["method"] != "original"])
    theirs = pd.DataFrame([{"model": "paper", "method": m, "train_speedup_pct": paper.TABLE2[("resnet50", k)][3],
                            "infer_speedup_pct": paper.TABLE2[("resnet50", k)][4]} for m, k in PAPER_METHODS.items()])
    report.figure(plots.plot_speedup(pd.concat([theirs, ours], ignore_index=True),
                                     title="Speed-up by technique, ResNet-50"), "F4_speedup",
                  "F4: training and inference speed-up (%) by technique, the paper's beside this machine's.")
    points = [{"method": r["method"], "flops_removed_pct": -r["flops_pct"], "speedup_pct": r["inference_speedup_pct"],
               "model": "technique"} for r in rows if r["method"] != "original"]
    if "granularity" in results:
        points += [{"method": f"g={int(g['granularity'])}", "flops_removed_pct": g["flops_removed_pct"],
                    "speedup_pct": g["speedup_pct"], "model": "granularity"} for g in results["granularity"]["sweep"]]
    report.figure(plots.plot_speedup_vs_flops(pd.DataFrame(points)), "F5_speedup_vs_flops",
                  "F5: measured inference speed-up vs FLOPs removed; the dashed line is the ideal (time ∝ FLOPs).")


def render_branches(report, res: dict[str, Any]) -> None:
    from . import plots

    big = pd.DataFrame(res["resnet50"]["rows"])
    big["time_ms"] = 1e3 * big["inference_s"]
    report.heading("F6 — branched Tucker: N groups in the core at the same ranks")
    report.figure(plots.plot_branch_sweep(big), "F6_branches",
                  f"F6: ResNet-50 (ranks at 2x rounded to multiples of 8): params, FLOPs, relative weight error of "
                  f"the block-diagonal core, inference time per batch {tuple(res['resnet50']['input_shape'])}.")
    cols = ["branches", "params_pct", "flops_pct", "weight_rel_error", "inference_speedup_pct", "train_speedup_pct"]
    report.table(big[cols], "% change vs the original; speed-ups interleaved against the original.")
    if "accuracy" in res:
        acc = pd.DataFrame(res["accuracy"]["branch_rows"])
        report.table(acc[["branches", "params_pct", "acc_before", "acc_after"]],
                     "Small Bottleneck net on the embedded data: accuracy before and after a short fine-tune.")
    else:
        report.text("Accuracy per branch count is measured in the full run (a small Bottleneck net trained and "
                    "fine-tuned per N); the quick run skips it. A recorded run is in "
                    "data/techniques_accuracy_mnist5k.json.")


def render_freezing(report, res: dict[str, Any], out: Path) -> None:
    from . import plots
    from .models import get_model as build

    history = pd.DataFrame(res["history"])
    throughput = pd.DataFrame(res["throughput"])
    st = res["settings"]
    report.heading("F7/F8 — freezing: throughput and convergence (ResNet-20 on the embedded data)")
    report.text(f"ResNet-20 trained {st['epochs']} epochs on {st['data']} (subset {st.get('subset') or 'all'}), "
                f"decomposed at {st['ratio']}x ({st['decomposed_layers']} layers), then fine-tuned "
                f"{st['finetune_epochs']} epochs per freezing mode (period {st['period']} {st['unit']}).")
    main = throughput[~throughput["technique"].str.contains(r"\[")]
    report.figure(plots.plot_throughput(main), "F7_throughput",
                  "F7: training and inference throughput by technique (timed interleaved; sequential = mean over "
                  "its phases).")
    report.table(main[["technique", "train_img_s", "train_speedup_pct", "infer_img_s", "infer_speedup_pct"]],
                 "Speed-ups vs the original model, medians of interleaved per-round ratios.")
    lrd = history[history["variant"] == "lrd"].copy()
    orig = history[history["variant"] == "original"].copy()
    report.figure(plots.plot_convergence(lrd), "F8_convergence",
                  "F8: test accuracy and loss of the 2x model during fine-tuning, vs epoch and vs wall-clock "
                  "seconds, per freezing mode.")
    final = history[history["epoch"] == history.groupby("mode")["epoch"].transform("max")]
    report.table(final[["mode", "epoch", "accuracy", "loss", "wall_s"]],
                 f"Final test metrics (accuracy: top-1 %); the original reached {orig['accuracy'].iloc[-1]:.2f}%.")
    weights = out / "cache" / "resnet20_trained.pt"
    if weights.exists():
        model = build("resnet20", num_classes=10)
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        plan = make_plan(model, ratio=2)
        names = [r.name for r in plan.decomposed_layers][:: max(1, len(plan.decomposed_layers) // 4)][:4]
        fig = plots.plot_spectra(model, ranks_by_layer={n: plan[n].ranks[0] for n in names}, names=names)
        report.heading("F10 — singular-value spectra of the trained ResNet-20")
        report.figure(fig, "F10_spectra", "F10: normalised singular values (log) and cumulative energy per layer; "
                      "markers: the 2x rank.")


def environment_block(settings: Settings) -> dict[str, Any]:
    from .measure import machine_info

    info = machine_info(settings.device)
    info.update({k: v for k, v in asdict(settings).items() if k != "out"})
    return info


def render(settings: Settings, results: dict[str, dict[str, Any]]):
    """Write report.md / report.html with every table and figure from the cached results."""
    from .report import Report

    report = Report(Path(settings.out), "lrdlab reproduction of P1/P2 on this machine")
    env = environment_block(settings)
    report.text(
        f"Device: **{env['device_name']}** ({env['device']}, {env['cpu_count']} cores, {env['torch_threads']} torch "
        f"threads), torch {env['torch_version']}, Python {env['python']}; "
        f"mode: {'quick' if settings.quick else 'full'}; data: {settings.data}. FLOPs: {FLOP_COUNTER}."
    )
    report.heading("T1 — ranks at 2x compression (ResNet-152), paper vs lrdlab")
    report.table(table1(results), "P1 Table 1. The 2x ranks are exact maths (floor of §1's formulas); "
                 "optimized ranks are measured on the device they are searched on, so they differ by machine.")
    report.heading("T2 (structure) — layers, params and FLOPs at 2x, paper vs lrdlab")
    report.table(table2_structure(results), "Stem and downsample convs not decomposed; FLOPs at 224×224. "
                 "Layers counted on the main path (downsample shortcuts excluded), as the paper counts 50 for "
                 "ResNet-50. The paper's params column reads −50.00 for every model (the per-layer target); "
                 "measured over the whole model it is smaller because the stem, downsample convs, BN and "
                 "floor rounding are counted too.")
    if "rank_time" in results:
        render_rank_time(report, results["rank_time"])
    if "optimize" in results:
        render_optimize(report, results["optimize"])
    if "granularity" in results:
        render_granularity(report, results["granularity"])
    if "techniques" in results:
        render_techniques(report, results)
    if "branches" in results:
        render_branches(report, results["branches"])
    if "freezing" in results:
        render_freezing(report, results["freezing"], Path(settings.out))
    d = results["decompose_time"]
    report.text(f"Decomposing the {d['layers']} layers of ResNet-50 (HOSVD, 2x) takes {d['median_s']:.2f} s "
                f"(median of 3, {d['threads']} threads).")
    return report.write()


def reproduce(settings: Settings) -> Path:
    """Run the whole study (resuming from the cache) and write the report; returns report.md's path."""
    torch.manual_seed(0)
    results = run_stages(settings)
    path = render(settings, results)
    print(f"report: {path}  (and {path.with_suffix('.html')})")
    return path

