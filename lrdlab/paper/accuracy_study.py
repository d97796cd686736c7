"""F11: accuracy vs compression of the shipped reference models, with and without calibration.

For each model and ratio (stem kept) the study records the MNIST-5k test accuracy of five variants:

``weights``      weight-only SVD / HOSVD (``lrdlab.decompose(model, plan)``)
``weights+bn``   the same, then :func:`lrdlab.recalibrate_bn` on the calibration images
``data``         data-aware decomposition, BN statistics left stale (``calibrated_decompose(bn=False)``)
``data+bn``      data-aware decomposition + BN re-estimation (``decompose(model, plan, calibration=…)``)
``data+bn+ft``   ``data+bn`` after ``finetune_epochs`` of :func:`lrdlab.fit` (no freezing; batch 32, the original
                 model as distillation teacher: :data:`STUDY_MODELS` ``finetune``)

plus params and FLOPs (one 3×32×32 image) per ratio and the seconds each step took. Run it as
``python -m tools.record accuracy --out data/accuracy_f11_mnist5k.json``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lrdlab.measure.records import StudyRecord, write_record
from lrdlab.zoo.pretrained import kept_stem

RATIOS = (1.25, 1.5, 2.0, 2.5, 3.0, 4.0)
VARIANTS = ("weights", "weights+bn", "data", "data+bn", "data+bn+ft")
STUDY_MODELS: dict[str, dict[str, Any]] = {
    "resnet20": {"pretrained": "resnet20_mnist5k", "exclude": kept_stem("resnet20"),
                 "finetune": {"optimizer": "sgd", "lr": 0.01, "batch_size": 32, "distill": True}},
    "vit_tiny": {"pretrained": "vit_tiny_mnist5k", "exclude": kept_stem("vit_tiny"),
                 "finetune": {"optimizer": "adamw", "lr": 2e-4, "batch_size": 32, "distill": True}},
}  # fine-tuning: batch 32 (125 steps per epoch) with the original as distillation teacher (lrdlab.fit(teacher=))


@dataclass(frozen=True)
class AccuracyStudy(StudyRecord):
    """:func:`run_accuracy_study`'s result: one row per model × granularity × ratio × variant (``accuracy`` %,
    ``loss``, ``params``, ``flops``, ``seconds``), the settings, the machine and the command that ran it."""

    COLUMNS = ("model", "granularity", "ratio", "variant", "accuracy", "params", "flops", "seconds")
    rows: list[dict[str, Any]]
    settings: dict[str, Any]
    machine: dict[str, Any]
    command: str = ""
    total_s: float = 0.0

    def title(self) -> str:
        return f"F11 accuracy study ({self.settings['calibration_images']} calibration images, {self.total_s:g} s)"


def _timed(fn, *args, **kw):
    """``(fn(...), seconds)``; seconds of this process's CPU time (on a shared machine wall time mostly
    measures the neighbours' load) — with one torch thread, the wall time on a quiet core."""
    t0 = time.process_time()
    out = fn(*args, **kw)
    return out, time.process_time() - t0


def _accuracy(model, loader) -> tuple[float, float]:
    from lrdlab.finetune.loop import evaluate

    r = evaluate(model, loader)
    return round(r["accuracy"], 2), round(r["loss"], 4)


def recipe_finetune(net: torch.nn.Module, teacher: torch.nn.Module, loaders, epochs: int, recipe: dict[str, Any],
                    freezer=None, *, seed: int = 0, progress: bool = False, label: str = ""):
    """:func:`lrdlab.zoo.start.finetune` by a recipe (:data:`STUDY_MODELS`' ``finetune``, or one of the fine-tuning
    sweep's in the checkout's tools/record/accuracy.py): its optimizer, learning rate and batch size,
    ``teacher`` distilling when ``distill``."""
    from lrdlab.finetune.fit_config import FitConfig
    from lrdlab.zoo.start import finetune

    opts = {k: v for k, v in recipe.items() if k not in ("batch_size", "distill")}  # the rest: FitConfig fields
    config = FitConfig(epochs=epochs, seed=seed, progress=progress, label=label, evaluate_start=freezer is not None,
                       **opts)
    return finetune(net, loaders, config, batch_size=recipe["batch_size"], freezer=freezer,
                    teacher=teacher if recipe["distill"] else None)


def study_model(name: str, ratios: Sequence[float], loaders, calibration: list[torch.Tensor], *,
                granularity: int = 1, finetune_epochs: int = 1, variants: Iterable[str] = VARIANTS,
                seed: int = 0, progress: bool = True) -> list[dict[str, Any]]:
    """Rows (one per ratio × variant) for one model of :data:`STUDY_MODELS`."""
    from lrdlab.lowrank.calibration import calibrated_decompose, recalibrate_bn
    from lrdlab.lowrank.decompose import decompose
    from lrdlab.lowrank.plan import Layers, Ratio, make_plan
    from lrdlab.measure.counting import count_flops, count_params
    from lrdlab.zoo.pretrained import pretrained

    spec, variants = STUDY_MODELS[name], list(variants)
    original = pretrained(spec["pretrained"])
    shape = (1, *loaders.input_size)
    base = {"model": name, "params_original": count_params(original), "flops_original": count_flops(original, shape)}
    acc0, loss0 = _accuracy(original, loaders.test)
    rows = [{**base, "ratio": 1.0, "granularity": granularity, "variant": "original", "accuracy": acc0,
             "loss": loss0, "params": base["params_original"], "flops": base["flops_original"], "seconds": 0.0}]
    for ratio in ratios:
        plan = make_plan(original, Ratio(ratio, granularity=granularity), Layers(exclude=spec["exclude"]),
                         model_name=name)
        made: dict[str, tuple[torch.nn.Module, float]] = {}
        made["weights"] = _timed(decompose, original, plan)
        if "weights+bn" in variants:
            m, s = _timed(recalibrate_bn, copy.deepcopy(made["weights"][0]), calibration)
            made["weights+bn"] = (m, made["weights"][1] + s)
        made["data"] = _timed(calibrated_decompose, original, plan, calibration, bn=False)
        m, s = _timed(recalibrate_bn, copy.deepcopy(made["data"][0]), calibration)
        made["data+bn"] = (m, made["data"][1] + s)  # = calibrated_decompose(bn=True), one calibration saved
        if "data+bn+ft" in variants and finetune_epochs > 0:
            net = copy.deepcopy(made["data+bn"][0])
            _, s = _timed(recipe_finetune, net, original, loaders, finetune_epochs, spec["finetune"], seed=seed,
                          label=f"{name} {ratio}")
            made["data+bn+ft"] = (net.eval(), made["data+bn"][1] + s)
        params, flops = count_params(made["weights"][0]), count_flops(made["weights"][0], shape)
        for variant in [v for v in VARIANTS if v in made and v in variants]:
            model, seconds = made[variant]
            acc, loss = _accuracy(model, loaders.test)
            rows.append({**base, "ratio": ratio, "granularity": granularity, "variant": variant, "accuracy": acc,
                         "loss": loss, "params": params, "flops": flops, "seconds": round(seconds, 2),
                         "decomposed_layers": len(plan.decomposed_layers)})
            if progress:
                print(f"{name} ratio {ratio:g} g={granularity} {variant:11s} {acc:6.2f}%  ({seconds:.1f} s)",
                      flush=True)
    return rows


def shipped_study_models() -> list[str]:
    """The models of :data:`STUDY_MODELS` whose reference weights are shipped (see :func:`lrdlab.pretrained`)."""
    from lrdlab.zoo.pretrained import available

    return [m for m, spec in STUDY_MODELS.items() if spec["pretrained"] in available()]


def run_accuracy_study(models: Sequence[str] | None = None, ratios: Sequence[float] = RATIOS, *,
                       calibration_images: int = 512, finetune_epochs: int = 1, granularities: Sequence[int] = (1,),
                       batch_size: int = 128, seed: int = 0, out: str | Path | None = None,
                       progress: bool = True, command: str = "") -> AccuracyStudy:
    """The F11 data set: accuracy vs ratio for every model × granularity × variant, with params and FLOPs.

    Calibration uses the first ``calibration_images`` training images (seeded loader order); accuracy
    is on the 1,000-image MNIST-5k test split. ``models`` defaults to those with shipped weights.
    Writes its JSON form to ``out`` when given.
    """
    from lrdlab.finetune.loop import set_seed
    from lrdlab.lowrank.calibration import calibration_batches
    from lrdlab.measure.machine import machine_info
    from lrdlab.zoo.data import Images, get_loaders

    models = shipped_study_models() if models is None else list(models)
    unknown = sorted(set(models) - set(STUDY_MODELS))
    if unknown:
        raise ValueError(f"unknown study models {unknown}; choose from {sorted(STUDY_MODELS)}")
    set_seed(seed)
    loaders = get_loaders("mnist5k", batch_size, Images(channels=3), seed=seed)
    calibration = calibration_batches(loaders.train, calibration_images)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for name in models:
        for g in granularities:
            rows += study_model(name, ratios, loaders, calibration, granularity=g,
                                finetune_epochs=finetune_epochs, seed=seed, progress=progress)
    result = AccuracyStudy(
        rows=rows,
        settings={"models": list(models), "ratios": list(ratios), "granularities": list(granularities),
                  "calibration_images": calibration_images, "finetune_epochs": finetune_epochs,
                  "batch_size": batch_size, "seed": seed, "data": "mnist5k (4,000 train / 1,000 test)",
                  "exclude": {m: STUDY_MODELS[m]["exclude"] for m in models},
                  "finetune": {m: STUDY_MODELS[m]["finetune"] for m in models},
                  "flops_input": [1, 3, 32, 32], "variants": list(VARIANTS)},
        machine=machine_info("cpu").to_dict(), command=command, total_s=round(time.perf_counter() - t0, 1))
    if out is not None:
        write_record(out, result.to_dict())
    return result

