"""Recording the shipped benchmarks and reference data (``lrdlab record …``; each file names its machine and command).

- ``lrdlab record speed --out data/``: ResNet-50 speed (vanilla / optimized ranks / granularities) and the F1 sweep.
- ``lrdlab record techniques {table,branch,accuracy,combine} --out FILE``: P1 Table 2, F6 and the accuracy study.
- ``lrdlab record reference-times`` / ``reference-freezing STUDY``: the data the explorers ship with.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
from lrdlab.lowrank.merge import DEFAULT_BN
from lrdlab.lowrank.plan import make_plan
from lrdlab.measure import timing as measure
from lrdlab.measure.cache import AUTO, TimeCache
from lrdlab.measure.machine import machine_info
from lrdlab.measure.rank_search import optimize_plan, pick_rank, rank_table
from lrdlab.measure.sweeps import granularity_plans, rank_time_sweep, speed_table
from lrdlab.paper.numbers import PAPER_EXCLUDE
from lrdlab.paper.techniques import accuracy_study, branch_sweep, combine_branch_sweep, techniques_table

# --- speed benchmarks ---------------------------------------------------------------------------------


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=float) + "\n")


def record_resnet50(out: Path, *, image_size: int = 112, batch: int = 8, device: str = "cpu", rounds: int = 5,
                    lower: float = 0.75, layer_repeats: int = 5, search_rounds: int = 3,
                    cache_dir: str | Path | None = AUTO,
                    granularities: Sequence[int] = (2, 4, 8, 16, 32, 64), train: bool = True) -> Path:
    """ResNet-50 at 2x (stem + downsample excluded): vanilla vs optimized ranks vs granularities, inference + train."""
    import torchvision

    dev = measure.check_device(device)
    tag = f"resnet50_{dev.type}"
    shape = (batch, 3, image_size, image_size)
    load_before = os.getloadavg()
    model = torchvision.models.resnet50().eval()
    vanilla = make_plan(model, ratio=2, exclude=PAPER_EXCLUDE, model_name="resnet50")
    opt_fwd, traces_fwd = optimize_plan(model, vanilla, shape, device=str(dev), lower=lower, repeats=layer_repeats,
                                        rounds=search_rounds, cache_dir=cache_dir)
    plans = {"vanilla 2x": vanilla, "optimized (fwd)": opt_fwd}
    outputs = {"plan_fwd": opt_fwd, "traces_fwd": traces_fwd}
    if train:
        opt_bwd, traces_bwd = optimize_plan(model, vanilla, shape, device=str(dev), lower=lower, backward=True,
                                            repeats=max(3, layer_repeats // 2), rounds=max(1, search_rounds - 1),
                                            cache_dir=cache_dir)
        plans["optimized (fwd+bwd)"] = opt_bwd
        outputs.update(plan_bwd=opt_bwd, traces_bwd=traces_bwd)
    for name, plan in granularity_plans(model, 2, granularities, PAPER_EXCLUDE, model_name="resnet50").items():
        plans[name] = plan
    table = speed_table(model, plans, shape, device=str(dev), train=train, rounds=rounds, warmup=1, repeats=3,
                        train_warmup=1, train_repeats=1)
    table.insert(1, "granularity", [1, 1, *([1] if train else []), *granularities])
    table.to_csv(out / f"bench_{tag}.csv", index=False)
    t1 = rank_table(vanilla, opt_fwd)
    if train:
        t1["optimized (fwd+bwd)"] = rank_table(vanilla, outputs["plan_bwd"])["optimized"]
    t1.to_csv(out / f"optimize_{tag}_t1.csv", index=False)
    outputs["plan_fwd"].save(out / f"optimize_{tag}_plan.json")
    outputs["traces_fwd"].drop(columns=["key"]).to_csv(out / f"optimize_{tag}_traces.csv", index=False)
    if train:
        outputs["plan_bwd"].save(out / f"optimize_{tag}_plan_train.json")
        outputs["traces_bwd"].drop(columns=["key"]).to_csv(out / f"optimize_{tag}_traces_train.csv", index=False)
    meta = {
        "what": "ResNet-50 (torchvision, random weights) at ratio 2, conv1 and *.downsample.* excluded: original vs "
                "vanilla LRD vs searched ranks (lrdlab's robust search, the default) vs ranks rounded to multiples "
                "of g; factors random "
                "(time does not depend on values). speedup = median over interleaved rounds of original/variant "
                "time; realised = (speedup-1)/(ideal-1), ideal = original FLOPs / variant FLOPs.",
        "command": f"lrdlab record speed --out {out} --only resnet50 --image-size {image_size} "
                   f"--batch {batch} --rounds {rounds} --search-rounds {search_rounds} "
                   f"--threads {torch.get_num_threads()}",
        "input_shape": list(shape), "machine": machine_info(dev),
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "settings": {"rounds": rounds, "inference": {"warmup": 1, "repeats": 3},
                     "train": {"warmup": 1, "repeats": 1, "optimizer": "SGD momentum 0.9", "labels": "random"},
                     "search": {"method": "robust", "lower": lower, "granularity": 1,
                                "forward": {"repeats": layer_repeats,
                                "rounds": search_rounds}, "forward+backward": {"repeats": max(3, layer_repeats // 2),
                                "rounds": max(1, search_rounds - 1)}, "warmup": 3}},
        "rows": table.to_dict(orient="records"),
        "t1": t1.to_dict(orient="records"),
    }
    path = out / f"bench_{tag}.json"
    _write_json(path, meta)
    return path


def record_f1(out: Path, *, input_shape: Sequence[int] = (8, 512, 7, 7), ranks: Sequence[int] = range(242, 270),
              device: str = "cpu", rounds: int = 3, repeats: int = 5) -> Path:
    """F1/F2: the [512,512,3,3] conv (ResNet layer4 conv2) by Tucker-2 at r = 242…269, time per batch."""
    dev = measure.check_device(device)
    load_before = os.getloadavg()
    df = rank_time_sweep(512, 512, 3, list(ranks), input_shape, device=str(dev), rounds=rounds, repeats=repeats)
    tag = f"f1_conv512_{dev.type}"
    df.to_csv(out / f"optimize_{tag}.csv", index=False)
    from lrdlab.explore.plots import rank_cliffs

    meta = {
        "what": "Tucker-2 (r1 = r2 = r) of a 512→512 3×3 conv, stride 1, padding 1, forward only, fp32; "
                "time per batch, median (and quartiles) over rounds × repeats interleaved samples",
        "command": f"lrdlab record speed --out {out} --only f1 --threads {torch.get_num_threads()}",
        "input_shape": list(input_shape), "machine": machine_info(dev),
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "settings": {"rounds": rounds, "repeats": repeats, "warmup": 3},
        "cliffs": rank_cliffs(df, rounds=rounds),
        "largest_drop": {"rank": int(pick_rank(dict(zip(df["rank"], df["time_ms"]))))},
        "rows": df.to_dict(orient="records"),
    }
    path = out / f"optimize_{tag}.json"
    _write_json(path, meta)
    return path


def build_reference_layer_times(
    model: str = DEFAULT_MODEL, layers: list[str] | None = None, ratios=RATIOS, granularities=GRANULARITIES,
    batch: int = 8, path: Path = REFERENCE_LAYER_TIMES, rounds: int = 7,
) -> Path:
    """Measure every (ratio, granularity) rank of ``layers`` on this machine and write the shipped reference.

    Re-runnable: ``lrdlab record reference-times --threads 1``.
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
    data = json.loads(path.read_text())
    data["settings"] = {"batch": batch, "rounds": rounds, "warmup": 1, "repeats": 3, "interleaved": True,
                        "statistic": "median over rounds of the median of repeats", "dtype": "float32",
                        "model_weights": "random (time does not depend on values)"}
    data["load_average_before"], data["load_average_after"] = list(load_before), list(os.getloadavg())
    data["command"] = (f"lrdlab record reference-times --threads {torch.get_num_threads()} --layers {' '.join(layers)} "
                       f"--rounds {rounds}")
    path.write_text(json.dumps(data, indent=1, sort_keys=True))
    return path


def build_reference_freezing(study: str | Path, path: Path = REFERENCE_FREEZING) -> Path:
    """Ship a :func:`lrdlab.paper.freezing_study.run_freezing_study` result (its JSON) as the explorer's reference.

    Produce the study with ``lrdlab train``'s study mode or ``run_freezing_study(out='study.json')``.
    """
    data = json.loads(Path(study).read_text())
    data["source"] = f"lrdlab.paper.freezing_study.run_freezing_study, copied from {Path(study).name}"
    path.write_text(json.dumps(data, indent=1, default=float) + "\n")
    return path





# --- P1 Table 2, F6 and the accuracy study ---------------------------------------------------------------


SCHEMA = {
    "rows[]": "one model each (techniques_*: a technique; branch_*: a branch count N)",
    "method": "row name: 'original', 'vanilla LRD', 'layer freezing', 'layer merging', a merge option, or 'N=n'",
    "layers": "Conv2d + Linear layers, downsample convs not counted (P1's count: ResNet-50 = 50)",
    "params, params_pct": "all parameters, and % change vs the original (−50 = halved)",
    "trainable_params": "parameters with requires_grad (layer freezing: first/last factors frozen)",
    "flops, flops_pct": "forward FLOPs of one image (torch.utils.flop_counter, 2 per multiply-add), % change",
    "train_s, infer_s": "median seconds per batch (input_shape) over rounds; train = fwd + bwd + SGD step",
    "train_img_s, infer_img_s": "images per second (batch / median time)",
    "train_speedup_pct, infer_speedup_pct": "median over interleaved rounds of (original time / this time − 1)·100",
    "*_speedup_iqr_pct": "first and third quartile of that per-round speed-up, %",
    "branches, weight_rel_error": "N, and mean over Tucker layers of ‖W − Ŵ_N‖/‖W‖ (N = 1: Tucker truncation alone)",
    "core_energy_dropped": "mean share of the Tucker core's ‖·‖² in the off-diagonal blocks that branching drops",
    "acc_before, acc_after": "test top-1 % before / after fine-tuning (mean over seeds; _min/_max; runs[] per seed)",
    "machine": "device, CPU model, cores, torch threads and version the timings were taken on",
}


def _write(result: dict[str, Any], path: str) -> None:
    import json
    from pathlib import Path

    result.setdefault("schema", SCHEMA)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {path}")


def record_techniques(what: str, out: str | Path, *, model: str = "resnet50", batch: int = 8, image_size: int = 224,
                      rounds: int = 3, bn: str = DEFAULT_BN, data: str = "mnist5k", seeds: Sequence[int] = (0, 1, 2),
                      base_epochs: int = 5, ft_epochs: int = 2, inputs: Sequence[str] = (), command: str = "") -> Path:
    """P1 Table 2 (``table``), the F6 branch sweep (``branch``), the merge/branch accuracy study (``accuracy``),
    or one F6 file from a branch sweep and an accuracy study (``combine``), written as JSON to ``out``."""
    import time

    t0 = time.perf_counter()
    if what == "table":
        result = techniques_table(model, batch, image_size, bn=bn, rounds=rounds)
    elif what == "branch":
        result = branch_sweep(model, batch=batch, image_size=image_size, rounds=rounds)
    elif what == "accuracy":
        result = accuracy_study(data, base_epochs=base_epochs, ft_epochs=ft_epochs, seeds=list(seeds))
    elif what == "combine":
        if len(inputs) != 2:
            raise ValueError("record techniques combine needs --inputs BRANCH_JSON ACCURACY_JSON")
        result = combine_branch_sweep(*(json.loads(Path(f).read_text()) for f in inputs))
    else:
        raise ValueError(f"unknown techniques record {what!r}: use table, branch, accuracy or combine")
    result["command"] = command
    result["wall_s"] = time.perf_counter() - t0
    _write(result, str(out))
    return Path(out)
