"""Language-model batches: token-id tensors and dicts (``input_ids``, ``attention_mask``, ``labels``), checked.

One reader for every place that feeds a model text: calibration (:func:`calibration_ids`), ``fit`` and
``evaluate`` (:mod:`lrdlab.finetune.inputs`); :func:`run_model` is the one adapter from a batch to a model
call. A batch is a ``[N, T]`` integer tensor of token ids, a list of equal-length id lists, an ``(input_ids,
labels)`` pair, or a dict with ``input_ids`` and optionally ``attention_mask`` and ``labels`` (``-100`` = ignored,
as in Hugging Face). Bad batches raise ``ValueError`` naming the batch before anything runs.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

IGNORE = -100  # Hugging Face's label for positions without a loss


def input_embedding(model: nn.Module) -> nn.Embedding | None:
    """The token embedding of a language model (``get_input_embeddings``, else a first module that embeds)."""
    model = getattr(model, "module", model)  # DistributedDataParallel
    get = getattr(model, "get_input_embeddings", None)
    try:
        emb = get() if callable(get) else None
    except NotImplementedError:  # transformers' models without token input (Wav2Vec2)
        emb = None
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

    def to(self, device: torch.device | str) -> TokenBatch:
        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return TokenBatch(self.input_ids.to(device, non_blocking=True), move(self.attention_mask), move(self.labels))

    def rows(self, start: int, stop: int) -> TokenBatch:
        """Rows ``start:stop`` of the batch (ids, mask and labels alike)."""
        def cut(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[start:stop]

        return TokenBatch(self.input_ids[start:stop], cut(self.attention_mask), cut(self.labels))

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


LM_KEYS = frozenset({"input_ids", "attention_mask", "labels"})
LABEL_KEYS = ("label", "labels", "target", "targets", "y")


@dataclass(frozen=True)
class ModelCall:
    """One batch as a model call: the positional and keyword arguments its forward takes."""

    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __call__(self, model: nn.Module) -> Any:
        return model(*self.args, **self.kwargs)

    def tensors(self) -> list[Tensor]:
        """Every tensor of the call (inside lists and dicts too)."""
        return _tensors((self.args, self.kwargs))

    @property
    def size(self) -> int:
        """Samples in the batch: a list's length (a list of images), else the first tensor's first dimension."""
        first = self.args[0] if self.args else next(iter(self.kwargs.values()), None)
        if isinstance(first, (list, tuple)):
            return len(first)
        found = self.tensors()
        return int(found[0].shape[0]) if found and found[0].ndim else 1

    def head(self, n: int) -> ModelCall:
        """The first ``n`` samples (each tensor's first ``n`` rows, a list's first ``n`` items)."""
        return head(self, n)

    def to(self, device: torch.device | str) -> ModelCall:
        return ModelCall(move(self.args, device), move(self.kwargs, device))


Batch = Tensor | ModelCall  # what calibration keeps of a batch: one input tensor, or the call's arguments


def _tensors(value: Any) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, Mapping):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def head(value: Any, n: int) -> Any:
    """The first ``n`` samples of a batch's inputs: a tensor's first ``n`` rows, a list's first ``n`` items, every
    tensor of a dict or :class:`ModelCall`."""
    if isinstance(value, ModelCall):
        return ModelCall(tuple(head(a, n) for a in value.args), {k: head(v, n) for k, v in value.kwargs.items()})
    if isinstance(value, Tensor):
        return value[:n] if value.ndim else value
    if isinstance(value, Mapping):
        return {k: head(v, n) for k, v in value.items()}
    return value[:n] if isinstance(value, list) else value


def samples(value: Any) -> int:
    """Samples in a batch's inputs: a list's length (a list of images), else the first tensor's first dimension."""
    if isinstance(value, ModelCall):
        return value.size
    return ModelCall((value,)).size


def move(value: Any, device: torch.device | str) -> Any:
    """``value`` (a tensor, call, or lists / tuples / dicts of them) on ``device``."""
    if isinstance(value, (Tensor, ModelCall, TokenBatch)):
        return value.to(device)
    if isinstance(value, Mapping):
        return {k: move(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(move(v, device) for v in value)
    return value


def _is_labels(value: Any, inputs: Any) -> bool:
    """Whether ``value`` reads as the labels of ``inputs``: one value per sample ``[N]`` (class ids, targets), a
    language model's labels shaped like its ids, or detection targets (dicts)."""
    if isinstance(value, Tensor):
        same = isinstance(inputs, Tensor) and value.shape == inputs.shape and not inputs.is_floating_point()
        return value.ndim <= 1 or same and not value.is_floating_point()
    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(v, Mapping) for v in value)


def split_labels(batch: Any) -> tuple[Any, Any]:
    """``(inputs, labels)`` of a batch; labels None when it has none.

    ``(x, y)`` / ``[x, y]`` pairs whose second item reads as labels (class ids, a language model's labels, detection
    targets); dicts with a label key (``label``, ``labels``, ``target``, ``targets``, ``y``); anything else is all
    inputs.
    """
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and _is_labels(batch[1], batch[0]):
        return batch[0], batch[1]
    if isinstance(batch, Mapping) and not isinstance(batch, TokenBatch):
        key = next((k for k in LABEL_KEYS if k in batch), None)
        if key is not None:
            return {k: v for k, v in batch.items() if k != key}, batch[key]
    return batch, None


def _takes_list(model: nn.Module | None) -> bool:
    """Whether the forward's first argument is a list (torchvision detection: ``images: list[Tensor]``)."""
    try:
        first = next(iter(inspect.signature(model.forward).parameters.values())) if model is not None else None
    except (TypeError, ValueError, StopIteration):
        return False
    return first is not None and "list" in str(first.annotation).lower()


def _keywords(model: nn.Module | None) -> set[str] | None:
    """The keyword names the forward takes (None: any, or unknown)."""
    try:
        params = inspect.signature(model.forward).parameters if model is not None else None
    except (TypeError, ValueError):
        return None
    if params is None or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return set(params)


def model_call(model: nn.Module | None, batch: Any) -> Tensor | ModelCall:
    """The one adapter from a batch to a model call (see :func:`_call`); one positional tensor stays a tensor."""
    call = _call(model, batch)
    if isinstance(call, ModelCall) and len(call.args) == 1 and not call.kwargs and isinstance(call.args[0], Tensor):
        return call.args[0]
    return call


def _call(model: nn.Module | None, batch: Any) -> Tensor | ModelCall:
    """The one adapter from a batch to a model call (calibration, ``fit``, ``evaluate``, distillation, BN statistics).

    Labels are left out (:func:`split_labels`): losses are computed outside. A tensor stays a tensor (one positional
    argument). A :class:`TokenBatch`, or a dict with ``input_ids`` and at most ``attention_mask``, is checked
    (:func:`token_batch`) and passed as keyword arguments. Any other dict of tensors is passed as keyword
    arguments (``pixel_values``, ``input_values``, ``input_features`` ...), unless the forward does not take its
    one key (``{"image": x}``): then positionally. A list of tensors goes as one argument to a forward that takes a
    list (torchvision detection's images); any other tuple or list is the positional arguments.
    """
    if isinstance(batch, ModelCall):
        return batch
    inputs, _ = split_labels(batch)
    if isinstance(inputs, Tensor):
        return inputs
    if isinstance(inputs, TokenBatch):
        return ModelCall((), inputs.kwargs())
    if isinstance(inputs, Mapping):
        if "input_ids" in inputs and set(inputs) <= LM_KEYS:
            return ModelCall((), token_batch(inputs, None).kwargs())
        known = _keywords(model)
        if len(inputs) == 1 and known is not None and not set(inputs) <= known:
            return ModelCall((next(iter(inputs.values())),), {})
        return ModelCall((), dict(inputs))
    if isinstance(inputs, (list, tuple)):
        if isinstance(inputs, list) and _takes_list(model):
            return ModelCall((list(inputs),), {})
        return ModelCall(tuple(inputs), {})
    return ModelCall((inputs,), {})


def run_model(model: nn.Module, batch: Any) -> Any:
    """``model`` called on one batch (:func:`model_call`): the one place that says how a batch becomes a call."""
    call = model_call(model, batch)
    return model(call) if isinstance(call, Tensor) else call(model)


def _as_ids(value: Any, where: str, what: str) -> Tensor:
    if isinstance(value, Tensor):
        t = value
    elif isinstance(value, (list, tuple)):
        lengths = {len(row) for row in value if isinstance(row, (list, tuple))}
        if len(lengths) > 1:
            fix = ("cut or pack them to one length without padding (calibration statistics must not see padding)"
                   if where.startswith("calibration") else
                   "pad the sequences to one length and pass an attention_mask (0 at padding)")
            raise ValueError(f"{where}: {what} is a ragged list (sequence lengths {sorted(lengths)}); {fix}")
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
                             f"layers' input statistics; calibration needs sequences of one length without padding "
                             f"(cut or pack the texts to one length; fit/evaluate accept padding with a mask)")
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
