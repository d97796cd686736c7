"""Language-model batches: token-id tensors and dicts (``input_ids``, ``attention_mask``, ``labels``), checked.

One reader for every place that feeds a model text: calibration (:func:`calibration_ids`), ``fit`` and
``evaluate`` (:mod:`lrdlab.finetune.text_batches`); :func:`run_model` is the one adapter from a batch to a model
call. A batch is a ``[N, T]`` integer tensor of token ids, a list of equal-length id lists, an ``(input_ids,
labels)`` pair, or a dict with ``input_ids`` and optionally ``attention_mask`` and ``labels`` (``-100`` = ignored,
as in Hugging Face). Bad batches raise ``ValueError`` naming the batch before anything runs.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

IGNORE = -100  # Hugging Face's label for positions without a loss


def input_embedding(model: nn.Module) -> nn.Embedding | None:
    """The token embedding of a language model (``get_input_embeddings``, else a first module that embeds)."""
    model = getattr(model, "module", model)  # DistributedDataParallel
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    if isinstance(emb, nn.Embedding):
        return emb
    first = next((m for m in model.modules() if isinstance(m, (nn.Embedding, nn.Linear, nn.Conv2d))), None)
    return first if isinstance(first, nn.Embedding) else None


def takes_tokens(model: nn.Module) -> bool:
    """Whether ``model`` reads token ids (its input is an embedding table)."""
    return input_embedding(model) is not None


def is_causal_lm(model: nn.Module) -> bool:
    """Whether ``model`` predicts the next token (a Hugging Face model that can ``generate``, or
    ``model.lrdlab_causal_lm = True``): ``fit``/``evaluate`` then train and score next-token predictions."""
    model = getattr(model, "module", model)
    flag = getattr(model, "lrdlab_causal_lm", None)
    if flag is not None:
        return bool(flag)
    can = getattr(model, "can_generate", None)
    try:
        return callable(can) and bool(can()) and takes_tokens(model) and not getattr(getattr(model, "config", None),
                                                                  "is_encoder_decoder", False)
    except TypeError:
        return False


@dataclass(frozen=True)
class TokenBatch:
    """One checked batch: ids ``[N, T]`` (int64), an optional mask and labels of the same shape."""

    input_ids: Tensor
    attention_mask: Tensor | None = None
    labels: Tensor | None = None

    def to(self, device: torch.device) -> TokenBatch:
        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return TokenBatch(self.input_ids.to(device, non_blocking=True), move(self.attention_mask), move(self.labels))

    def kwargs(self) -> dict[str, Tensor]:
        """Keyword arguments of a Hugging Face forward (no labels: the loss is computed outside)."""
        out = {"input_ids": self.input_ids}
        if self.attention_mask is not None:
            out["attention_mask"] = self.attention_mask
        return out

    def next_token_targets(self) -> tuple[Tensor, Tensor]:
        """``(valid, targets)``: which of the ``[N, T-1]`` predictions count, and their next tokens."""
        labels = self.labels if self.labels is not None else self.input_ids
        target = labels[:, 1:]
        valid = target != IGNORE
        if self.attention_mask is not None:
            valid = valid & self.attention_mask[:, 1:].bool()
        return valid, target

    def scored(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """``(logits [M, V], targets [M])`` of the M scored next-token predictions of ``logits [N, T, V]``."""
        valid, target = self.next_token_targets()
        return logits[:, :-1][valid], target[valid]

    @property
    def tokens(self) -> int:
        return int(self.input_ids.numel() if self.attention_mask is None else self.attention_mask.sum())


def run_model(model: nn.Module, batch: Any) -> Any:
    """``model`` called on one batch, the one place that says how a batch becomes a model call (calibration,
    ``fit``, ``evaluate``, distillation): a :class:`TokenBatch` or a dict with ``input_ids`` as Hugging Face
    keyword arguments (labels left out: losses are computed outside), a tensor (images, token ids) positionally."""
    if isinstance(batch, Mapping):
        batch = token_batch(batch, None)
    if isinstance(batch, TokenBatch):
        return model(**batch.kwargs())
    return model(batch)


def _as_ids(value: Any, where: str, what: str) -> Tensor:
    if isinstance(value, Tensor):
        t = value
    elif isinstance(value, (list, tuple)):
        lengths = {len(row) for row in value if isinstance(row, (list, tuple))}
        if len(lengths) > 1:
            raise ValueError(f"{where}: {what} is a ragged list (sequence lengths {sorted(lengths)}); pad the "
                             f"sequences to one length and pass an attention_mask (0 at padding)")
        try:
            t = torch.tensor(value)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: {what} is not a list of token ids ({err})") from err
    else:
        raise ValueError(f"{where}: {what} is a {type(value).__name__}; expected token ids [N, T] (a LongTensor)")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{where}: {what} has dtype {t.dtype}; token ids must be integers (torch.long)")
    if t.ndim == 1:
        t = t[None]
    if t.ndim != 2 or t.numel() == 0:
        raise ValueError(f"{where}: {what} has shape {tuple(t.shape)}; expected token ids [N, T] with N, T >= 1")
    return t.long()


def token_batch(batch: Any, vocab: int | None, where: str = "batch") -> TokenBatch:
    """``batch`` (ids, an ``(ids, labels)`` pair, or a dict) as a checked :class:`TokenBatch`.

    Raises ``ValueError`` naming ``where`` for: a dict without ``input_ids``, ragged lists, non-integer ids,
    ids outside ``[0, vocab)``, and a mask or labels shaped unlike the ids.
    """
    mask = labels = None
    if isinstance(batch, Mapping):
        if "input_ids" not in batch:
            raise ValueError(f"{where} has no 'input_ids' (keys {sorted(map(str, batch))}); a language-model batch "
                             f"is a dict with input_ids and optionally attention_mask and labels")
        ids, mask, labels = batch["input_ids"], batch.get("attention_mask"), batch.get("labels")
    elif isinstance(batch, tuple) and len(batch) == 2 and isinstance(batch[0], Tensor):
        ids, labels = batch
    else:
        ids = batch
    t = _as_ids(ids, where, "input_ids")
    if vocab is not None and (int(t.min()) < 0 or int(t.max()) >= vocab):
        raise ValueError(f"{where}: token ids run from {int(t.min())} to {int(t.max())} but the model's vocabulary "
                         f"has {vocab} entries (0..{vocab - 1}); use the model's own tokenizer")
    extra = {}
    for name, value in (("attention_mask", mask), ("labels", labels)):
        if value is None:
            continue
        v = _as_ids(value, where, name)
        if v.shape != t.shape:
            raise ValueError(f"{where}: {name} has shape {tuple(v.shape)} but input_ids {tuple(t.shape)}")
        extra[name] = v.to(t.device)
    return TokenBatch(t, extra.get("attention_mask"), extra.get("labels"))


def calibration_ids(model: nn.Module, batches: Iterable, plan: Any = None) -> list[Tensor]:
    """The token-id tensors ``[N, T]`` of calibration ``batches`` for a language model, checked.

    Padded batches (an ``attention_mask`` with zeros) are refused: padding would enter the layers' input
    statistics; calibrate on fixed-length sequences. Warns, naming the layer, when the batches hold fewer
    tokens than a planned layer's input dimension (its whitening would rest on the ridge alone).
    """
    if batches is None or isinstance(batches, (Tensor, Mapping)):
        raise ValueError("calibration takes an iterable of batches (e.g. [input_ids] or a DataLoader of dicts with "
                         "input_ids), not one tensor or dict")
    emb = input_embedding(model)
    vocab = emb.num_embeddings if emb is not None else None
    device = emb.weight.device if emb is not None else torch.device("cpu")
    ids: list[Tensor] = []
    for i, batch in enumerate(batches):
        tb = token_batch(batch, vocab, f"calibration batch {i}")
        if tb.attention_mask is not None and not bool(tb.attention_mask.all()):
            raise ValueError(f"calibration batch {i} is padded (attention_mask has zeros): padding would enter the "
                             f"layers' input statistics; calibrate on fixed-length sequences without padding")
        if ids and tb.input_ids.shape[1] != ids[0].shape[1]:
            raise ValueError(f"calibration batch {i} has length {tb.input_ids.shape[1]} but batch 0 "
                             f"{ids[0].shape[1]}; use sequences of one length")
        ids.append(tb.input_ids.to(device))
    if not ids:
        raise ValueError("calibration got no batches; pass a few batches of token ids [N, T]")
    tokens = sum(t.numel() for t in ids)
    rows = [r for r in getattr(plan, "decomposed_layers", []) if (r.in_channels or 0) > tokens]
    if rows:
        warnings.warn(f"calibration has {tokens} tokens, fewer than layer {rows[0].name!r}'s input dimension "
                      f"{rows[0].in_channels}; pass at least {rows[0].in_channels} tokens (a few times more is "
                      f"better) so its input statistics are full rank", stacklevel=3)
    return ids
