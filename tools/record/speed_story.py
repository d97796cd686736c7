"""Recording the speed story: the quick reproduction's techniques stage at each thread count
(``python -m tools.record speed-story``); :mod:`lrdlab.explore.speed_story` renders it in the report."""

from __future__ import annotations

import os
from pathlib import Path

from lrdlab.explore.speed_story import STORY_FILE
from lrdlab.lowrank.plan import Layers, Ratio, make_plan
from lrdlab.lowrank.plan_config import PAPER_EXCLUDE
from lrdlab.measure.compare import round_limits
from lrdlab.measure.compute import compute_policy, current_compute
from lrdlab.measure.machine import machine_info
from lrdlab.measure.records import data_dir, write_record
from lrdlab.paper import reproduce
from lrdlab.zoo.models import get_model
from tools.record.search import recorded_search_plan, search_file


def record_speed_story(out: Path, threads: tuple[int, ...] = (1, 2), data: Path | None = None,
                       train: bool = False) -> Path:
    """The quick reproduction's techniques stage at each thread count → ``out``/speed_story_resnet50_cpu.json; the
    searched ranks at each count are the robust search recorded at that count (``data``/:func:`search_file`, default:
    the shipped ones), else the 1-thread search, and each run names its search file."""
    data = data or data_dir()
    model = get_model("resnet50").eval()
    vanilla = make_plan(model, Ratio(2), Layers(exclude=PAPER_EXCLUDE), model_name="resnet50")
    modes = ("train", "inference") if train else ("inference",)  # the README's table is inference
    settings, load_before, runs = reproduce.Settings(quick=True, speed_modes=modes), os.getloadavg(), []
    for n in threads:
        searched_at = n if (data / search_file(n)).exists() else 1
        searched = recorded_search_plan(data, model, vanilla, searched_at)
        results = {"optimize": {"resnet50": {"plan": searched.to_dict()}}}
        with compute_policy(n), round_limits(factor=1, budget_s=120.0):  # the quick reproduction's limits
            run = reproduce.stage_techniques(settings, results)
            run["compute"] = current_compute().to_dict()
        runs.append({**run, "search": search_file(searched_at)})
    return write_record(out / STORY_FILE, {
        "what": "ResNet-50 (random weights) at 2x, conv1/downsample excluded: the quick reproduction's techniques "
                f"stage (original, vanilla LRD, optimized ranks, layer freezing, layer merging; {' and '.join(modes)}, "
                "interleaved, 3 rounds) at each thread count; optimized ranks from the robust search recorded at that "
                "thread count",
        "command": f"python -m tools.record speed-story --threads {','.join(map(str, threads))}",
        "search": "robust search at each thread count (" + ", ".join(sorted({r["search"] for r in runs})) + ")",
        "machine": machine_info().to_dict(),
        "load_average_before": load_before, "load_average_after": os.getloadavg(), "runs": runs,
    })
