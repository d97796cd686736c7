"""The generated blocks of the README and docs/, each rendered from the ``data/`` files it quotes
(``python -m tools.readme`` writes them; the tests keep the pages equal to them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lrdlab.explore.recorded import speedup_text
from lrdlab.explore.speed_story import STORY_FILE, recorded_story, story_table, threads_sentence
from lrdlab.explore.transformers_report import load_transformers_study, multiple_summary
from lrdlab.measure.records import read_record
from lrdlab.measure.stats import SpeedUp
from lrdlab.paper.accuracy_study import VARIANTS
from tools.record.speed_checks import table_speedup

# --- docs/speed.md: every speed check -----------------------------------------------------------------

SPEED_BEGIN = "<!-- speed-section: generated from data/ by tools.readme_blocks.speed_section -->"
SPEED_END = "<!-- /speed-section -->"


def between_runs(first: list[dict[str, Any]], second: list[dict[str, Any]]) -> str:
    """The same ranks on torch.compile in two recordings: how far the medians moved against the intervals."""
    pairs = {"searched ranks": ("robust search ranks", "robust search ranks"),
             "g=32": ("g=32", "robust search at g=32")}
    a = {r["name"]: table_speedup(r).to_pct() for r in first}
    b = {r["name"]: table_speedup(r).to_pct() for r in second}
    parts, moved = [], []
    for label, (x, y) in pairs.items():
        parts.append(f"{label} {a[x]['median']:+.1f}% then {b[y]['median']:+.1f}%")
        hw = max((a[x]["ci_high"] - a[x]["ci_low"]) / 2, (b[y]["ci_high"] - b[y]["ci_low"]) / 2)
        if abs(a[x]["median"] - b[y]["median"]) > hw:
            moved.append(label)
    tail = (f"{' and '.join(moved)} moved more than {'its' if len(moved) == 1 else 'their'} intervals' half-width: an "
            "interval covers the noise within one run, not the drift between runs" if moved
            else "each moved less than its intervals' half-width")
    return (f"The same ranks on torch.compile in two recordings (search_compile_resnet50_cpu.json, then "
            f"plan_choice_resnet50_cpu.json): {'; '.join(parts)} — {tail}.")


def speed_section(data: Path) -> str:
    """docs/speed.md's table of every speed check, rendered from ``data/`` (tests/tools/test_readme_speed.py)."""
    comp = read_record(data / "compute_policy_cpu.json")
    aa = read_record(data / "aa_check_cpu.json")
    back = read_record(data / "bench_backends_resnet50_cpu.json")

    def median(threads: int, policy: str, key: str) -> float:
        import statistics

        return statistics.median(r[key] for r in comp["rows"] if r["threads"] == threads and not r.get("competitor")
                                 and r["omp_wait_policy"].split()[0] == policy)

    def beside(key: str) -> str:
        import statistics

        values = [statistics.median(r[key] for r in comp["rows"] if r.get("competitor") and r["threads"] == t)
                  for t in (2, 1) if any(r.get("competitor") and r["threads"] == t for r in comp["rows"])]
        return " / ".join(f"{v:.1f}" for v in values)

    def cell(key: str, fmt: str) -> str:
        return " / ".join(fmt.format(median(t, p, key)) for t, p in
                          ((2, "default"), (2, "PASSIVE"), (1, "default"), (1, "PASSIVE")))

    m = comp["machine"]
    search = data / "search_robust_resnet50_cpu.json"
    rec = read_record(search) if search.exists() else None
    loads = [comp["load_average_before"][0], comp["load_average_after"][0], aa["load_average_before"][0],
             back["load_average_before"][0], back["load_average_after"][0],
             *([rec["load_average_before"][0], rec["load_average_after"][0]] if rec else [])]
    lines = [
        SPEED_BEGIN,
        f"Measured on {m['cpu']} ({m['cpu_count']} cores, shared: 1-minute load average {min(loads):.1f}–"
        f"{max(loads):.1f} while these ran; above ~1 other jobs shared the cores). Speed-ups: median of interleaved "
        "per-round ratios with a 95% bootstrap interval; rounds added until it is ±3 points or a time budget ends.",
        "",
        "| what | 2 threads spin / 2 passive / 1 spin / 1 passive | file |",
        "|---|---|---|",
        f"| tiny conv net forward, batch 8 (ms) | {cell('tiny_forward_ms', '{:.1f}')} | compute_policy_cpu.json |",
        f"| ResNet-18 forward, batch 8, 112 px (ms) | {cell('resnet18_forward_ms', '{:.0f}')} | "
        "compute_policy_cpu.json |",
        f"| decompose ResNet-50 at 2x (s) | {cell('decompose_resnet50_s', '{:.1f}')} | compute_policy_cpu.json |",
        f"| decompose ViT-B/16 at 2x (s) | {cell('decompose_vit_b_16_s', '{:.1f}')} | compute_policy_cpu.json |",
        *([f"| beside another 2-thread process (2 passive / 1 passive): decompose ResNet-50 "
           f"{beside('decompose_resnet50_s')} s, ViT-B/16 {beside('decompose_vit_b_16_s')} s | | "
           "compute_policy_cpu.json |"] if any(r.get("competitor") for r in comp["rows"]) else []),
        "",
        "| ResNet-50 at 2x vs the original, inference, batch 8, 112 px, 1 thread | speed-up % [95% CI] | "
        "realised of the FLOP ideal |",
        "|---|---|---|",
    ]
    for name, r in {**back["backends"], **back.get("pipelines", {})}.items():
        if "error" in r:
            lines.append(f"| backend {name} | not measured: {r['error'][:80]} | — |")
        else:
            text = SpeedUp.from_pct(r['speedup_pct']).text(rounds=True)
            lines.append(f"| backend {name} | {text} | {r['realised']:.2f} |")
    if rec is not None:
        for r in rec["rows"]:
            lines.append(f"| eager, {r['name']} ({r['flops_removed_pct']:.1f}% FLOPs removed) | "
                         f"{table_speedup(r).text(rounds=True)} | {r['realised']:.2f} |")
        comp_file = data / "search_compile_resnet50_cpu.json"
        comp_rows = read_record(comp_file)["rows"] if comp_file.exists() else []
        for r in comp_rows:
            lines.append(f"| compile, {r['name']} ({r['flops_removed_pct']:.1f}% FLOPs removed) | "
                         f"{table_speedup(r).text(rounds=True)} | {r['realised']:.2f} |")
        choice_file = data / "plan_choice_resnet50_cpu.json"
        choice = read_record(choice_file) if choice_file.exists() else {"backends": {}}
        for backend, c in choice["backends"].items():
            lines += [f"| {backend}, {r['name']}{' — chosen' if r['chosen'] else ''} "
                      f"({r['flops_removed_pct']:.1f}% FLOPs removed; plan_choice_resnet50_cpu.json) | "
                      f"{table_speedup(r).text(rounds=True)} | {r['realised']:.2f} |" for r in c["rows"]]
        opt = rec["search_settings"]
        lines += [f"\nChosen on {backend} by `lrdlab choose` (the searched ranks are the default): {c['chosen']} — "
                  f"{c['reason']}." for backend, c in choice["backends"].items()]
        if "t1_g32" in choice:
            moved = sum(str(r["optimized"]) != str(r["2x rank"]) for r in choice["t1_g32"])
            lines.append(f"The search at g=32 (candidates: multiples of 32 below each g=32 rank) moved {moved} of "
                         f"{len(choice['t1_g32'])} ranks of the g=32 plan in {choice['search_g32_s']:.0f} s.")
            if moved == 0 and comp_rows and "compile" in choice["backends"]:
                lines.append(between_runs(comp_rows, choice["backends"]["compile"]["rows"]))
        lines.append(f"\nThe robust search itself took {rec['search_s']:.0f} s for ResNet-50's "
                     f"{len(opt['confirmations'])} layers ({opt.get('cache_misses', '?')} layer timings measured, "
                     f"{opt.get('cache_hits', '?')} from the timing cache; search_robust_resnet50_cpu.json).")
    bd_file = data / "breakdown_resnet50_cpu.json"
    if bd_file.exists():
        plans = read_record(bd_file)["plans"]
        name = next((n for n in plans if n.startswith("robust search")), next(iter(plans)))
        s = plans[name]["summary"]
        lines.append(
            f"\nWhere the time goes, {'with the searched ranks' if name.startswith('robust') else 'for ' + name} "
            "(breakdown_resnet50_cpu.json): the decomposed layers are "
            f"{s['layers_share_pct']:.0f}% of the original's time and run {SpeedUp.from_pct(s['layers']).text()} "
            "faster in place; "
            f"the rest (stem, max-pool, BatchNorm, ReLU, adds, downsample) is untouched, so the whole network gets "
            f"{SpeedUp.from_pct(s['whole']).text()}. Even at the layers' FLOP ideal "
            f"({s['layers_flop_ratio']:.2f}x) it would gain "
            f"{s['at_flop_ideal_pct']:+.0f}%; +60% needs the layers {plans[name]['layers_needed_for_60_pct']:+.0f}% "
            "faster in place (`lrdlab bench … --breakdown`).")
    lines += [
        "",
        f"A/A check (ResNet-18 against its own copy): {SpeedUp.from_pct(aa['speedup_pct']).text(rounds=True)} — "
        f"{'the interval covers 0, as it must' if aa['covers_zero'] else 'the interval MISSES 0: noise exceeded it'} "
        "(aa_check_cpu.json).",
        SPEED_END,
    ]
    return "\n".join(lines)


# --- README and docs/speed.md: the speed story -------------------------------------------------------

STORY_BEGIN = "<!-- speed-story: generated from data/ by tools.readme_blocks.speed_story_section -->"
STORY_END = "<!-- /speed-story -->"


def speed_story_section(data: Path, links: str = "") -> str:
    """The README's short speed block (markers included): the table, a sentence on threads, the records.

    ``links`` prefixes the relative links (``"../"`` from docs/speed.md).
    """
    story = recorded_story(data)
    if story is None:
        body = [f"No speed recording yet: `python -m tools.record speed-story` writes data/{STORY_FILE}."]
    else:
        rows = story.rows
        m = story.machine
        loads = [story.load_average_before[0], story.load_average_after[0]]
        body = [
            "ResNet-50 at 2x against the original, inference; each cell: speed-up % [95% CI]; realised fraction of "
            f"the FLOP ideal. Measured on {m['cpu']} ({m['cpu_count']} cores; compute mode "
            f"{m.get('compute_mode', 'default')}, OpenMP wait policy {m['omp_wait_policy']}; 1-minute load "
            f"{min(loads):.1f}–{max(loads):.1f}, other jobs shared the cores when it is above 1) by "
            f"`{story.command}`: the stage `lrdlab reproduce --quick` runs, with the same "
            f"settings; searched ranks: {story.search or 'the recorded robust search'}.",
            "",
            story_table(rows),
            "",
            threads_sentence(rows),
        ]
    body += ["", f"Records: [data/{STORY_FILE}]({links}data/{STORY_FILE}); more in "
                 f"[docs/speed.md]({links}docs/speed.md)."]
    return "\n".join([STORY_BEGIN, *body, STORY_END]).replace("\n\n\n", "\n\n")


# --- docs/transformers.md ---------------------------------------------------------------------------

TRANSFORMERS_BEGIN = "<!-- transformers-section: generated from data/ by tools.readme_blocks.transformers_section -->"
TRANSFORMERS_END = "<!-- /transformers-section -->"


def transformers_section(data: Path) -> str:
    """docs/transformers.md's summary, rendered from ``data/`` (``tests/test_readme.py`` keeps them equal)."""
    res = load_transformers_study(data / "transformers_mnist5k.json")
    tg = read_record(data / "transformers_targets_cpu.json")
    acc = res.accuracy.set_index("ratio")
    tp = res.freezing_throughput.set_index("technique")
    gains = multiple_summary(res.gemm_ranks)
    counts = gains["verdict"].value_counts()
    rounds = tp.loc["lrd"].get("train_rounds", res.settings["rounds"])
    vit, gpt2 = tg["vit_b_16"], tg["gpt2"]
    m = res.machine
    return "\n".join([
        TRANSFORMERS_BEGIN,
        f"- **ViT-tiny on MNIST-5k** (`python -m tools.record transformers study --weights vit_tiny_mnist5k`, "
        f"{m['cpu']}, {m['torch_threads']} thread): calibrated, no gradient step, 2x keeps "
        f"{acc.loc[2.0, 'accuracy_zero_shot']:.1f}% and 4x {acc.loc[4.0, 'accuracy_zero_shot']:.1f}% "
        f"(original {acc.loc[1.0, 'accuracy_zero_shot']:.1f}%); one distilled epoch at 2x: "
        f"{acc.loc[2.0, 'accuracy_finetuned']:.1f}%. Training throughput at 2x vs the original (interleaved, "
        f"{int(rounds)} rounds): LRD "
        f"{speedup_text(tp.loc['lrd'], 'train_')}, regular freezing {speedup_text(tp.loc['lrd+regular'], 'train_')}, "
        f"sequential {speedup_text(tp.loc['lrd+sequential'], 'train_')}. Factorized GEMMs at ranks on multiples "
        f"of 8/16/32/64 run {gains['on_vs_fit_pct'].min():+.0f}…{gains['on_vs_fit_pct'].max():+.0f}% against the "
        f"line through the other ranks (noise {gains['noise_pct'].min():.0f}–{gains['noise_pct'].max():.0f}%): "
        f"{counts.get('cheaper', 0)} of {len(gains)} shape × multiple pairs cheaper beyond noise, "
        f"{counts.get('dearer', 0)} dearer.",
        f"- **ViT-B/16** at 2x: {vit['encoder_projections_decomposed']} encoder projections decomposed "
        f"(q/k/v/out + MLP), full rank {vit['full_rank_relative_error']:.1e} relative error, plan + decompose "
        f"{vit['plan_plus_decompose_seconds']:.1f} s ({tg['machine']['torch_threads']} threads, load average "
        f"{tg['load_average_before'][0]:.1f}). **GPT-2** (2 layers, from a config): "
        f"{gpt2['conv1d_decomposed']} of {gpt2['conv1d_layers']} `Conv1D` decomposed, the tied head "
        f"{'kept tied' if gpt2.get('lm_head_still_tied') else 'NOT kept tied'} "
        "(`data/transformers_targets_cpu.json`).",
        TRANSFORMERS_END,
    ])


# --- docs/accuracy.md --------------------------------------------------------------------------------


def accuracy_table(result: dict[str, Any], model: str = "resnet20", granularity: int = 1) -> str:
    """The F11 rows of one model (data/accuracy_f11_mnist5k.json) as docs/accuracy.md's table (tests/test_readme.py)."""
    rows = [r for r in result["rows"] if r["model"] == model and r["granularity"] == granularity]
    head = ("| ratio α | params | weights only | + BN re-estimation | data-aware | data-aware + BN | "
            "… + 1 epoch fine-tuning |\n|---|---|---|---|---|---|---|")
    lines = [head]
    for ratio in sorted({r["ratio"] for r in rows if r["variant"] != "original"}):
        at = {r["variant"]: r for r in rows if r["ratio"] == ratio}
        cells = [f"{at[v]['accuracy']:.1f}" if v in at else "—" for v in VARIANTS]
        lines.append(f"| {ratio:g} | {next(iter(at.values()))['params']:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
