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
from .plan import Plan, apply_structure, check_plan, make_plan, params_of

CACHE_DIR = Path("data/cache")
PAPER_EXCLUDE = ["conv1", "*.downsample.*"]
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
              backward: bool) -> str:
    """The cache key of one layer configuration: layer shape, input shape, method, device, dtype, batch, pass."""
    dev = torch.device(device)
    return json.dumps({
        "layer": info, "input": list(input_shape), "method": method, "device": dev.type,
        "device_name": measure.device_name(dev), "dtype": measure.check_dtype(dtype), "batch": int(input_shape[0]),
        "backward": bool(backward), "torch": torch.__version__, "threads": torch.get_num_threads(),
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


def scaled_ranks(target: Sequence[int], r: int) -> tuple[int, ...]:
    """Ranks at leading rank r, the others scaled like the target (Tucker r2 = r·R2/R1; r1 = r2 when R1 = R2)."""
    R = target[0]
    return tuple([r] + [max(1, round(r * t / R)) for t in target[1:]])


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
    leading = candidate_ranks(int(target[0]), lower, granularity)
    full = {r: scaled_ranks(target, r) for r in leading}
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
    rows = plan.decomposed_layers
    inputs = layer_input_shapes(model, [r.name for r in rows], shape)
    new = Plan.from_dict(copy.deepcopy(plan.to_dict()))
    records = []
    for row in tqdm(rows, desc="Algorithm 1", disable=not progress):
        module = model.get_submodule(row.name)
        info = describe(module)
        key = shape_key(info, inputs[row.name], row.method, str(dev), dtype, backward)
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

    The original and all g are timed interleaved (:func:`lrdlab.measure.compare`). Columns:
    granularity, layers, params, flops, params_removed_pct, flops_removed_pct, time_ms,
    original_ms, speedup (×, median of per-round ratios), speedup_pct, speedup_q1/q3, ideal_speedup,
    realised (fraction of the FLOP-ideal gain); with ``train`` also the same for training (train_*).
    """
    import pandas as pd

    exclude = [p for p in (exclude or []) if any(_glob(n, p) for n, _ in model.named_modules())]
    base = model_costs(model, input_shape)
    models, info = {"original": model}, {}
    for g in tqdm(list(granularities), desc="plans", disable=not progress, leave=False):
        plan = make_plan(model, ratio=ratio, granularity=int(g), exclude=exclude or None, **plan_kw)
        m = shaped_model(model, plan)
        models[f"g={g}"] = m
        info[f"g={g}"] = {"granularity": int(g), "layers": len(plan.decomposed_layers), **model_costs(m, input_shape)}
    modes = ["inference"] + (["train"] if train else [])
    results = {mode: _compare(models, input_shape, mode, device, rounds, warmup, repeats, dtype, progress)
               for mode in modes}
    rows = []
    for name, row in info.items():
        ideal = measure.ideal_speedup(base["flops"], row["flops"])
        out = {**row, "params_removed_pct": 100 * (1 - row["params"] / base["params"]),
               "flops_removed_pct": 100 * (1 - row["flops"] / base["flops"]), "ideal_speedup": ideal}
        for mode, df in results.items():
            prefix = "" if mode == "inference" else "train_"
            out.update(_speed_columns(df, name, prefix, ideal))
        rows.append(out)
    return pd.DataFrame(rows)


def _glob(name: str, pattern: str) -> bool:
    import fnmatch

    return fnmatch.fnmatchcase(name, pattern)


def _compare(models, input_shape, mode, device, rounds, warmup, repeats, dtype, progress):
    desc = f"timing {len(models)} models ({mode}, {rounds} interleaved rounds)"
    if progress:
        print(desc, flush=True)
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
