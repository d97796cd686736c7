"""Records of the rank search on ResNet-50 at 2x: the robust search timed on eager PyTorch, its ranks on
``torch.compile``, where the time goes (each decomposed layer in place vs the rest of the network), and the plan
chosen on each backend.

``python -m tools.record speed-checks --only search | search-compile | breakdown | plan-choice`` (1 thread) writes
them to ``data/``; docs/speed.md's speed section is generated from them (:mod:`tools.readme_blocks`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from lrdlab.measure.records import read_record, write_record

SEARCH_FILE = "search_robust_resnet50_cpu.json"


def search_file(threads: int = 1) -> str:
    """The file of the robust search recorded at ``threads`` torch threads (1 thread: :data:`SEARCH_FILE`)."""
    return SEARCH_FILE if threads == 1 else SEARCH_FILE.replace(".json", f"_{threads}threads.json")


def record_search(out: Path, image_size: int = 112, batch: int = 8, budget_s: float = 600.0) -> Path:
    """ResNet-50 at 2x: the robust rank search at the current torch threads, then vanilla, searched ranks, g=32 and
    both merged, each timed interleaved against the original (the merged rows are the best pipeline: merging +
    granularity or search) → ``out``/:func:`search_file`."""
    import torch

    from lrdlab.lowrank.merge import merge_bottlenecks
    from lrdlab.lowrank.plan import Layers, Ratio, make_plan
    from lrdlab.lowrank.plan_config import PAPER_EXCLUDE
    from lrdlab.measure.compare import round_limits
    from lrdlab.measure.machine import machine_info
    from lrdlab.measure.rank_search import optimize_plan, rank_table
    from lrdlab.measure.search_config import SearchConfig
    from lrdlab.measure.sweeps import speed_table
    from lrdlab.measure.timing_config import TimingConfig
    from lrdlab.zoo.models import get_model

    load_before, threads = os.getloadavg(), torch.get_num_threads()
    shape = (batch, 3, image_size, image_size)
    model = get_model("resnet50").eval()
    vanilla = make_plan(model, Ratio(2), Layers(exclude=PAPER_EXCLUDE), model_name="resnet50")
    t = time.perf_counter()
    searched, traces = optimize_plan(model, vanilla, shape, SearchConfig(repeats=5, method="robust", progress=False))
    search_s = time.perf_counter() - t
    g32 = make_plan(model, Ratio(2, granularity=32), Layers(exclude=PAPER_EXCLUDE), model_name="resnet50")
    rows = {"vanilla 2x": vanilla, "robust search": searched, "g=32": g32,
            "merging + robust search": merge_bottlenecks(model, searched),
            "merging + g=32": merge_bottlenecks(model, g32)}
    with round_limits(factor=12, budget_s=budget_s):  # up to 60 rounds: the ±3-point interval, or the budget
        table = speed_table(model, rows, shape, TimingConfig(rounds=5, warmup=1, repeats=3), progress=False)
    return write_record(out / search_file(threads), {
        "what": "ResNet-50 (random weights) at 2x, conv1/downsample excluded: the robust rank search (default "
                "settings, repeats 5), then original vs vanilla vs searched ranks vs g=32 vs merging + searched "
                "ranks vs merging + g=32, inference, interleaved, adaptive rounds (up to 60)",
        "command": f"python -m tools.record speed-checks --only search --threads {threads}",
        "machine": machine_info().to_dict(), "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "search_s": search_s, "search_settings": searched.settings["optimize"],
        "t1": rank_table(vanilla, searched).to_dict(orient="records"), "rows": table.to_dict(orient="records"),
    })


def record_search_compile(out: Path, image_size: int = 112, batch: int = 8, budget_s: float = 600.0) -> Path:
    """The searched ranks recorded at the current torch threads (:func:`search_file`'s T1) on ``torch.compile``:
    original vs vanilla vs searched ranks vs g=32 vs merging + searched ranks, all compiled, interleaved, adaptive
    rounds (up to 60). Inductor fuses the BatchNorm/ReLU/add work that LRD leaves alone (see the breakdown), so more
    of the ranks' gain shows. 1 thread → search_compile_resnet50_cpu.json, N → ..._Nthreads.json."""
    import torch

    from lrdlab.lowrank.merge import merge_bottlenecks
    from lrdlab.lowrank.plan import Layers, Ratio, make_plan
    from lrdlab.lowrank.plan_config import PAPER_EXCLUDE
    from lrdlab.measure.compare import round_limits
    from lrdlab.measure.machine import machine_info
    from lrdlab.measure.sweeps import speed_table
    from lrdlab.measure.timing_config import TimingConfig
    from lrdlab.zoo.models import get_model

    load_before, threads = os.getloadavg(), torch.get_num_threads()
    model = get_model("resnet50").eval()
    vanilla = make_plan(model, Ratio(2), Layers(exclude=PAPER_EXCLUDE), model_name="resnet50")
    searched = recorded_search_plan(out, model, vanilla, threads)
    rows = {"vanilla 2x": vanilla, "robust search ranks": searched,
            "g=32": make_plan(model, Ratio(2, granularity=32), Layers(exclude=PAPER_EXCLUDE), model_name="resnet50"),
            "merging + robust search ranks": merge_bottlenecks(model, searched)}
    with round_limits(factor=12, budget_s=budget_s):
        table = speed_table(model, rows, (batch, 3, image_size, image_size),
                            TimingConfig(rounds=5, warmup=2, repeats=3, backend="compile"), progress=False)
    name = search_file(threads).replace("search_robust", "search_compile")
    return write_record(out / name, {
        "what": "ResNet-50 (random weights) at 2x, conv1/downsample excluded, every model torch.compile'd (inductor): "
                f"original vs vanilla vs the searched ranks recorded at {threads} thread(s) vs g=32 vs merging + "
                "those ranks, inference, interleaved, adaptive rounds (up to 60)",
        "command": f"python -m tools.record speed-checks --only search-compile --threads {threads}",
        "machine": machine_info().to_dict(), "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "rows": table.to_dict(orient="records"),
    })


def recorded_search_plan(out: Path, model, vanilla, threads: int = 1):
    """``vanilla`` with the ranks of the search recorded at ``threads`` threads (``out``/:func:`search_file`'s T1)."""
    search = out / search_file(threads)
    if not search.exists():
        raise ValueError(f"{search} is missing: record the search first (python -m tools.record speed-checks "
                         f"--only search --threads {threads})")
    return plan_from_t1(model, vanilla, read_record(search)["t1"])


def plan_from_t1(model, vanilla, t1: list[dict[str, Any]]):
    """``vanilla`` (a plan of ``model``) with the ranks of a recorded T1 table (``"32"``, ``"40,46"`` or ``"ORG"``)."""
    from lrdlab.lowrank.layers import describe
    from lrdlab.lowrank.plan import Plan, params_of

    plan = Plan.from_dict(vanilla.to_dict())
    for rec in t1:
        row = plan[rec["layer"]]
        if rec["optimized"] == "ORG":
            row.keep("ORG (recorded search)")
            continue
        ranks = [int(v) for v in str(rec["optimized"]).split(",")]
        row.ranks = ranks * len(row.ranks or [0]) if len(ranks) == 1 else ranks
        row.params_after = params_of(describe(model.get_submodule(row.name)), row.method, row.ranks, row.branches)
    return plan


def record_breakdown(out: Path, image_size: int = 112, batch: int = 8, rounds: int = 40) -> Path:
    """ResNet-50 at 2x, where the time goes: each decomposed layer timed in place, the rest of the network, and
    the ceiling the rest puts on the whole-network speed-up (vanilla, the recorded searched ranks, g=32)."""
    from lrdlab.lowrank.plan import Layers, Ratio, make_plan
    from lrdlab.lowrank.plan_config import PAPER_EXCLUDE
    from lrdlab.measure.breakdown import needed_pct, plan_breakdown
    from lrdlab.measure.machine import machine_info
    from lrdlab.zoo.models import get_model

    load_before = os.getloadavg()
    shape = (batch, 3, image_size, image_size)
    model = get_model("resnet50").eval()
    vanilla = make_plan(model, Ratio(2), Layers(exclude=PAPER_EXCLUDE), model_name="resnet50")
    plans = {"vanilla 2x": vanilla}
    if (out / SEARCH_FILE).exists():
        plans["robust search ranks"] = recorded_search_plan(out, model, vanilla)
    plans["g=32"] = make_plan(model, Ratio(2, granularity=32), Layers(exclude=PAPER_EXCLUDE), model_name="resnet50")
    results = {}
    for name, plan in plans.items():
        part = plan_breakdown(model, plan, shape, rounds=rounds, progress=False)
        results[name] = {**part.to_dict(), "layers_needed_for_60_pct": needed_pct(part.summary, 60)}
    return write_record(out / "breakdown_resnet50_cpu.json", {
        "what": "ResNet-50 (random weights) at 2x, conv1/downsample excluded, inference, batch 8, 112 px: each "
                "decomposed layer timed in place (forward hooks) and the rest of the network, original vs "
                f"decomposed interleaved, {rounds} rounds; ceiling = the speed-up if the decomposed layers took "
                "no time",
        "command": "python -m tools.record speed-checks --only breakdown --threads "
                   f"{__import__('torch').get_num_threads()}",
        "machine": machine_info().to_dict(), "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "plans": results,
    })


def record_plan_choice(out: Path, image_size: int = 112, batch: int = 8, budget_s: float = 600.0,
                       backends: tuple[str, ...] = ("eager", "compile")) -> Path:
    """ResNet-50 at 2x: the recorded searched ranks (default) vs the robust search at granularity 32 (run here,
    from the g=32 plan), chosen on each backend by :func:`lrdlab.measure.plan_choice.choose_plan`."""
    from lrdlab.lowrank.plan import Layers, Ratio, make_plan
    from lrdlab.lowrank.plan_config import PAPER_EXCLUDE
    from lrdlab.measure.compare import round_limits
    from lrdlab.measure.machine import machine_info
    from lrdlab.measure.plan_choice import choose_plan
    from lrdlab.measure.rank_search import optimize_plan, rank_table
    from lrdlab.measure.search_config import SearchConfig
    from lrdlab.measure.timing_config import TimingConfig
    from lrdlab.zoo.models import get_model

    load_before = os.getloadavg()
    shape = (batch, 3, image_size, image_size)
    model = get_model("resnet50").eval()
    vanilla = make_plan(model, Ratio(2), Layers(exclude=PAPER_EXCLUDE), model_name="resnet50")
    g32 = make_plan(model, Ratio(2, granularity=32), Layers(exclude=PAPER_EXCLUDE), model_name="resnet50")
    t = time.perf_counter()
    searched_g32, _ = optimize_plan(model, g32, shape, SearchConfig(repeats=5, method="robust", granularity=32,
                                                                    progress=False))
    search_s = time.perf_counter() - t
    plans = {"robust search ranks": recorded_search_plan(out, model, vanilla), "robust search at g=32": searched_g32}
    choices = {}
    for backend in backends:
        with round_limits(factor=12, budget_s=budget_s):
            choice = choose_plan(model, plans, shape, TimingConfig(rounds=5, warmup=2, backend=backend), progress=False)
        choices[backend] = choice.to_dict()
    return write_record(out / "plan_choice_resnet50_cpu.json", {
        "what": "ResNet-50 (random weights) at 2x, conv1/downsample excluded, inference: the recorded robust-search "
                "ranks (default) vs the robust search at granularity 32 (from the g=32 plan), whole networks timed "
                "interleaved with the original on each backend, adaptive rounds (up to 60); choose_plan keeps the "
                "default unless the other is faster with 95% confidence",
        "command": "python -m tools.record speed-checks --only plan-choice --threads "
                   f"{__import__('torch').get_num_threads()}",
        "machine": machine_info().to_dict(), "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "search_g32_s": search_s, "t1_g32": rank_table(g32, searched_g32).to_dict(orient="records"),
        "backends": choices,
    })
