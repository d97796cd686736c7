"""The opt-in low-rank output head of a causal LM whose ``lm_head`` is tied to its input embedding.

A tied head is kept by :func:`lrdlab.make_plan` (decomposing it alone would untie it and add parameters). At batch 1
decode it is read in full for every token, so it bounds what a decomposition can gain.
:func:`plan_untied_lm_head` gives the head its own weight (a copy; the input embedding stays as it is), plans it
with the rest, and records in the plan what the untying costs: the summary's whole-model count starts from the tied
model and adds the head's factors.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import Tensor, nn

from lrdlab.lowrank.plan import Plan, make_plan


def tied_lm_head(model: nn.Module) -> tuple[str, str] | None:
    """``(output head name, input embedding name)`` when the model's output head weight *is* its input
    embedding's (``tie_word_embeddings``), else None."""
    get_out, get_in = getattr(model, "get_output_embeddings", None), getattr(model, "get_input_embeddings", None)
    head = get_out() if callable(get_out) else None
    emb = get_in() if callable(get_in) else None
    if not isinstance(head, nn.Linear) or not isinstance(emb, nn.Embedding) or head.weight is not emb.weight:
        return None
    names = {id(m): n for n, m in model.named_modules()}
    return names[id(head)], names[id(emb)]


def untie_lm_head(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose output head has its own weight (a copy of the input embedding's), so that a plan
    can decompose the head while the input embedding stays as it is; the copy's config says
    ``tie_word_embeddings=False`` so transformers does not tie them again. ValueError if the head is not tied."""
    tied = tied_lm_head(model)
    if tied is None:
        raise ValueError(f"{type(model).__name__}'s output head is not tied to its input embedding; plan it as it is "
                         "(make_plan decomposes an untied lm_head like any Linear)")
    out = copy.deepcopy(model)
    head: Any = out.get_submodule(tied[0])
    weight: Tensor = head.weight
    head.weight = nn.Parameter(weight.detach().clone(), requires_grad=weight.requires_grad)
    config: Any = getattr(out, "config", None)
    if config is not None and hasattr(config, "tie_word_embeddings"):
        config.tie_word_embeddings = False
    expand = getattr(out, "get_expanded_tied_weights_keys", None)
    if callable(expand) and hasattr(out, "all_tied_weights_keys"):  # transformers 5 keeps the tie map here
        out.all_tied_weights_keys = expand(all_submodels=False)
    return out


def plan_untied_lm_head(model: nn.Module, policy: Any, layers: Any = None, **options: Any) -> tuple[nn.Module, Plan]:
    """``(untied copy, plan)``: :func:`untie_lm_head` of ``model`` and ``make_plan`` of it (same arguments), so the
    plan decomposes the output head too and its row shows the head's parameters. The plan's whole-model count
    starts from the tied ``model``'s (the input embedding is kept and the head becomes its own factors, which the
    count adds); decompose the returned copy.
    """
    tied = tied_lm_head(model)
    untied = untie_lm_head(model)
    plan = make_plan(untied, policy, layers, **options)
    plan.settings["model_params"] = sum(p.numel() for p in model.parameters())  # tied: once
    if tied is not None:
        plan.settings["untied"] = {tied[0]: tied[1]}
        head: Any = untied.get_submodule(tied[0])
        plan.settings["untied_params"] = int(head.weight.numel())
        row = plan[tied[0]]
        row.reason += f"; untied from {tied[1]} (kept as it is)"
    return untied, plan
