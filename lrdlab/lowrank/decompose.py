"""Applying a plan: decompose a model, check plans against models, save and reload decomposed models."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from lrdlab.lowrank import attention, guards
from lrdlab.lowrank.apply import (  # check_plan, set_module and merged_blocks are used from here too
    check_decomposed,
    check_plan,
    decompose_weights,
    merge_parts,
    merged_blocks,
    rewritten,
    set_module,
)
from lrdlab.lowrank.calibration import Calibration, calibrated_decompose
from lrdlab.lowrank.layers import build, describe
from lrdlab.lowrank.loss_weighted import fit_plan, resolved_mode
from lrdlab.lowrank.merge import merge_block_in_place
from lrdlab.lowrank.plan import Plan

__all__ = ["apply_structure", "check_decomposed", "check_plan", "decompose", "load_decomposed", "merged_blocks",
           "planned_structure", "recorded_plan", "save_decomposed", "set_module"]

# --- applying a plan -------------------------------------------------------------------------------


def recorded_plan(model: nn.Module, plan: Plan) -> Plan:
    """``plan`` as saved beside ``model``: checked, with the bottleneck merge (if any) recorded in ``settings``."""
    blocks = merged_blocks(model)
    if not blocks:
        check_decomposed(model, plan)
        return plan
    modes = sorted(set(blocks.values()))
    if len(modes) > 1:
        raise ValueError(f"blocks were merged with different bn modes {modes}; merge the whole model with one "
                         f"merge_bottlenecks call")
    out = copy.deepcopy(plan)
    out.settings["merge"] = {"bn": modes[0], "blocks": sorted(blocks)}
    for block in blocks:
        for part in ("conv1", "conv3"):
            name = f"{block}.{part}" if block else part
            try:
                row = out[name]
            except KeyError as err:
                raise ValueError(f"the plan has no row {name!r} of merged block {block!r}: save the model with the "
                                 f"plan it was merged by") from err
            if row.decomposed or "absorbed" not in row.reason:
                row.keep("absorbed by layer merging")
    check_decomposed(model, out)
    return out


@torch.no_grad()
def decompose(model: nn.Module, plan: Plan, *, calibration: Calibration | Iterable | None = None, inplace: bool = False,
              progress: bool | None = None) -> nn.Module:
    """Return a copy of ``model`` with every planned layer replaced by its ``LowRankLayer``.

    The whole plan is checked and every new layer computed before anything is replaced, so on any
    error the model is left as it was. ``inplace=True`` modifies ``model`` itself. An
    ``nn.MultiheadAttention`` with a decomposed projection is replaced as a whole by an exact
    :class:`~lrdlab.lowrank.attention.FactorizedMultiheadAttention` holding the new layers.

    ``calibration``: a :class:`~lrdlab.lowrank.calibration.Calibration` (``lrdlab.Calibration(batches, mode=...,
    bn=..., ridge=...)``) or just the batches (input tensors or ``(x, y)`` pairs, ~512 images; token ids for a
    language model), for its default settings: a data-aware decomposition, each layer fitted to its inputs inside
    the partly decomposed network (block by block in a transformer), then BatchNorm statistics re-estimated
    (:func:`lrdlab.lowrank.calibration.calibrated_decompose`). Without it: weight-only
    SVD / HOSVD, the papers' method, each form with the options the plan records (``Plan.options_for``).

    A ``torch.compile`` / ``DataParallel`` / DDP wrapper is unwrapped: the result is the plain decomposed model
    (wrap it again). Forward/backward hooks of a replaced layer move to its replacement.
    """
    model = guards.unwrap(model)
    if calibration is not None:
        settings = Calibration.of(calibration)
        mode = resolved_mode(model, plan, settings.mode)  # both engines check the plan first
        if mode == "loss-weighted":
            return fit_plan(model, plan, settings.batches, settings.ridge, inplace=inplace, progress=progress)
        return calibrated_decompose(model, plan, settings.batches, mode=mode, bn=settings.bn,
                                    ridge=settings.ridge, inplace=inplace, progress=progress)
    return decompose_weights(model, plan, inplace=inplace, progress=progress)


def apply_structure(model: nn.Module, plan: Plan) -> nn.Module:
    """Give ``model`` (in place) the plan's decomposed shape with uninitialised factors, for loading.

    A plan saved from a merged model (``settings["merge"]``) also gets its bottlenecks merged.
    """
    check_plan(model, plan)
    attention.attach(model, rewritten(model, [row.name for row in plan.decomposed_layers]))
    new = {row.name: build(describe(model.get_submodule(row.name)), row.spec[0], row.spec[1], row.branches)
           for row in plan.decomposed_layers}
    for name, layer in new.items():
        set_module(model, name, layer)
    blocks, _ = merge_parts(plan)
    if blocks:
        for block, bn in blocks.items():
            merge_block_in_place(model, block, bn)
    return model


def planned_structure(model: nn.Module, plan: Plan) -> nn.Module:
    """A weightless (meta-device) copy of ``model`` shaped as the plan says: for counting params and FLOPs fast."""
    check_plan(model, plan)
    with torch.device("meta"):
        return apply_structure(copy.deepcopy(model).to("meta"), plan)


def save_decomposed(model: nn.Module, plan: Plan, directory: str | Path) -> Path:
    """Write ``plan.json`` and ``state_dict.pt`` (a plain state_dict) into ``directory``.

    ``model`` must be what ``decompose(original, plan)`` (or ``merge_bottlenecks``) returned, possibly
    fine-tuned: it is checked against ``plan`` before anything is written. A merge is recorded in
    the saved plan, so :func:`load_decomposed` rebuilds merged models too.
    """
    model = guards.unwrap(model)
    record = recorded_plan(model, plan)
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"{directory} is a file; save_decomposed needs a folder for plan.json and state_dict.pt")
    directory.mkdir(parents=True, exist_ok=True)
    record.save(directory / "plan.json")
    torch.save(model.state_dict(), directory / "state_dict.pt")
    return directory


def load_decomposed(directory: str | Path, model: nn.Module) -> nn.Module:
    """Rebuild a saved decomposed model on ``model``, a fresh instance of the original architecture.

    Everything is checked (on a weightless copy) before ``model`` is changed. A wrapped model (``torch.compile``,
    ``DataParallel``) is loaded into the module it wraps.
    """
    model = guards.unwrap(model)
    directory = Path(directory)
    if not (directory / "state_dict.pt").is_file():
        raise FileNotFoundError(f"no state_dict.pt in {directory}; save the model with save_decomposed first")
    plan = Plan.load(directory / "plan.json")
    try:
        state = torch.load(directory / "state_dict.pt", map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # torch's message is several lines about allow-lists
        raise ValueError(f"{directory / 'state_dict.pt'} holds more than tensors (objects that loading would have to "
                         f"run code for), so it is not read; save the model with save_decomposed") from err
    expected = {k: tuple(v.shape) for k, v in planned_structure(model, plan).state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if expected != found:
        missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
        wrong = [k for k in expected if k in found and expected[k] != found[k]]
        raise ValueError(f"{directory}: state_dict.pt does not fit plan.json on this model (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}, other shapes {wrong[:3]}); give a fresh instance of the "
                         f"architecture the plan was made for ({plan.model!r})")
    apply_structure(model, plan)
    model.load_state_dict(state)
    return model
