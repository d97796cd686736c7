"""Parameters and modules shared between places in a model (tied weights), which lrdlab must not decompose.

Decomposing a layer replaces one attribute. If its weight is also used elsewhere (GPT-2's ``lm_head.weight``
*is* ``transformer.wte.weight``), or the same module object sits under two names, the replacement would
untie them and grow the model. Such layers are left unchanged, with the reason in the plan.
Counting: ``model.parameters()`` yields each shared parameter once, so :func:`lrdlab.count_params` counts it once.
"""

from __future__ import annotations

from collections import defaultdict

from torch import nn


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
