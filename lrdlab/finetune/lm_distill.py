"""Distillation of a decomposed causal LM from its dense original: pure KL on the logits over token windows,
with a held-out perplexity curve (:func:`distill_language_model`, through :func:`lrdlab.fit`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, RandomSampler

from lrdlab.finetune.fit_config import FitConfig, check_count
from lrdlab.finetune.loop import fit


@dataclass(frozen=True)
class LMDistillation:
    """A short distillation of a decomposed causal LM from its dense original (:func:`distill_language_model`).

    ``steps`` optimiser steps of ``batch`` windows each, drawn at random from the training windows; the held-out
    perplexity is measured every ``eval_every`` steps (and before the first), which gives the curve. Pure KL
    on the logits (temperature ``temperature``), AdamW at a constant ``lr`` without weight decay.
    """

    steps: int = 80
    batch: int = 2
    eval_every: int = 10
    lr: float = 1e-4
    temperature: float = 1.0
    clip_grad_norm: float | None = 1.0
    seed: int = 0
    label: str = "distill"
    progress: bool = True

    def __post_init__(self) -> None:
        me = "LMDistillation"
        check_count(me, "steps", self.steps)
        check_count(me, "batch", self.batch)
        check_count(me, "eval_every", self.eval_every)
        if self.steps % self.eval_every:
            raise ValueError(f"{me}: steps ({self.steps}) must be a multiple of eval_every ({self.eval_every}); "
                             f"e.g. {me}(steps={self.steps - self.steps % self.eval_every or self.eval_every}, "
                             f"eval_every={self.eval_every})")

    def fit_config(self) -> FitConfig:
        """The :class:`FitConfig` ``fit`` runs: one 'epoch' per evaluation interval."""
        return FitConfig(epochs=self.steps // self.eval_every, lr=self.lr, optimizer="adamw", weight_decay=0.0,
                         schedule="constant", distill_alpha=1.0, distill_temperature=self.temperature,
                         clip_grad_norm=self.clip_grad_norm, seed=self.seed, evaluate_start=True, label=self.label,
                         progress=self.progress)


def token_windows_loader(windows: Tensor, batch: int, batches: int, seed: int = 0) -> DataLoader:
    """``batches`` batches of ``batch`` windows ``{"input_ids", "labels"}``, drawn at random (seeded) from
    ``windows`` ``[N, T]`` afresh on every pass."""
    if windows.ndim != 2 or windows.is_floating_point():
        raise ValueError(f"windows must be token ids [N, T] (got {tuple(windows.shape)} {windows.dtype})")
    data = [{"input_ids": w, "labels": w} for w in windows]
    sampler = RandomSampler(data, replacement=False, num_samples=batch * batches,
                            generator=torch.Generator().manual_seed(seed))
    return DataLoader(data, batch_size=batch, sampler=sampler)  # type: ignore[arg-type]


def distill_language_model(student: nn.Module, teacher: nn.Module, train_windows: Tensor, eval_windows: Tensor,
                           recipe: LMDistillation | None = None,
                           callbacks: Iterable[Callable[[dict[str, Any]], None]] = ()) -> pd.DataFrame:
    """Distil ``student`` (trained in place) from ``teacher`` on ``train_windows`` with :func:`lrdlab.fit`;
    returns its history, one row per evaluation, with the ``perplexity`` on ``eval_windows`` (the curve)
    and the cumulative training seconds ``wall_s`` (``callbacks`` get each row as it comes, as in ``fit``).
    Keep ``eval_windows`` out of ``train_windows``."""
    recipe = LMDistillation() if recipe is None else recipe
    if not isinstance(recipe, LMDistillation):
        raise ValueError(f"recipe must be an LMDistillation (got {type(recipe).__name__}); "
                         f"e.g. LMDistillation(steps=80)")
    if len(train_windows) < recipe.batch:
        raise ValueError(f"{len(train_windows)} training windows cannot fill a batch of {recipe.batch}")
    train = token_windows_loader(train_windows, recipe.batch, recipe.eval_every, recipe.seed)
    test = [{"input_ids": w, "labels": w} for w in eval_windows.split(4)]
    return fit(student, train, test, recipe.fit_config(), teacher=teacher, callbacks=callbacks)
