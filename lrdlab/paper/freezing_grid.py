"""The freezing explorer's shipped grid: mode × period × compression ratio, fine-tuning from a calibrated start.

``lrdlab record freezing-grid`` runs :func:`record_freezing_grid`: the trained ResNet-20 (MNIST-5k,
:func:`lrdlab.explore.accuracy_lab.trained_model`) is decomposed at each ratio and calibrated
(:func:`~lrdlab.explore.accuracy_lab.calibrated_decompose`), then a copy is fine-tuned on a subset of the
training images with every freezing schedule in :data:`SCHEDULES`. Each finished run is written at once,
so an interrupted recording resumes where it stopped.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from torch import nn

from lrdlab.explore.accuracy_lab import CALIBRATION, DATA, calibrated_decompose, data_loaders, trained_model
from lrdlab.explore.freezing_lab import REFERENCE_GRID
from lrdlab.finetune.freezing import Freezer
from lrdlab.finetune.loop import fit
from lrdlab.lowrank.plan import make_plan
from lrdlab.measure.machine import machine_info

# (mode, period, unit): none and regular have no period; sequential rotates every N epochs or every iteration
SCHEDULES: tuple[tuple[str, int, str], ...] = (
    ("none", 1, "epoch"), ("regular", 1, "epoch"),
    ("sequential", 1, "epoch"), ("sequential", 2, "epoch"), ("sequential", 3, "epoch"), ("sequential", 4, "epoch"),
    ("sequential", 1, "iteration"),
)
GRID_SCHEMA = {
    "runs[]": "one row per (ratio, mode, period, unit, epoch); epoch 0 = the calibrated decomposed model",
    "period, unit": "sequential freezing rotates the trainable factor every `period` epochs or iterations",
    "accuracy": "test top-1 % on the 1,000 MNIST-5k test images",
    "train_img_s": "training images per second in that epoch (fit's own clock, evaluation excluded)",
    "wall_s": "cumulative training seconds",
    "trainable_params": "parameters with requires_grad at the end of the epoch",
}


def run_key(ratio: float, mode: str, period: int, unit: str) -> str:
    return f"{ratio:g}|{mode}|{period}|{unit}"


def record_freezing_grid(out: Path = REFERENCE_GRID, *, ratios: Sequence[float] = (2.0, 3.0), subset: int = 1024,
                         epochs: int = 4, lr: float = 0.02, batch_size: int = 128, calibration_batches: int = 4,
                         exclude: Sequence[str] = ("conv1",), schedules: Sequence[tuple[str, int, str]] = SCHEDULES,
                         command: str = "", progress: Callable[[str], None] = print) -> Path:
    """Record the grid to ``out`` (JSON), resuming from the runs already there."""
    out = Path(out)
    try:
        data = json.loads(out.read_text())
    except (OSError, ValueError):
        data = {}
    settings = {"model": "resnet20_mnist5k", "train_recipe": "lrdlab.zoo.pretrained.pretrained_info(model)",
                "ratios": list(ratios), "subset": subset,
                "finetune_epochs": epochs, "finetune_lr": lr, "batch_size": batch_size,
                "calibration": f"{CALIBRATION}, {calibration_batches} train batches of {batch_size}",
                "exclude": list(exclude), "seed": DATA["seed"]}
    if data.get("settings") != settings:
        data = {}
    runs = pd.DataFrame(data.get("runs", []))
    done = set(runs["key"]) if not runs.empty else set()
    original = trained_model()
    loaders = data_loaders(subset=subset, batch_size=batch_size)
    calibration = [x for x, _ in zip((b[0] for b in loaders.train), range(calibration_batches))]
    names = [n for n, m in original.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    skip = [p for p in exclude if any(fnmatch.fnmatchcase(n, p) for n in names)]
    for ratio in ratios:
        todo = [s for s in schedules if run_key(ratio, *s) not in done]
        if not todo:
            continue
        plan = make_plan(original, ratio=ratio, exclude=skip or None, model_name="resnet20")
        start = calibrated_decompose(original, plan, calibration)
        for mode, period, unit in todo:
            begin = time.perf_counter()
            net = copy.deepcopy(start)
            h = fit(net, loaders.train, loaders.test, epochs, lr, Freezer(net, mode, period=period, unit=unit),
                    seed=DATA["seed"], evaluate_start=True, progress=False)
            h = h.assign(key=run_key(ratio, mode, period, unit), ratio=ratio, mode=mode, period=period, unit=unit)
            keep = ["key", "ratio", "mode", "period", "unit", "epoch", "accuracy", "loss", "wall_s", "train_img_s",
                    "trainable_params"]
            runs = pd.concat([d for d in (runs, h[keep]) if not d.empty], ignore_index=True)
            data = {"settings": settings, "machine": machine_info(), "command": command, "schema": GRID_SCHEMA,
                    "runs": runs.to_dict("records")}
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=0, default=float) + "\n")
            tmp.replace(out)
            progress(f"ratio {ratio:g} {mode} N={period} {unit}: {h['accuracy'].iloc[0]:.1f}% → "
                     f"{h['accuracy'].iloc[-1]:.1f}% in {time.perf_counter() - begin:.0f} s")
    return out


def load_grid(path: Path = REFERENCE_GRID) -> dict[str, Any]:
    """The recorded grid: ``settings``, ``machine``, ``runs`` (a DataFrame)."""
    raw = json.loads(Path(path).read_text())
    raw["runs"] = pd.DataFrame(raw.get("runs", []))
    return raw
