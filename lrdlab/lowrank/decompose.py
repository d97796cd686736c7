"""decompose: moved from lrdlab.plan."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from lrdlab.lowrank.layers import (
    LowRankLayer,
    build,
    decompose_layer,
    describe,
    full_ranks,
)
from lrdlab.lowrank.plan import Plan

# --- applying a plan -------------------------------------------------------------------------------


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def check_plan(model: nn.Module, plan: Plan) -> None:
    """Raise ``ValueError`` unless every row of ``plan`` matches a layer of ``model``."""
    if not isinstance(plan, Plan):
        raise ValueError(f"expected an lrdlab Plan, got {type(plan).__name__}; build one with make_plan()")
    modules = dict(model.named_modules())
    for row in plan.layers:
        module = modules.get(row.name)
        if module is None:
            raise ValueError(
                f"plan row {row.name!r} names no layer of this model: the plan was made for "
                f"{plan.model!r}; make a new plan for this model"
            )
        if isinstance(module, LowRankLayer):
            raise ValueError(f"layer {row.name!r} is already decomposed; apply the plan to the original model")
        info = describe(module)
        expected = (row.type, row.in_channels, row.out_channels, list(row.kernel_size))
        actual = (info["type"], info.get("in_channels"), info.get("out_channels"), info.get("kernel_size"))
        if expected != actual:
            raise ValueError(
                f"layer {row.name!r}: the plan expects {expected} but the model has {actual}; "
                f"the plan was made for {plan.model!r} — make a new plan for this model"
            )
        if row.decomposed:
            limit = full_ranks(info, row.method)
            if not row.ranks or len(row.ranks) != len(limit) or any(r < 1 or r > t for r, t in zip(row.ranks, limit)):
                raise ValueError(f"layer {row.name!r}: ranks {row.ranks} are impossible for {row.method}; "
                                 f"each must be in 1..{limit}")


@torch.no_grad()
def decompose(model: nn.Module, plan: Plan, *, inplace: bool = False, progress: bool | None = None) -> nn.Module:
    """Return a copy of ``model`` with every planned layer replaced by its ``LowRankLayer``.

    The whole plan is checked and every new layer computed before anything is replaced, so on any
    error the model is left as it was. ``inplace=True`` modifies ``model`` itself.
    """
    check_plan(model, plan)
    rows = plan.decomposed_layers
    for row in rows:
        if not torch.isfinite(model.get_submodule(row.name).weight).all():
            raise ValueError(f"layer {row.name!r} has NaN or infinite weights; fix or exclude it")
    target = model if inplace else copy.deepcopy(model)
    tucker = plan.settings.get("tucker", "hosvd")
    disable = (len(rows) < 20) if progress is None else not progress
    replacements = {
        row.name: decompose_layer(target.get_submodule(row.name), row.method, tuple(row.ranks), tucker, row.branches)
        for row in tqdm(rows, desc="decompose", disable=disable, leave=False)
    }
    for name, layer in replacements.items():
        _set_module(target, name, layer)
    return target


def apply_structure(model: nn.Module, plan: Plan) -> nn.Module:
    """Give ``model`` (in place) the plan's decomposed shape with uninitialised factors, for loading."""
    check_plan(model, plan)
    new = {row.name: build(describe(model.get_submodule(row.name)), row.method, tuple(row.ranks), row.branches)
           for row in plan.decomposed_layers}
    for name, layer in new.items():
        _set_module(model, name, layer)
    return model


def planned_structure(model: nn.Module, plan: Plan) -> nn.Module:
    """A weightless (meta-device) copy of ``model`` shaped as the plan says: for counting params and FLOPs fast."""
    check_plan(model, plan)
    with torch.device("meta"):
        return apply_structure(copy.deepcopy(model).to("meta"), plan)


def save_decomposed(model: nn.Module, plan: Plan, directory: str | Path) -> Path:
    """Write ``plan.json`` and ``state_dict.pt`` (a plain state_dict) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    plan.save(directory / "plan.json")
    torch.save(model.state_dict(), directory / "state_dict.pt")
    return directory


def load_decomposed(directory: str | Path, model: nn.Module) -> nn.Module:
    """Rebuild a saved decomposed model on ``model``, a fresh instance of the original architecture."""
    directory = Path(directory)
    plan = Plan.load(directory / "plan.json")
    apply_structure(model, plan)
    state = torch.load(directory / "state_dict.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model
