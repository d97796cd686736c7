"""Sweeps of whole plans: speed tables, granularity sweeps and the rank-time curve (``bench_plan``: :mod:`.bench`)."""

from __future__ import annotations

import copy
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from lrdlab.lowrank.decompose import apply_structure
from lrdlab.lowrank.layers import build, describe
from lrdlab.lowrank.methods import get_method
from lrdlab.lowrank.plan import Layers, Plan, Ratio, applicable_patterns, make_plan, params_of
from lrdlab.measure import timing as measure
from lrdlab.measure.compare import compare, round_times
from lrdlab.measure.interleave import interleave
from lrdlab.measure.stats import SpeedUp
from lrdlab.measure.timing_config import TimingConfig, check_timing

PLAN_TIMING = TimingConfig(warmup=1)  # speed_table's and granularity_sweep's default
LAYER_TIMING = TimingConfig(rounds=3, warmup=3, repeats=10)  # rank_time_sweep's default: one layer, fast to time

# --- models with random weights of a plan's shapes -------------------------------------------------


def shaped_model(model: nn.Module, plan: Plan) -> nn.Module:
    """A copy of ``model`` with the plan's structure and random factor weights (for timing only)."""
    return apply_structure(copy.deepcopy(model), plan)


def model_costs(model: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    from lrdlab.measure.counting import count_flops, count_params

    return {"params": count_params(model), "flops": count_flops(model, input_shape)}


def speed_table(
    model: nn.Module,
    plans: Mapping[str, Plan | nn.Module],
    input_shape: Sequence[int],
    timing: TimingConfig = PLAN_TIMING,
    *,
    train: bool = False,
    train_timing: TimingConfig | None = None,
    progress: bool = True,
):
    """Params, FLOPs and measured speed-up vs the original of each plan, all timed interleaved.

    One row per plan (the original model is the baseline, not a row); a value may also be a ready
    model (e.g. a :func:`lrdlab.merge_bottlenecks` result), timed as it is. Columns: name, layers, params,
    flops, params_removed_pct, flops_removed_pct, ideal_speedup (original FLOPs / FLOPs), time_ms,
    original_ms, speedup (×, median of per-round ratios), speedup_pct with its 95% interval
    speedup_pct_ci_low/high, within_noise (the interval covers 0), rounds, converged, speedup_q1/q3,
    throughput, spread, realised (fraction of the FLOP-ideal gain); with ``train`` the same prefixed
    ``train_``, timed under ``train_timing`` (None: ``timing`` on the eager backend). ``timing``: a
    :class:`~lrdlab.measure.timing_config.TimingConfig` (rounds adapt as in :func:`lrdlab.measure.compare.compare`).
    """
    return speed_table_rounds(model, plans, input_shape, timing, train=train, train_timing=train_timing,
                              progress=progress)[0]


def speed_table_rounds(model: nn.Module, plans: Mapping[str, Plan | nn.Module], input_shape: Sequence[int],
                       timing: TimingConfig = PLAN_TIMING, *, train: bool = False,
                       train_timing: TimingConfig | None = None,
                       progress: bool = True) -> tuple[Any, dict[str, list[float]]]:
    """:func:`speed_table` and the inference round times (seconds) of ``"original"`` and each plan, paired by round
    (:func:`lrdlab.measure.compare.round_times`)."""
    import pandas as pd

    shape = measure.check_shape(input_shape)
    base = model_costs(model, shape)
    models: dict[str, nn.Module] = {"original": model}
    info: dict[str, dict[str, Any]] = {}
    for name, plan in plans.items():
        m = plan if isinstance(plan, nn.Module) else shaped_model(model, plan)
        models[name] = m
        layers = None if isinstance(plan, nn.Module) else len(plan.decomposed_layers)
        info[name] = {"name": name, "layers": layers, **model_costs(m, shape)}
    timing = check_timing(timing, PLAN_TIMING)
    results = {"inference": _compare(models, shape, "inference", timing, progress)}
    if train:
        train_timing = replace(timing, backend="eager") if train_timing is None else check_timing(train_timing, timing)
        results["train"] = _compare(models, shape, "train", train_timing, progress)
    rows = []
    for name, row in info.items():
        ideal = measure.ideal_speedup(base["flops"], row["flops"])
        out = {**row, "params_removed_pct": 100 * (1 - row["params"] / base["params"]),
               "flops_removed_pct": 100 * (1 - row["flops"] / base["flops"]), "ideal_speedup": ideal}
        for mode, df in results.items():
            out.update(_speed_columns(df, name, "" if mode == "inference" else "train_", ideal))
        rows.append(out)
    return pd.DataFrame(rows), round_times(results["inference"])


def granularity_plans(model: nn.Module, ratio: float = 2, granularities: Sequence[int] = (1, 2, 4, 8, 16, 32, 64),
                      exclude: Sequence[str] | None = None, *, rounding: str = "down",
                      model_name: str | None = None) -> dict[str, Plan]:
    """``{"g=G": plan}``: a ratio plan with ranks rounded (``rounding``, default down) to multiples of each G."""
    exclude = applicable_patterns(model, exclude)
    return {f"g={g}": make_plan(model, Ratio(ratio, granularity=int(g), rounding=rounding),
                                Layers(exclude=exclude or None), model_name=model_name)
            for g in granularities}


def granularity_sweep(
    model: nn.Module,
    input_shape: Sequence[int],
    ratio: float = 2,
    granularities: Sequence[int] = (1, 2, 4, 8, 16, 32, 64),
    exclude: Sequence[str] | None = None,
    timing: TimingConfig = PLAN_TIMING,
    *,
    rounding: str = "down",
    train: bool = False,
    progress: bool = True,
):
    """F9: for each granularity g, a ratio plan rounded (``rounding``: down, up or nearest) to multiples of g;
    params, FLOPs and measured time.

    The original and all g are timed interleaved under ``timing`` (:func:`lrdlab.compare`). Columns: those of
    :func:`speed_table` plus ``granularity``.
    """
    plans = granularity_plans(model, ratio, granularities, exclude, rounding=rounding)
    df = speed_table(model, plans, input_shape, timing, train=train, progress=progress)
    df.insert(0, "granularity", [int(g) for g in granularities])
    return df


def _compare(models, input_shape, mode: str, timing: TimingConfig, progress: bool):
    # rounds adapt, so the bar counts them without a total
    with tqdm(desc=f"timing {len(models)} models ({mode}, {timing.backend}, ≥{timing.rounds} interleaved rounds)",
              unit="round", disable=not progress) as bar:
        return compare(models, input_shape, mode, timing, on_round=lambda _: bar.update())


def _speed_columns(df, name: str, prefix: str, ideal: float) -> dict[str, Any]:
    r = df[df["name"] == name].iloc[0]
    base = df.iloc[0]
    up = SpeedUp.from_row(r)
    pct = up.to_pct()
    return {
        f"{prefix}time_ms": 1e3 * r["median_s"], f"{prefix}original_ms": 1e3 * base["median_s"],
        f"{prefix}speedup": r["speedup_vs_first"], f"{prefix}speedup_pct": pct["median"],
        f"{prefix}speedup_pct_ci_low": pct["ci_low"], f"{prefix}speedup_pct_ci_high": pct["ci_high"],
        f"{prefix}within_noise": up.within_noise, f"{prefix}rounds": pct["rounds"],
        f"{prefix}converged": pct["converged"],
        f"{prefix}speedup_q1": r["speedup_q1"], f"{prefix}speedup_q3": r["speedup_q3"],
        f"{prefix}throughput": r["throughput"], f"{prefix}spread": r["spread"],
        f"{prefix}realised": measure.realised_fraction(r["speedup_vs_first"], ideal),
        f"{prefix}realised_ci": [measure.realised_fraction(r["speedup_ci_low"], ideal),
                                 measure.realised_fraction(r["speedup_ci_high"], ideal)],
        f"{prefix}backend": r["backend"], f"{prefix}threads": int(r["threads"]),
    }


def rank_time_sweep(
    C: int,
    S: int,
    k: int,
    ranks: Sequence[int],
    input_shape: Sequence[int],
    timing: TimingConfig = LAYER_TIMING,
    *,
    method: str = "tucker2",
    stride: int = 1,
    backward: bool = False,
    progress: bool = True,
):
    """F1/F2: time of one C→S k×k conv decomposed at each rank (Tucker-2 with r1 = r2 = r, or SVD forms).

    ``input_shape`` is the layer's input (N, C, H, W). Ranks are timed in ``timing.rounds`` interleaved
    passes in shuffled order (with the original conv in each pass; a pass's value is the median of
    ``repeats`` runs after ``warmup``; eager PyTorch on ``timing.device``, fixed rounds); per rank: median over
    the passes and quartiles. ``backward`` times forward + backward.
    Columns: rank, time_ms, time_lo_ms, time_hi_ms, original_ms, params, params_removed_pct.
    """
    import pandas as pd

    shape = measure.check_shape(input_shape)
    if shape[1] != C:
        raise ValueError(f"input_shape {shape} must have C={C} channels")
    timing = check_timing(timing, LAYER_TIMING)
    if timing.backend != "eager" or timing.channels_last:
        raise ValueError("rank_time_sweep times eager PyTorch layers: give a TimingConfig with backend='eager' and "
                         "channels_last=False")
    dev = measure.check_device(timing.device)
    rounds, warmup, repeats = timing.rounds, timing.warmup, timing.repeats
    conv = nn.Conv2d(C, S, k, stride=stride, padding=k // 2, bias=False)
    info = describe(conv)
    layers: dict[Any, nn.Module] = {"original": conv}
    for r in ranks:
        layers[r] = build(info, method, (r,) * get_method(method).n_ranks)
    steps = {name: partial(_median_s, measure.layer_step(m, shape, dev, backward, timing.dtype), dev, warmup, repeats)
             for name, m in layers.items()}
    bar = tqdm(total=rounds * len(steps), desc=f"rank sweep [{S},{C},{k},{k}]", disable=not progress)
    samples = interleave(steps, rounds, order="shuffle", on_step=lambda _name: bar.update()).times
    bar.close()
    original_ms = 1e3 * statistics.median(samples["original"])
    before = params_of(info, None, None)
    rows = []
    for r in ranks:
        q1, med, q3 = measure.quartiles(samples[r])
        after = params_of(info, method, [r] * get_method(method).n_ranks)
        rows.append({"rank": r, "time_ms": 1e3 * med, "time_lo_ms": 1e3 * q1, "time_hi_ms": 1e3 * q3,
                     "original_ms": original_ms, "params": after, "params_removed_pct": 100 * (1 - after / before)})
    return pd.DataFrame(rows)


def _median_s(step: Callable[[], Any], dev: Any, warmup: int, repeats: int) -> float:
    return statistics.median(measure.time_function(step, dev, warmup, repeats))
