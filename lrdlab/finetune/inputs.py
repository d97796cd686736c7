"""What the training loop accepts: devices, batches (pairs or dicts), model outputs and labels, checked clearly."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

INPUT_KEYS = ("input", "inputs", "x", "image", "images", "img", "pixel_values", "input_ids")
LABEL_KEYS = ("label", "labels", "target", "targets", "y")


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


def split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, labels)`` of one batch: a pair (tuple/list) or a dict with an input and a label key."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    if isinstance(batch, Mapping):
        x = next((batch[k] for k in INPUT_KEYS if k in batch), None)
        y = next((batch[k] for k in LABEL_KEYS if k in batch), None)
        if x is None or y is None:
            raise ValueError(f"a dict batch needs an input key (one of {INPUT_KEYS}) and a label key (one of "
                             f"{LABEL_KEYS}); got keys {sorted(batch)}")
        return x, y
    raise ValueError(f"batches must be (inputs, labels) pairs or dicts, got a {type(batch).__name__}; "
                     f"wrap the data set so that it yields (x, y)")


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
