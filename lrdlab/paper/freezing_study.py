"""The freezing study (F6/F7): fine-tuning with each freezing mode, and the throughput of each."""

from __future__ import annotations

import copy
import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from lrdlab.finetune.freezing import Freezer
from lrdlab.finetune.loop import fit
from lrdlab.measure import stats

# --- the freezing study (F7, F8) ---------------------------------------------------------------------------

STUDY_SCHEMA = {
    "history": "one row per (variant, epoch): variant (original | lrd), mode (original | none | regular | "
               "sequential), epoch (0 = right after decomposition, before fine-tuning), accuracy / top5 (test %, "
               "top-1 / top-5), loss (test cross-entropy), train_loss, train_accuracy, epoch_s (training wall s of "
               "the epoch), wall_s (cumulative training s), train_img_s (images / epoch_s), eval_img_s, lr, "
               "trainable_params, phase (sequential freezing phase)",
    "throughput": "interleaved benchmark on one fixed batch (A B C …, then C B A …, median of rounds): technique, "
                  "train_img_s, train_speedup_pct (median of per-round ratios vs original, %), infer_img_s, "
                  "infer_speedup_pct, each with *_ci_low / *_ci_high (95% bootstrap interval), train_rounds, "
                  "infer_rounds; sequential = time averaged over its phases; fit_train_img_s = median "
                  "per-epoch throughput of the actual training runs (sequential, not interleaved)",
}


STUDY_QUICK = {"epochs": 2, "finetune_epochs": 2, "subset": 1024, "bench_rounds": 3}
STUDY_FULL = {"epochs": 4, "finetune_epochs": 3, "subset": None, "bench_rounds": 5}


CI_KEYS = (("median", ""), ("ci_low", "_ci_low"), ("ci_high", "_ci_high"))  # summary key → column suffix


def _speed(prefix: str, base: list[float], times: list[float], n: int) -> dict[str, float]:
    """Paired round times → ``{prefix}_img_s`` and ``{prefix}_speedup_pct``, each with its 95% interval."""
    up = stats.SpeedUp.of(base, times)
    base_img_s = n / statistics.median(base)  # throughput and speed-up from the same paired measurement
    ratios, pcts = (up.median, up.ci_low, up.ci_high), (up.pct, up.pct_low, up.pct_high)
    return {**{f"{prefix}_img_s{end}": base_img_s * r for r, (_, end) in zip(ratios, CI_KEYS)},
            **{f"{prefix}_speedup_pct{end}": p for p, (_, end) in zip(pcts, CI_KEYS)}, f"{prefix}_rounds": up.rounds}


def freezing_throughput(original: nn.Module, decomposed: nn.Module, batch: tuple[int, ...], rounds: int = 5,
                        device: str = "cpu", period_order=None) -> pd.DataFrame:
    """F7: training and inference throughput of original, LRD, LRD + regular and + sequential freezing.

    Every variant's training step is timed interleaved with the others (``measure.compare``, rounds
    added until the intervals are ±3 points or its budget ends); the sequential variant is timed once
    per phase 0..L-1 (each phase trains a different factor; L is the longest rotation, 3 for Tucker-2)
    and its time in a round is the mean over those phases, since every phase lasts equally long.
    Inference is timed once for the decomposed model (freezing does not change it). Every throughput
    and speed-up has its 95% bootstrap interval (``*_ci_low`` / ``*_ci_high``).
    """
    from lrdlab.measure.compare import compare
    from lrdlab.measure.timing_config import TimingConfig

    variants: dict[str, nn.Module] = {"original": original, "lrd": decomposed}
    regular = copy.deepcopy(decomposed)
    Freezer(regular, "regular")
    variants["lrd+regular"] = regular
    seq = copy.deepcopy(decomposed)
    freezer = Freezer(seq, "sequential", order=period_order)
    phases = [f"lrd+sequential[{p}]" for p in range(max(len(o) for o in freezer.orders.values()))]
    for p, name in enumerate(phases):
        freezer.update(p)
        variants[name] = copy.deepcopy(seq)
    train = compare(variants, batch, "train",
                    timing=TimingConfig(rounds=rounds, warmup=1, repeats=3, device=device)).attrs["per_round"]
    train["lrd+sequential"] = [statistics.fmean(ts) for ts in zip(*(train[p] for p in phases))]
    infer = compare({"original": original, "lrd": decomposed}, batch, "inference",
                    timing=TimingConfig(rounds=rounds, warmup=1, repeats=5, device=device)).attrs["per_round"]
    n = batch[0]
    inference = {name: _speed("infer", infer["original"], t, n) for name, t in infer.items()}
    inference[None] = dict.fromkeys(inference["lrd"], float("nan"))  # a phase alone is never deployed
    rows = []
    for tech, inf in (("original", "original"), ("lrd", "lrd"), ("lrd+regular", "lrd"), ("lrd+sequential", "lrd"),
                      *((p, None) for p in phases)):
        row: dict[str, Any] = {"technique": tech, **_speed("train", train["original"], train[tech], n),
                               **inference[inf]}
        rows.append({**row, "batch": n, "rounds": row["train_rounds"]})
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
    from lrdlab.measure.records import write_record

    plain = {k: (v.to_dict("records") if isinstance(v, pd.DataFrame) else v) for k, v in result.items()}
    return write_record(path, plain)


def load_study(path: str | Path) -> dict[str, Any]:
    """Read a saved freezing study back (``history`` and ``throughput`` as DataFrames)."""
    from lrdlab.measure.records import read_record

    raw = read_record(path)
    return {k: (pd.DataFrame(v) if k in ("history", "throughput") else v) for k, v in raw.items()}
