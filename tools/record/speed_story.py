"""Recording the speed story: the quick reproduction's techniques stage at each thread count
(``python -m tools.record speed-story``); :mod:`lrdlab.paper.speed_story` renders it in the report."""

from __future__ import annotations

import os
from pathlib import Path

from lrdlab.lowrank.plan import make_plan
from lrdlab.measure.compare import round_limits
from lrdlab.measure.compute import compute_policy, current_compute
from lrdlab.measure.machine import machine_info
from lrdlab.measure.records import data_dir, write_record
from lrdlab.paper import reproduce
from lrdlab.paper.numbers import PAPER_EXCLUDE
from lrdlab.paper.speed_story import STORY_FILE
from lrdlab.zoo.models import get_model
from tools.record.search import recorded_search_plan


def record_speed_story(out: Path, threads: tuple[int, ...] = (1, 2), data: Path | None = None,
                       train: bool = False) -> Path:
    """The quick reproduction's techniques stage at each thread count, the searched ranks from the recorded robust
    search (``data``/search_robust_resnet50_cpu.json, default: the shipped one) → ``out``/speed_story_resnet50_cpu.json.
    """
    model = get_model("resnet50").eval()
    vanilla = make_plan(model, ratio=2, exclude=PAPER_EXCLUDE, model_name="resnet50")
    searched = recorded_search_plan(data or data_dir(), model, vanilla)
    results = {"optimize": {"resnet50": {"plan": searched.to_dict()}}}
    modes = ("train", "inference") if train else ("inference",)  # the README's table is inference
    settings, load_before, runs = reproduce.Settings(quick=True, speed_modes=modes), os.getloadavg(), []
    for n in threads:
        with compute_policy(n), round_limits(factor=1, budget_s=120.0):  # the quick reproduction's limits
            run = reproduce.stage_techniques(settings, results)
            run["compute"] = current_compute().to_dict()
        runs.append(run)
    return write_record(out / STORY_FILE, {
        "what": "ResNet-50 (random weights) at 2x, conv1/downsample excluded: the quick reproduction's techniques "
                f"stage (original, vanilla LRD, optimized ranks, layer freezing, layer merging; {' and '.join(modes)}, "
                "interleaved, 3 rounds) at each thread count; optimized ranks from the recorded robust search",
        "command": f"python -m tools.record speed-story --threads {','.join(map(str, threads))}",
        "search": "robust search (search_robust_resnet50_cpu.json)", "machine": machine_info(),
        "load_average_before": load_before, "load_average_after": os.getloadavg(), "runs": runs,
    })
