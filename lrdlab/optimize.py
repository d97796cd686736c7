"""Measured rank optimization (paper Algorithm 1), the T1 rank table, granularity and rank-time sweeps.

Per decomposed layer of a Plan: time the original layer (T) on its real input shape, time the
decomposed layer at ranks r = R, R−g, … down to ``lower``·R, pick the rank just below the largest
drop in time (argmax_r [t(r⁺) − t(r)], r⁺ the next searched rank above r) and keep the original
layer ("ORG") when that rank is not faster than T. Layers with identical shapes are timed once;
times persist in a JSON cache so a rerun is instant. Timing uses random weights of the right
shapes: the time of a rank does not depend on the weights' values.

Run ``python -m lrdlab.optimize --record data/`` to regenerate the recorded benchmarks.
"""

from __future__ import annotations

import copy
import json
import math
import os
import statistics
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from . import measure
from .layers import build, describe
from .paper import PAPER_EXCLUDE
from .plan import Plan, apply_structure, check_plan, make_plan, params_of

CACHE_DIR = Path("data/cache")
TimeFn = Callable[[nn.Module, tuple[int, ...]], float]


# --- inputs of layers --------------------------------------------------------------------------------


def layer_input_shapes(model: nn.Module, names: Sequence[str], example_input_shape: Sequence[int]) -> dict:
    """The input shape each named layer sees on an example input (forward hooks; meta device, no compute)."""
    shape = measure.check_shape(example_input_shape, "example_input_shape")
    seen: dict[str, tuple[int, ...]] = {}

    def run(net: nn.Module, x: torch.Tensor) -> None:
        hooks = []
        for name in names:
            def hook(mod, args, name=name):
                seen.setdefault(name, tuple(args[0].shape))
            hooks.append(net.get_submodule(name).register_forward_pre_hook(hook))
        try:
            with torch.no_grad():
                net.eval()(x)
        finally:
            for h in hooks:
                h.remove()

    try:
        run(copy.deepcopy(model).to("meta"), torch.empty(shape, device="meta"))
    except (NotImplementedError, RuntimeError):  # an op without a meta kernel: run it for real
        seen.clear()
        run(copy.deepcopy(model).cpu(), torch.randn(shape))
    missing = [n for n in names if n not in seen]
    if missing:
        raise ValueError(f"layers {missing[:3]} were not called on an input of shape {shape}; "
                         f"they cannot be timed (unused layers: exclude them from the plan)")
    return seen


# --- the timing cache --------------------------------------------------------------------------------


def shape_key(info: dict[str, Any], input_shape: Sequence[int], method: str, device: str, dtype: str | None,
              backward: bool, timing: dict[str, Any] | None = None) -> str:
    """The cache key of one layer configuration: layer shape, input shape, method, device, dtype, batch, pass.

    ``timing`` (warm-up, repeats, rounds) is part of the key: a more careful measurement is not
    answered by a cheaper one.
    """
    dev = torch.device(device)
    return json.dumps({
        "layer": info, "input": list(input_shape), "method": method, "device": dev.type,
        "device_name": measure.device_name(dev), "dtype": measure.check_dtype(dtype), "batch": int(input_shape[0]),
        "backward": bool(backward), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "timing": timing or {},
    }, sort_keys=True)


class TimingCache:
    """Layer times (seconds) by shape key and rank label, persisted as one JSON file (None: memory only)."""

    def __init__(self, directory: str | Path | None = CACHE_DIR, filename: str = "layer_times.json") -> None:
        self.path = Path(directory) / filename if directory is not None else None
        self.data: dict[str, dict[str, float]] = {}
        self.hits = self.misses = 0
        if self.path is not None and self.path.exists():
            try:
                self.data = json.loads(self.path.read_text())
            except json.JSONDecodeError:
                self.data = {}  # a damaged cache is only lost time, never wrong numbers: start afresh

    def get(self, key: str, label: str) -> float | None:
        value = self.data.get(key, {}).get(label)
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
        return value

    def put(self, key: str, label: str, seconds: float) -> None:
        self.data.setdefault(key, {})[label] = float(seconds)

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(self.data))
        tmp.replace(self.path)


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
    cache_dir: str | Path | None = CACHE_DIR,
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
        module = model.get_submodule(row.name)
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
        "input_shape": list(shape), "device": str(dev), "device_name": measure.device_name(dev),
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


# --- models with random weights of a plan's shapes -------------------------------------------------


def shaped_model(model: nn.Module, plan: Plan) -> nn.Module:
    """A copy of ``model`` with the plan's structure and random factor weights (for timing only)."""
    return apply_structure(copy.deepcopy(model), plan)


def model_costs(model: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    from .counting import count_flops, count_params

    return {"params": count_params(model), "flops": count_flops(model, input_shape)}


def speed_table(
    model: nn.Module,
    plans: dict[str, Plan],
    input_shape: Sequence[int],
    *,
    device: str = "cpu",
    train: bool = False,
    rounds: int = 5,
    warmup: int = 1,
    repeats: int = 3,
    train_warmup: int | None = None,
    train_repeats: int | None = None,
    dtype: str | None = None,
    progress: bool = True,
):
    """Params, FLOPs and measured speed-up vs the original of each plan, all timed interleaved.

    One row per plan (the original model is the baseline, not a row). Columns: name, layers, params,
    flops, params_removed_pct, flops_removed_pct, ideal_speedup (original FLOPs / FLOPs), time_ms,
    original_ms, speedup (×, median of per-round ratios), speedup_pct, speedup_q1/q3, throughput,
    spread, realised (fraction of the FLOP-ideal gain); with ``train`` the same prefixed ``train_``.
    """
    import pandas as pd

    shape = measure.check_shape(input_shape)
    base = model_costs(model, shape)
    models, info = {"original": model}, {}
    for name, plan in plans.items():
        m = shaped_model(model, plan)
        models[name] = m
        info[name] = {"name": name, "layers": len(plan.decomposed_layers), **model_costs(m, shape)}
    results = {"inference": _compare(models, shape, "inference", device, rounds, warmup, repeats, dtype, progress)}
    if train:
        results["train"] = _compare(models, shape, "train", device, rounds,
                                    warmup if train_warmup is None else train_warmup,
                                    repeats if train_repeats is None else train_repeats, dtype, progress)
    rows = []
    for name, row in info.items():
        ideal = measure.ideal_speedup(base["flops"], row["flops"])
        out = {**row, "params_removed_pct": 100 * (1 - row["params"] / base["params"]),
               "flops_removed_pct": 100 * (1 - row["flops"] / base["flops"]), "ideal_speedup": ideal}
        for mode, df in results.items():
            out.update(_speed_columns(df, name, "" if mode == "inference" else "train_", ideal))
        rows.append(out)
    return pd.DataFrame(rows)


def granularity_plans(model: nn.Module, ratio: float = 2, granularities: Sequence[int] = (1, 2, 4, 8, 16, 32, 64),
                      exclude: Sequence[str] | None = tuple(PAPER_EXCLUDE), **plan_kw) -> dict[str, Plan]:
    """``{"g=G": plan}``: a ratio plan with ranks rounded down to multiples of each G."""
    names = [n for n, _ in model.named_modules()]
    exclude = [p for p in (exclude or []) if any(_glob(n, p) for n in names)]
    return {f"g={g}": make_plan(model, ratio=ratio, granularity=int(g), exclude=exclude or None, **plan_kw)
            for g in granularities}


def granularity_sweep(
    model: nn.Module,
    input_shape: Sequence[int],
    ratio: float = 2,
    granularities: Sequence[int] = (1, 2, 4, 8, 16, 32, 64),
    exclude: Sequence[str] | None = tuple(PAPER_EXCLUDE),
    *,
    device: str = "cpu",
    train: bool = False,
    rounds: int = 5,
    warmup: int = 1,
    repeats: int = 3,
    dtype: str | None = None,
    progress: bool = True,
    **plan_kw,
):
    """F9: for each granularity g, a ratio plan rounded to multiples of g; params, FLOPs and measured time.

    The original and all g are timed interleaved (:func:`lrdlab.measure.compare`). Columns: those of
    :func:`speed_table` plus ``granularity``.
    """
    plans = granularity_plans(model, ratio, granularities, exclude, **plan_kw)
    df = speed_table(model, plans, input_shape, device=device, train=train, rounds=rounds, warmup=warmup,
                     repeats=repeats, dtype=dtype, progress=progress)
    df.insert(0, "granularity", [int(g) for g in granularities])
    return df


def _glob(name: str, pattern: str) -> bool:
    import fnmatch

    return fnmatch.fnmatchcase(name, pattern)


def _compare(models, input_shape, mode, device, rounds, warmup, repeats, dtype, progress):
    if progress:
        print(f"timing {len(models)} models ({mode}, {rounds} interleaved rounds)", flush=True)
    return measure.compare(models, input_shape, mode=mode, rounds=rounds, device=device, warmup=warmup,
                           repeats=repeats, dtype=dtype)


def _speed_columns(df, name: str, prefix: str, ideal: float) -> dict[str, float]:
    r = df[df["name"] == name].iloc[0]
    base = df.iloc[0]
    return {
        f"{prefix}time_ms": 1e3 * r["median_s"], f"{prefix}original_ms": 1e3 * base["median_s"],
        f"{prefix}speedup": r["speedup_vs_first"], f"{prefix}speedup_pct": 100 * (r["speedup_vs_first"] - 1),
        f"{prefix}speedup_q1": r["speedup_q1"], f"{prefix}speedup_q3": r["speedup_q3"],
        f"{prefix}throughput": r["throughput"], f"{prefix}spread": r["spread"],
        f"{prefix}realised": measure.realised_fraction(r["speedup_vs_first"], ideal),
    }


def rank_time_sweep(
    C: int,
    S: int,
    k: int,
    ranks: Sequence[int],
    input_shape: Sequence[int],
    *,
    method: str = "tucker2",
    device: str = "cpu",
    backward: bool = False,
    warmup: int = 3,
    repeats: int = 10,
    rounds: int = 3,
    dtype: str | None = None,
    stride: int = 1,
    progress: bool = True,
):
    """F1/F2: time of one C→S k×k conv decomposed at each rank (Tucker-2 with r1 = r2 = r, or SVD forms).

    ``input_shape`` is the layer's input (N, C, H, W). Ranks are timed in ``rounds`` interleaved
    passes (with the original conv in each pass); per rank: median over all samples and quartiles.
    Columns: rank, time_ms, time_lo_ms, time_hi_ms, original_ms, params, params_removed_pct.
    """
    import pandas as pd

    shape = measure.check_shape(input_shape)
    if shape[1] != C:
        raise ValueError(f"input_shape {shape} must have C={C} channels")
    dev = measure.check_device(device)
    conv = nn.Conv2d(C, S, k, stride=stride, padding=k // 2, bias=False)
    info = describe(conv)
    layers = {"original": conv}
    for r in ranks:
        layers[r] = build(info, method, (r, r) if method == "tucker2" else (r,))
    steps = {name: measure.layer_step(m, shape, dev, backward, dtype) for name, m in layers.items()}
    samples: dict[Any, list[float]] = {name: [] for name in steps}
    bar = tqdm(total=rounds * len(steps), desc=f"rank sweep [{S},{C},{k},{k}]", disable=not progress)
    for _ in range(rounds):
        for name, step in steps.items():
            samples[name].extend(measure.time_function(step, dev, warmup, repeats))
            bar.update()
    bar.close()
    original_ms = 1e3 * statistics.median(samples["original"])
    before = params_of(info, None, None)
    rows = []
    for r in ranks:
        q1, med, q3 = measure.quartiles(samples[r])
        after = params_of(info, method, [r, r] if method == "tucker2" else [r])
        rows.append({"rank": r, "time_ms": 1e3 * med, "time_lo_ms": 1e3 * q1, "time_hi_ms": 1e3 * q3,
                     "original_ms": original_ms, "params": after, "params_removed_pct": 100 * (1 - after / before)})
    return pd.DataFrame(rows)


# --- whole-model bench -------------------------------------------------------------------------------


def bench_plan(
    model: nn.Module,
    plan: Plan,
    input_shape: Sequence[int],
    *,
    device: str = "cpu",
    train: bool = False,
    rounds: int = 5,
    warmup: int = 2,
    repeats: int = 3,
    dtype: str | None = None,
    channels_last: bool = False,
    compile: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Original vs decomposed (plan structure, random factor weights) measured interleaved, with the FLOP ideal.

    Returns a JSON-able report: machine, settings, params and FLOPs of both, the FLOP-ideal speed-up
    (original FLOPs / decomposed FLOPs) and per mode (inference, and train with ``train``) the
    median times, throughputs, the measured speed-up (median of per-round ratios, with quartiles)
    and ``realised`` = (speed-up − 1) / (ideal − 1).
    """
    check_plan(model, plan)
    shape = measure.check_shape(input_shape)
    dev = measure.check_device(device)
    decomposed = shaped_model(model, plan)
    before, after = model_costs(model, shape), model_costs(decomposed, shape)
    ideal = measure.ideal_speedup(before["flops"], after["flops"])
    report: dict[str, Any] = {
        "model": plan.model, "input_shape": list(shape), "machine": measure.machine_info(dev),
        "settings": {"rounds": rounds, "warmup": warmup, "repeats": repeats, "dtype": measure.check_dtype(dtype),
                     "channels_last": channels_last, "compile": compile},
        "layers_decomposed": len(plan.decomposed_layers),
        "params": {"original": before["params"], "decomposed": after["params"]},
        "flops": {"original": before["flops"], "decomposed": after["flops"]},
        "ideal_speedup": ideal,
    }
    for mode in ["inference"] + (["train"] if train else []):
        if progress:
            print(f"timing original vs decomposed ({mode}, {rounds} interleaved rounds) …", flush=True)
        df = measure.compare({"original": model, "decomposed": decomposed}, shape, mode=mode, rounds=rounds,
                             device=str(dev), warmup=warmup, repeats=repeats, dtype=dtype,
                             channels_last=channels_last, compile=compile)
        o, d = df.iloc[0], df.iloc[1]
        report[mode] = {
            "original_s": float(o["median_s"]), "decomposed_s": float(d["median_s"]),
            "original_throughput": float(o["throughput"]), "decomposed_throughput": float(d["throughput"]),
            "speedup": float(d["speedup_vs_first"]), "speedup_q1": float(d["speedup_q1"]),
            "speedup_q3": float(d["speedup_q3"]), "spread_original": float(o["spread"]),
            "spread_decomposed": float(d["spread"]),
            "realised": measure.realised_fraction(float(d["speedup_vs_first"]), ideal),
        }
    return report


def format_bench(report: dict[str, Any]) -> str:
    """The bench report as a few lines of text."""
    m = report["machine"]
    lines = [
        f"{report['model']}, input {tuple(report['input_shape'])}, {m['device']} ({m['device_name']}, "
        f"{m['torch_threads']} threads), torch {m['torch_version']}",
        f"params {report['params']['original']:,} → {report['params']['decomposed']:,}; "
        f"FLOPs {report['flops']['original']:,} → {report['flops']['decomposed']:,}; "
        f"FLOP-ideal speed-up ×{report['ideal_speedup']:.3f}",
    ]
    for mode in ("inference", "train"):
        if mode not in report:
            continue
        r = report[mode]
        lines.append(
            f"{mode:9s}: original {r['original_throughput']:.1f}/s, decomposed {r['decomposed_throughput']:.1f}/s, "
            f"speed-up ×{r['speedup']:.3f} (IQR {r['speedup_q1']:.3f}–{r['speedup_q3']:.3f}), "
            f"{100 * r['realised']:.0f}% of the FLOP ideal realised"
        )
    return "\n".join(lines)


# --- recording the benchmarks (python -m lrdlab.optimize --record data/) ----------------------------


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=float) + "\n")


def record_resnet50(out: Path, *, image_size: int = 112, batch: int = 8, device: str = "cpu", rounds: int = 5,
                    lower: float = 0.75, layer_repeats: int = 5, search_rounds: int = 3,
                    cache_dir: str | Path | None = CACHE_DIR,
                    granularities: Sequence[int] = (2, 4, 8, 16, 32, 64), train: bool = True) -> Path:
    """ResNet-50 at 2x (stem + downsample excluded): vanilla vs optimized ranks vs granularities, inference + train."""
    import torchvision

    dev = measure.check_device(device)
    tag = f"resnet50_{dev.type}"
    shape = (batch, 3, image_size, image_size)
    load_before = os.getloadavg()
    model = torchvision.models.resnet50().eval()
    vanilla = make_plan(model, ratio=2, exclude=PAPER_EXCLUDE, model_name="resnet50")
    opt_fwd, traces_fwd = optimize_plan(model, vanilla, shape, device=str(dev), lower=lower, repeats=layer_repeats,
                                        rounds=search_rounds, cache_dir=cache_dir)
    plans = {"vanilla 2x": vanilla, "optimized (fwd)": opt_fwd}
    outputs = {"plan_fwd": opt_fwd, "traces_fwd": traces_fwd}
    if train:
        opt_bwd, traces_bwd = optimize_plan(model, vanilla, shape, device=str(dev), lower=lower, backward=True,
                                            repeats=max(3, layer_repeats // 2), rounds=max(1, search_rounds - 1),
                                            cache_dir=cache_dir)
        plans["optimized (fwd+bwd)"] = opt_bwd
        outputs.update(plan_bwd=opt_bwd, traces_bwd=traces_bwd)
    for name, plan in granularity_plans(model, 2, granularities, PAPER_EXCLUDE, model_name="resnet50").items():
        plans[name] = plan
    table = speed_table(model, plans, shape, device=str(dev), train=train, rounds=rounds, warmup=1, repeats=3,
                        train_warmup=1, train_repeats=1)
    table.insert(1, "granularity", [1, 1, *([1] if train else []), *granularities])
    table.to_csv(out / f"bench_{tag}.csv", index=False)
    t1 = rank_table(vanilla, opt_fwd)
    if train:
        t1["optimized (fwd+bwd)"] = rank_table(vanilla, outputs["plan_bwd"])["optimized"]
    t1.to_csv(out / f"optimize_{tag}_t1.csv", index=False)
    outputs["plan_fwd"].save(out / f"optimize_{tag}_plan.json")
    outputs["traces_fwd"].drop(columns=["key"]).to_csv(out / f"optimize_{tag}_traces.csv", index=False)
    if train:
        outputs["plan_bwd"].save(out / f"optimize_{tag}_plan_train.json")
        outputs["traces_bwd"].drop(columns=["key"]).to_csv(out / f"optimize_{tag}_traces_train.csv", index=False)
    meta = {
        "what": "ResNet-50 (torchvision, random weights) at ratio 2, conv1 and *.downsample.* excluded: original vs "
                "vanilla LRD vs Algorithm-1 optimized ranks vs ranks rounded to multiples of g; factors random "
                "(time does not depend on values). speedup = median over interleaved rounds of original/variant "
                "time; realised = (speedup-1)/(ideal-1), ideal = original FLOPs / variant FLOPs.",
        "command": f"python -m lrdlab.optimize --record {out} --only resnet50 --image-size {image_size} "
                   f"--batch {batch} --rounds {rounds} --search-rounds {search_rounds} "
                   f"--threads {torch.get_num_threads()}",
        "input_shape": list(shape), "machine": measure.machine_info(dev),
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "settings": {"rounds": rounds, "inference": {"warmup": 1, "repeats": 3},
                     "train": {"warmup": 1, "repeats": 1, "optimizer": "SGD momentum 0.9", "labels": "random"},
                     "search": {"lower": lower, "granularity": 1, "forward": {"repeats": layer_repeats,
                                "rounds": search_rounds}, "forward+backward": {"repeats": max(3, layer_repeats // 2),
                                "rounds": max(1, search_rounds - 1)}, "warmup": 3}},
        "rows": table.to_dict(orient="records"),
        "t1": t1.to_dict(orient="records"),
    }
    path = out / f"bench_{tag}.json"
    _write_json(path, meta)
    return path


def record_f1(out: Path, *, input_shape: Sequence[int] = (8, 512, 7, 7), ranks: Sequence[int] = range(242, 270),
              device: str = "cpu", rounds: int = 3, repeats: int = 5) -> Path:
    """F1/F2: the [512,512,3,3] conv (ResNet layer4 conv2) by Tucker-2 at r = 242…269, time per batch."""
    dev = measure.check_device(device)
    load_before = os.getloadavg()
    df = rank_time_sweep(512, 512, 3, list(ranks), input_shape, device=str(dev), rounds=rounds, repeats=repeats)
    tag = f"f1_conv512_{dev.type}"
    df.to_csv(out / f"optimize_{tag}.csv", index=False)
    from .plots import find_cliffs

    meta = {
        "what": "Tucker-2 (r1 = r2 = r) of a 512→512 3×3 conv, stride 1, padding 1, forward only, fp32; "
                "time per batch, median (and quartiles) over rounds × repeats interleaved samples",
        "command": f"python -m lrdlab.optimize --record {out} --only f1 --threads {torch.get_num_threads()}",
        "input_shape": list(input_shape), "machine": measure.machine_info(dev),
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "settings": {"rounds": rounds, "repeats": repeats, "warmup": 3},
        "cliffs_5pct": find_cliffs(df["rank"], df["time_ms"], 0.05),
        "largest_drop": {"rank": int(pick_rank(dict(zip(df["rank"], df["time_ms"]))))},
        "rows": df.to_dict(orient="records"),
    }
    path = out / f"optimize_{tag}.json"
    _write_json(path, meta)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m lrdlab.optimize", description="record lrdlab's speed benchmarks")
    p.add_argument("--record", type=Path, required=True, help="output directory, e.g. data/")
    p.add_argument("--only", choices=["resnet50", "f1"], default=None, help="one part (default: both)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the whole-model timing")
    p.add_argument("--search-rounds", type=int, default=3, help="interleaved passes of the per-layer rank search")
    p.add_argument("--no-train", action="store_true", help="inference only")
    p.add_argument("--cache-dir", type=Path, default=CACHE_DIR)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.record.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "f1"):
        print("wrote", record_f1(args.record, device=args.device))
    if args.only in (None, "resnet50"):
        print("wrote", record_resnet50(args.record, image_size=args.image_size, batch=args.batch, device=args.device,
                                       rounds=args.rounds, search_rounds=args.search_rounds,
                                       cache_dir=args.cache_dir, train=not args.no_train))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
