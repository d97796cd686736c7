"""Where a decode step's time goes: the matrix products by shape, against everything else (torch.profiler).

At batch 1 every Linear is a GEMV, one ``aten::mm`` (``addmm`` with a bias) of a ``[1, in]`` row by an
``[in, out]`` matrix; a decomposed Linear is two of them. :func:`decode_profile` runs ``tokens`` greedy decode
steps (:func:`lrdlab.measure.decode.decode_step`) under the profiler and splits the operators' own CPU time into
the products, grouped by their operand shapes, and the rest (attention, norms, rotary embedding, the KV cache,
dispatch). The profiler adds a few microseconds to every operator, so the rest reads high; compare models
profiled alike.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from lrdlab.measure.decode import decode_step

PRODUCTS = ("aten::mm", "aten::addmm", "aten::mv", "aten::addmv", "aten::bmm")


@dataclass(frozen=True)
class ProductTime:
    """One operand shape's matrix products: calls and milliseconds per decode step."""

    op: str
    shapes: str
    calls: float
    ms: float


@dataclass(frozen=True)
class DecodeProfile:
    """Milliseconds per decode step (operators' own CPU time): all, the matrix products, the rest; products by
    shape, slowest first."""

    total_ms: float
    products_ms: float
    other_ms: float
    products: tuple[ProductTime, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decode_profile(model: nn.Module, batch: int = 1, context: int = 64, tokens: int = 8, vocab: int | None = None,
                   calls: int = 2, top: int = 12) -> DecodeProfile:
    """Profile ``calls`` × ``tokens`` greedy decode steps of ``model`` after a ``context``-token prompt (one
    untimed call first); the ``top`` slowest product shapes are kept."""
    from torch.profiler import ProfilerActivity, profile

    if vocab is None:
        get = getattr(model, "get_input_embeddings", None)
        emb = get() if callable(get) else None
        vocab = int(emb.num_embeddings) if isinstance(emb, nn.Embedding) else 0
    if vocab < 1 or min(batch, context, tokens, calls, top) < 1:
        raise ValueError(f"decode_profile: batch, context, tokens, calls, top and the vocabulary must be ≥ 1 (got "
                         f"{batch}, {context}, {tokens}, {calls}, {top}, vocab {vocab}); pass vocab= for a model "
                         "without an nn.Embedding input")
    step = decode_step(model, batch, context, tokens, vocab)
    step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(calls):
            step()
    steps = calls * tokens
    events = prof.key_averages(group_by_input_shape=True)
    total = sum(e.self_cpu_time_total for e in events) / 1e3 / steps
    products = sorted((ProductTime(e.key, str(e.input_shapes), e.count / steps, e.self_cpu_time_total / 1e3 / steps)
                       for e in events if e.key in PRODUCTS), key=lambda p: -p.ms)
    spent = sum(p.ms for p in products)
    return DecodeProfile(total, spent, total - spent, tuple(products[:top]))
