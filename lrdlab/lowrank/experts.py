"""Mixture-of-experts layers whose experts are 3-D parameters (HuggingFace Mixtral and its kin), per-expert SVD.

transformers 5 stores a MoE block's experts as two 3-D parameters, ``gate_up_proj [E, 2F, D]`` and ``down_proj
[E, D, F]`` (``MixtralExperts``), and its forward multiplies each routed token by ``gate_up_proj[e]`` and
``down_proj[e]`` with ``F.linear``: no ``nn.Linear`` to replace. lrdlab therefore plans each expert's two matrices
as ``nn.Linear`` *views* named ``<experts>.gate_up_proj.<e>`` and ``<experts>.down_proj.<e>`` (one plan row per
expert tensor), and replaces an experts module that has a decomposed row by :class:`FactorizedExperts`: the same
routing maths (the eager forward of ``MixtralExperts``, line for line) with each matrix an ordinary child
(``nn.Linear``, or the :class:`~lrdlab.lowrank.layers.LowRankLayer` of its SVD), so the view names become the real
module names. It is exact at full rank; its ``state_dict`` holds ``gate_up_proj.<e>.…`` per expert.

Recognised: a ``transformers`` module with those two 3-D parameters, ``act_fn`` and ``num_experts`` whose eager
``forward`` is ``MixtralExperts.forward``'s very source (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, DeepSeek-V2/V3,
GLM-4-MoE, PhiMoE, …). Other layouts (biases, transposed or interleaved storage, a forward of their own: gpt-oss,
DBRX, Llama 4) stay whole and are counted among the parameters outside any row. The replacement always runs this
eager loop, whatever ``config._experts_implementation`` the original used (other kernels differ in rounding only).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import Tensor, nn

GATE_UP, DOWN = "gate_up_proj", "down_proj"
NOTE = "{tensor}[{e}] of the 3-D {cls} tensors (per-expert SVD; the experts module becomes FactorizedExperts, exact)"


class FactorizedExperts(nn.Module):
    """``MixtralExperts`` with each expert's ``gate_up_proj`` ([2F, D]) and ``down_proj`` ([D, F]) as modules.

    ``forward(hidden_states [T, D], top_k_index [T, k], top_k_weights [T, k]) -> [T, D]``, as the original's eager
    forward. Build one from an existing module with :meth:`from_experts`.
    """

    def __init__(self, num_experts: int, hidden_dim: int, intermediate_dim: int, act_fn: Callable[[Tensor], Tensor]
                 ) -> None:
        super().__init__()
        self.num_experts, self.hidden_dim, self.intermediate_dim = num_experts, hidden_dim, intermediate_dim
        self.gate_up_proj = nn.ModuleList(nn.Linear(hidden_dim, 2 * intermediate_dim, bias=False)
                                          for _ in range(num_experts))
        self.down_proj = nn.ModuleList(nn.Linear(intermediate_dim, hidden_dim, bias=False)
                                       for _ in range(num_experts))
        self.act_fn = act_fn

    @classmethod
    @torch.no_grad()
    def from_experts(cls, experts: nn.Module) -> FactorizedExperts:
        """An exact copy of a recognised experts module (weights copied, same device, dtype and training mode)."""
        if (why := unsupported_reason(experts)) is not None:
            raise ValueError(why)
        gate_up, down = getattr(experts, GATE_UP), getattr(experts, DOWN)
        E, two_f, D = gate_up.shape
        act = experts.act_fn
        assert isinstance(act, nn.Module)  # unsupported_reason checked it
        with torch.device("meta"):
            new = cls(E, D, two_f // 2, act)
        new = new.to_empty(device=gate_up.device).to(gate_up.dtype)
        for holder, weights in ((new.gate_up_proj, gate_up), (new.down_proj, down)):
            for layer, weight in zip(holder, weights):
                assert isinstance(layer, nn.Linear)
                layer.weight.copy_(weight)
        new.train(experts.training)
        return new

    def forward(self, hidden_states: Tensor, top_k_index: Tensor, top_k_weights: Tensor) -> Tensor:
        final_hidden_states = torch.zeros_like(hidden_states)
        with torch.no_grad():
            expert_mask = torch.nn.functional.one_hot(top_k_index, num_classes=self.num_experts + 1)
            expert_mask = expert_mask.permute(2, 1, 0)
            expert_hit = torch.greater(expert_mask.sum(dim=(-1, -2)), 0).nonzero()
        for hit in expert_hit.tolist():
            e = hit[0]
            if e == self.num_experts:  # the expert-parallel "not here" slot
                continue
            top_k_pos, token_idx = torch.where(expert_mask[e])
            gate, up = self.gate_up_proj[e](hidden_states[token_idx]).chunk(2, dim=-1)
            out = self.down_proj[e](self.act_fn(gate) * up)
            out = out * top_k_weights[token_idx, top_k_pos, None]
            final_hidden_states.index_add_(0, token_idx, out.to(final_hidden_states.dtype))
        return final_hidden_states

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, hidden_dim={self.hidden_dim}, intermediate_dim={self.intermediate_dim}"


# --- recognising ---------------------------------------------------------------------------------------------


_SOURCES: dict[type, str] = {}


def _eager_source(cls: type) -> str:
    """The source of ``cls``'s eager forward (behind transformers' dispatcher), cached per class."""
    if cls not in _SOURCES:
        forward = getattr(cls, "forward", None)
        forward = getattr(forward, "__wrapped__", forward)  # transformers' use_experts_implementation dispatcher
        try:
            _SOURCES[cls] = inspect.getsource(forward) if forward is not None else ""
        except (OSError, TypeError):
            _SOURCES[cls] = ""
    return _SOURCES[cls]


_REFERENCE: list[str] = []


def _reference_source() -> str:
    """The source of ``MixtralExperts.forward`` (transformers is imported only when a candidate module exists)."""
    if not _REFERENCE:
        try:
            from transformers.models.mixtral.modeling_mixtral import MixtralExperts
        except ImportError:  # a transformers without Mixtral: nothing is recognised
            _REFERENCE.append("")
        else:
            _REFERENCE.append(_eager_source(MixtralExperts))
    return _REFERENCE[0]


def _looks_like(module: nn.Module) -> bool:
    gate_up, down = getattr(module, GATE_UP, None), getattr(module, DOWN, None)
    return (any(k.__module__.startswith("transformers") for k in type(module).__mro__)
            and isinstance(gate_up, nn.Parameter)
            and isinstance(down, nn.Parameter) and gate_up.dim() == 3 and down.dim() == 3)


def unsupported_reason(module: nn.Module) -> str | None:
    """Why lrdlab cannot rewrite this experts module, or None when it can."""
    if not _looks_like(module):
        return f"{type(module).__name__} is not a transformers experts module with 3-D gate_up_proj/down_proj"
    gate_up, down = getattr(module, GATE_UP), getattr(module, DOWN)
    E, two_f, D = gate_up.shape
    if two_f % 2 or tuple(down.shape) != (E, D, two_f // 2) or getattr(module, "num_experts", None) != E:
        return (f"{type(module).__name__}: gate_up_proj {tuple(gate_up.shape)} and down_proj {tuple(down.shape)} "
                f"are not the [E, 2F, D] / [E, D, F] layout")
    if not isinstance(getattr(module, "act_fn", None), nn.Module):
        return f"{type(module).__name__} has no act_fn module"
    source = _eager_source(type(module))
    if not source or source != _reference_source():
        return f"{type(module).__name__}.forward is not MixtralExperts' eager forward"
    return None


def experts_modules(model: nn.Module) -> dict[str, nn.Module]:
    """``{name: module}`` of the experts modules lrdlab can rewrite."""
    return {n: m for n, m in model.named_modules() if _looks_like(m) and unsupported_reason(m) is None}


def _view(weight: Tensor) -> nn.Linear:
    """An ``nn.Linear`` whose weight shares ``weight``'s memory (for planning; not trainable)."""
    with torch.device("meta"):
        layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    layer.weight = nn.Parameter(weight.detach(), requires_grad=False)
    return layer


def expert_views(model: nn.Module) -> dict[str, list[tuple[str, nn.Linear]]]:
    """For each recognised experts module (by name): its experts' matrices as named ``nn.Linear`` views,
    expert by expert (``<experts>.gate_up_proj.0``, ``<experts>.down_proj.0``, ``….gate_up_proj.1`` …)."""
    out = {}
    for name, m in experts_modules(model).items():
        prefix = f"{name}." if name else ""
        gate_up, down = getattr(m, GATE_UP), getattr(m, DOWN)
        out[name] = [view for e in range(gate_up.shape[0])
                     for view in ((f"{prefix}{GATE_UP}.{e}", _view(gate_up[e])),
                                  (f"{prefix}{DOWN}.{e}", _view(down[e])))]
    return out


def notes(model: nn.Module) -> dict[str, str]:
    """``{row name: note}`` for the expert rows (the plan's reason of a decomposed one says what happens)."""
    out = {}
    for name, m in experts_modules(model).items():
        prefix = f"{name}." if name else ""
        for e in range(getattr(m, GATE_UP).shape[0]):
            for tensor in (GATE_UP, DOWN):
                out[f"{prefix}{tensor}.{e}"] = NOTE.format(e=e, cls=type(m).__name__, tensor=tensor)
    return out


# --- applying ------------------------------------------------------------------------------------------------


def converted(model: nn.Module, names: list[str]) -> dict[str, FactorizedExperts]:
    """Exact replacements (not attached yet) for the experts modules one of whose matrices ``names`` holds."""
    found = experts_modules(model)
    wanted = set()
    for layer in names:
        holder, _, index = layer.rpartition(".")
        owner, _, tensor = holder.rpartition(".")
        if tensor in (GATE_UP, DOWN) and index.isdigit() and owner in found:
            wanted.add(owner)
    return {n: FactorizedExperts.from_experts(found[n]) for n in sorted(wanted)}
