"""The base of applying a plan, below calibration and merging: check a plan against a model, put new layers in
place, and the weight-only decomposition (:mod:`lrdlab.lowrank.decompose` is the public front)."""

from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor, as_completed

import torch
from torch import nn
from tqdm.auto import tqdm

from lrdlab.lowrank import attention, experts, guards
from lrdlab.lowrank.factorize import one_thread
from lrdlab.lowrank.layers import LowRankLayer, decompose_layer, dense_weight, describe
from lrdlab.lowrank.methods import get_method
from lrdlab.lowrank.plan import Plan, candidate_layers, named_layers


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` in place of ``model``'s submodule ``name`` (dotted); it takes over the old one's hooks, and the
    training mode of an old leaf layer (an eval model's decomposed conv is in eval mode too: torch's quantization
    fusion checks that a conv and its BatchNorm agree)."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, child)
    guards.move_hooks(old, new)
    if isinstance(old, nn.Module) and not any(True for _ in old.children()):
        new.train(old.training)
    setattr(parent, child, new)


def rewritten(model: nn.Module, names: list[str]) -> dict[str, nn.Module]:
    """Exact dense replacements (not attached) for the modules that hold the rows ``names`` as views: an
    ``nn.MultiheadAttention`` with a planned q/k/v/out projection, a 3-D experts module with a planned expert."""
    return {**attention.converted(model, names), **experts.converted(model, names)}


MERGED = "lrdlab_merged"  # attribute merge_bottlenecks sets on each merged block: its bn mode


def merged_blocks(model: nn.Module) -> dict[str, str]:
    """``{block name: bn mode}`` of the bottlenecks :func:`~lrdlab.lowrank.merge.merge_bottlenecks` merged."""
    return {name: getattr(m, MERGED) for name, m in model.named_modules() if isinstance(getattr(m, MERGED, None), str)}


def merge_parts(plan: Plan) -> tuple[dict[str, str], set[str]]:
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
    # a plan written before lrdlab planned 3-D experts has no rows for them: they stay whole, as it said
    older = set(experts.notes(model)) if not planned & set(experts.notes(model)) else set()
    missing = [n for n, _ in candidate_layers(model) if n not in planned and n not in inside and n not in older]
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
    _, merged_parts = merge_parts(plan)
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


@torch.no_grad()
def decompose_weights(model: nn.Module, plan: Plan, *, inplace: bool = False, progress: bool | None = None
                      ) -> nn.Module:
    """:func:`lrdlab.lowrank.decompose.decompose` without calibration: weight-only SVD / HOSVD, the papers' method,
    each form with the options the plan records (``Plan.options_for``). Everything is computed before anything is
    replaced; ``inplace=True`` modifies ``model`` itself."""
    model = guards.unwrap(model)
    check_plan(model, plan)
    rows = plan.decomposed_layers
    layers = named_layers(model)
    for row in rows:
        guards.check_state_hooks(layers[row.name], row.name)
        if not torch.isfinite(dense_weight(layers[row.name])).all():
            raise ValueError(f"layer {row.name!r} has NaN or infinite weights; fix or exclude it")
    target = model if inplace else copy.deepcopy(model)
    disable = (len(rows) < 20) if progress is None else not progress
    # attention modules with a decomposed projection become FactorizedMultiheadAttention, 3-D experts with a
    # decomposed expert FactorizedExperts (exact; attached below)
    new_holders = rewritten(target, [row.name for row in rows])
    layers = {**dict(target.named_modules()),
              **{f"{n}.{c}" if n else c: m for n, new in new_holders.items() for c, m in new.named_modules() if c}}
    replacements = _factorize_all(layers, rows, plan, disable)
    attention.attach(target, new_holders)
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
