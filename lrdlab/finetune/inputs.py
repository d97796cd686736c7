"""What the training loop accepts: devices, batches (pairs or dicts), model outputs and labels, checked clearly;
and one forward pass of ``fit``/``evaluate`` on any batch (:func:`forward_batch`).

For a causal language model (:func:`~lrdlab.lowrank.token_batches.is_causal_lm`) a batch is token ids or a
dict (``input_ids``, ``attention_mask``, ``labels``); the model is scored on its next-token predictions, flattened
to ``[M, vocab]`` logits and ``[M]`` targets (padding and ``-100`` labels left out), so the cross-entropy,
accuracy and distillation of the loop apply unchanged and ``evaluate``'s loss is the mean next-token negative
log-likelihood (perplexity = ``exp(loss)``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from lrdlab.lowrank.token_batches import (
    LABEL_KEYS,
    TokenBatch,
    input_embedding,
    is_causal_lm,
    model_call,
    move,
    run_model,
    split_labels,
    token_batch,
)


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device`` that exists on this machine, else a ValueError naming the fix."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device {device!r}; use 'cpu' or 'cuda'") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} but CUDA is not available here (torch {torch.__version__}, "
                         f"CUDA build {torch.version.cuda}); use device='cpu'")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device={str(device)!r} but this machine has {torch.cuda.device_count()} GPU(s); "
                         f"use 'cuda:0'..'cuda:{torch.cuda.device_count() - 1}'")
    return dev


def split_batch(batch: Any) -> tuple[Any, torch.Tensor]:
    """``(inputs, labels)`` of one batch: a pair (tuple/list) or a dict with a label key
    (:func:`~lrdlab.lowrank.token_batches.split_labels`; the inputs go to the model through ``run_model``)."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    inputs, labels = split_labels(batch) if isinstance(batch, Mapping) else (batch, None)
    if isinstance(batch, Mapping) and labels is None or isinstance(inputs, Mapping) and not inputs:
        raise ValueError(f"a dict batch needs an input key (the forward's argument names) and a label key "
                         f"(one of {LABEL_KEYS}); got keys {sorted(batch)}")
    if labels is None:
        raise ValueError(f"batches must be (inputs, labels) pairs or dicts, got a {type(batch).__name__}; "
                         f"wrap the data set so that it yields (x, y)")
    return inputs, labels


def logits_of(out: Any) -> torch.Tensor:
    """The class scores of a model output: a tensor, or an output with ``logits`` (Hugging Face style)."""
    if isinstance(out, torch.Tensor):
        return out
    logits = out.get("logits") if isinstance(out, Mapping) else getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    raise ValueError(f"the model returned a {type(out).__name__}, not a tensor of class scores [N, classes]; "
                     f"wrap it so that forward returns the logits")


def check_labels(logits: torch.Tensor, labels: torch.Tensor) -> None:
    if logits.dim() != 2:
        raise ValueError(f"the model returned shape {tuple(logits.shape)}; fit/evaluate need class scores [N, classes]")
    labels = labels[labels != -100]  # cross_entropy's ignore_index
    if labels.numel() and (int(labels.max()) >= logits.shape[1] or int(labels.min()) < 0):
        raise ValueError(f"labels run from {int(labels.min())} to {int(labels.max())} but the model has "
                         f"{logits.shape[1]} outputs; build it with num_classes={int(labels.max()) + 1} "
                         f"(get_model(name, num_classes=...)) or check the data set")


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
