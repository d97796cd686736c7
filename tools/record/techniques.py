"""P1 Table 2 (``table``), the F6 branch sweep (``branch``), the merge/branch accuracy study (``accuracy``) and
one F6 file from both (``combine``): ``python -m tools.record techniques … --out FILE``."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lrdlab.lowrank.merge import DEFAULT_BN
from lrdlab.lowrank.plan import Layers, Ratio, make_plan
from lrdlab.lowrank.plan_config import PAPER_EXCLUDE
from lrdlab.measure.counting import FLOP_COUNTER
from lrdlab.measure.records import read_record, write_record
from lrdlab.measure.timing_config import TimingConfig
from lrdlab.paper.techniques import accuracy_study, branch_sweep, speed_columns, structure_row, technique_models


def techniques_table(model_name: str = "resnet50", batch: int = 8, image_size: int = 224, ratio: float = 2.0,
                     exclude: Sequence[str] = PAPER_EXCLUDE, bn: str = DEFAULT_BN, rounds: int = 3, warmup: int = 1,
                     repeats: int = 2, speed: bool = True, also: Sequence[str] = ("fold",)) -> dict[str, Any]:
    """P1 Table 2 rows for ``model_name`` (random weights): structure, and measured speed when ``speed``.

    The ``layer merging`` row uses merge option ``bn``; ``also`` adds rows for other options.
    """
    from lrdlab.measure.machine import machine_info
    from lrdlab.zoo.models import get_model

    torch.manual_seed(0)
    model = get_model(model_name).eval()
    plan = make_plan(model, Ratio(ratio), Layers(exclude=list(exclude)), model_name=model_name)
    models = technique_models(model, plan, bn=bn, also=also)
    shape = (batch, 3, image_size, image_size)
    rows = [structure_row(name, m, model, (1, 3, image_size, image_size)) for name, m in models.items()]
    if speed:
        timing = speed_columns(models, shape, TimingConfig(rounds=rounds, warmup=warmup, repeats=repeats))
        for row in rows:
            row.update(timing[row["method"]])
    return {
        "what": f"P1 Table 2 rows for {model_name}: % change vs the original (random weights, structure and speed)",
        "model": model_name, "input_shape": list(shape), "ratio": ratio, "exclude": list(exclude),
        "merge_bn": bn, "flop_counter": FLOP_COUNTER,
        "speed": {"harness": "lrdlab.compare (interleaved, median of per-round ratios)", "rounds": rounds,
                  "warmup": warmup, "repeats": repeats, "train_step": "forward + backward + SGD step, random labels"}
        if speed else None,
        "machine": machine_info("cpu").to_dict(), "rows": rows,
    }




def combine_branch_sweep(resnet: dict[str, Any], accuracy: dict[str, Any]) -> dict[str, Any]:
    """F6 in one file: the large model's structure / speed sweep and the small model's accuracy sweep."""
    return {
        "what": "branched Tucker sweep (F6), N ∈ {1, 2, 4, 8} at the same ranks: core parameters ÷ N",
        "large_model": {k: v for k, v in resnet.items() if k != "schema"},
        "small_model": {
            "what": "BottleneckNet on " + accuracy["base"]["data"] + ": accuracy before / after fine-tuning, speed",
            "base": accuracy["base"], "plan": accuracy["plan"], "finetune": accuracy["finetune"],
            "speed_input_shape": accuracy["speed_input_shape"], "machine": accuracy["machine"],
            "command": accuracy.get("command"), "rows": accuracy["branch_rows"],
        },
    }


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


def record_techniques(what: str, out: str | Path, *, model: str = "resnet50", batch: int = 8, image_size: int = 224,
                      rounds: int = 3, bn: str = DEFAULT_BN, data: str = "mnist5k", seeds: Sequence[int] = (0, 1, 2),
                      base_epochs: int = 5, ft_epochs: int = 2, inputs: Sequence[str] = (), command: str = "") -> Path:
    """P1 Table 2 (``table``), the F6 branch sweep (``branch``), the merge/branch accuracy study (``accuracy``),
    or one F6 file from a branch sweep and an accuracy study (``combine``), written as JSON to ``out``."""
    t0 = time.perf_counter()
    if what == "table":
        result = techniques_table(model, batch, image_size, bn=bn, rounds=rounds)
    elif what == "branch":
        result = branch_sweep(model, batch=batch, image_size=image_size,
                              timing=TimingConfig(rounds=rounds, warmup=1, repeats=2)).to_dict()
    elif what == "accuracy":
        result = accuracy_study(data, base_epochs=base_epochs, ft_epochs=ft_epochs, seeds=list(seeds)).to_dict()
    elif what == "combine":
        if len(inputs) != 2:
            raise ValueError("record techniques combine needs --inputs BRANCH_JSON ACCURACY_JSON")
        result = combine_branch_sweep(*(read_record(Path(f).absolute()) for f in inputs))
    else:
        raise ValueError(f"unknown techniques record {what!r}: use table, branch, accuracy or combine")
    result["command"] = command
    result["wall_s"] = time.perf_counter() - t0
    result.setdefault("schema", SCHEMA)
    return write_record(out, result)
