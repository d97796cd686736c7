"""Language-model quality on the real SmolLM2-135M-Instruct: uniform SVD-LLM against loss-aware rank allocation,
and a short distillation from the dense model, scored by perplexity on two texts with greedy generations.

Texts: the pydoc help topics (:mod:`lrdlab.zoo.text`; calibration and distillation read the training split,
perplexity the validation split) and, never calibrated on, IDLE's release history that ships with CPython
(``idlelib/HISTORY.txt``). Recorded into ``data/lm_quality_smollm2.json`` by ``python -m lrdlab.paper.lm_quality``.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lrdlab.finetune.loop import evaluate
from lrdlab.lowrank.apply import set_module
from lrdlab.lowrank.calibration_fit import calibrated_layer
from lrdlab.lowrank.data_aware import DEFAULT_RIDGE
from lrdlab.lowrank.plan import Plan

SEQ_LEN = 256
PROMPTS = ("The Python programming language is", "Once upon a time, there was a little",
           "To read a file line by line in Python, you")


def second_text_path() -> Path:
    """IDLE's release history as CPython ships it (English prose the model never calibrates on)."""
    import idlelib

    return Path(idlelib.__file__).parent / "HISTORY.txt"


def text_ids(tokenizer: Any, which: str) -> Tensor:
    """Token ids of ``"train"`` / ``"validation"`` (the pydoc corpus's splits) or ``"history"`` (IDLE's history)."""
    from lrdlab.zoo.text import corpus_text

    if which == "history":
        text = second_text_path().read_text(encoding="utf-8")
    else:
        raw = corpus_text().encode("utf-8")
        cut = int(len(raw) * 0.9)
        text = (raw[:cut] if which == "train" else raw[cut:]).decode("utf-8", errors="ignore")
    return torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long)


def windows(ids: Tensor, count: int | None = None, seq_len: int = SEQ_LEN) -> Tensor:
    """The first ``count`` non-overlapping ``seq_len``-token windows ``[count, seq_len]`` (all when None)."""
    usable = len(ids) // seq_len
    n = usable if count is None else min(count, usable)
    return ids[: n * seq_len].reshape(n, seq_len)


def token_batches(win: Tensor, batch: int) -> list[dict[str, Tensor]]:
    """``{"input_ids", "labels"}`` batches of ``batch`` windows (what ``fit`` and ``evaluate`` take)."""
    return [{"input_ids": w, "labels": w} for w in win.split(batch)]


def perplexity(model: nn.Module, win: Tensor, batch: int = 4) -> float:
    """Next-token perplexity of ``model`` over the windows (each window scored on its own)."""
    return float(evaluate(model, token_batches(win, batch))["perplexity"])


@torch.no_grad()
def decompose_from_moments(model: nn.Module, plan: Plan, moments: Mapping, ridge: float = DEFAULT_RIDGE) -> nn.Module:
    """A copy of ``model`` decomposed by ``plan`` with each layer fitted to its one-shot input moments: what
    ``decompose(model, plan, calibration=batches, mode="one-shot")`` builds, with the statistics pass reused."""
    work = copy.deepcopy(model).eval()
    for row in plan.decomposed_layers:
        method, ranks = row.spec
        set_module(work, row.name, calibrated_layer(work.get_submodule(row.name), method, tuple(ranks),
                                                    moments[row.name], ridge, row.branches, row.name))
    return work


@torch.no_grad()
def generations(model: nn.Module, tokenizer: Any, prompts: Sequence[str] = PROMPTS, tokens: int = 30) -> list[str]:
    """Greedy continuations of ``prompts`` (``tokens`` new tokens each)."""
    out = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        gen = model.generate(ids, max_new_tokens=tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        out.append(tokenizer.decode(gen[0, ids.shape[1]:], skip_special_tokens=True))
    return out


def rank_summary(plan: Plan) -> dict[str, Any]:
    """Planned ranks per layer type (min, mean, max) and the decoder Linears' parameters before and after."""
    by_type: dict[str, list[int]] = {}
    for row in plan.decomposed_layers:
        by_type.setdefault(row.name.rsplit(".", 1)[-1], []).append(row.spec[1][0])
    before = sum(r.params_before for r in plan.layers if r.decomposed)
    after = sum(r.params_after for r in plan.layers if r.decomposed)
    return {"params_before": before, "params_after": after, "ranks_by_type": {
        k: [min(v), round(sum(v) / len(v), 1), max(v)] for k, v in by_type.items()}}


def take(iterable, n):
    return list(itertools.islice(iterable, n))
