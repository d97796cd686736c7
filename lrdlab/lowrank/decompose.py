"""Applying a plan: decompose a model, check plans against models, save and reload decomposed models."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from lrdlab.lowrank import attention, guards
from lrdlab.lowrank.factorize import one_thread
from lrdlab.lowrank.layers import LowRankLayer, build, decompose_layer, dense_weight, describe
from lrdlab.lowrank.methods import get_method
from lrdlab.lowrank.plan import Plan, candidate_layers, named_layers

# --- applying a plan -------------------------------------------------------------------------------


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` in place of ``model``'s submodule ``name`` (dotted); it takes over the old one's hooks."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    guards.move_hooks(getattr(parent, child), new)
    setattr(parent, child, new)


MERGED = "lrdlab_merged"  # attribute merge_bottlenecks sets on each merged block: its bn mode


def merged_blocks(model: nn.Module) -> dict[str, str]:
    """``{block name: bn mode}`` of the bottlenecks :func:`~lrdlab.lowrank.merge.merge_bottlenecks` merged."""
    return {name: getattr(m, MERGED) for name, m in model.named_modules() if isinstance(getattr(m, MERGED, None), str)}


def _merge_parts(plan: Plan) -> tuple[dict[str, str], set[str]]:
    """The plan's recorded merge: ``{block: bn}`` and the names of the convs merging replaced."""
    record = plan.settings.get("merge") or {}
    blocks = {b: record.get("bn", "fresh") for b in record.get("blocks", [])}
    parts = {f"{b}.{p}" if b else p for b in blocks for p in ("conv1", "conv2", "conv3")}
    return blocks, parts


def _inside_low_rank(model: nn.Module) -> set[str]:
    """Names of the modules inside a LowRankLayer (its factors)."""
    return {f"{name}.{sub}" for name, m in model.named_modules() if isinstance(m, LowRankLayer)
            for sub, _ in m.named_modules() if sub}


def check_plan(model: nn.Module, plan: Plan) -> None:
    """Raise ``ValueError`` unless ``plan`` fits ``model``: one row per Linear/Conv layer, matching shapes."""
    if not isinstance(plan, Plan):
        raise ValueError(f"expected an lrdlab Plan, got {type(plan).__name__}; build one with make_plan()")
    if not isinstance(model, nn.Module):
        raise ValueError(f"expected a model (nn.Module), got {type(model).__name__}; build one with get_model()")
    guards.check_hook_rewrites(model)
    modules = named_layers(model)
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
            method, layer_ranks = row.spec
            form = get_method(method)
            reason = form.unsupported(info)
            if reason:
                raise ValueError(f"layer {row.name!r}: {reason}")
            form.check_ranks(info, layer_ranks, f"layer {row.name!r}")
    planned = {row.name for row in plan.layers}
    inside = _inside_low_rank(model)
    missing = [n for n, _ in candidate_layers(model) if n not in planned and n not in inside]
    if missing:
        raise ValueError(
            f"the plan has no row for {len(missing)} layer(s) of this model (e.g. {missing[:3]}): it was made for "
            f"{plan.model!r}, which has fewer layers; make a new plan for this model (make_plan(model, ...))"
        )


def check_decomposed(model: nn.Module, plan: Plan) -> None:
    """Raise ``ValueError`` unless ``model`` has exactly the structure ``plan`` gives (the check before saving)."""
    if not isinstance(plan, Plan):
        raise ValueError(f"expected an lrdlab Plan, got {type(plan).__name__}")
    modules = named_layers(model)
    _, merged_parts = _merge_parts(plan)
    for row in plan.layers:
        module = modules.get(row.name)
        if module is None:
            raise ValueError(f"plan row {row.name!r} names no layer of this model: the plan was made for "
                             f"{plan.model!r}; save the model with the plan it was decomposed by")
        if row.name in merged_parts:
            continue
        if row.decomposed and not isinstance(module, LowRankLayer):
            raise ValueError(f"layer {row.name!r} is a plain {type(module).__name__}, but the plan decomposes it "
                             f"({row.method} ranks {row.ranks}): save the model decompose(model, plan) returned")
        if isinstance(module, LowRankLayer):
            found = (module.method, list(module.ranks), module.branches)
            if not row.decomposed or found != (row.method, list(row.ranks or []), row.branches):
                planned = f"says {row.method} ranks {row.ranks}" if row.decomposed else "keeps it"
                raise ValueError(f"layer {row.name!r} is decomposed by {found[0]} ranks {found[1]}, but the plan "
                                 f"{planned}: save the model with the plan it was decomposed by")
    rows = {row.name for row in plan.layers}
    stray = [n for n, m in modules.items() if isinstance(m, LowRankLayer) and n not in rows]
    if stray:
        raise ValueError(f"layers {stray[:3]} are decomposed but not in the plan: save the model with the plan "
                         f"it was decomposed by")


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
def decompose(model: nn.Module, plan: Plan, *, calibration: Iterable | None = None, inplace: bool = False,
              progress: bool | None = None) -> nn.Module:
    """Return a copy of ``model`` with every planned layer replaced by its ``LowRankLayer``.

    The whole plan is checked and every new layer computed before anything is replaced, so on any
    error the model is left as it was. ``inplace=True`` modifies ``model`` itself. An
    ``nn.MultiheadAttention`` with a decomposed projection is replaced as a whole by an exact
    :class:`~lrdlab.lowrank.attention.FactorizedMultiheadAttention` holding the new layers.

    ``calibration`` (input batches, or ``(x, y)`` pairs, ~512 images): a data-aware decomposition,
    each layer fitted to its inputs inside the partly decomposed network, then BatchNorm statistics
    re-estimated (:func:`lrdlab.lowrank.calibration.calibrated_decompose`). Without it: weight-only
    SVD / HOSVD, the papers' method, each form with the options the plan records (``Plan.options_for``).

    A ``torch.compile`` / ``DataParallel`` / DDP wrapper is unwrapped: the result is the plain decomposed model
    (wrap it again). Forward/backward hooks of a replaced layer move to its replacement.
    """
    model = guards.unwrap(model)
    if calibration is not None:
        from lrdlab.lowrank.calibration import calibrated_decompose

        return calibrated_decompose(model, plan, calibration, inplace=inplace, progress=progress)
    check_plan(model, plan)
    rows = plan.decomposed_layers
    layers = named_layers(model)
    for row in rows:
        guards.check_state_hooks(layers[row.name], row.name)
        if not torch.isfinite(dense_weight(layers[row.name])).all():
            raise ValueError(f"layer {row.name!r} has NaN or infinite weights; fix or exclude it")
    target = model if inplace else copy.deepcopy(model)
    disable = (len(rows) < 20) if progress is None else not progress
    # attention modules with a decomposed projection become FactorizedMultiheadAttention (exact; attached below)
    new_attention = attention.converted(target, [row.name for row in rows])
    layers = {**dict(target.named_modules()),
              **{f"{n}.{c}": m for n, new in new_attention.items() for c, m in new.named_children()}}
    replacements = _factorize_all(layers, rows, plan, disable)
    attention.attach(target, new_attention)
    for name, layer in replacements.items():
        set_module(target, name, layer)
    return target


def _factorize_all(layers: dict[str, nn.Module], rows: list, plan: Plan, disable: bool) -> dict[str, nn.Module]:
    """Every planned layer's replacement. Each factorization runs on one BLAS/LAPACK thread, and as many of them
    at once as torch has threads: on a quiet machine the cores share the work, on a loaded one nothing spins."""
    workers = min(len(rows), torch.get_num_threads())

    @torch.no_grad()  # grad mode is per thread
    def one(row) -> nn.Module:
        if workers > 1:
            torch.set_num_threads(1)  # this worker's own BLAS threads
        method, layer_ranks = row.spec
        return decompose_layer(layers[row.name], method, layer_ranks, plan.options_for(method), row.branches)

    bar = tqdm(total=len(rows), desc="decompose", disable=disable, leave=False)
    with one_thread():
        if workers <= 1:
            out = {}
            for row in rows:
                out[row.name] = one(row)
                bar.update(1)
        else:
            with ThreadPoolExecutor(workers) as pool:
                futures = {row.name: pool.submit(one, row) for row in rows}
                for _ in as_completed(futures.values()):
                    bar.update(1)
                out = {name: f.result() for name, f in futures.items()}
    bar.close()
    return out


def apply_structure(model: nn.Module, plan: Plan) -> nn.Module:
    """Give ``model`` (in place) the plan's decomposed shape with uninitialised factors, for loading.

    A plan saved from a merged model (``settings["merge"]``) also gets its bottlenecks merged.
    """
    check_plan(model, plan)
    attention.attach(model, attention.converted(model, [row.name for row in plan.decomposed_layers]))
    new = {row.name: build(describe(model.get_submodule(row.name)), row.spec[0], row.spec[1], row.branches)
           for row in plan.decomposed_layers}
    for name, layer in new.items():
        set_module(model, name, layer)
    blocks, _ = _merge_parts(plan)
    if blocks:
        from lrdlab.lowrank.merge import merge_block_in_place  # merge builds on this module

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
    state = torch.load(directory / "state_dict.pt", map_location="cpu", weights_only=True)
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
