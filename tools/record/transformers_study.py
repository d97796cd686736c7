"""The transformer study: a trained ViT-tiny on MNIST-5k, decomposed.

``python -m tools.record transformers study --weights PATH --out data/transformers_mnist5k.json``

- ``accuracy``: test accuracy vs compression ratio, right after decomposition (zero-shot) and after
  ``finetune_epochs`` of fine-tuning (all factors trainable);
- ``freezing``: regular vs sequential freezing (and none) at one ratio: per-epoch history (convergence) and
  interleaved training throughput (:func:`lrdlab.paper.freezing_study.freezing_throughput`);
- ``gemm``: rank granularity for the GEMMs, on this machine: the time of a factorized projection
  ``(x @ firstᵀ) @ lastᵀ`` at every rank of a window around the ratio's rank (do multiples of 8/16/32/64 run
  faster?), and the whole decomposed model's inference and training time at granularity 1/8/16/32/64.

Every function takes a trained model, so the study runs on any weights (``lrdlab.pretrained`` once it lands).
"""

from __future__ import annotations

import copy
import os
import statistics
import time
from collections.abc import Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from lrdlab.finetune.fit_config import FitConfig
from lrdlab.finetune.freezing import Freezer
from lrdlab.finetune.loop import evaluate, fit, set_seed
from lrdlab.lowrank.decompose import decompose
from lrdlab.lowrank.plan import Layers, Ratio, make_plan
from lrdlab.measure.counting import count_params
from lrdlab.measure.interleave import interleave
from lrdlab.measure.timing_config import TimingConfig
from lrdlab.paper.accuracy_study import STUDY_MODELS, recipe_finetune
from tools.record.transformers_targets import median_time

TRAIN: dict[str, Any] = {"epochs": 5, "lr": 2e-3, "optimizer": "adamw", "weight_decay": 0.05, "batch_size": 64}
FINETUNE = {**STUDY_MODELS["vit_tiny"]["finetune"], "weight_decay": 0.05}  # F11's recipe (batch 32, distilled)
SCHEMA = {
    "accuracy": "ratio, params (whole model), accuracy_zero_shot (test %, no gradient step), calibrated (bool), "
                "accuracy_finetuned (test % after finetune_epochs, mode none; null when not fine-tuned)",
    "freezing.history": "fit history per (mode, epoch); epoch 0 = right after decomposition",
    "freezing.throughput": "interleaved training/inference throughput (freezing_study.freezing_throughput)",
    "gemm.ranks": "per (shape, rank): ms of (x @ firstᵀ) @ lastᵀ on tokens × C, median of interleaved rounds",
    "gemm.granularity": "per granularity g: whole-model params, inference and train-step ms (interleaved compare)",
}


def train_vit_tiny(loaders: Any, *, epochs: int = TRAIN["epochs"], seed: int = 0,
                   progress: bool = False) -> tuple[nn.Module, pd.DataFrame]:
    """A ViT-tiny trained from scratch on ``loaders`` by :data:`TRAIN` (used when no trained weights are given)."""
    from lrdlab.zoo.models import get_model

    recipe = {k: v for k, v in TRAIN.items() if k not in ("epochs", "batch_size")}  # the rest: FitConfig fields
    set_seed(seed)
    model = get_model("vit_tiny", num_classes=loaders.num_classes)
    history = fit(model, loaders.train, loaders.test, FitConfig(epochs=epochs, seed=seed, progress=progress, **recipe))
    return model.eval(), history


def _decompose(model: nn.Module, ratio: float, calibration: Iterable[torch.Tensor] | None) -> nn.Module:
    """``decompose(model, make_plan(model, ratio), calibration=…)``: data-aware when batches are given."""
    return decompose(model, make_plan(model, Ratio(ratio), Layers(exclude=STUDY_MODELS["vit_tiny"]["exclude"])),
                     calibration=calibration).eval()


def accuracy_vs_ratio(model: nn.Module, loaders: Any, ratios: Sequence[float], *,
                      finetune_ratios: Sequence[float] = (), finetune_epochs: int = 1, seed: int = 0,
                      calibration: Iterable[torch.Tensor] | None = None, progress: bool = False) -> pd.DataFrame:
    """Test accuracy of ``model`` decomposed at each ratio: zero-shot, and fine-tuned for ``finetune_ratios``."""
    base = evaluate(model, loaders.test)["accuracy"]
    rows = [{"ratio": 1.0, "params": count_params(model), "accuracy_zero_shot": base, "calibrated": False,
             "accuracy_finetuned": None}]
    for ratio in ratios:
        small = _decompose(model, ratio, calibration)
        row = {"ratio": ratio, "params": count_params(small), "calibrated": calibration is not None,
               "accuracy_zero_shot": evaluate(small, loaders.test)["accuracy"], "accuracy_finetuned": None}
        if ratio in finetune_ratios:
            h = recipe_finetune(small, model, loaders, finetune_epochs, FINETUNE, seed=seed, progress=progress)
            row["accuracy_finetuned"] = float(h["accuracy"].iloc[-1])
        rows.append(row)
    return pd.DataFrame(rows)


def freezing_runs(model: nn.Module, loaders: Any, ratio: float = 2.0, *, modes: Sequence[str] = ("none", "regular",
                  "sequential"), epochs: int = 1, period: int = 16, unit: str = "iteration", seed: int = 0,
                  calibration: Iterable[torch.Tensor] | None = None, progress: bool = False) -> pd.DataFrame:
    """Fine-tune copies of the decomposed model with each freezing mode; the fit histories, stacked.

    Sequential freezing rotates ``last → first`` every ``period`` ``unit``s (iterations by default, so one epoch
    sees several phases).
    """
    decomposed = _decompose(model, ratio, calibration)
    out = []
    for mode in modes:
        net = copy.deepcopy(decomposed)
        freezer = Freezer(net, mode, period=period, unit=unit)
        h = recipe_finetune(net, model, loaders, epochs, FINETUNE, freezer, seed=seed, progress=progress,
                     label=f"lrd {mode}")
        out.append(h.assign(mode=mode, ratio=ratio))
    return pd.concat(out, ignore_index=True)


def _median_ms(fn: Any, repeats: int) -> float:
    return 1e3 * median_time(fn, repeats)


@torch.no_grad()
def gemm_rank_times(shapes: Sequence[tuple[int, int]], ranks: Iterable[int], tokens: int, *, rounds: int = 5,
                    repeats: int = 5, seed: int = 0) -> pd.DataFrame:
    """Milliseconds of a factorized projection ``(x @ firstᵀ) @ lastᵀ`` (x: ``tokens`` × C) per (C→S, rank).

    Every rank of every shape is timed once per round, interleaved, so a load drift hits all alike.
    """
    g = torch.Generator().manual_seed(seed)
    cases = []
    for c, s in shapes:
        x = torch.randn(tokens, c, generator=g)
        for r in ranks:
            first, last = torch.randn(r, c, generator=g), torch.randn(s, r, generator=g)
            cases.append(((c, s, r), (lambda x=x, a=first, b=last: (x @ a.T) @ b.T)))
    times = interleave({key: partial(_median_ms, fn, repeats) for key, fn in cases}, rounds).times
    rows = [{"in": c, "out": s, "rank": r, "ms": statistics.median(v), "per_rank_us": 1e3 * statistics.median(v) / r}
            for (c, s, r), v in times.items()]
    return pd.DataFrame(rows)


def _granularity_rows(model: nn.Module, ratio: float, granularities: Sequence[int], input_shape: Sequence[int], *,
                      rounds: int = 3) -> pd.DataFrame:
    """Params and median inference / train-step time per rank granularity, the original first
    (:func:`lrdlab.measure.sweeps.granularity_sweep`, ranks rounded to the nearest multiple)."""
    from lrdlab.measure.sweeps import granularity_sweep

    df = granularity_sweep(model, input_shape, ratio, granularities, timing=TimingConfig(rounds=rounds, warmup=1),
                           rounding="nearest", train=True, progress=False)
    first = df.iloc[0]
    rows = [{"variant": "original", "params": count_params(model), "inference_ms": first["original_ms"],
             "inference_speedup_vs_original": 1.0, "train_ms": first["train_original_ms"],
             "train_speedup_vs_original": 1.0}]
    rows += [{"variant": f"g={g}", "params": r["params"], "inference_ms": r["time_ms"],
              "inference_speedup_vs_original": r["speedup"], "train_ms": r["train_time_ms"],
              "train_speedup_vs_original": r["train_speedup"]} for g, r in zip(granularities, df.to_dict("records"))]
    return pd.DataFrame(rows)


def run_transformers_study(model: nn.Module, loaders: Any, *, ratios: Sequence[float] = (1.5, 2, 3, 4),
                           finetune_ratios: Sequence[float] = (), finetune_epochs: int = 1, freeze_ratio: float = 2,
                           freeze_epochs: int = 1, period: int = 16, granularities: Sequence[int] = (1, 8, 16, 32, 64),
                           gemm_window: Sequence[int] = tuple(range(40, 73)), batch: int = 32, rounds: int = 3,
                           seed: int = 0, calibration: Iterable[torch.Tensor] | None = None, model_info: Any = None,
                           command: str = "", out: str | Path | None = None, progress: bool = False) -> dict[str, Any]:
    """The whole study on a trained ``model`` (ViT-tiny); returns a dict of DataFrames and settings, and writes
    JSON to ``out`` when given. ``model_info`` (e.g. how the weights were trained) is recorded as is.

    The fine-tuned accuracy at ``freeze_ratio`` is the freezing study's mode-``none`` run (the same fit);
    ``finetune_ratios`` fine-tunes further ratios separately."""
    from lrdlab.measure.machine import machine_info
    from lrdlab.paper.freezing_study import freezing_throughput, save_study

    load_before = list(os.getloadavg())
    model = model.cpu().eval()
    c, h, w = loaders.input_size
    started = time.perf_counter()
    accuracy = accuracy_vs_ratio(model, loaders, ratios, finetune_ratios=finetune_ratios,
                                 finetune_epochs=finetune_epochs, seed=seed, calibration=calibration, progress=progress)
    history = freezing_runs(model, loaders, freeze_ratio, epochs=freeze_epochs, period=period, seed=seed,
                            calibration=calibration, progress=progress)
    if freeze_epochs == finetune_epochs and "none" in set(history["mode"]):  # mode none is plain fine-tuning
        tuned = history[(history["mode"] == "none") & (history["epoch"] == freeze_epochs)]["accuracy"]
        at = accuracy["ratio"] == freeze_ratio
        accuracy["accuracy_finetuned"] = accuracy["accuracy_finetuned"].astype(object)
        accuracy.loc[at & accuracy["accuracy_finetuned"].isna(), "accuracy_finetuned"] = float(tuned.iloc[0])
    decomposed = _decompose(model, freeze_ratio, None)  # structure only: the throughput does not see weights
    throughput = freezing_throughput(model, decomposed, (batch, c, h, w), rounds)
    tokens = batch * ((h // 4) * (w // 4) + 1)  # vit_tiny: 4×4 patches and a class token
    embed: int = getattr(model, "hidden_dim", 192)
    mlp = 2 * embed
    gemm = gemm_rank_times([(embed, embed), (embed, mlp), (mlp, embed)], gemm_window, tokens, rounds=rounds)
    sweep = _granularity_rows(model, freeze_ratio, granularities, (batch, c, h, w), rounds=rounds)
    result = {
        "accuracy": accuracy, "freezing_history": history, "freezing_throughput": throughput,
        "gemm_ranks": gemm, "gemm_granularity": sweep,
        "settings": {"ratios": list(ratios), "finetune_ratios": list(finetune_ratios),
                     "finetune_epochs": finetune_epochs,
                     "freeze_ratio": freeze_ratio, "freeze_epochs": freeze_epochs, "period_iterations": period,
                     "granularities": list(granularities), "gemm_tokens": tokens, "batch": batch, "rounds": rounds,
                     "seed": seed, "finetune": FINETUNE, "model": model_info,
                     "calibration": "given" if calibration is not None else "none (plain SVD)"},
        "machine": machine_info("cpu").to_dict(), "command": command, "schema": SCHEMA,
        "load_average_before": load_before, "load_average_after": list(os.getloadavg()),
        "wall_s": time.perf_counter() - started,
    }
    if out is not None:
        save_study(result, out)
    return result


FULL = {"ratios": (1.5, 2, 3, 4), "finetune_ratios": (1.5, 3, 4)}  # 2x is fine-tuned by the freezing runs
QUICK = {"ratios": (2,), "finetune_ratios": (), "freeze_epochs": 1, "granularities": (1, 16), "gemm_window": (47, 48),
         "rounds": 1}


def record_study(out: str | Path, *, weights: str | Path | None = None, train_epochs: int = TRAIN["epochs"],
                 subset: int | None = None, quick: bool = False, calibration_images: int = 512,
                 command: str = "") -> dict[str, Any]:
    """``python -m tools.record transformers study``: load (or train) the ViT-tiny, run the study, write ``out``.

    ``weights``: a shipped model's name (``vit_tiny_mnist5k``, see :func:`lrdlab.pretrained`) or a
    state_dict file; without it a ViT-tiny is trained here. Decompositions are calibrated on the first
    ``calibration_images`` training images."""
    from lrdlab.lowrank.calibration import calibration_batches
    from lrdlab.zoo.data import get_loaders
    from lrdlab.zoo.pretrained import trained

    loaders = get_loaders("mnist5k", TRAIN["batch_size"], seed=0, subset=subset)
    if weights is not None:
        model, info = trained(weights, "vit_tiny")
    else:
        model, history = train_vit_tiny(loaders, epochs=train_epochs)
        info = {"source": f"trained here, {train_epochs} epochs", **{k: v for k, v in TRAIN.items() if k != "epochs"},
                "history": history.to_dict("records")}
    calibration = calibration_batches(loaders.train, calibration_images)
    return run_transformers_study(model, loaders, model_info=info, command=command, out=out, calibration=calibration,
                                  **(QUICK if quick else FULL))
