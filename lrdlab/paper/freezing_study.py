"""freezing_study: moved from lrdlab.train."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from lrdlab.finetune.freezing import Freezer
from lrdlab.finetune.loop import fit

# --- the freezing study (F7, F8) ---------------------------------------------------------------------------

STUDY_SCHEMA = {
    "history": "one row per (variant, epoch): variant (original | lrd), mode (original | none | regular | "
               "sequential), epoch (0 = right after decomposition, before fine-tuning), accuracy / top5 (test %, "
               "top-1 / top-5), loss (test cross-entropy), train_loss, train_accuracy, epoch_s (training wall s of "
               "the epoch), wall_s (cumulative training s), train_img_s (images / epoch_s), eval_img_s, lr, "
               "trainable_params, phase (sequential freezing phase)",
    "throughput": "interleaved benchmark on one fixed batch (A B C D A B C D …, median of rounds): technique, "
                  "train_img_s, train_speedup_pct (median of per-round ratios vs original, %), infer_img_s, "
                  "infer_speedup_pct; sequential = time averaged over its phases; fit_train_img_s = median "
                  "per-epoch throughput of the actual training runs (sequential, not interleaved)",
}


STUDY_QUICK = {"epochs": 2, "finetune_epochs": 2, "subset": 1024, "bench_rounds": 3}
STUDY_FULL = {"epochs": 4, "finetune_epochs": 3, "subset": None, "bench_rounds": 5}


def _variant_throughput(models: dict[str, nn.Module], batch: tuple[int, ...], rounds: int,
                        device: str) -> dict[str, tuple[float, float]]:
    """(median s/step, median speed-up vs the first model) for each model, timed interleaved."""
    from lrdlab.measure.timing import compare

    df = compare(models, batch, mode="train", rounds=rounds, device=device, warmup=1, repeats=3)
    return {r["name"]: (r["batch"] / r["throughput"], r["speedup_vs_first"]) for r in df.to_dict("records")}


def freezing_throughput(original: nn.Module, decomposed: nn.Module, batch: tuple[int, ...], rounds: int = 5,
                        device: str = "cpu", period_order=None) -> pd.DataFrame:
    """F7: training and inference throughput of original, LRD, LRD + regular and + sequential freezing.

    Every variant's training step is timed interleaved with the others (``measure.compare``); the
    sequential variant is timed once per phase 0..L-1 (each phase trains a different factor; L is the
    longest rotation, 3 for Tucker-2) and its time is the mean over those phases, since every phase
    lasts equally long.
    """
    from lrdlab.measure.timing import compare

    variants: dict[str, nn.Module] = {"original": original, "lrd": decomposed}
    regular = copy.deepcopy(decomposed)
    Freezer(regular, "regular")
    variants["lrd+regular"] = regular
    seq = copy.deepcopy(decomposed)
    freezer = Freezer(seq, "sequential", order=period_order)
    phases = max(len(o) for o in freezer.orders.values())
    for p in range(phases):
        freezer.update(p)
        variants[f"lrd+sequential[{p}]"] = copy.deepcopy(seq)
    train = _variant_throughput(variants, batch, rounds, device)
    infer = compare({"original": original, "lrd": decomposed}, batch, mode="inference", rounds=rounds,
                    device=device, warmup=1, repeats=5)
    infer_s = {r["name"]: (r["batch"] / r["throughput"], r["speedup_vs_first"]) for r in infer.to_dict("records")}
    n = batch[0]
    seq_s = [train[f"lrd+sequential[{p}]"][0] for p in range(phases)]
    seq_speed = sum(train[f"lrd+sequential[{p}]"][1] ** -1 for p in range(phases)) / phases
    rows = []
    for tech, (ts, tsp), inf in (
        ("original", train["original"], "original"), ("lrd", train["lrd"], "lrd"),
        ("lrd+regular", train["lrd+regular"], "lrd"),
        ("lrd+sequential", (sum(seq_s) / phases, 1.0 / seq_speed), "lrd"),
    ):
        rows.append({"technique": tech, "train_img_s": n / ts, "train_speedup_pct": 100.0 * (tsp - 1),
                     "infer_img_s": n / infer_s[inf][0], "infer_speedup_pct": 100.0 * (infer_s[inf][1] - 1),
                     "batch": n, "rounds": rounds})
    for p in range(phases):
        ts, tsp = train[f"lrd+sequential[{p}]"]
        rows.append({"technique": f"lrd+sequential[{p}]", "train_img_s": n / ts,
                     "train_speedup_pct": 100.0 * (tsp - 1), "infer_img_s": float("nan"),
                     "infer_speedup_pct": float("nan"), "batch": n, "rounds": rounds})
    return pd.DataFrame(rows)


def run_freezing_study(
    model: str = "resnet20",
    data: str = "mnist5k",
    epochs: int = 6,
    finetune_epochs: int | None = None,
    ratio: float = 2.0,
    modes: Iterable[str] = ("none", "regular", "sequential"),
    period: int = 1,
    unit: str = "epoch",
    batch_size: int = 128,
    lr: float = 0.1,
    finetune_lr: float = 0.02,
    subset: int | None = None,
    exclude: Iterable[str] | None = ("conv1", "*.downsample.*"),
    seed: int = 0,
    cache_dir: str | Path | None = None,
    device: str = "cpu",
    bench_rounds: int = 5,
    out: str | Path | None = None,
    save_original: str | Path | None = None,
    progress: bool = True,
    calibration_images: int = 512,
) -> dict[str, Any]:
    """Train the original, decompose it at ``ratio``, fine-tune with each freezing mode; F7 + F8 data.

    ``save_original`` writes the trained original's ``state_dict`` there (e.g. for spectra plots).
    Fine-tuning starts from the data-aware, BN-recalibrated decomposition on ``calibration_images``
    training images (``0``: the papers' weight-only start, which sits at chance level before training).

    The original is trained from scratch for ``epochs``; its trained weights are decomposed
    (``make_plan(ratio, exclude)``) and each mode fine-tunes a copy for ``finetune_epochs`` (default
    ``epochs``) with the same data order. Returns ``{"history", "throughput", "settings", "machine",
    "schema"}`` (DataFrames for the first two) and writes them as JSON to ``out`` when given. Quick:
    ``run_freezing_study(**STUDY_QUICK)`` takes ~2-3 minutes on 2 quiet cores; ``STUDY_FULL`` is the
    recorded ``data/freezing_mnist5k.json``.
    """
    from lrdlab.lowrank.calibration import calibration_batches
    from lrdlab.lowrank.plan import applicable_patterns
    from lrdlab.measure.machine import machine_info
    from lrdlab.zoo.data import get_loaders
    from lrdlab.zoo.start import decomposed_start, train_original

    finetune_epochs = finetune_epochs or epochs
    modes = list(modes)
    settings = {k: v for k, v in locals().items() if k in (
        "model", "data", "epochs", "finetune_epochs", "ratio", "modes", "period", "unit", "batch_size", "lr",
        "finetune_lr", "subset", "seed", "device", "bench_rounds")}
    settings["exclude"] = list(exclude or [])
    from lrdlab.zoo.models import input_size

    small = data in ("mnist5k", "digits")  # embedded grey digits: repeat to the model's channels
    loaders = get_loaders(data, batch_size, cache_dir=cache_dir, subset=subset, seed=seed,
                          channels=input_size(model)[0] if small else None)
    original, history = train_original(model, loaders, epochs=epochs, lr=lr, seed=seed, device=device,
                                       progress=progress)
    histories = [history.assign(variant="original", mode="original")]
    if save_original is not None:
        Path(save_original).parent.mkdir(parents=True, exist_ok=True)
        torch.save(original.state_dict(), save_original)
    calibration = calibration_batches(loaders.train, calibration_images) if calibration_images else None
    plan, decomposed = decomposed_start(original, ratio=ratio, exclude=exclude, model_name=model,
                                        calibration=calibration)
    settings["exclude_applied"] = applicable_patterns(original, exclude)
    settings["calibration_images"] = calibration_images
    settings["decomposed_layers"] = len(plan.decomposed_layers)
    for mode in modes:
        net = copy.deepcopy(decomposed)
        freezer = Freezer(net, mode, period=period, unit=unit)
        h = fit(net, loaders.train, loaders.test, finetune_epochs, finetune_lr, freezer, device=device, seed=seed,
                evaluate_start=True, progress=progress, label=f"lrd {mode}")
        histories.append(h.assign(variant="lrd", mode=mode))
    history = pd.concat(histories, ignore_index=True)
    c, hgt, wid = loaders.input_size
    throughput = freezing_throughput(original, decomposed.eval(), (batch_size, c, hgt, wid), bench_rounds, device)
    fit_speed = history[history["epoch"] > 0].groupby("mode")["train_img_s"].median()
    throughput["fit_train_img_s"] = throughput["technique"].map(
        lambda t: fit_speed.get("original" if t == "original" else
                                "none" if t == "lrd" else t.removeprefix("lrd+"), float("nan")))
    from lrdlab.measure.counting import count_params

    settings["params"] = {"original": count_params(original), "decomposed": count_params(decomposed)}
    result = {"history": history, "throughput": throughput, "settings": settings,
              "machine": machine_info(device), "schema": STUDY_SCHEMA}
    if out is not None:
        save_study(result, out)
    return result


def save_study(result: dict[str, Any], path: str | Path) -> Path:
    """Write a freezing study as one JSON file (DataFrames as lists of records)."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plain = {k: (v.to_dict("records") if isinstance(v, pd.DataFrame) else v) for k, v in result.items()}
    path.write_text(json.dumps(plain, indent=1, default=float) + "\n")
    return path


def load_study(path: str | Path) -> dict[str, Any]:
    """Read a saved freezing study back (``history`` and ``throughput`` as DataFrames)."""
    import json

    raw = json.loads(Path(path).read_text())
    return {k: (pd.DataFrame(v) if k in ("history", "throughput") else v) for k, v in raw.items()}
