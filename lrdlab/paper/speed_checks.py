"""Recorded speed checks (``lrdlab record speed-checks``): the compute policy, an A/A run, backends.

- ``compute``: a tiny network's and ResNet-18's forward time and the decomposition time of ResNet-50
  and ViT-B/16 at 2x, under each (threads, OpenMP wait policy) pair, each in a fresh process (the wait
  policy is fixed when torch loads) → ``compute_policy_cpu.json``.
- ``aa``: ResNet-18 timed against its own copy (no de-duplication): the interval must cover 0 → ``aa_check_cpu.json``.
- ``search``: the robust rank search on ResNet-50 at 2x and the speed of its ranks
  → ``search_robust_resnet50_cpu.json``.
- ``backends``: ResNet-50 at 2x, original vs decomposed, eager / onnxruntime / compile
  → ``bench_backends_resnet50_cpu.json``.

Every file names the machine, the load average before and after, and the command that re-creates it.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

POLICIES = (("2", None), ("2", "PASSIVE"), ("1", None), ("1", "PASSIVE"))


def write_record(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(json.dumps(data, indent=2, default=float) + "\n")
    return path


def probe(threads: int) -> dict[str, Any]:
    """One process's timings at ``threads`` threads (medians; the wait policy is whatever it started with)."""

    import torch
    from torch import nn

    from lrdlab import decompose, make_plan
    from lrdlab.measure.compute import compute_info
    from lrdlab.paper.numbers import PAPER_EXCLUDE
    from lrdlab.paper.transformers_targets import median_time
    from lrdlab.zoo.models import get_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)

    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()
    x = torch.randn(8, 3, 32, 32)
    r18, xb = get_model("resnet18").eval(), torch.randn(8, 3, 112, 112)
    with torch.no_grad():
        out: dict[str, Any] = {"tiny_forward_ms": 1e3 * median_time(lambda: net(x), 30),
                               "resnet18_forward_ms": 1e3 * median_time(lambda: r18(xb), 5)}
    for name, exclude in (("resnet50", PAPER_EXCLUDE), ("vit_b_16", None)):
        model = get_model(name).eval()
        plan = make_plan(model, ratio=2, exclude=exclude)
        t = time.perf_counter()
        decompose(model, plan, progress=False)
        out[f"decompose_{name}_s"] = time.perf_counter() - t
        out[f"decompose_{name}_layers"] = len(plan.decomposed_layers)
    return {**out, **compute_info()}


COMPETITOR = ("import torch, time\ntorch.set_num_threads(2)\na = torch.randn(1024, 1024)\nend = time.time() + 600\n"
              "while time.time() < end:\n    a @ a\n")  # another 2-thread process: a matmul loop


def _probe(threads: str, policy: str | None, competitor: bool) -> dict[str, Any]:
    """:func:`probe` in a fresh process with ``OMP_WAIT_POLICY=policy``, alone or beside :data:`COMPETITOR`."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    rival = subprocess.Popen([sys.executable, "-c", COMPETITOR]) if competitor else None
    try:
        if rival is not None:
            time.sleep(2.0)  # let it start spinning
        res = subprocess.run([sys.executable, "-m", "lrdlab.paper.speed_checks", "probe", threads], env=env,
                             capture_output=True, text=True, check=True)
    finally:
        if rival is not None:
            rival.kill()
            rival.wait()
    return {**json.loads(res.stdout.strip().splitlines()[-1]), "threads": int(threads),
            "omp_wait_policy": policy or "default", "competitor": "2-thread matmul loop" if competitor else None}


def record_compute(out: Path) -> Path:
    """Each (threads, wait policy) pair in a fresh process, twice, interleaved; then the passive policies again
    while another 2-thread process runs (the shared-machine case)."""
    from lrdlab.measure.machine import machine_info

    load_before = os.getloadavg()
    rows = []
    for rep in range(2):
        rows += [{**_probe(threads, policy, False), "repeat": rep} for threads, policy in POLICIES]
    for rep in range(2):
        rows += [{**_probe(threads, "PASSIVE", True), "repeat": rep} for threads in ("1", "2")]
    return write_record(out / "compute_policy_cpu.json", {
        "what": "forward time of a tiny conv net (batch 8, 32 px) and ResNet-18 (batch 8, 112 px), and the wall time "
                "to decompose ResNet-50 (conv1/downsample excluded) and ViT-B/16 at 2x, per torch thread count and "
                "OpenMP wait policy, each in a fresh process (the wait policy is fixed when torch loads); medians. "
                "Rows with a competitor ran beside another 2-thread process (a matmul loop)",
        "command": "lrdlab record speed-checks --only compute", "machine": machine_info(),
        "load_average_before": load_before, "load_average_after": os.getloadavg(), "rows": rows,
    })


def record_aa(out: Path, rounds: int = 5) -> Path:
    """ResNet-18 (batch 8, 112 px) against its own copy, interleaved, adaptive rounds, no de-duplication."""
    from lrdlab.measure.compare import compare
    from lrdlab.measure.machine import machine_info
    from lrdlab.measure.stats import SpeedUp
    from lrdlab.zoo.models import get_model

    load_before = os.getloadavg()
    model = get_model("resnet18").eval()
    df = compare({"resnet18": model, "resnet18 copy": copy.deepcopy(model)}, (8, 3, 112, 112), rounds=rounds,
                 warmup=1, repeats=3, dedupe=False)
    up = SpeedUp.from_row(df.iloc[1])
    return write_record(out / "aa_check_cpu.json", {
        "what": "A/A check: ResNet-18 timed interleaved against its own copy; speed-up % with its 95% bootstrap "
                "interval (must cover 0)", "command": "lrdlab record speed-checks --only aa",
        "machine": machine_info(), "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "speedup_pct": up.to_pct(), "covers_zero": up.within_noise, "rows": df.to_dict(orient="records"),
    })


def record_backends(out: Path, backends: tuple[str, ...] = ("eager", "onnxruntime", "compile"),
                    image_size: int = 112, batch: int = 8, budget_s: float = 240.0) -> Path:
    """ResNet-50 at 2x: original vs decomposed on each backend (a backend that fails is recorded with its error)."""
    from lrdlab.lowrank.plan import make_plan
    from lrdlab.measure.machine import machine_info
    from lrdlab.measure.sweeps import bench_plan
    from lrdlab.paper.numbers import PAPER_EXCLUDE
    from lrdlab.zoo.models import get_model

    load_before = os.getloadavg()
    model = get_model("resnet50").eval()
    plan = make_plan(model, ratio=2, exclude=PAPER_EXCLUDE, model_name="resnet50")
    results: dict[str, Any] = {}
    for backend in backends:
        t = time.perf_counter()
        try:
            report = bench_plan(model, plan, (batch, 3, image_size, image_size), rounds=5, warmup=2, repeats=3,
                                backend=backend, budget_s=budget_s)
            results[backend] = {**report["inference"], "ideal_speedup": report["ideal_speedup"],
                                "wall_s": time.perf_counter() - t}
        except Exception as err:  # noqa: BLE001 - recorded, not hidden
            results[backend] = {"error": f"{type(err).__name__}: {str(err)[:300]}", "wall_s": time.perf_counter() - t}
    pipelines = _pipeline_on_backends(model, (batch, 3, image_size, image_size), budget_s)
    return write_record(out / "bench_backends_resnet50_cpu.json", {
        "what": f"ResNet-50 (random weights) at 2x, conv1/downsample excluded, original vs decomposed, inference, "
                f"batch {batch}, {image_size} px, each backend timed interleaved with adaptive rounds "
                f"(until the 95% interval is ±3 points, or {budget_s:.0f} s)",
        "command": f"lrdlab record speed-checks --only backends --threads {__import__('torch').get_num_threads()}",
        "machine": machine_info(), "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "backends": results, "pipelines": pipelines,
    })


def _pipeline_on_backends(model, shape: tuple[int, ...], budget_s: float,
                          backends: tuple[str, ...] = ("eager", "compile")) -> dict[str, Any]:
    """The best pipeline (layer merging + granularity 32) against the original, per backend, up to 60 rounds."""
    from lrdlab.lowrank.merge import merge_bottlenecks
    from lrdlab.lowrank.plan import make_plan
    from lrdlab.measure.compare import round_limits
    from lrdlab.measure.sweeps import speed_table
    from lrdlab.paper.numbers import PAPER_EXCLUDE

    merged = merge_bottlenecks(model, make_plan(model, ratio=2, granularity=32, exclude=PAPER_EXCLUDE,
                                                model_name="resnet50"))
    out: dict[str, Any] = {}
    for backend in backends:
        with round_limits(factor=12, budget_s=budget_s):
            r = speed_table(model, {"merging + g=32": merged}, shape, rounds=5, warmup=2, repeats=3,
                            progress=False, backend=backend).iloc[0]
        out[f"{backend}, merging + g=32"] = {"speedup_pct": _table_speedup(r).to_pct(), "realised": r["realised"],
                                             "ideal_speedup": r["ideal_speedup"]}
    return out


if __name__ == "__main__":  # the compute probe runs in a fresh process
    if len(sys.argv) == 3 and sys.argv[1] == "probe":
        print(json.dumps(probe(int(sys.argv[2])), default=float))


# --- the README's speed section, generated from the recorded files ------------------------------------

README_BEGIN = "<!-- speed-section: generated from data/ by lrdlab.paper.speed_checks.readme_speed_section -->"
README_END = "<!-- /speed-section -->"


def _table_speedup(r: Any) -> Any:
    """A speed_table row's speed-up (its percent columns) as a :class:`~lrdlab.measure.stats.SpeedUp`."""
    from lrdlab.measure.stats import SpeedUp

    return SpeedUp.from_pct({"median": r["speedup_pct"], "ci_low": r["speedup_pct_ci_low"],
                             "ci_high": r["speedup_pct_ci_high"], "rounds": int(r["rounds"]),
                             "converged": bool(r["converged"])})


def _between_runs(first: list[dict[str, Any]], second: list[dict[str, Any]]) -> str:
    """The same ranks on torch.compile in two recordings: how far the medians moved against the intervals."""
    pairs = {"searched ranks": ("robust search ranks", "robust search ranks"),
             "g=32": ("g=32", "robust search at g=32")}
    a = {r["name"]: _table_speedup(r).to_pct() for r in first}
    b = {r["name"]: _table_speedup(r).to_pct() for r in second}
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


def readme_speed_section(data: Path) -> str:
    """The README's speed table, rendered from ``data/`` (tests/paper/test_readme_speed.py keeps them equal)."""
    from lrdlab.measure.stats import SpeedUp

    comp = json.loads((data / "compute_policy_cpu.json").read_text())
    aa = json.loads((data / "aa_check_cpu.json").read_text())
    back = json.loads((data / "bench_backends_resnet50_cpu.json").read_text())

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
    rec = json.loads(search.read_text()) if search.exists() else None
    loads = [comp["load_average_before"][0], comp["load_average_after"][0], aa["load_average_before"][0],
             back["load_average_before"][0], back["load_average_after"][0],
             *([rec["load_average_before"][0], rec["load_average_after"][0]] if rec else [])]
    lines = [
        README_BEGIN,
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
                         f"{_table_speedup(r).text(rounds=True)} | {r['realised']:.2f} |")
        comp_file = data / "search_compile_resnet50_cpu.json"
        comp_rows = json.loads(comp_file.read_text())["rows"] if comp_file.exists() else []
        for r in comp_rows:
            lines.append(f"| compile, {r['name']} ({r['flops_removed_pct']:.1f}% FLOPs removed) | "
                         f"{_table_speedup(r).text(rounds=True)} | {r['realised']:.2f} |")
        choice_file = data / "plan_choice_resnet50_cpu.json"
        choice = json.loads(choice_file.read_text()) if choice_file.exists() else {"backends": {}}
        for backend, c in choice["backends"].items():
            lines += [f"| {backend}, {r['name']}{' — chosen' if r['chosen'] else ''} "
                      f"({r['flops_removed_pct']:.1f}% FLOPs removed; plan_choice_resnet50_cpu.json) | "
                      f"{_table_speedup(r).text(rounds=True)} | {r['realised']:.2f} |" for r in c["rows"]]
        opt = rec["search_settings"]
        lines += [f"\nChosen on {backend} by `lrdlab choose` (the searched ranks are the default): {c['chosen']} — "
                  f"{c['reason']}." for backend, c in choice["backends"].items()]
        if "t1_g32" in choice:
            moved = sum(str(r["optimized"]) != str(r["2x rank"]) for r in choice["t1_g32"])
            lines.append(f"The search at g=32 (candidates: multiples of 32 below each g=32 rank) moved {moved} of "
                         f"{len(choice['t1_g32'])} ranks of the g=32 plan in {choice['search_g32_s']:.0f} s.")
            if moved == 0 and comp_rows and "compile" in choice["backends"]:
                lines.append(_between_runs(comp_rows, choice["backends"]["compile"]["rows"]))
        lines.append(f"\nThe robust search itself took {rec['search_s']:.0f} s for ResNet-50's "
                     f"{len(opt['confirmations'])} layers ({opt.get('cache_misses', '?')} layer timings measured, "
                     f"{opt.get('cache_hits', '?')} from the timing cache; search_robust_resnet50_cpu.json).")
    bd_file = data / "breakdown_resnet50_cpu.json"
    if bd_file.exists():
        plans = json.loads(bd_file.read_text())["plans"]
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
        README_END,
    ]
    return "\n".join(lines)
