"""One-shot whitening (SVD-LLM's truncation-aware whitening, statistics from the *original* model).

Every planned layer's input second moment is gathered in one pass of the dense model over the calibration
batches (streamed float64 Gram sums, never the activations themselves), then each layer is replaced by the
whitened SVD of :func:`lrdlab.lowrank.calibration.calibrated_layer`. This is the comparator of lrdlab's
calibrated default (``decompose(..., calibration=batches)``), which fits each layer to the inputs it receives
inside the network decomposed so far, so earlier layers' errors are compensated instead of compounded.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from lrdlab.lowrank.calibration import calibrated_layer, check_batches
from lrdlab.lowrank.data_aware import DEFAULT_RIDGE, input_gram
from lrdlab.lowrank.decompose import check_plan, set_module
from lrdlab.lowrank.plan import Plan


@torch.no_grad()
def input_covariances(model: nn.Module, names: list[str], xs: list[Tensor]) -> dict[str, Tensor]:
    """Each named layer's input second moment ``X Xᵀ / n`` (float64) when ``model`` runs on ``xs``."""
    sums: dict[str, list[Any]] = {n: [None, 0] for n in names}

    def hook(name: str):
        def record(mod: nn.Module, args: tuple) -> None:
            gram, rows = input_gram(mod, args[0].detach(), len(xs))
            acc = sums[name]
            acc[0] = gram if acc[0] is None else acc[0] + gram
            acc[1] += rows
        return record

    handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
    try:
        for x in xs:
            model(x)
    finally:
        for h in handles:
            h.remove()
    never = [n for n, (_, rows) in sums.items() if rows == 0]
    if never:
        raise ValueError(f"layer {never[0]!r} never ran on the calibration batches; exclude it from the plan")
    return {n: gram / rows for n, (gram, rows) in sums.items()}


@torch.no_grad()
def one_shot_decompose(model: nn.Module, plan: Plan, batches: Iterable,
                       ridge: float = DEFAULT_RIDGE) -> nn.Module:
    """A decomposed copy of ``model`` (eval mode) whose layers are whitened by the original model's statistics."""
    check_plan(model, plan)
    xs = check_batches(model, batches, plan)
    rows = {row.name: row for row in plan.decomposed_layers}
    work = copy.deepcopy(model).eval()
    covs = input_covariances(work, list(rows), xs)
    for name, row in rows.items():
        method, ranks = row.spec
        set_module(work, name, calibrated_layer(work.get_submodule(name), method, tuple(ranks), covs[name],
                                                 ridge, row.branches))
    return work
