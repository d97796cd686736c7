"""Where a language model spends its time: prefill (a prompt of P tokens) and decode (one token at a time with
a KV cache), dense against decomposed, timed interleaved with 95% intervals.

Prefill multiplies every weight by P token vectors: compute-bound, so a decomposition gains what its FLOPs
allow minus the cost of two thinner matrix products. Decode at batch 1 multiplies every weight by one vector:
the time goes into reading the weights, so the *bytes ideal* — parameter bytes read per token, dense over
decomposed (the token embedding table is not read, only one row of it) — is what a decomposition can gain.
Each speed-up is the median over rounds of the paired ratio (:meth:`lrdlab.measure.stats.SpeedUp.of`),
rounds alternating A B then B A (:func:`lrdlab.measure.interleave.interleave`); ``realised`` is
:func:`lrdlab.measure.timing.realised_fraction` of it. On a loaded machine other processes only ever add time, so
each model's fastest round (``*_ms_min``, per token step) and their ratio (``min_round_speedup``) are recorded too,
and at one thread the CPU time the timed calls spent (``*_cpu_ms``, per token step, the median round; ``cpu_speedup``
the median of the paired ratios and its interval; None at more threads): time the process waited for a core is not
in it, so it is what a loaded machine distorts least (its caches and memory bus are still shared).
"""

from __future__ import annotations

import inspect
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lrdlab.measure.compute import load_average
from lrdlab.measure.interleave import interleave
from lrdlab.measure.stats import SpeedUp
from lrdlab.measure.timing import realised_fraction, time_function


def _embedding(model: nn.Module, which: str) -> nn.Module | None:
    get = getattr(model, which, None)
    return get() if callable(get) else None


def bytes_per_token(model: nn.Module) -> int:
    """Parameter bytes a decode step reads: every parameter except the token embedding table (one row of it)."""
    emb = _embedding(model, "get_input_embeddings")
    skip = {id(emb.weight)} if isinstance(emb, nn.Embedding) else set()
    lm_head = _embedding(model, "get_output_embeddings")
    if isinstance(lm_head, nn.Linear) and isinstance(emb, nn.Embedding) and lm_head.weight is emb.weight:
        skip = set()  # tied: the head reads the whole table
    return sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in skip)


def prefill_step(model: nn.Module, batch: int, prompt: int, vocab: int, seed: int = 0) -> Callable[[], Any]:
    """One prefill of ``batch`` prompts of ``prompt`` tokens into a fresh KV cache (logits of the last position)."""
    ids = torch.randint(0, vocab, (batch, prompt), generator=torch.Generator().manual_seed(seed))
    dev = next(model.parameters()).device
    ids = ids.to(dev)

    @torch.inference_mode()
    def step() -> Any:
        return model(input_ids=ids, use_cache=True, logits_to_keep=1)

    return step


def decode_step(model: nn.Module, batch: int, context: int, tokens: int, vocab: int,
                seed: int = 0) -> Callable[[], Any]:
    """``tokens`` greedy decode steps of ``batch`` sequences after a ``context``-token prompt (prefilled once,
    untimed); each call starts again from that prompt (the cache is cropped back)."""
    from transformers import DynamicCache

    dev = next(model.parameters()).device
    ids = torch.randint(0, vocab, (batch, context), generator=torch.Generator().manual_seed(seed)).to(dev)
    cache = DynamicCache()
    key = "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"
    with torch.inference_mode():
        first = model(input_ids=ids, **{key: cache}, use_cache=True, logits_to_keep=1).logits[:, -1:].argmax(-1)

    @torch.inference_mode()
    def step() -> Any:
        token = first
        for i in range(tokens):
            pos = torch.full((batch, 1), context + i, device=dev, dtype=torch.long)
            out = model(input_ids=token, **{key: cache}, position_ids=pos, use_cache=True, logits_to_keep=1)
            token = out.logits[:, -1:].argmax(-1)
        cache.crop(-tokens)
        return token

    return step


@dataclass(frozen=True)
class PhaseResult:
    """One phase (prefill or decode at a batch size), decomposed vs dense."""

    phase: str
    batch: int
    tokens_per_call: int
    dense_tokens_s: float
    decomposed_tokens_s: float
    speedup: float
    ci_low: float
    ci_high: float
    rounds: int
    bytes_ideal: float
    realised_of_bytes_ideal: float
    dense_gb_s: float
    threads: int
    load_average: list[float] | None
    dense_ms_min: float = float("nan")
    decomposed_ms_min: float = float("nan")
    min_round_speedup: float = float("nan")
    dense_cpu_ms: float | None = None
    decomposed_cpu_ms: float | None = None
    cpu_speedup: float | None = None
    cpu_ci_low: float | None = None
    cpu_ci_high: float | None = None


def interleaved(steps: dict[str, Callable[[], Any]], rounds: int, warmup: int = 1, repeats: int = 2,
                cpu: dict[str, list[float]] | None = None) -> dict[str, list[float]]:
    """Each step's per-round median seconds, the steps run A B … then … B A in alternate rounds; ``cpu``, when
    given, receives each step's per-round median CPU seconds of this thread over the same calls."""
    def timed(name: str, fn: Callable[[], Any]) -> Callable[[], float]:
        def run() -> float:
            spent: list[float] = []

            def counted() -> Any:
                start = time.thread_time()
                out = fn()
                spent.append(time.thread_time() - start)
                return out

            wall = time_function(counted, "cpu", warmup, repeats)
            if cpu is not None:
                cpu.setdefault(name, []).append(statistics.median(spent[warmup:]))
            return statistics.median(wall)
        return run

    return interleave({n: timed(n, fn) for n, fn in steps.items()}, rounds).times


def compare_phase(dense: nn.Module, decomposed: nn.Module, phase: str, batch: int, tokens: int, *,
                  context: int = 64, rounds: int = 7, vocab: int | None = None) -> PhaseResult:
    """Time ``phase`` (``"prefill"``: ``tokens`` = prompt length; ``"decode"``: ``tokens`` new tokens per call
    after a ``context`` prompt) for both models, interleaved; the speed-up's 95% interval is bootstrapped."""
    if phase not in ("prefill", "decode"):
        raise ValueError(f"phase must be 'prefill' or 'decode', got {phase!r}")
    emb = _embedding(dense, "get_input_embeddings")
    vocab = vocab or (emb.num_embeddings if isinstance(emb, nn.Embedding) else 0)
    make = (lambda m: prefill_step(m, batch, tokens, vocab)) if phase == "prefill" else \
        (lambda m: decode_step(m, batch, context, tokens, vocab))
    cpu: dict[str, list[float]] = {}
    times = interleaved({"dense": make(dense), "decomposed": make(decomposed)}, rounds, cpu=cpu)
    up = SpeedUp.of(times["dense"], times["decomposed"])
    one_thread = torch.get_num_threads() == 1  # else the other threads' work is not in this thread's CPU time
    cpu_up = SpeedUp.of(cpu["dense"], cpu["decomposed"]) if one_thread else None
    cpu_ms = {k: 1e3 * statistics.median(v) / tokens if one_thread else None for k, v in cpu.items()}
    ideal = bytes_per_token(dense) / bytes_per_token(decomposed)
    n = batch * tokens
    dense_s = statistics.median(times["dense"])
    fastest = {name: min(t) for name, t in times.items()}
    return PhaseResult(phase, batch, tokens, n / dense_s, n / statistics.median(times["decomposed"]),
                       up.median, up.ci_low, up.ci_high, up.rounds, ideal, realised_fraction(up.median, ideal),
                       bytes_per_token(dense) * (tokens if phase == "decode" else 1) / dense_s / 1e9,
                       torch.get_num_threads(), load_average(), 1e3 * fastest["dense"] / tokens,
                       1e3 * fastest["decomposed"] / tokens, fastest["dense"] / fastest["decomposed"],
                       cpu_ms["dense"], cpu_ms["decomposed"], *((cpu_up.median, cpu_up.ci_low, cpu_up.ci_high)
                                                                if cpu_up is not None else (None,) * 3))
