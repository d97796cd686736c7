"""Measured rank optimization (paper Algorithm 1), the T1 rank table, granularity and rank-time sweeps.

Per decomposed layer of a Plan: time the original layer (T) on its real input shape, time the
decomposed layer at ranks r = R, R−g, … down to ``lower``·R, pick the rank just below the largest
drop in time (argmax_r [t(r⁺) − t(r)], r⁺ the next searched rank above r) and keep the original
layer ("ORG") when that rank is not faster than T. Layers with identical shapes are timed once;
times persist in a JSON cache so a rerun is instant. Timing uses random weights of the right
shapes: the time of a rank does not depend on the weights' values.

``lrdlab record speed`` regenerates the recorded benchmarks (lrdlab.paper.record).
"""

from __future__ import annotations

import copy
import math
import statistics
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from lrdlab.lowrank.decompose import check_plan
from lrdlab.lowrank.layers import build, describe
from lrdlab.lowrank.plan import Plan, named_layers, params_of
from lrdlab.measure import timing as measure
from lrdlab.measure.cache import AUTO, TimingCache, shape_key
from lrdlab.measure.machine import device_name
from lrdlab.measure.shapes import layer_input_shapes

TimeFn = Callable[[nn.Module, tuple[int, ...]], float]


# --- Algorithm 1 pieces ------------------------------------------------------------------------------


def candidate_ranks(R: int, lower: float = 0.75, granularity: int = 1) -> list[int]:
    """Ranks to search, descending: the target R, then multiples of ``granularity`` down to ceil(lower·R)."""
    if not isinstance(R, int) or R < 1:
        raise ValueError(f"target rank must be a positive int (got {R!r})")
    if not (0 < lower <= 1):
        raise ValueError(f"lower must be a fraction of the target rank in (0, 1] (got {lower!r})")
    if not isinstance(granularity, int) or granularity < 1:
        raise ValueError(f"granularity must be a positive int (got {granularity!r})")
    r_min = max(1, math.ceil(lower * R))
    top = (R - 1) // granularity * granularity
    return [R] + [r for r in range(top, r_min - 1, -granularity) if r >= 1]


def pick_rank(trace: dict[int, float]) -> int:
    """The rank just below the largest drop in time: argmax over searched r of t(r⁺) − t(r).

    ``trace`` maps rank → time; r⁺ is the next larger searched rank. With no positive drop the
    largest rank (the target) is kept.
    """
    if not trace:
        raise ValueError("empty rank trace")
    rs = sorted(trace, reverse=True)
    best, best_drop = rs[0], 0.0
    for hi, lo in zip(rs, rs[1:]):
        drop = trace[hi] - trace[lo]
        if drop > best_drop:
            best, best_drop = lo, drop
    return best


def scaled_ranks(target: Sequence[int], r: int, multiple: int = 1) -> tuple[int, ...]:
    """Ranks at leading rank r, the others scaled like the target (Tucker r2 = r·R2/R1; r1 = r2 when R1 = R2).

    ``multiple`` (the branches of a branched Tucker core) rounds the scaled ranks down to its multiples.
    """
    R = target[0]
    return tuple([r] + [max(multiple, round(r * t / R) // multiple * multiple) for t in target[1:]])


def _label(ranks: Sequence[int]) -> str:
    return ",".join(str(r) for r in ranks)


def _show(ranks: Sequence[int]) -> str:
    """Ranks as the paper prints them: one number when they are all equal (Tucker r1 = r2)."""
    return str(ranks[0]) if len(set(ranks)) == 1 else _label(ranks)


def default_time_fn(device: str = "cpu", backward: bool = False, warmup: int = 3, repeats: int = 10,
                    dtype: str | None = None) -> TimeFn:
    """time_layer with fixed settings: (module, input_shape) → median seconds."""
    return partial(measure.time_layer, device=device, backward=backward, warmup=warmup, repeats=repeats, dtype=dtype)


def search_layer(
    module: nn.Module,
    method: str,
    target: Sequence[int],
    input_shape: Sequence[int],
    time_fn: TimeFn,
    *,
    lower: float = 0.75,
    granularity: int = 1,
    branches: int = 1,
    rounds: int = 1,
    cache: TimingCache | None = None,
    key: str | None = None,
    progress: bool = False,
    desc: str = "",
) -> tuple[float, dict[int, float], dict[int, tuple[int, ...]]]:
    """Time the original layer and each candidate rank; returns (T, {r: t(r)}, {r: ranks}).

    With ``rounds`` > 1 the original and all ranks are timed in that many interleaved passes and
    each time is the median over passes. Times found in ``cache`` under ``key`` are not re-measured.
    """
    info = describe(module)
    leading = candidate_ranks(int(target[0]), lower, math.lcm(granularity, branches))
    full = {r: scaled_ranks(target, r, branches) for r in leading}
    labels = {"original": None, **{_label(full[r]): full[r] for r in leading}}
    times: dict[str, float] = {}
    todo = []
    for label in labels:
        cached = cache.get(key, label) if cache is not None and key is not None else None
        if cached is None:
            todo.append(label)
        else:
            times[label] = cached
    if todo:
        shape = tuple(input_shape)
        modules = {label: module if ranks is None else build(info, method, ranks, branches)
                   for label, ranks in labels.items() if label in todo}
        samples: dict[str, list[float]] = {label: [] for label in todo}
        bar = tqdm(total=rounds * len(todo), desc=desc or "ranks", disable=not progress, leave=False)
        for _ in range(rounds):
            for label in todo:
                samples[label].append(float(time_fn(modules[label], shape)))
                bar.update()
        bar.close()
        for label in todo:
            times[label] = statistics.median(samples[label])
            if cache is not None and key is not None:
                cache.put(key, label, times[label])
    trace = {r: times[_label(full[r])] for r in leading}
    return times["original"], trace, full


def optimize_plan(
    model: nn.Module,
    plan: Plan,
    example_input_shape: Sequence[int],
    *,
    device: str = "cpu",
    dtype: str | None = None,
    backward: bool = False,
    lower: float = 0.75,
    granularity: int = 1,
    warmup: int = 3,
    repeats: int = 10,
    rounds: int = 1,
    margin: float = 0.0,
    cache_dir: str | Path | None = AUTO,
    time_fn: TimeFn | None = None,
    progress: bool = True,
):
    """Algorithm 1 over every decomposed row of ``plan``: returns (optimized Plan, traces DataFrame).

    ``example_input_shape`` is the whole model's input (batch first); each layer is timed on the
    input it really receives there. Ranks searched: the plan's rank R, then multiples of
    ``granularity`` down to ceil(``lower``·R) (Tucker: r2 scaled with r1). ``backward`` times
    forward + backward (training) instead of forward only. A decomposed layer is kept only when
    t(R_opt) < (1 − ``margin``)·T, else the row becomes ``ORG: original faster``. ``time_fn``
    replaces the timer (module, input_shape) → seconds (tests); ``cache_dir=None`` disables the
    disk cache. ``traces`` has one row per (layer, rank): layer, key, rank, ranks, time_s, time_ms,
    original_s, original_ms, drop_ms, r_opt (None for ORG), chosen.
    """
    import pandas as pd

    check_plan(model, plan)
    shape = measure.check_shape(example_input_shape, "example_input_shape")
    dev = measure.check_device(device)
    measure.check_dtype(dtype)
    measure.check_counts(warmup, repeats)
    if not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be a positive int (got {rounds!r})")
    if not (0 <= margin < 1):
        raise ValueError(f"margin must be in [0, 1) (got {margin!r})")
    candidate_ranks(1, lower, granularity)  # validates lower and granularity
    timer = time_fn or default_time_fn(str(dev), backward, warmup, repeats, dtype)
    cache = TimingCache(cache_dir)
    timing = {"warmup": warmup, "repeats": repeats, "rounds": rounds, "timer": "injected" if time_fn else "time_layer"}
    rows = plan.decomposed_layers
    inputs = layer_input_shapes(model, [r.name for r in rows], shape)
    new = Plan.from_dict(copy.deepcopy(plan.to_dict()))
    records = []
    for row in tqdm(rows, desc="Algorithm 1", disable=not progress):
        module = named_layers(model)[row.name]  # attention q/k/v rows are views, not submodules
        info = describe(module)
        key = shape_key(info, inputs[row.name], row.method, str(dev), dtype, backward, timing)
        T, trace, full = search_layer(
            module, row.method, row.ranks, inputs[row.name], timer, lower=lower, granularity=granularity,
            branches=row.branches, rounds=rounds, cache=cache, key=key, progress=progress, desc=row.name,
        )
        cache.save()
        r_opt = pick_rank(trace)
        keep = trace[r_opt] < (1 - margin) * T
        out = new[row.name]
        if keep:
            chosen = list(full[r_opt])
            out.ranks, out.params_after = chosen, params_of(info, row.method, chosen, row.branches)
            out.reason = f"optimized: {_show(row.ranks)}→{_show(chosen)}"
        else:
            out.target_ranks = out.target_ranks or list(row.ranks)
            out.keep("ORG: original faster")
        previous = None
        for r in sorted(trace):
            records.append({
                "layer": row.name, "key": key, "rank": r, "ranks": _label(full[r]), "time_s": trace[r],
                "time_ms": 1e3 * trace[r], "original_s": T, "original_ms": 1e3 * T,
                "drop_ms": None if previous is None else 1e3 * (trace[r] - previous),
                "target": row.ranks[0], "r_opt": r_opt if keep else None, "chosen": keep and r == r_opt,
            })
            previous = trace[r]
    new.settings["optimize"] = {
        "input_shape": list(shape), "device": str(dev), "device_name": device_name(dev),
        "dtype": measure.check_dtype(dtype), "backward": backward, "lower": lower, "granularity": granularity,
        "warmup": warmup, "repeats": repeats, "rounds": rounds, "margin": margin, "torch": torch.__version__,
        "timer": "injected" if time_fn else "lrdlab.measure.time_layer (median)",
        "cache_hits": cache.hits, "cache_misses": cache.misses,
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
            "2x rank": _show(row.ranks), "optimized": _show(opt.ranks) if opt.decomposed else "ORG",
        })
    return pd.DataFrame(rows, columns=["layer", "C", "S", "2x rank", "optimized"])

