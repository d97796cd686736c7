"""Measured rank optimization: a noise-proof search (default) and P1's Algorithm 1 (``method="paper"``).

Per decomposed layer of a Plan: time the original layer (T) on its real input shape and the
decomposed layer at ranks r = R, R−g, … down to ``lower``·R, each in ``rounds`` interleaved passes
(each pass in a fresh random order, so neither drift nor a slow first slot draws a step).

- ``method="paper"`` (P1 Algorithm 1, for the reproduction): pick the rank just below the largest
  drop in time, argmax_r [t(r⁺) − t(r)] over the per-rank medians, and keep the original layer
  ("ORG") when that rank is not faster than T. One round by default, as the paper times it.
- ``method="robust"`` (default): fit a step model to the whole rank curve (:func:`stats.fit_steps`)
  whose steps must exceed the noise measured from the rounds' spread; take the rank just below the
  largest significant step down, re-time its neighbours to place the step exactly (drift-free:
  :func:`stats.place_step`), then confirm the winner in a fresh interleaved run against the target
  rank and the original layer, with 95% bootstrap intervals of the per-round ratios. The winner is
  kept only when it is faster than the target with confidence (else the target rank), and a
  decomposition only when it beats the original with confidence (else ORG). No step → the target
  rank, confirmed against the original.

Layers with identical shapes are timed once; the search timings persist in the one
:class:`~lrdlab.measure.cache.TimeCache` (samples and spread; too-noisy entries are re-measured).
The confirmation run is never cached. Timing uses random weights of the right shapes: the time of
a rank does not depend on the weights' values. ``python -m tools.record speed`` regenerates the recorded
benchmarks (tools/record/speed.py in the checkout).
"""

from __future__ import annotations

import copy
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from lrdlab.lowrank.decompose import check_plan
from lrdlab.lowrank.layers import build, describe
from lrdlab.lowrank.plan import Plan, named_layers, params_of
from lrdlab.measure import stats
from lrdlab.measure import timing as measure
from lrdlab.measure.cache import TimeCache, shape_key, spread
from lrdlab.measure.interleave import Rounds, interleave
from lrdlab.measure.machine import device_name, machine_info
from lrdlab.measure.rank_candidates import (  # noqa: F401
    SearchSpace,
    candidate_ranks,
    pick_rank,
    rank_label,
    scaled_ranks,
    show_ranks,
)
from lrdlab.measure.search_config import SearchConfig
from lrdlab.measure.shapes import layer_input_shapes
from lrdlab.measure.stats import SpeedUp

TimeFn = Callable[[nn.Module, tuple[int, ...]], float]
METHODS = ("robust", "paper")
DEFAULT_ROUNDS = {"robust": 3, "paper": 1}


def robust_candidate(samples: Mapping[int, Sequence[float]], min_step: float = 0.02) -> tuple[int, dict[str, Any]]:
    """The rank just below the largest significant step down of a step model of the whole rank curve.

    ``samples`` maps rank → its timing samples (one per round). The noise of a rank's median is the
    larger of (a) the rounds' spread (robust sigma / √rounds) and (b) the robust spread of
    neighbouring differences, so neither a quiet-looking curve nor one spike fakes a step. Returns
    (rank, info) with info: sigma (relative), changes (first rank of each new run), levels (fitted,
    per searched rank, descending) and step ``(high, low)`` levels of the chosen step (None: no step,
    the target rank is returned).
    """
    if not samples:
        raise ValueError("empty rank trace")
    ranks = sorted(samples, reverse=True)
    medians = np.array([statistics.median(samples[r]) for r in ranks])
    n = min(len(samples[r]) for r in ranks)
    sig_rounds = stats.curve_noise([samples[r] for r in ranks]) * 1.2533 / math.sqrt(max(n, 1))
    sig_neighbours = stats.robust_sigma(np.diff(medians / np.median(medians))) / math.sqrt(2)
    sigma = max(sig_rounds, sig_neighbours)
    changes = stats.fit_steps(medians, sigma, min_step=min_step)
    fitted = stats.step_levels(medians, changes)
    best, drop, step = ranks[0], 0.0, None
    for i, c in enumerate(changes):
        d = fitted[i] - fitted[i + 1]  # run of higher ranks minus the run below it
        if d > drop:
            best, drop, step = ranks[c], d, (fitted[i], fitted[i + 1])
    edges = [0, *changes, len(ranks)]
    per_rank = [lvl for lvl, a, b in zip(fitted, edges, edges[1:]) for _ in range(b - a)]
    return best, {"sigma": sigma, "changes": [ranks[c] for c in changes], "levels": per_rank, "step": step}


def default_time_fn(device: str = "cpu", backward: bool = False, warmup: int = 3, repeats: int = 10,
                    dtype: str | None = None) -> TimeFn:
    """time_layer with fixed settings: (module, input_shape) → median seconds."""
    return partial(measure.time_layer, device=device, backward=backward, warmup=warmup, repeats=repeats, dtype=dtype)


def interleaved(modules: dict[Any, nn.Module], shape: tuple[int, ...], time_fn: TimeFn, rounds: int,
                samples: dict[Any, list[float]] | None = None, bar: Any = None) -> dict[Any, list[float]]:
    """Time every module once per round in :func:`~lrdlab.measure.interleave.interleave`'s shuffled order;
    appends to ``samples`` (returned). ``bar`` (tqdm) advances once per timed module."""
    steps = {label: partial(time_fn, m, shape) for label, m in modules.items()}
    on_step = None if bar is None else (lambda rank_label: bar.update())
    return interleave(steps, rounds, order="shuffle", into=Rounds(samples if samples is not None else {}, "shuffle"),
                      on_step=on_step).times


# --- one layer ---------------------------------------------------------------------------------------


@dataclass
class LayerSearch:
    """What was measured for one layer: the original's and every searched rank's samples (seconds)."""

    module: nn.Module
    method: str
    branches: int
    input_shape: tuple[int, ...]
    full: dict[int, tuple[int, ...]]
    original: list[float]
    samples: dict[int, list[float]]
    built: dict[int, nn.Module] = field(default_factory=dict, repr=False)

    @property
    def T(self) -> float:
        return statistics.median(self.original)

    def trace(self) -> dict[int, float]:
        return {r: statistics.median(s) for r, s in self.samples.items()}

    def labelled(self) -> dict[str, list[float]]:
        """Samples by cache label: ``original`` and the ranks' labels."""
        return {"original": self.original, **{rank_label(self.full[r]): s for r, s in self.samples.items()}}

    def extend(self, time_fn: TimeFn, rounds: int) -> None:
        """``rounds`` more interleaved passes over the original and every searched rank."""
        more = interleaved({None: self.module, **{r: self.layer(r) for r in self.samples}}, self.input_shape,
                           time_fn, rounds)
        self.original += more.pop(None)
        for r, s in more.items():
            self.samples[r] += s

    def layer(self, r: int | None) -> nn.Module:
        """The original (None) or the decomposed layer at leading rank r (built once)."""
        if r is None:
            return self.module
        if r not in self.built:
            self.built[r] = build(describe(self.module), self.method, self.full[r], self.branches)
        return self.built[r]


def search_layer(
    module: nn.Module, space: SearchSpace, input_shape: Sequence[int], time_fn: TimeFn, *, rounds: int = 3,
    cache: TimeCache | None = None, key: str | None = None, progress: bool = False, desc: str = "",
) -> LayerSearch:
    """Time the original layer and each rank of ``space`` in ``rounds`` interleaved passes.

    Samples found in ``cache`` under ``key`` (and not too noisy) are not re-measured; fresh ones are stored.
    """
    if not isinstance(space, SearchSpace):
        raise ValueError(f"space must be a SearchSpace, got {type(space).__name__}; "
                         f"e.g. SearchSpace('tucker2', (64, 64), granularity=8)")
    full = space.ranks()
    leading = list(full)
    out = LayerSearch(module, space.method, space.branches, tuple(input_shape), full, [], {})
    labels: dict[str, int | None] = {"original": None, **{rank_label(full[r]): r for r in leading}}
    found: dict[str, list[float]] = {}
    for label in labels:
        cached = cache.get(key, label) if cache is not None and key is not None else None
        if cached is not None:
            found[label] = cached
    todo = {label: out.layer(r) for label, r in labels.items() if label not in found}
    if todo:
        bar = tqdm(total=rounds * len(todo), desc=desc or "ranks", disable=not progress, leave=False)
        fresh = interleaved(todo, out.input_shape, time_fn, rounds, bar=bar)
        bar.close()
        for label, s in fresh.items():
            found[label] = s
            if cache is not None and key is not None:
                cache.put(key, label, s)
    out.original = found["original"]
    out.samples = {r: found[rank_label(full[r])] for r in leading}
    return out


def locate(search: LayerSearch, time_fn: TimeFn, min_step: float = 0.02, max_rounds: int = 9,
           resolution: float = 0.03, refine_rounds: int = 15) -> tuple[int, dict[str, Any]]:
    """The robust candidate of one layer: step model, more rounds while the curve is too noisy, refinement.

    While no significant step is found and a rank's median is noisier than ``resolution`` (relative),
    two more interleaved rounds of every rank (and the original) are added, up to ``max_rounds``. A
    found step is then placed exactly by :func:`_refine` in ``refine_rounds`` fresh rounds of its
    neighbours (tests/measure/test_rank_search.py plants a cliff under a drifting fake timer: fewer
    rounds find it less often). Returns (rank, step-model info).
    """
    while True:
        cand, fit = robust_candidate(search.samples, min_step)
        if fit["step"] is not None or fit["sigma"] <= resolution or len(search.original) >= max_rounds:
            break
        search.extend(time_fn, 2)
    if fit["step"] is not None:
        cand = _refine(search, cand, time_fn, refine_rounds)
    return cand, fit


def _refine(search: LayerSearch, r: int, time_fn: TimeFn, rounds: int, width: int = 3) -> int:
    """Place a step exactly: re-time ``width`` ranks each side of r in fresh interleaved rounds, then fit
    the boundary inside that window from those rounds alone (:func:`stats.place_step`, drift-free).

    Returns the highest rank of the low side (r itself when the window shows no step down).
    """
    ranks = sorted(search.samples, reverse=True)
    i = ranks.index(r)
    window = ranks[max(0, i - width): i + width]
    fresh = interleaved({q: search.layer(q) for q in window}, search.input_shape, time_fn, rounds)
    k = stats.place_step([fresh[q] for q in window])
    return r if k is None else window[k]


def confirm(search: LayerSearch, candidate: int, time_fn: TimeFn, rounds: int = 10, max_rounds: int = 20,
            margin: float = 0.0) -> dict[str, Any]:
    """A fresh interleaved run of the original, the target rank and ``candidate``: the decision.

    Rounds start at ``rounds`` and grow to ``max_rounds`` while a decision's 99% interval straddles
    its threshold; the last look decides at 95%. ``candidate`` is kept only when faster than the
    target with confidence (interval of t(target)/t(candidate) above 1); the chosen rank is kept only
    when it beats the original with confidence (interval of T/t above 1/(1 − margin)), else
    ``choice`` is None (ORG).
    """
    target = max(search.samples)
    variants: dict[Any, nn.Module] = {"original": search.module, target: search.layer(target)}
    if candidate != target:
        variants[candidate] = search.layer(candidate)
    samples = interleaved(variants, search.input_shape, time_fn, rounds)
    need = 1 / (1 - margin)
    while True:  # interim looks decide only at 99%, so looking again does not inflate false wins
        final = len(samples["original"]) >= max_rounds
        level = 0.95 if final else 0.99
        vs_target = SpeedUp.of(samples[target], samples[candidate], level=level) if candidate != target else None
        choice = candidate if vs_target is not None and vs_target.ci_low > 1 else target
        vs_original = SpeedUp.of(samples["original"], samples[choice], level=level)
        undecided = (vs_target is not None and vs_target.within_noise) or \
            vs_original.ci_low <= need <= vs_original.ci_high
        if final or not undecided:
            break
        interleaved(variants, search.input_shape, time_fn, 2, samples)
    keep = vs_original.ci_low > need
    return {"candidate": candidate, "choice": choice if keep else None,
            "vs_target_pct": vs_target.to_pct() if vs_target else None,
            "vs_original_pct": vs_original.to_pct(), "rounds": len(samples["original"])}


# --- the whole plan ----------------------------------------------------------------------------------


def optimize_plan(model: nn.Module, plan: Plan, example_input_shape: Sequence[int], config: SearchConfig | None = None):
    """Measured rank search over every decomposed row of ``plan``: returns (optimized Plan, traces DataFrame).

    ``config``: how the search runs (:class:`~lrdlab.measure.search_config.SearchConfig`: ``method``
    ``"robust"``, the default, with step model, refinement and confirmation, see the module docstring, or
    ``"paper"``, P1 Algorithm 1 as written; device, ``lower``, ``rounds``, ``repeats``, ``granularity``,
    ``margin``, the cache, the timer, progress bars, …). ``example_input_shape`` is the whole model's input (batch
    first); each layer is timed on the input it really receives. Ranks searched: the plan's rank R, then multiples
    of the granularity down to ceil(``lower``·R) (Tucker: r2 scaled with r1). A decomposition must beat
    the original by the margin (paper: t < (1 − margin)·T; robust: the confidence interval of T/t above
    1/(1 − margin)). ``traces``: one row per (layer, rank) with
    layer, key, rank, ranks, time_s, time_ms, spread, samples, level_ms (robust step model), original_s,
    original_ms, drop_ms, target, r_opt (None for ORG), chosen, method.
    """
    import pandas as pd

    if config is not None and not isinstance(config, SearchConfig):
        raise ValueError(f"config must be a SearchConfig, got {type(config).__name__}; "
                         f"e.g. SearchConfig(method='paper')")
    c = config or SearchConfig()
    method, dtype, granularity, warmup, time_fn, progress = c.method, c.dtype, c.granularity, c.warmup, c.time_fn, \
        c.progress
    max_rounds, resolution, confirm_rounds, margin, min_step = c.max_rounds, c.resolution, c.confirm_rounds, \
        c.margin, c.min_step
    device, backward, lower, repeats = c.device, c.backward, c.lower, c.repeats
    rounds = DEFAULT_ROUNDS[method] if c.rounds is None else c.rounds
    check_plan(model, plan)
    shape = measure.check_shape(example_input_shape, "example_input_shape")
    dev = measure.check_device(device)
    measure.check_dtype(dtype)
    measure.check_counts(warmup, repeats)
    for name, value in (("rounds", rounds), ("confirm_rounds", confirm_rounds)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int (got {value!r})")
    candidate_ranks(1, lower, granularity)  # validates lower and granularity
    timer = time_fn or default_time_fn(str(dev), backward, warmup, repeats, dtype)
    cache = TimeCache(c.cache_dir, persist=c.cache)
    timing = {"warmup": warmup, "repeats": repeats, "rounds": rounds, "timer": "injected" if time_fn else "time_layer"}
    rows = plan.decomposed_layers
    inputs = layer_input_shapes(model, [r.name for r in rows], shape)
    new = Plan.from_dict(copy.deepcopy(plan.to_dict()))
    records, confirmations = [], {}
    layers = named_layers(model)
    decided: dict[str, dict[str, Any]] = {}  # identical layers are decided once
    for row in tqdm(rows, desc=f"rank search ({method})", disable=not progress):
        module = layers[row.name]  # attention q/k/v rows are views, not submodules
        info = describe(module)
        key = shape_key(info, inputs[row.name], row.method, str(dev), dtype, backward, timing)
        form, target = row.spec
        space = SearchSpace(form, target, lower, granularity, row.branches)
        search = search_layer(module, space, inputs[row.name], timer, rounds=rounds, cache=cache, key=key,
                              progress=progress, desc=row.name)
        trace, levels = search.trace(), {}
        if method == "paper":
            r_opt = pick_rank(trace)
            keep = trace[r_opt] < (1 - margin) * search.T
            cache.save()
        else:
            memo = f"{key}|{rank_label(row.ranks)}|{row.branches}"
            if memo not in decided:
                cand, fit = locate(search, timer, min_step, max(rounds, max_rounds), resolution)
                decided[memo] = {**confirm(search, cand, timer, confirm_rounds, 2 * confirm_rounds, margin),
                                 "sigma": fit["sigma"], "steps_at": fit["changes"],
                                 "search_rounds": len(search.original),
                                 "levels": dict(zip(sorted(search.samples, reverse=True), fit["levels"]))}
                cache.put_all(key, search.labelled())
                trace = search.trace()
            cache.save()
            result = decided[memo]
            levels = result["levels"]
            confirmations[row.name] = {k: v for k, v in result.items() if k != "levels"}
            keep = result["choice"] is not None
            r_opt = result["choice"] if keep else result["candidate"]
        out = new[row.name]
        if keep:
            chosen = list(search.full[r_opt])
            out.ranks, out.params_after = chosen, params_of(info, row.method, chosen, row.branches)
            out.reason = f"optimized: {show_ranks(row.ranks)}→{show_ranks(chosen)}"
        else:
            out.target_ranks = out.target_ranks or list(row.ranks)
            out.keep("ORG: original faster" if method == "paper" else "ORG: original not beaten with confidence")
        previous = None
        for r in sorted(trace):
            s = search.samples[r]
            records.append({
                "layer": row.name, "key": key, "rank": r, "ranks": rank_label(search.full[r]), "time_s": trace[r],
                "time_ms": 1e3 * trace[r], "spread": spread(s), "samples": len(s),
                "level_ms": 1e3 * levels[r] if r in levels else None, "original_s": search.T,
                "original_ms": 1e3 * search.T, "drop_ms": None if previous is None else 1e3 * (trace[r] - previous),
                "target": row.ranks[0], "r_opt": r_opt if keep else None, "chosen": keep and r == r_opt,
                "method": method,
            })
            previous = trace[r]
    new.settings["optimize"] = {
        "method": method, "input_shape": list(shape), "device": str(dev), "device_name": device_name(dev),
        "dtype": measure.check_dtype(dtype), "backward": backward, "lower": lower, "granularity": granularity,
        "warmup": warmup, "repeats": repeats, "rounds": rounds, "max_rounds": max_rounds,
        "resolution": resolution, "confirm_rounds": confirm_rounds, "margin": margin,
        "min_step": min_step, "torch": torch.__version__, "machine": machine_info(dev).to_dict(),
        "threads": torch.get_num_threads(),  # searched at this count: layer times at other counts differ
        "timer": "injected" if time_fn else "lrdlab.measure.time_layer (median)",
        "cache_hits": cache.hits, "cache_misses": cache.misses, "cache_remeasured": cache.stale,
        **({"confirmations": confirmations} if method == "robust" else {}),
    }
    return new, pd.DataFrame(records)


def rank_table(plan: Plan, optimized: Plan):
    """Paper Table 1 layout: layer, C, S, the plan's (2x) rank and the optimized rank (or ORG), every layer."""
    import pandas as pd

    rows = []
    for row in plan.decomposed_layers:
        opt = optimized[row.name]
        rows.append({
            "layer": row.name, "C": row.in_channels, "S": row.out_channels,
            "2x rank": show_ranks(row.ranks or []),
            "optimized": show_ranks(opt.ranks or []) if opt.decomposed else "ORG",
        })
    return pd.DataFrame(rows, columns=["layer", "C", "S", "2x rank", "optimized"])
