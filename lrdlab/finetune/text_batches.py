"""One forward pass of ``fit``/``evaluate`` on any batch: image pairs, or language-model batches.

For a causal language model (:func:`~lrdlab.lowrank.token_batches.is_causal_lm`) a batch is token ids or a
dict (``input_ids``, ``attention_mask``, ``labels``); the model is scored on its next-token predictions, flattened
to ``[M, vocab]`` logits and ``[M]`` targets (padding and ``-100`` labels left out), so the cross-entropy,
accuracy and distillation of the loop apply unchanged and ``evaluate``'s loss is the mean next-token negative
log-likelihood (perplexity = ``exp(loss)``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from lrdlab.finetune.inputs import logits_of, split_batch
from lrdlab.lowrank.token_batches import (
    TokenBatch,
    input_embedding,
    is_causal_lm,
    model_call,
    move,
    run_model,
    token_batch,
)


def forward_batch(model: nn.Module, batch: Any, device: torch.device, index: int = 0,
                  causal: bool | None = None, where: str = "batch") -> tuple[Any, Tensor, Tensor]:
    """``(inputs, labels, logits)`` of one batch on ``device``; ``inputs`` is what a teacher needs to rerun it."""
    if causal is None:
        causal = is_causal_lm(model)
    if not causal:
        x, y = split_batch(batch)
        call, y = move(model_call(model, x), device), y.to(device, non_blocking=True)
        return call, y, logits_of(run_model(model, call))
    emb = input_embedding(model)
    tb = token_batch(batch, emb.num_embeddings if emb is not None else None, f"{where} {index}").to(device)
    if tb.input_ids.shape[1] < 2:
        raise ValueError(f"{where} {index} has sequences of length 1: next-token prediction needs T >= 2")
    logits, labels = tb.scored(logits_of(run_model(model, tb)))
    return tb, labels, logits


def teacher_logits(teacher: nn.Module, inputs: Any) -> Tensor:
    """The teacher's logits for the same predictions ``forward_batch`` scored (its ``inputs``)."""
    logits = logits_of(run_model(teacher, inputs))
    return inputs.scored(logits)[0] if isinstance(inputs, TokenBatch) else logits
