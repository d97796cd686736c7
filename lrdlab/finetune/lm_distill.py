"""Distillation of a decomposed causal LM from its dense original: KL on the logits (optionally blended with the
next-token loss) over token windows, with a held-out perplexity curve (:func:`distill_language_model`, through
:func:`lrdlab.fit`). The measured recipe and its curves: ``data/lm_distill_smollm2.json``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, RandomSampler
from tqdm.auto import tqdm

from lrdlab.finetune.fit_config import FitConfig, check_choice, check_count, check_number, check_type
from lrdlab.finetune.loop import fit
from lrdlab.lowrank.layers import LowRankLayer

TRAINABLE = ("factors", "factors_norms", "all_but_embeddings", "all")


@dataclass(frozen=True)
class LMDistillation:
    """A short distillation of a decomposed causal LM from its dense original (:func:`distill_language_model`).

    ``steps`` AdamW steps (no weight decay) of ``batch`` windows each, drawn at random from the training windows;
    the held-out perplexity is measured every ``eval_every`` steps (and before the first): the curve.
    ``lr``: the peak learning rate, reached after a linear ``warmup`` (a fraction of the steps), then held
    (``schedule="constant"``) or annealed to zero (``"cosine"``). The loss: ``(1 - lm_weight)·T²·KL`` of the
    teacher's and the student's next-token distributions at temperature ``temperature``, plus ``lm_weight`` times
    the next-token cross-entropy. ``trainable``: which of the student's parameters train — ``"factors"`` (those of
    its decomposed layers), ``"factors_norms"`` (also every 1-D parameter: norm scales, biases),
    ``"all_but_embeddings"`` (all but the ``nn.Embedding`` tables: the token table stays the dense model's, and
    so does an ``lm_head`` tied to it) or ``"all"``; the others are frozen for the run and the user's
    ``requires_grad`` is restored after it.
    The defaults are the recipe ``data/lm_distill_smollm2.json`` records (with its tuning notes).
    """

    steps: int = 180
    batch: int = 2
    eval_every: int = 60
    lr: float = 1e-4
    warmup: float = 0.1
    schedule: str = "cosine"
    temperature: float = 1.0
    lm_weight: float = 0.0
    trainable: str = "all"
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
        check_number(me, "lr", self.lr, lambda v: v > 0, "a number > 0", 5e-4)
        check_number(me, "warmup", self.warmup, lambda v: 0 <= v < 1, "a fraction of the steps in [0, 1)", 0.05)
        check_choice(me, "schedule", self.schedule, ("cosine", "constant"))
        check_number(me, "temperature", self.temperature, lambda v: v > 0, "a number > 0", 1.0)
        check_number(me, "lm_weight", self.lm_weight, lambda v: 0 <= v <= 1,
                     "in [0, 1] (the next-token loss's share; 0 is pure KL)", 0.0)
        check_choice(me, "trainable", self.trainable, TRAINABLE)
        if self.clip_grad_norm is not None:
            check_number(me, "clip_grad_norm", self.clip_grad_norm, lambda v: v > 0,
                         "a number > 0, or None for no clipping", 1.0)
        check_count(me, "seed", self.seed, 0)
        check_type(me, "label", self.label, str, "distill")
        check_type(me, "progress", self.progress, bool, False)

    def fit_config(self) -> FitConfig:
        """The :class:`FitConfig` ``fit`` runs: one 'epoch' per evaluation interval."""
        return FitConfig(epochs=self.steps // self.eval_every, lr=self.lr, optimizer="adamw", weight_decay=0.0,
                         schedule=self.schedule, warmup=self.warmup, distill_alpha=1.0 - self.lm_weight,
                         distill_temperature=self.temperature, clip_grad_norm=self.clip_grad_norm, seed=self.seed,
                         evaluate_start=True, label=self.label, progress=self.progress)


def trainable_parameters(model: nn.Module, which: str) -> list[nn.Parameter]:
    """The parameters of ``model`` that ``LMDistillation(trainable=which)`` trains (see :class:`LMDistillation`)."""
    check_choice("LMDistillation", "trainable", which, TRAINABLE)
    if which == "all":
        return list(model.parameters())
    if which == "all_but_embeddings":
        tables = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
        return [p for p in model.parameters() if id(p) not in tables]
    factors = {id(p) for m in model.modules() if isinstance(m, LowRankLayer) for p in m.parameters()}
    if not factors:
        raise ValueError(f"LMDistillation(trainable={which!r}): the student has no decomposed layer; decompose it "
                         f"first or train every parameter with LMDistillation(trainable='all')")
    return [p for p in model.parameters() if id(p) in factors or (which == "factors_norms" and p.ndim == 1)]


@contextmanager
def training_only(model: nn.Module, params: list[nn.Parameter]) -> Iterator[None]:
    """Within the block only ``params`` of ``model`` require grad; every flag is restored after it."""
    saved = [(p, p.requires_grad) for p in model.parameters()]
    keep = {id(p) for p in params}
    try:
        for p, _ in saved:
            p.requires_grad_(id(p) in keep)
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


def token_windows_loader(windows: Tensor, batch: int, batches: int, seed: int = 0) -> DataLoader:
    """``batches`` batches of ``batch`` windows ``{"input_ids", "labels"}``, drawn at random (seeded) from
    ``windows`` ``[N, T]`` afresh on every pass."""
    if windows.ndim != 2 or windows.is_floating_point():
        raise ValueError(f"windows must be token ids [N, T] (got {tuple(windows.shape)} {windows.dtype})")
    data = [{"input_ids": w, "labels": w} for w in windows]
    sampler = RandomSampler(data, replacement=False, num_samples=batch * batches,
                            generator=torch.Generator().manual_seed(seed))
    return DataLoader(data, batch_size=batch, sampler=sampler)  # type: ignore[arg-type]


@torch.no_grad()
def teacher_windows(teacher: nn.Module, count: int, length: int, *, batch: int = 16, top_p: float = 0.95,
                    seed: int = 0, progress: bool = True) -> Tensor:
    """``count`` token windows ``[count, length]`` sampled from the causal LM ``teacher`` (a transformers
    model: ``generate`` from its BOS token, nucleus ``top_p``; the same ``seed`` and ``batch`` give the same
    windows): text on which to distil a student beside the calibration text, so that it learns the teacher's
    whole distribution rather than one corpus's (data-free distillation, as LLM-QAT does). The teacher and the
    caller's random stream are left as they were."""
    check_count("teacher_windows", "count", count)
    check_count("teacher_windows", "length", length)
    check_count("teacher_windows", "batch", batch)
    check_number("teacher_windows", "top_p", top_p, lambda v: 0 < v <= 1, "in (0, 1]", 0.95)
    generate = getattr(teacher, "generate", None)
    config = getattr(teacher, "generation_config", None)
    start = getattr(config, "bos_token_id", None)
    if start is None:
        start = getattr(config, "eos_token_id", None)
    if not callable(generate) or not isinstance(start, int):
        raise ValueError(f"teacher_windows: {type(teacher).__name__} has no generate() and BOS token id; "
                         f"sample with a transformers causal LM or distil on text windows only")
    device = next(teacher.parameters()).device
    was_training = teacher.training
    teacher.eval()
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    out = []
    try:
        for done in tqdm(range(0, count, batch), desc="teacher samples", leave=False, disable=not progress):
            ids = torch.full((min(batch, count - done), 1), start, dtype=torch.long, device=device)
            sample = generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, top_p=top_p, top_k=0,
                              temperature=1.0, max_new_tokens=length, min_new_tokens=length,
                              pad_token_id=start)
            out.append(sample[:, -length:].cpu())
    finally:
        torch.random.set_rng_state(generator_state)
        teacher.train(was_training)
    return torch.cat(out)


def distill_language_model(student: nn.Module, teacher: nn.Module, train_windows: Tensor, eval_windows: Tensor,
                           recipe: LMDistillation | None = None,
                           callbacks: Iterable[Callable[[dict[str, Any]], None]] = ()) -> pd.DataFrame:
    """Distil ``student`` (trained in place) from ``teacher`` (never trained) on ``train_windows`` with
    :func:`lrdlab.fit`; returns its history, one row per evaluation, with the ``perplexity`` on ``eval_windows``
    (the curve), the cumulative training seconds ``wall_s`` and the ``lr`` (``callbacks`` get each row as it comes,
    as in ``fit``). Keep ``eval_windows`` out of ``train_windows``."""
    recipe = LMDistillation() if recipe is None else recipe
    if not isinstance(recipe, LMDistillation):
        raise ValueError(f"recipe must be an LMDistillation (got {type(recipe).__name__}); "
                         f"e.g. LMDistillation(steps=80)")
    if student is teacher:
        raise ValueError("the student is the teacher: distil a decomposed copy, e.g. decompose(model, plan)")
    if len(train_windows) < recipe.batch:
        raise ValueError(f"{len(train_windows)} training windows cannot fill a batch of {recipe.batch}; "
                         f"LMDistillation(batch={max(1, len(train_windows))}) or more windows")
    params = trainable_parameters(student, recipe.trainable)
    train = token_windows_loader(train_windows, recipe.batch, recipe.eval_every, recipe.seed)
    test = [{"input_ids": w, "labels": w} for w in eval_windows.split(4)]
    with training_only(student, params):
        return fit(student, train, test, recipe.fit_config(), teacher=teacher, callbacks=callbacks)
