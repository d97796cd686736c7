"""Prefill and decode of any causal LM, dense against its weights-only decomposition, at each thread count.

:func:`decode_table` takes the user's model (a Hugging Face causal LM: a Llama from a config, a checkpoint folder,
a GGUF file, ``lrdlab.pretrained("smollm2_135m")``) and a :class:`DecodeBench`; each row is one phase timed by
:func:`lrdlab.measure.decode.compare_phase`. With ``lm_head=True`` a tied output head is untied and decomposed too
(:mod:`lrdlab.lowrank.lm_head`), the input embedding kept. ``layout="gemv"`` stores the decomposed model's
widening factors for one-token decode (:func:`lrdlab.lowrank.gemv_layout.gemv_layout`); ``dense_layout="gemv"``
times a copy of the dense model with every widening Linear stored so too, a like-for-like baseline. The record
names the compute mode that ran (:func:`lrdlab.measure.compute.compute_info`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from lrdlab.lowrank.decompose import decompose
from lrdlab.lowrank.gemv_layout import gemv_layout
from lrdlab.lowrank.lm_head import plan_untied_lm_head, tied_lm_head
from lrdlab.lowrank.plan import Plan, Ratio, make_plan
from lrdlab.measure.compute import available_cores, compute_info
from lrdlab.measure.counting import count_params
from lrdlab.measure.decode import compare_phase
from lrdlab.measure.decode_profile import decode_profile
from lrdlab.measure.decode_search import TokenShapeSearch, search_at_token_shape
from lrdlab.measure.records import StudyRecord

LAYOUTS = ("gemv", "as-built")  # the decomposed model's factors: stored for one-token decode, or as decompose builds
DENSE_LAYOUTS = ("as-loaded", "gemv")  # the dense model: as the user has it, or its widening Linears as above


@dataclass(frozen=True)
class DecodeBench:
    """What :func:`decode_table` times: the ratio, thread counts (0: all cores), rank granularities (1: unrounded),
    rank searches at token shapes, prompt length, the second decode batch, tokens per decode call, the decode
    context, interleaved rounds, whether a tied ``lm_head`` is untied and decomposed, and the weight layouts
    (:data:`LAYOUTS`, :data:`DENSE_LAYOUTS`); ``profile``: also profile batch-1 decode of both models
    (:func:`lrdlab.measure.decode_profile.decode_profile`, at the first thread count)."""

    ratio: float = 2.0
    threads: Sequence[int] = (1, 0)
    granularities: Sequence[int] = (1,)
    search: Sequence[TokenShapeSearch] = field(default_factory=tuple)
    prompt: int = 128
    batch: int = 8
    decode_tokens: int = 8
    context: int = 64
    rounds: int = 7
    lm_head: bool = False
    layout: str = "gemv"
    dense_layout: str = "as-loaded"
    profile: bool = False

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"DecodeBench: layout must be one of {', '.join(LAYOUTS)} (got {self.layout!r})")
        if self.dense_layout not in DENSE_LAYOUTS:
            raise ValueError(f"DecodeBench: dense_layout must be one of {', '.join(DENSE_LAYOUTS)} "
                             f"(got {self.dense_layout!r})")


def _plan(dense: nn.Module, ratio: float, granularity: int, lm_head: bool) -> tuple[nn.Module, Plan]:
    policy = Ratio(ratio, granularity=granularity)
    if lm_head and tied_lm_head(dense) is not None:
        return plan_untied_lm_head(dense, policy)
    return dense, make_plan(dense, policy)


def _laid_out(low: nn.Module, bench: DecodeBench) -> nn.Module:
    if bench.layout == "gemv":
        gemv_layout(low, "factors")
    return low


@dataclass(frozen=True)
class DecodeTable(StudyRecord):
    """What :func:`decode_table` measured: one row in ``results`` per (variant, phase, batch, threads), the models'
    parameters and plan, the rank searches (``searched``) and decode profiles (``profile``) when asked, and the
    :class:`DecodeBench` it ran (``bench``, its searches left out). A table of the rows in a notebook;
    :meth:`to_dict` is the recorded JSON form (``searched`` and ``profile`` only when present)."""

    COLUMNS = ("granularity", "searched", "phase", "batch", "threads", "dense_tokens_s", "decomposed_tokens_s",
               "speedup", "ci_low", "ci_high", "bytes_ideal")

    ratio: float
    lm_head_decomposed: bool
    dense_params: int
    decomposed_params: int
    plan_summary: str
    kept_layers: int
    decomposed: list[dict[str, Any]]
    searched: list[dict[str, Any]]
    profile: dict[str, dict[str, Any]]
    prompt: int
    context: int
    rounds: int
    dtype: str
    results: list[dict[str, Any]]
    bench: dict[str, Any]

    def row_list(self) -> list[dict[str, Any]]:
        return list(self.results)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in super().to_dict().items() if v or k not in ("searched", "profile")}


def decode_table(dense: nn.Module, bench: DecodeBench | None = None) -> DecodeTable:
    """Prefill (``prompt`` tokens, batch 1) and decode (``decode_tokens`` per call at batch 1 and ``batch``, after a
    ``context`` prompt) of ``dense`` against its weights-only decomposition at ``ratio``, with ranks rounded to each
    granularity and searched at each of ``search``'s token shapes (``searched``: the ranks picked), for each thread
    count; the searches run at each count. ``dense`` is left as it is."""
    bench = bench or DecodeBench()
    before = torch.get_num_threads()
    planned = {g: _plan(dense, bench.ratio, g, bench.lm_head) for g in bench.granularities}
    lows = {g: _laid_out(decompose(source, plan, progress=False), bench) for g, (source, plan) in planned.items()}
    baseline = dense
    if bench.dense_layout == "gemv":
        baseline = copy.deepcopy(dense)
        gemv_layout(baseline, "all")
    results, searched = [], []
    profiles: dict[str, dict[str, Any]] = {}
    try:
        for n in bench.threads:
            torch.set_num_threads(n or available_cores())
            if bench.profile and not profiles:
                pair = {"dense": baseline, "decomposed": next(iter(lows.values()))}
                profiles = {name: {"threads": torch.get_num_threads(),
                                   **decode_profile(m, 1, bench.context, bench.decode_tokens).to_dict()}
                            for name, m in pair.items()}
            variants: list[tuple[dict[str, Any], nn.Module]] = [({"granularity": g}, low) for g, low in lows.items()]
            for options in bench.search:
                source, plan = planned.get(1) or _plan(dense, bench.ratio, 1, bench.lm_head)
                found = search_at_token_shape(source, plan, options)
                variants.append(({"granularity": options.config.granularity, "searched": options.shape},
                                 _laid_out(decompose(source, found.plan, progress=False), bench)))
                searched.append({**found.record(), "params": count_params(variants[-1][1])})
            for tags, low in variants:
                for phase, b, tokens in (("prefill", 1, bench.prompt), ("decode", 1, bench.decode_tokens),
                                         ("decode", bench.batch, bench.decode_tokens)):
                    row = asdict(compare_phase(baseline, low, phase, b, tokens, context=bench.context,
                                               rounds=bench.rounds))
                    results.append({**row, **tags, "compute": compute_info().to_dict()})
    finally:
        torch.set_num_threads(before)
    first = next(iter(planned))
    plan = planned[first][1]
    return DecodeTable(
        bench.ratio, bool(bench.lm_head and "untied" in plan.settings), count_params(dense), count_params(lows[first]),
        plan.summary(), len(plan.layers) - len(plan.decomposed_layers),
        [{"granularity": g, "params": count_params(lows[g]), "kept_layers": len(p.layers) - len(p.decomposed_layers)}
         for g, (_, p) in planned.items()], searched, profiles, bench.prompt, bench.context, bench.rounds,
        str(next(dense.parameters()).dtype).removeprefix("torch."), results,
        {k: v for k, v in asdict(bench).items() if k != "search"})
