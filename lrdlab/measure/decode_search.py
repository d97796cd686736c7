"""The measured rank search at a language model's token shapes: decode (a GEMV at batch 1) or prefill.

A decode step multiplies every Linear by one token vector per sequence (input ``(batch, 1, in_features)``); a
prefill by the whole prompt (``(batch, prompt, in_features)``). :func:`search_at_token_shape` runs
:func:`lrdlab.measure.rank_search.optimize_plan` (its timer, interleaved rounds, noise rules and confirmation) on
each decomposed Linear of a plan at that input. An LM repeats a handful of shapes (q/o, k/v, gate/up, down,
lm_head): the layers of one shape, method and target rank share one search, timed once on a stand-in model that
holds one layer of each and calls it on the token shape.

The searched ranks are the target's and below (multiples of the search granularity down to ``lower``·R), so a
searched plan has at most the target plan's parameters. Where no rank beats the original layer with confidence
the search's own choice between the target rank and its candidate is kept, within the budget;
``keep_original=True`` keeps the original layer instead, over the budget, as ``optimize_plan`` does.

Each layer is timed alone, so a small layer's weights stay in cache between repeats, while a decode step streams
every weight from memory: the whole model's tokens/s (``lrdlab bench-lm --search decode``) is the judge.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import numbers
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lrdlab.lowrank import hf
from lrdlab.lowrank.decompose import check_plan
from lrdlab.lowrank.layers import describe
from lrdlab.lowrank.plan import LayerPlan, Plan, named_layers, params_of
from lrdlab.measure.rank_candidates import pick_rank, scaled_ranks, show_ranks
from lrdlab.measure.rank_search import optimize_plan
from lrdlab.measure.search_config import SearchConfig


def _default_config() -> SearchConfig:
    return SearchConfig(granularity=16, progress=False)


@dataclass(frozen=True)
class TokenShapeSearch:
    """How :func:`search_at_token_shape` runs.

    ``batch`` sequences of ``tokens`` tokens each: ``tokens=1`` is a decode step, the prompt length a prefill.
    ``lower``, ``rounds``, ``repeats``: as in ``optimize_plan`` (ranks down to ``lower``·R; interleaved rounds,
    default the method's; timed runs per timing). ``config``: the search's algorithm and granularity (default
    robust, ranks in multiples of 16, no progress bars). ``keep_original``: keep an original layer no rank beats
    (more parameters than the target plan). ``cache_dir``: the layer-time cache (default None: measured afresh).
    """

    batch: int = 1
    tokens: int = 1
    lower: float = 0.75
    rounds: int | None = None
    repeats: int = 10
    keep_original: bool = False
    cache_dir: str | Path | None = None
    config: SearchConfig = field(default_factory=_default_config)

    def __post_init__(self) -> None:
        for name in ("batch", "tokens", "repeats", "rounds"):
            value = getattr(self, name)
            if (value is not None or name != "rounds") and (
                    isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1):
                raise ValueError(f"TokenShapeSearch: {name} must be a positive int (got {value!r})")
        if isinstance(self.lower, bool) or not isinstance(self.lower, numbers.Real) or not 0 < self.lower <= 1:
            raise ValueError(f"TokenShapeSearch: lower must be a fraction of the target rank in (0, 1] "
                             f"(got {self.lower!r})")
        if not isinstance(self.config, SearchConfig):
            raise ValueError(f"TokenShapeSearch: config must be a SearchConfig, got {type(self.config).__name__}")
        if not isinstance(self.keep_original, bool):
            raise ValueError(f"TokenShapeSearch: keep_original must be True or False (got {self.keep_original!r})")

    @property
    def shape(self) -> str:
        """``"decode"`` (one token) or ``"prefill"``."""
        return "decode" if self.tokens == 1 else "prefill"


@dataclass(frozen=True)
class ShapeChoice:
    """One searched shape: the layers sharing it, its target ranks and the ranks chosen (None: the original)."""

    layers: tuple[str, ...]
    in_features: int
    out_features: int
    method: str
    target: tuple[int, ...]
    ranks: tuple[int, ...] | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"layers": layer_patterns(self.layers), "count": len(self.layers), "in_features": self.in_features,
                "out_features": self.out_features, "method": self.method, "target": list(self.target),
                "ranks": None if self.ranks is None else list(self.ranks), "reason": self.reason}


@dataclass
class SearchedPlan:
    """A plan searched at a token shape, the search's traces (one row per shape and rank) and its choices."""

    plan: Plan
    traces: Any  # a pandas DataFrame, as optimize_plan returns
    shapes: list[ShapeChoice]
    options: TokenShapeSearch
    seconds: float

    def record(self) -> dict[str, Any]:
        """The recorded form: the shape searched, threads, seconds, planned parameters and each shape's ranks."""
        return {"shape": self.options.shape, "batch": self.options.batch, "tokens": self.options.tokens,
                "granularity": self.options.config.granularity, "method": self.options.config.method,
                "lower": self.options.lower, "threads": self.plan.settings["optimize"]["threads"],
                "seconds": round(self.seconds, 1),
                "planned_params": sum(r.params_after for r in self.plan.layers),
                "shapes": [s.to_dict() for s in self.shapes]}


def layer_patterns(names: Sequence[str]) -> list[str]:
    """Layer names with their block numbers as ``*``: ``model.layers.*.self_attn.q_proj``, sorted, distinct."""
    return sorted({re.sub(r"\.\d+(?=\.|$)", ".*", n) for n in names})


def choices_text(shapes: Sequence[dict[str, Any]]) -> str:
    """A record's ``shapes`` in a line: ``q_proj/o_proj 192→176, …`` (``ORG``: the original layer kept)."""
    parts = []
    for s in shapes:
        names = "/".join(dict.fromkeys(p.rsplit(".", 1)[-1] for p in s["layers"]))
        picked = "ORG" if s["ranks"] is None else show_ranks(s["ranks"])
        parts.append(f"{names} {show_ranks(s['target'])}→{picked}")
    return ", ".join(parts)


def shape_groups(model: nn.Module, plan: Plan) -> list[list[LayerPlan]]:
    """The plan's decomposed rows grouped by layer (type, sizes, bias), method, target ranks and branches, in plan
    order; a ValueError for a row that is not a Linear (only Linears see token shapes)."""
    layers = named_layers(model)
    groups: dict[tuple[Any, ...], list[LayerPlan]] = {}
    for row in plan.decomposed_layers:
        module = layers[row.name]
        if not (isinstance(module, nn.Linear) or hf.is_conv1d(module)):
            raise ValueError(f"layer {row.name!r} is a {type(module).__name__}: token shapes are for Linear layers; "
                             f"exclude it from the plan")
        info = describe(module)
        key = (json.dumps(info, sort_keys=True), row.method, tuple(row.ranks or ()), row.branches)
        groups.setdefault(key, []).append(row)
    return list(groups.values())


class _OneLayerPerShape(nn.Module):
    """The stand-in model: one layer of each shape, each called on ``(batch, tokens, in_features)``."""

    def __init__(self, layers: dict[str, nn.Module]) -> None:
        super().__init__()
        self.features: dict[str, int] = {}
        for name, module in layers.items():
            self.add_module(name, module)
            self.features[name] = int(describe(module)["in_channels"])

    def forward(self, x: torch.Tensor) -> None:  # x: (batch, tokens), only its shape and device are read
        for name, module in self.named_children():
            module(x.new_zeros(*x.shape[:2], self.features[name]))


def _within_budget(row: LayerPlan, name: str, settings: dict[str, Any], traces: Any) -> int:
    """The leading rank the search itself preferred when the original won: robust, its candidate when that beat the
    target with confidence (else the target); paper, Algorithm 1's pick."""
    confirmation = settings.get("confirmations", {}).get(name)
    target = (row.target_ranks or row.ranks or [0])[0]
    if confirmation is None:
        mine = traces[traces["layer"] == name]
        return pick_rank(dict(zip(mine["rank"], mine["time_s"])))
    beat = confirmation.get("vs_target_pct")
    return int(confirmation["candidate"]) if beat and beat["ci_low"] > 0 else int(target)


def search_at_token_shape(model: nn.Module, plan: Plan, options: TokenShapeSearch | None = None) -> SearchedPlan:
    """The measured rank search of every decomposed Linear of ``plan`` at a token shape (default: a decode step at
    batch 1), each shape searched once; returns the searched plan (at most the target's parameters unless
    ``options.keep_original``), its traces and choices."""
    opts = TokenShapeSearch() if options is None else options
    if not isinstance(opts, TokenShapeSearch):
        raise ValueError(f"options must be a TokenShapeSearch, got {type(opts).__name__}; "
                         f"e.g. TokenShapeSearch(tokens=1)")
    check_plan(model, plan)
    groups = shape_groups(model, plan)
    if not groups:
        raise ValueError("the plan decomposes no layer: there is no rank to search")
    layers = named_layers(model)
    names = [f"shape{i}" for i in range(len(groups))]
    stand_in = _OneLayerPerShape({n: layers[g[0].name] for n, g in zip(names, groups)})
    sub = Plan(plan.model, [dataclasses.replace(g[0], name=n) for n, g in zip(names, groups)],
               copy.deepcopy(plan.settings))
    t0 = time.perf_counter()
    found, traces = optimize_plan(stand_in, sub, (opts.batch, opts.tokens), dataclasses.replace(
        opts.config, lower=opts.lower, repeats=opts.repeats, rounds=opts.rounds, cache_dir=opts.cache_dir,
        cache=opts.cache_dir is not None))
    seconds = time.perf_counter() - t0
    settings = found.settings["optimize"]
    out = Plan.from_dict(copy.deepcopy(plan.to_dict()))
    shapes, labels = [], {}
    where = f"searched at {opts.shape} (batch {opts.batch}, {opts.tokens} token{'s' * (opts.tokens > 1)})"
    for name, group in zip(names, groups):
        target, row, info = group[0], found[name], describe(stand_in.get_submodule(name))
        labels[name] = ", ".join(layer_patterns([r.name for r in group]))
        if row.decomposed or not opts.keep_original:
            if row.decomposed:
                ranks, note = tuple(row.ranks or ()), ""
            else:
                leading = _within_budget(target, name, settings, traces)
                ranks = scaled_ranks(target.ranks or [leading], leading, target.branches)
                note = "; the original was not beaten with confidence, kept within the target's parameters"
            reason = f"{where}: {show_ranks(target.ranks or [])}→{show_ranks(ranks)}{note}"
            for member in group:
                new = out[member.name]
                new.ranks, new.reason = list(ranks), reason
                new.params_after = params_of(info, target.method or "", list(ranks), target.branches)
        else:
            ranks, reason = None, f"{where}: {row.reason}"
            for member in group:
                out[member.name].keep(reason)
        shapes.append(ShapeChoice(tuple(r.name for r in group), int(info["in_channels"]), int(info["out_channels"]),
                                  target.method or "", tuple(target.ranks or ()), ranks, reason))
    traces["layer"] = traces["layer"].map(labels)
    confirmations = {labels[n]: c for n, c in settings.pop("confirmations", {}).items()}
    out.settings["optimize"] = {**settings, **({"confirmations": confirmations} if confirmations else {}),
                                "token_shape": {"shape": opts.shape, "batch": opts.batch, "tokens": opts.tokens,
                                                "keep_original": opts.keep_original},
                                "shapes": [s.to_dict() for s in shapes]}
    return SearchedPlan(out, traces, shapes, opts, seconds)
