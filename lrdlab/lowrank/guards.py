"""Models as real code hands them over: wrappers, hook-based weight rewriting, parametrizations, lazy and single
layers, already decomposed models, and hooks on a replaced layer.

- ``torch.compile``'s ``OptimizedModule`` (``_orig_mod``), ``nn.DataParallel`` and ``DistributedDataParallel``
  (``module``) are unwrapped (:func:`unwrap`): plan rows and saved keys carry no ``_orig_mod.`` / ``module.`` prefix.
- The old hook-based ``nn.utils.weight_norm`` / ``spectral_norm`` and ``torch.nn.utils.prune`` recompute
  ``weight`` before each call: refused with a ``ValueError`` that names the call that removes them.
- ``torch.nn.utils.parametrize`` layers (``parametrizations.weight_norm`` / ``spectral_norm`` …) are decomposed
  from their effective weight; the factors are plain parameters, trainable when the original weight was.
- A model that *is* one Linear/Conv, and a model that already holds decomposed layers, are refused.
- Forward and backward hooks on a replaced layer move to its replacement (:func:`move_hooks`).
- Shared modules and tied parameters (GPT-2's ``lm_head.weight`` *is* ``transformer.wte.weight``) are left
  unchanged, with the reason in the plan (:func:`shared_reasons`): replacing one attribute would untie them and
  grow the model. ``model.parameters()`` yields a shared parameter once, so :func:`lrdlab.count_params` counts it once.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

HOOK_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
              "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks")
STATE_HOOK_DICTS = ("_state_dict_hooks", "_state_dict_pre_hooks")  # load hooks (weight_norm's compat) go with it


def unwrap(model: Any) -> Any:
    """The model inside ``torch.compile`` / ``DataParallel`` / ``DistributedDataParallel`` wrappers (else itself)."""
    while True:
        if type(model).__name__ == "OptimizedModule" and isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        else:
            return model


def _hook_fix(module: nn.Module) -> str | None:
    """The call that removes a hook-based weight rewrite (old weight_norm / spectral_norm, prune), or None."""
    from torch.nn.utils import prune
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, WeightNorm):
            return (f"it uses the old nn.utils.weight_norm: call torch.nn.utils.remove_weight_norm(layer, "
                    f"{hook.name!r}) first (or use torch.nn.utils.parametrizations.weight_norm, which lrdlab "
                    f"decomposes)")
        if isinstance(hook, SpectralNorm):
            return (f"it uses the old nn.utils.spectral_norm: call torch.nn.utils.remove_spectral_norm(layer, "
                    f"{hook.name!r}) first (or use torch.nn.utils.parametrizations.spectral_norm)")
        if isinstance(hook, prune.BasePruningMethod):
            return f"it is pruned with torch.nn.utils.prune: call prune.remove(layer, {hook._tensor_name!r}) first"
    return None


def check_model(model: nn.Module, decomposed: type[nn.Module]) -> None:
    """``ValueError`` (naming the layer and the fix) for models lrdlab cannot plan as they are; ``decomposed`` is
    the class of an already decomposed layer."""
    if isinstance(model, (nn.Linear, nn.modules.conv._ConvNd)) or type(model).__name__ == "Conv1D":
        raise ValueError(f"the model is a single {type(model).__name__}: decomposing it would replace the model "
                         f"itself; wrap it, e.g. make_plan(nn.Sequential(layer), ...)")
    for name, m in model.named_modules():
        if isinstance(m, decomposed):
            raise ValueError(f"the model is already decomposed (layer {name!r} is a LowRankLayer); planning it again "
                             f"would nest decompositions: plan the original model (a fresh copy) instead")
    check_hook_rewrites(model)


def check_hook_rewrites(model: nn.Module) -> None:
    """``ValueError`` naming the layer and the call that removes an old weight_norm / spectral_norm / prune hook."""
    for name, m in model.named_modules():
        if (fix := _hook_fix(m)) is not None:
            raise ValueError(f"layer {name!r}: {fix}")


def lazy_reason(module: nn.Module) -> str | None:
    """The reason an unmaterialised lazy layer (``nn.LazyLinear`` before its first forward) is kept, or None."""
    if any(isinstance(p, nn.parameter.UninitializedParameter) for p in module.parameters(recurse=False)):
        return "kept: lazy: not materialised, run a forward first"
    return None


def _parametrizations(module: nn.Module) -> nn.ModuleDict:
    lists = module.parametrizations
    assert isinstance(lists, nn.ModuleDict)
    return lists


@contextmanager
def parametrizations_in_eval(module: nn.Module) -> Iterator[None]:
    """Read a parametrized weight as eval mode computes it (spectral norm: no power-iteration step)."""
    if not parametrize.is_parametrized(module):
        yield
        return
    lists = _parametrizations(module)
    modes = {m: m.training for m in lists.modules()}
    lists.eval()
    try:
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode


def weight_requires_grad(module: nn.Module, weight: torch.Tensor) -> bool:
    """Whether the factors of ``module`` should train: a parametrized weight trains when its originals do."""
    if parametrize.is_parametrized(module, "weight"):
        return any(p.requires_grad for p in _parametrizations(module)["weight"].parameters())
    return weight.requires_grad


def parametrized_note(module: nn.Module) -> str | None:
    """A note for the plan row of a parametrized layer, or None."""
    if not parametrize.is_parametrized(module, "weight"):
        return None
    kinds = ", ".join(type(p).__name__.lstrip("_") for p in _parametrizations(module)["weight"].children())
    return f"parametrized weight ({kinds}): its effective weight is decomposed into plain trainable factors"


def check_state_hooks(module: nn.Module, name: str) -> None:
    """``ValueError`` for a layer to be replaced that has state-dict hooks (its keys change when decomposed)."""
    for attr in STATE_HOOK_DICTS:
        if getattr(module, attr, None):
            raise ValueError(f"layer {name!r} has {attr.strip('_').replace('_', ' ')}: its state_dict keys change "
                             f"when it is decomposed; remove them or exclude the layer (exclude=[{name!r}])")


def move_hooks(old: nn.Module, new: nn.Module) -> None:
    """Give ``new`` the forward/backward hooks of ``old`` (the same dicts, so the user's handles still remove them)."""
    if not any(getattr(old, attr, None) for attr in HOOK_DICTS):
        return
    for attr in HOOK_DICTS:
        setattr(new, attr, getattr(old, attr))
    if old._backward_hooks or old._backward_pre_hooks:
        new._is_full_backward_hook = old._is_full_backward_hook


def shared_reasons(model: nn.Module, names: list[str]) -> dict[str, str]:
    """``{layer name: reason}`` for the named layers whose module or parameters are shared with another place."""
    module_names: dict[int, list[str]] = defaultdict(list)
    for name, m in model.named_modules(remove_duplicate=False):
        module_names[id(m)].append(name)
    owners: dict[int, list[str]] = defaultdict(list)  # parameter id → "module.param" names using it
    for name, p in model.named_parameters(remove_duplicate=False):
        owners[id(p)].append(name)
    modules = dict(model.named_modules())
    reasons = {}
    for name in names:
        # an attention q/k/v view has no module of its own: its attention module is what gets replaced
        owner = name if name in modules else name.rpartition(".")[0]
        m = modules.get(owner)
        if m is None:
            continue
        aliases = [n for n in module_names[id(m)] if n != owner]
        if aliases:
            reasons[name] = f"skipped: module shared with {aliases[0]!r} (used twice); decomposing would untie it"
            continue
        if owner != name:
            continue
        for pname, p in m.named_parameters(recurse=False):
            others = [o for o in owners[id(p)] if o.rpartition(".")[0] != name]
            if others:
                reasons[name] = (f"skipped: {pname} is tied to {others[0]!r} (shared parameter); decomposing "
                                 "would untie it and add parameters")
                break
    return reasons
