"""The reproduction report's tables and figures, rendered from the cached stage results.

Every measured speed-up is printed with its 95% bootstrap interval, and "within noise" where that
interval covers 0 (:meth:`lrdlab.measure.stats.SpeedUp.text`); the backend it was measured on is a column.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lrdlab.paper.reproduce import Settings

from pathlib import Path
from typing import Any

import pandas as pd
import torch

from lrdlab.explore import numbers as paper
from lrdlab.explore import plots
from lrdlab.explore.recorded import speedup_text, throughput_table
from lrdlab.lowrank.plan import Layers, Ratio, make_plan
from lrdlab.measure.counting import FLOP_COUNTER

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
    df = pd.DataFrame(res["sweep"])
    report.heading("F1/F2 — layer time and parameter reduction vs Tucker rank, [512, 512, 3, 3] conv")
    cliffs = plots.rank_cliffs(df, rounds=int(res.get("rounds", 1)))
    fig = plots.plot_rank_time(df, original_ms=float(df["original_ms"].iloc[0]), cliffs=cliffs,
                               title=f"Tucker-2 [512,512,3,3], input {tuple(res['input_shape'])}")
    report.figure(fig, "F1_rank_time", "F1: time per batch vs rank (median and quartiles; dashed: the original "
                  "conv); marked ranks are cliffs: steps above the measured noise, the rank search's rule "
                  "(lrdlab.measure.stats.cliffs).")
    report.figure(plots.plot_params_removed(512, 512, 3, df["rank"].tolist()), "F2_params_removed",
                  "F2: % of the layer's weights removed vs rank (closed form).")
    t = df.set_index("rank")["time_ms"]
    lo, hi = paper.FIG2_CLIFF["rank_below"], paper.FIG2_CLIFF["rank_above"]
    change = 100 * (t[hi] - t[lo]) / t[hi]
    report.text(f"The paper saw a {paper.FIG2_CLIFF['time_drop_pct']:.0f}% drop in time from rank {hi} to {lo} "
                f"(GPU). Here: {change:+.1f}% ({t[hi]:.2f} → {t[lo]:.2f} ms); cliffs above the noise at ranks "
                f"{cliffs or 'none'}; the original conv takes {df['original_ms'].iloc[0]:.2f} ms.")


def render_optimize(report, res: dict[str, Any]) -> None:
    from lrdlab.lowrank.plan import Plan

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
                f"kept {kept} layers original (ORG: no rank beat the original layer here). This is P1's Algorithm 1 "
                f"as written (method='paper', {plan.settings.get('optimize', {}).get('rounds', '?')} round(s)): its "
                "argmax of single-step drops can pick a noise spike. lrdlab's default search (method='robust') "
                "accepts only steps above the measured noise and confirms each winner with a 95% interval.")


def render_granularity(report, res: dict[str, Any]) -> None:
    df = pd.DataFrame(res["sweep"])
    report.heading("F9 — rank granularity sweep, ResNet-50 at 2x")
    report.figure(plots.plot_granularity_sweep(df), "F9_granularity",
                  f"F9: time, speed-up and params removed vs granularity g (input {tuple(res['input_shape'])}).")
    rows = df.to_dict("records")
    df["inference speed-up (95% CI)"] = [speedup_text(r) for r in rows]
    df["training speed-up (95% CI)"] = [speedup_text(r, "train_") for r in rows]
    df["backend"] = [r.get("backend", "eager") for r in rows]
    cols = [c for c in ("granularity", "params_removed_pct", "flops_removed_pct", "inference speed-up (95% CI)",
                        "training speed-up (95% CI)", "realised", "rounds", "backend") if c in df.columns]
    report.table(df[cols], "Speed-ups are medians of interleaved per-round ratios against the original, with "
                 "95% bootstrap intervals; 'within noise' where the interval covers 0. realised = fraction of "
                 "the FLOP-ideal speed-up.")


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
                    "infer speed-up % (paper)": infer, "infer speed-up %": r["infer_speedup_pct"],
                    "infer ratio": r["infer_speedup_pct"] / infer,
                    "train (95% CI)": speedup_text(r, "train_"), "infer (95% CI)": speedup_text(r, "infer_"),
                    "backend": r.get("backend", "eager")})
    return pd.DataFrame(out)


def render_breakdown(report, res: dict[str, Any]) -> None:
    from lrdlab.measure.breakdown import breakdown_text

    summaries = {name: p["summary"] for name, p in res["plans"].items()}
    report.heading("Where the time goes — the decomposed layers in place vs the rest of ResNet-50")
    report.figure(plots.plot_time_breakdown(summaries, target_pct=60), "breakdown",
                  f"Time per batch {tuple(res['input_shape'])}: the decomposed layers (timed in place by forward "
                  "hooks) and the rest of the network (stem, max-pool, BatchNorm, ReLU, adds, downsample), which "
                  "no rank changes; labels: whole-network speed-up, 95% interval; dashed: the time +60% needs.")
    for name, s in summaries.items():
        report.text(f"**{name}.** " + breakdown_text(s, target_pct=60).replace("\n", "; ") + ".")


def render_techniques(report, results: dict[str, Any]) -> None:
    res = results["techniques"]
    rows = res["rows"]
    report.heading("T2 — ResNet-50: each technique's layers, params, FLOPs and measured speed-ups, paper vs lrdlab")
    report.table(table2(rows), f"Speed-ups measured here on input {tuple(res['input_shape'])}, interleaved "
                 "(median of per-round ratios vs the original); the paper's hardware, batch and precision are not "
                 "stated. Ratio = this machine / paper. 'layer freezing' is regular freezing (training only: its "
                 "inference model is vanilla LRD's, so any gap between their inference columns is measurement "
                 "noise — a fair gauge of it).")
    ci_cols = [f"{p}_speedup_pct_ci_{e}" for p in ("train", "infer") for e in ("low", "high")]
    ours = pd.DataFrame([{"model": "this machine", "method": r["method"], "train_speedup_pct": r["train_speedup_pct"],
                          "infer_speedup_pct": r["infer_speedup_pct"], **{c: r.get(c) for c in ci_cols}}
                         for r in rows if r["method"] != "original"])
    theirs = pd.DataFrame([{"model": "paper", "method": m, "train_speedup_pct": paper.TABLE2[("resnet50", k)][3],
                            "infer_speedup_pct": paper.TABLE2[("resnet50", k)][4]} for m, k in PAPER_METHODS.items()])
    report.figure(plots.plot_speedup(pd.concat([theirs, ours], ignore_index=True),
                                     title="Speed-up by technique, ResNet-50"), "F4_speedup",
                  "F4: training and inference speed-up (%) by technique, the paper's beside this machine's; "
                  "error bars: 95% bootstrap intervals of this machine's per-round ratios.")
    points = [{"method": r["method"], "flops_removed_pct": -r["flops_pct"], "speedup_pct": r["infer_speedup_pct"],
               "speedup_pct_ci_low": r.get("infer_speedup_pct_ci_low"),
               "speedup_pct_ci_high": r.get("infer_speedup_pct_ci_high"),
               "model": "technique"} for r in rows if r["method"] != "original"]
    if "granularity" in results:
        points += [{"method": f"g={int(g['granularity'])}", "flops_removed_pct": g["flops_removed_pct"],
                    "speedup_pct": g["speedup_pct"], "speedup_pct_ci_low": g.get("speedup_pct_ci_low"),
                    "speedup_pct_ci_high": g.get("speedup_pct_ci_high"), "model": "granularity"}
                   for g in results["granularity"]["sweep"]]
    report.figure(plots.plot_speedup_vs_flops(pd.DataFrame(points)), "F5_speedup_vs_flops",
                  "F5: measured inference speed-up vs FLOPs removed (error bars: 95% intervals); the dashed line "
                  "is the ideal (time ∝ FLOPs).")


def render_branches(report, res: dict[str, Any]) -> None:
    big = pd.DataFrame(res["resnet50"]["rows"])
    big["time_ms"] = 1e3 * big["infer_s"]
    report.heading("F6 — branched Tucker: N groups in the core at the same ranks")
    report.figure(plots.plot_branch_sweep(big), "F6_branches",
                  f"F6: ResNet-50 (ranks at 2x rounded to multiples of 8): params, FLOPs, relative weight error of "
                  f"the block-diagonal core, inference time per batch {tuple(res['resnet50']['input_shape'])}.")
    cols = ["branches", "params_pct", "flops_pct", "weight_rel_error", "infer_speedup_pct", "train_speedup_pct"]
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
    from lrdlab.zoo.models import get_model as build

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
    report.table(throughput_table(throughput),
                 "Speed-ups vs the original model: medians of interleaved per-round ratios, 95% bootstrap intervals.")
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
        plan = make_plan(model, Ratio(2), Layers(exclude=["conv1"]))  # the stem stays, as in the study
        names = [r.name for r in plan.decomposed_layers][:: max(1, len(plan.decomposed_layers) // 4)][:4]
        fig = plots.plot_spectra(model, ranks_by_layer={n: (plan[n].ranks or [0])[0] for n in names}, names=names)
        report.heading("F10 — singular-value spectra of the trained ResNet-20")
        report.figure(fig, "F10_spectra", "F10: normalised singular values (log) and cumulative energy per layer; "
                      "markers: the 2x rank.")


def render_accuracy(report, res: dict[str, Any]) -> None:
    """F11 and its table: accuracy after decomposition, beside params and FLOPs."""
    rows = pd.DataFrame(res["rows"])
    for model in rows["model"].unique():
        name = {"resnet20": "ResNet-20", "vit_tiny": "ViT-tiny"}.get(model, model)
        mine = rows[(rows["model"] == model) & (rows["granularity"] == rows["granularity"].min())]
        table = mine.pivot_table(index=["ratio", "params", "flops"], columns="variant", values="accuracy")
        report.heading(f"F11 — accuracy right after decomposition (trained {name}, MNIST-5k)")
        report.table(table.reset_index(), f"Test accuracy (%) of the shipped `{model}_mnist5k` decomposed at each "
                     "ratio (stem kept): weights only (the papers' start), + BN re-estimation, data-aware (SVD-LLM "
                     "whitening / whitened Tucker-2), data-aware + BN; "
                     f"{res['settings']['calibration_images']} calibration images, no gradient step unless `+ft` "
                     "(1 epoch, batch 32, distilled from the original).")
        report.figure(plots.plot_accuracy_study(res, model), f"F11_accuracy_{model}", f"F11 ({name}): accuracy vs "
                      "compression; params and FLOPs (% of the original) on the right axis.")


def _render_recorded_transformers(report) -> None:
    """P2's transformer half, from the recorded study (``python -m tools.record transformers study``), when recorded."""
    from lrdlab.explore.recorded import data_dir
    from lrdlab.explore.transformers_report import render_transformers

    study, targets = data_dir() / "transformers_mnist5k.json", data_dir() / "transformers_targets_cpu.json"
    if study.is_file():
        render_transformers(report, study, targets if targets.is_file() else None)


def render_language_model(report, res: dict[str, Any]) -> None:
    """The language-model section: the live check beside the recorded perplexities (explore/lm_lab.py)."""
    from lrdlab.explore.lm_lab import recorded_loss_weighted, recorded_quality

    report.heading("Language model — SmolLM2-135M-Instruct: perplexity and text, dense vs decomposed")
    if "skipped" in res:
        report.text(f"Not run live: {res['skipped']}")
    else:
        _render_live_language_model(report, res)
    rec = recorded_quality()
    rec = rec[rec["variant"].isin(["dense", "svd_llm", "svd_llm_distilled"])]
    report.table(rec[["variant", "ratio", "pydoc_validation", "idle_history"]],
                 "Recorded (data/lm_quality_smollm2.json, 1 thread, the machine and load named there): 16 pydoc "
                 "validation windows of 256 tokens and IDLE's history (never calibrated on); distilled: SVD-LLM "
                 "then a short distillation from the dense model (its command is in the file).", floatfmt="{:,.2f}")
    report.table(recorded_loss_weighted().drop(columns="calibration_windows"),
                 "Recorded, same file (loss_weighted_summary): lrdlab.decompose_loss_weighted (output-Fisher weighted "
                 "SVD, ranks allocated by the loss) beside uniform SVD-LLM at the same budget, both calibrated on 16 "
                 "windows; *_vs_svd_llm: each perplexity over SVD-LLM's at that ratio.", floatfmt="{:,.3f}")


def _render_live_language_model(report, res: dict[str, Any]) -> None:
    from lrdlab.explore.lm_lab import PROMPTS, PairedOrder

    report.text(f"Live on this machine: {res['evaluation_tokens']:,} pydoc validation tokens ({res['windows']} windows "
                f"of {res['seq_len']}), SVD-LLM and loss-weighted (lrdlab.decompose_loss_weighted: output-Fisher "
                f"weighted SVD, ranks allocated by the loss at the same budget) calibrated on "
                f"{res['calibration_tokens']:,} tokens of the training split, {res['threads']} torch thread(s), "
                f"load {res['load_before']} before and {res['load_after']} "
                "after. A sample this small gives noisy perplexities: two models are ranked only by a paired "
                "bootstrap over the windows (below), and the recorded table is the one to quote.")
    live = pd.DataFrame(res["rows"]).drop(columns=["ratio", "variant"])
    report.table(live, "Perplexity (lower is better) on the same windows; params of the whole model; fit_s: the "
                 "wall time of the decomposition.", floatfmt="{:,.3f}")
    for name, order in res["orders"].items():
        report.text(f"{name}: " + PairedOrder(**order).text("SVD-LLM", "weights only"))
    for name, order in res.get("weighted_orders", {}).items():  # lrdlab.decompose_loss_weighted, same budget
        report.text(f"{name}: " + PairedOrder(**order).text("loss-weighted", "SVD-LLM"))
    report.table(pd.DataFrame({"model": list(res["generations"]), "continuation": [
        repr(t[0]) for t in res["generations"].values()]}), f"Greedy continuations of {PROMPTS[0]!r}.")


def render(settings: Settings, results: dict[str, dict[str, Any]]):
    """Write report.md / report.html with every table and figure from the cached results."""
    from lrdlab.measure.machine import machine_info
    from lrdlab.paper.report import Report

    report = Report(Path(settings.out), "lrdlab reproduction of P1/P2 on this machine")
    env = machine_info(settings.device)
    compute = env.compute.settings
    report.text(
        f"Device: **{env.device_name}** ({env.device}, {env.compute.cpu_count} cores, {compute.threads} torch "
        f"threads, compute mode {compute.mode}, OpenMP wait policy {compute.wait_policy}), "
        f"torch {env.torch_version}, Python {env.python}; "
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
    if "breakdown" in results:
        render_breakdown(report, results["breakdown"])
    if "techniques" in results:
        render_techniques(report, results)
        from lrdlab.explore.speed_story import render_story

        render_story(report, results)
    if "branches" in results:
        render_branches(report, results["branches"])
    if "accuracy" in results:
        render_accuracy(report, results["accuracy"])
    if "freezing" in results:
        render_freezing(report, results["freezing"], Path(settings.out))
    _render_recorded_transformers(report)
    if "language_model" in results:
        render_language_model(report, results["language_model"])
    d = results["decompose_time"]
    report.text(f"Decomposing the {d['layers']} layers of ResNet-50 (HOSVD, 2x) takes {d['median_s']:.2f} s "
                f"(median of 3, {d['threads']} threads).")
    report.text(run_time_text(results))
    return report.write()


def run_time_text(results: dict[str, dict[str, Any]]) -> str:
    """Each stage's computing time, as its cache recorded it (a resumed run adds nothing)."""
    seconds = {name: res["_seconds"] for name, res in results.items() if "_seconds" in res}
    stages = ", ".join(f"{name} {s:.0f} s" for name, s in seconds.items())
    return f"Run time: {sum(seconds.values()) / 60:.1f} min computing ({stages}); rendering is redone every run."
