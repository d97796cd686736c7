"""The data the explorers ship with: ``python -m tools.record reference-times`` / ``reference-freezing STUDY``."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from lrdlab.explore.rank_lab import (
    DEFAULT_LAYER,
    DEFAULT_MODEL,
    GRANULARITIES,
    RATIOS,
    REFERENCE_FREEZING,
    REFERENCE_LAYER_TIMES,
    RankLab,
)
from lrdlab.measure.cache import TimeCache
from lrdlab.measure.records import read_record, write_record


def build_reference_layer_times(
    model: str = DEFAULT_MODEL, layers: list[str] | None = None, ratios=RATIOS, granularities=GRANULARITIES,
    batch: int = 8, path: Path = REFERENCE_LAYER_TIMES, rounds: int = 7,
) -> Path:
    """Measure every (ratio, granularity) rank of ``layers`` on this machine and write the shipped reference.

    Re-runnable: ``python -m tools.record reference-times --threads 1``.
    """
    from tqdm.auto import tqdm

    load_before = os.getloadavg()
    cache = TimeCache(path=path, reference=None)
    lab = RankLab(cache=cache, batch=batch)
    layers = layers or [DEFAULT_LAYER]
    todo = []
    for name in layers:
        todo.append((name, None))
        for ratio in ratios:
            for g in granularities:
                r = lab.state(model, name, ratio, g)["ranks"]
                if r and (name, r) not in todo:
                    todo.append((name, r))
    by_layer: dict[str, list] = {}
    for name, r in todo:
        by_layer.setdefault(name, []).append(r)
    for name, variants in tqdm(by_layer.items(), desc="layer times"):
        lab.measure_times(model, name, variants, rounds=rounds)
    data = read_record(path)
    data["settings"] = {"batch": batch, "rounds": rounds, "warmup": 1, "repeats": 3, "interleaved": True,
                        "statistic": "median over rounds of the median of repeats", "dtype": "float32",
                        "model_weights": "random (time does not depend on values)"}
    data["load_average_before"], data["load_average_after"] = list(load_before), list(os.getloadavg())
    data["command"] = (f"python -m tools.record reference-times --threads {torch.get_num_threads()} "
                       f"--layers {' '.join(layers)} "
                       f"--rounds {rounds}")
    return write_record(path, data)


def build_reference_freezing(study: str | Path, path: Path = REFERENCE_FREEZING, command: str = "") -> Path:
    """Ship a :func:`lrdlab.paper.freezing_study.run_freezing_study` result (its JSON) as the explorer's reference.

    Produce the study with ``lrdlab train``'s study mode or ``run_freezing_study(out='study.json')``.
    """
    data = read_record(Path(study).absolute())
    data["source"] = f"lrdlab.paper.freezing_study.run_freezing_study, copied from {Path(study).name}"
    data["command"] = command
    return write_record(path, data)
