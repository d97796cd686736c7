"""ResNet-50 speed (vanilla / searched ranks / granularities) and the F1 sweep: ``python -m tools.record speed``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from lrdlab.explore.plots import rank_cliffs
from lrdlab.lowrank.plan import Layers, Ratio, make_plan
from lrdlab.lowrank.plan_config import PAPER_EXCLUDE
from lrdlab.measure import timing as measure
from lrdlab.measure.machine import machine_info
from lrdlab.measure.rank_search import optimize_plan, pick_rank, rank_table
from lrdlab.measure.records import write_record
from lrdlab.measure.search_config import SearchConfig
from lrdlab.measure.sweeps import granularity_plans, rank_time_sweep, speed_table
from lrdlab.measure.timing_config import TimingConfig


def record_resnet50(out: Path, *, image_size: int = 112, batch: int = 8, device: str = "cpu", rounds: int = 5,
                    lower: float = 0.75, layer_repeats: int = 5, search_rounds: int = 3,
                    cache_dir: str | Path | None = None,
                    granularities: Sequence[int] = (2, 4, 8, 16, 32, 64), train: bool = True) -> Path:
    """ResNet-50 at 2x (stem + downsample excluded): vanilla vs optimized ranks vs granularities, inference + train."""
    import torchvision

    dev = measure.check_device(device)
    tag = f"resnet50_{dev.type}"
    shape = (batch, 3, image_size, image_size)
    load_before = os.getloadavg()
    model = torchvision.models.resnet50().eval()
    vanilla = make_plan(model, Ratio(2), Layers(exclude=PAPER_EXCLUDE), model_name="resnet50")
    search = SearchConfig(
        device=str(dev), lower=lower, repeats=layer_repeats, rounds=search_rounds, cache_dir=cache_dir)
    opt_fwd, traces_fwd = optimize_plan(model, vanilla, shape, search)
    plans = {"vanilla 2x": vanilla, "optimized (fwd)": opt_fwd}
    outputs = {"plan_fwd": opt_fwd, "traces_fwd": traces_fwd}
    if train:
        opt_bwd, traces_bwd = optimize_plan(model, vanilla, shape, replace(
            search, backward=True, repeats=max(3, layer_repeats // 2), rounds=max(1, search_rounds - 1)))
        plans["optimized (fwd+bwd)"] = opt_bwd
        outputs.update(plan_bwd=opt_bwd, traces_bwd=traces_bwd)
    for name, plan in granularity_plans(model, 2, granularities, PAPER_EXCLUDE, model_name="resnet50").items():
        plans[name] = plan
    timing = TimingConfig(rounds=rounds, warmup=1, repeats=3, device=str(dev))
    table = speed_table(model, plans, shape, timing, train=train, train_timing=replace(timing, repeats=1))
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
        "command": f"python -m tools.record speed --out {out} --only resnet50 --image-size {image_size} "
                   f"--batch {batch} --rounds {rounds} --search-rounds {search_rounds} "
                   f"--threads {torch.get_num_threads()}",
        "input_shape": list(shape), "machine": machine_info(dev).to_dict(),
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
    return write_record(out / f"bench_{tag}.json", meta)


def record_f1(out: Path, *, input_shape: Sequence[int] = (8, 512, 7, 7), ranks: Sequence[int] = range(242, 270),
              device: str = "cpu", rounds: int = 3, repeats: int = 5) -> Path:
    """F1/F2: the [512,512,3,3] conv (ResNet layer4 conv2) by Tucker-2 at r = 242…269, time per batch."""
    dev = measure.check_device(device)
    load_before = os.getloadavg()
    df = rank_time_sweep(512, 512, 3, list(ranks), input_shape,
                         TimingConfig(rounds=rounds, warmup=3, repeats=repeats, device=str(dev)))
    tag = f"f1_conv512_{dev.type}"
    df.to_csv(out / f"optimize_{tag}.csv", index=False)
    meta = {
        "what": "Tucker-2 (r1 = r2 = r) of a 512→512 3×3 conv, stride 1, padding 1, forward only, fp32; "
                "time per batch, median (and quartiles) over rounds × repeats interleaved samples",
        "command": f"python -m tools.record speed --out {out} --only f1 --threads {torch.get_num_threads()}",
        "input_shape": list(input_shape), "machine": machine_info(dev).to_dict(),
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "settings": {"rounds": rounds, "repeats": repeats, "warmup": 3},
        "cliffs": rank_cliffs(df, rounds=rounds),
        "largest_drop": {"rank": int(pick_rank(dict(zip(df["rank"], df["time_ms"]))))},
        "rows": df.to_dict(orient="records"),
    }
    return write_record(out / f"optimize_{tag}.json", meta)
