"""Rank policies' shared machinery: input checks, fixed ranks against full ranks, the reduced form, rounding and the
break-even, the minimum-rank rule.

``make_plan`` calls these for every candidate layer; they know nothing of plans. A policy is one of the
frozen dataclasses of :mod:`lrdlab.lowrank.plan_config` (``Ratio``, ``Energy``, ``VBMF``, ``FixedRank``), each of
which computes its own target ranks.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lrdlab.lowrank import ranks
from lrdlab.lowrank.methods import Method, get_method

if TYPE_CHECKING:
    from lrdlab.lowrank.plan import LayerPlan
    from lrdlab.lowrank.plan_config import RankPolicy

# --- checking what users pass ------------------------------------------------------------------------


def to_patterns(value: str | Sequence[str] | None, what: str) -> list[str]:
    """Glob patterns from one string (one pattern) or a sequence of strings."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, Sequence) or not all(isinstance(p, str) for p in value):
        raise ValueError(f"{what} must be a glob pattern or a list of them, e.g. ['conv1', 'layer1.*'] (got {value!r})")
    return list(value)


def _scalar(value: Any) -> Any:
    """A one-element torch tensor as its Python number (``torch.tensor(2.)`` like ``numpy.float64(2.)``)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex():
        return value.item()
    return value


def real(value: Any, what: str, hint: str) -> float:
    """``value`` as a float when it is a real number (numpy scalars and one-element tensors included), else a
    ValueError."""
    value = _scalar(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"{what} must be a finite real number (got {value!r}); {hint}")
    return float(value)


def positive_int(value: Any, what: str) -> int:
    value = _scalar(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{what} must be a positive integer (got {value!r})")
    return int(value)


# --- target ranks -----------------------------------------------------------------------------------


def fit_fixed_ranks(name: str, info: dict[str, Any], form: Method, target: list[int], per_layer: bool,
                     why: str) -> tuple[list[int], str]:
    """Fixed ranks against the full ranks: a per-layer (dict) rank must fit; one rank for all is capped."""
    limit = form.full_ranks(info)
    if all(1 <= r <= t for r, t in zip(target, limit)):
        return target, why
    if per_layer:
        raise ValueError(f"layer {name!r}: ranks {target} are impossible for {form.name} of a "
                         f"{info['in_channels']}→{info['out_channels']} layer; choose 1 <= rank <= {limit}")
    capped = [min(r, t) for r, t in zip(target, limit)]
    return capped, f"{why}, capped at full rank {capped}"


def reduce_capped(module: nn.Module, info: dict[str, Any], form: Method, target: list[int],
                   policy: RankPolicy, name: str, why: str) -> tuple[Method, list[int], str]:
    """When a rank reaches its mode's size (Tucker-2 on a 3-channel stem), that factor is a useless full-rank
    1×1 conv: re-solve the policy for the form without it (Tucker-1; the ratio for the remaining mode)."""
    found = form.reduced(info, target, policy.branches)
    if found is None:
        return form, target, why
    reduced, kept = found
    full = 1 - kept  # the mode whose factor is dropped
    if policy.kind == "rank":  # fixed ranks: keep the other mode's rank
        new_target, new_why = [target[kept]], why
    else:
        new_target, new_why = policy.targets(module, info, reduced, name)
    return reduced, new_target, (f"{new_why}; {form.name} {form.rank_names[full]} rank {target[full]} reaches its "
                                 f"size {form.full_ranks(info)[full]}, so {reduced.name} (no full-rank factor) "
                                 f"instead")


# --- rounding and the break-even ------------------------------------------------------------------------


def params_of(info: dict[str, Any], method: str | None, layer_ranks: Sequence[int] | None, branches: int = 1) -> int:
    """Parameters (weights + bias) of a layer described by ``describe()``, before (``method`` None) or after."""
    C, S, kernel = info["in_channels"], info["out_channels"], info["kernel_size"]
    bias = S if info["bias"] else 0
    if method is None or layer_ranks is None:
        return ranks.dense_params(C, S, kernel) // info.get("groups", 1) + bias
    return get_method(method).params(info, layer_ranks, branches) + bias


def round_and_check(row: LayerPlan, info: dict[str, Any], form: Method, target: list[int], policy: RankPolicy,
                    why: str) -> None:
    """Fill ``row`` with the rounded ranks, or keep the layer with the reason it cannot save."""
    granularity, rounding, allow_larger = policy.granularity, policy.rounding, policy.allow_larger
    method = form.name
    branches = row.branches if form.branchable else 1
    step = math.lcm(granularity, branches)
    limit = form.full_ranks(info)

    def saves(layer_ranks: list[int]) -> bool:
        return allow_larger or params_of(info, method, layer_ranks, branches) < row.params_before

    if any(r < 1 for r in target):
        row.keep(f"kept: {why} gives rank 0")
        return
    if not saves(list(target)):
        after = params_of(info, method, list(target), branches)
        row.keep(f"kept: {why} ranks {list(target)} do not save parameters ({after:,} >= {row.params_before:,})")
        return
    try:
        final = [ranks.round_rank(r, step, rounding, top) for r, top in zip(target, limit)]
        if not saves(final) and rounding != "down":  # rounding up went past the break-even: round down instead
            final = [ranks.round_rank(r, step, "down", top) for r, top in zip(target, limit)]
    except ValueError as err:
        row.keep(f"kept: {err}")
        return
    after = params_of(info, method, final, branches)
    if not saves(final):
        row.keep(f"kept: at granularity {step} ranks {final} do not save parameters "
                 f"({after:,} >= {row.params_before:,})")
        return
    row.method, row.ranks, row.target_ranks, row.params_after = method, final, list(target), after
    note = why
    if final != list(target):
        note += f", rounded {','.join(map(str, target))}→{','.join(map(str, final))} (g={step})"
    if after >= row.params_before:
        note += f", adds parameters ({after:,} >= {row.params_before:,}; allow_larger)"
    row.reason = note


# --- the minimum-rank rule -----------------------------------------------------------------------------


MIN_RANK = 6  # recommended: keeps 10-class heads (rank 2-4 at 2-4x), every ResNet-20 3x3 conv up to 4x


def keep_below_min_rank(row: LayerPlan, info: dict[str, Any], min_rank: int) -> None:
    """Keep a planned layer whose smallest rank is below ``min_rank``, with the reason."""
    if not row.decomposed or row.ranks is None or min(row.ranks) >= min_rank:
        return
    small = min(info["in_channels"], info["out_channels"])
    why = (f"its dimensions ({info['in_channels']}→{info['out_channels']}) are below min_rank={min_rank}"
           if small < min_rank else f"ranks {row.ranks} fall below min_rank={min_rank}")
    row.keep(f"kept: {why}, too few to keep its function (Ratio(..., min_rank=1) decomposes it anyway)")
    row.target_ranks = None
