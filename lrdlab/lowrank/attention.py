"""Decomposable multi-head attention: ``nn.MultiheadAttention`` with its four projections as separate modules.

``nn.MultiheadAttention`` uses its projections by weight (``in_proj_weight``, ``out_proj.weight``), never by
calling them, so a factorized projection cannot simply be swapped in. lrdlab therefore replaces every
attention module that has a decomposed projection by :class:`FactorizedMultiheadAttention`: the same maths
with ``q_proj``, ``k_proj``, ``v_proj`` and ``out_proj`` as ordinary children (``nn.Linear`` or
:class:`~lrdlab.lowrank.layers.LowRankLayer`). It is exact at full rank (same function, same masks and dropout).

**q, k, v separately, not the fused ``in_proj``.** At ratio 2 with the same parameters either way (fused: one
SVD of the [3E, E] ``in_proj_weight`` at rank 3E/8; separate: three SVDs of [E, E] at rank E/4), neither wins
clearly on error or CPU time (``data/transformers_targets_cpu.json``, ``qkv_choice``), so function decides:
separate projections work for cross-attention and ``kdim``/``vdim`` ≠ ``embed_dim`` (a shared first factor cannot
serve different inputs), each gets its own rank, plan row and freezing, and the rows match BERT-style models'
``query``/``key``/``value`` Linears. (GPT-2's fused ``c_attn`` Conv1D stays one matrix: the model calls it as one.)

**PyTorch's fast paths.** ``nn.MultiheadAttention`` and ``nn.TransformerEncoderLayer`` / ``nn.TransformerEncoder``
have fused inference kernels (eval mode, no grad) that read the dense ``in_proj_weight`` and ``linear1.weight``.
The replacement sets ``in_proj_weight = in_proj_bias = None`` and ``_qkv_same_embed_dim = False``, so an
encoder layer holding it takes its regular (Python) path, and :func:`attach` sets ``use_nested_tensor = False``
on enclosing ``nn.TransformerEncoder`` modules. When an encoder layer's MLP (``linear1``/``linear2``) is
decomposed, its ``self_attn`` is converted too (dense, exact) for the same reason. The plan's reason says so.

Left unchanged (the plan says why): ``add_bias_kv``, ``add_zero_attn``, and subclasses of
``nn.MultiheadAttention`` (their ``forward`` may differ).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lrdlab.lowrank import guards

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj")
FASTPATH_NOTE = "MultiheadAttention → FactorizedMultiheadAttention, PyTorch's fused attention fast path off"


class FactorizedMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` (same arguments, masks, outputs) with separate ``q/k/v/out_proj`` children.

    The projections are plain modules (``nn.Linear`` or ``LowRankLayer``), so lrdlab can decompose, freeze
    and reload each one. Build one from an existing module with :meth:`from_mha`.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 kdim: int | None = None, vdim: int | None = None, batch_first: bool = False) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.kdim, self.vdim = kdim or embed_dim, vdim or embed_dim
        self.dropout, self.batch_first = float(dropout), batch_first
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(self.kdim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(self.vdim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        # Read by nn.TransformerEncoderLayer's fast-path checks: these values send it down its regular path.
        self._qkv_same_embed_dim = False
        self.in_proj_weight: Tensor | None = None
        self.in_proj_bias: Tensor | None = None
        self.bias_k: Tensor | None = None
        self.bias_v: Tensor | None = None
        self.add_zero_attn = False

    @classmethod
    @torch.no_grad()
    def from_mha(cls, mha: nn.MultiheadAttention) -> FactorizedMultiheadAttention:
        """An exact copy of ``mha`` (weights copied, same device and dtype)."""
        reason = unsupported_reason(mha)
        if reason:
            raise ValueError(reason)
        weights = projection_weights(mha)
        bias = weights["q_proj"][1] is not None
        with torch.device("meta"):
            new = cls(mha.embed_dim, mha.num_heads, mha.dropout, bias, mha.kdim, mha.vdim, mha.batch_first)
            new.out_proj = type(mha.out_proj)(mha.embed_dim, mha.embed_dim, bias=bias)  # its class: plan rows name it
        w = mha.out_proj.weight
        new = new.to_empty(device=w.device).to(w.dtype)
        for name, (weight, b) in weights.items():
            layer = getattr(new, name)
            layer.weight.copy_(weight)
            if b is not None:
                layer.bias.copy_(b)
        new.train(mha.training)
        return new

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                need_weights: bool = True, attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        """As ``nn.MultiheadAttention.forward``: ``(output, weights or None)``.

        ``is_causal`` is a hint, as in PyTorch: ``attn_mask`` must hold the causal mask.
        """
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint (as nn.MultiheadAttention)")
        batched = query.dim() == 3
        if not batched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        # now (L, N, E), PyTorch's internal layout
        L, N, _ = query.shape
        S = key.shape[0]
        H, D = self.num_heads, self.head_dim
        q = self.q_proj(query).reshape(L, N * H, D).transpose(0, 1).reshape(N, H, L, D)
        k = self.k_proj(key).reshape(S, N * H, D).transpose(0, 1).reshape(N, H, S, D)
        v = self.v_proj(value).reshape(S, N * H, D).transpose(0, 1).reshape(N, H, S, D)
        mask = _merged_mask(attn_mask, key_padding_mask, N, H, L, S, q.dtype)
        p = self.dropout if self.training else 0.0
        weights: Tensor | None = None
        if need_weights:
            scores = torch.matmul(q * math.sqrt(1.0 / D), k.transpose(-2, -1))
            if mask is not None:
                scores = scores + mask
            attn = torch.softmax(scores, dim=-1)
            if p > 0.0:
                attn = F.dropout(attn, p=p)
            out = torch.matmul(attn, v)
            weights = attn.mean(dim=1) if average_attn_weights else attn
            if not batched:
                weights = weights.squeeze(0)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        out = self.out_proj(out.permute(2, 0, 1, 3).reshape(L, N, self.embed_dim))
        if not batched:
            out = out.squeeze(1)
        elif self.batch_first:
            out = out.transpose(0, 1)
        return out, weights

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, batch_first={self.batch_first}"


def _float_mask(mask: Tensor, dtype: torch.dtype) -> Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    if not torch.is_floating_point(mask):
        raise AssertionError("only bool and floating masks are supported (as nn.MultiheadAttention)")
    return mask.to(dtype)


def _merged_mask(attn_mask: Tensor | None, key_padding_mask: Tensor | None, N: int, H: int, L: int, S: int,
                 dtype: torch.dtype) -> Tensor | None:
    """One additive float mask broadcastable to [N, H, L, S] (True in a bool mask = not allowed, as PyTorch)."""
    mask: Tensor | None = None
    if attn_mask is not None:
        m = _float_mask(attn_mask, dtype)
        if m.dim() == 2 and m.size(0) == L and m.size(1) == S:
            mask = m.reshape(1, 1, L, S)
        elif m.dim() == 3 and m.size(0) == N * H and m.size(1) == L and m.size(2) == S:
            mask = m.reshape(N, H, L, S)
        else:
            raise RuntimeError(f"attn_mask of shape {m.shape} should be ({L}, {S}) or ({N * H}, {L}, {S})")
    if key_padding_mask is not None:
        if key_padding_mask.dim() != 2 or key_padding_mask.size(0) != N or key_padding_mask.size(1) != S:
            raise AssertionError(f"expecting key_padding_mask shape of ({N}, {S}), but got {key_padding_mask.shape}")
        kpm = _float_mask(key_padding_mask, dtype).reshape(N, 1, 1, S)
        mask = kpm if mask is None else mask + kpm
    return mask


# --- what lrdlab can rewrite, and the weights it plans from ---------------------------------------------


def unsupported_reason(mha: nn.Module) -> str | None:
    """Why lrdlab leaves this attention module unchanged, or None when it can rewrite it exactly."""
    if type(mha) is not nn.MultiheadAttention:
        return (f"skipped: {type(mha).__name__} subclasses nn.MultiheadAttention; its forward may differ, "
                "so lrdlab does not rewrite it")
    if mha.bias_k is not None or mha.bias_v is not None:
        return "skipped: nn.MultiheadAttention with add_bias_kv=True is not rewritten by lrdlab"
    if mha.add_zero_attn:
        return "skipped: nn.MultiheadAttention with add_zero_attn=True is not rewritten by lrdlab"
    return None


def projection_weights(mha: nn.MultiheadAttention) -> dict[str, tuple[Tensor, Tensor | None]]:
    """``{"q_proj": (weight [E, E_in], bias), ...}``: views of ``mha``'s parameters, in PyTorch's order."""
    E = mha.embed_dim
    if mha._qkv_same_embed_dim:
        w = mha.in_proj_weight
        ws = (w[:E], w[E:2 * E], w[2 * E:])
    else:
        ws = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
    b = mha.in_proj_bias
    bs = (None, None, None) if b is None else (b[:E], b[E:2 * E], b[2 * E:])
    out: dict[str, tuple[Tensor, Tensor | None]] = {
        name: (weight, bias) for name, weight, bias in zip(PROJECTIONS[:3], ws, bs)}
    out["out_proj"] = (mha.out_proj.weight, mha.out_proj.bias)
    return out


def _view(weight: Tensor, bias: Tensor | None) -> nn.Linear:
    """An ``nn.Linear`` whose parameters share ``weight``/``bias``'s memory (for planning; not trainable)."""
    with torch.device("meta"):
        layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    layer.weight = nn.Parameter(weight.detach(), requires_grad=False)
    if bias is not None:
        layer.bias = nn.Parameter(bias.detach(), requires_grad=False)
    return layer


def projection_views(model: nn.Module) -> dict[str, list[tuple[str, nn.Linear]]]:
    """For each ``nn.MultiheadAttention`` (by name): its q/k/v projections as named ``nn.Linear`` views.

    ``out_proj`` is a real child and needs no view. The names (``<mha>.q_proj`` …) are the plan's row names
    and, after :func:`attach`, the real module names.
    """
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.MultiheadAttention):
            prefix = f"{name}." if name else ""
            weights = projection_weights(m)
            out[name] = [(prefix + p, _view(*weights[p])) for p in PROJECTIONS[:3]]
    return out


def skip_reasons(model: nn.Module) -> dict[str, str]:
    """``{layer name: reason}`` for projections (and encoder-layer MLPs) lrdlab must leave unchanged."""
    reasons = {}
    modules = dict(model.named_modules())
    for name, m in modules.items():
        prefix = f"{name}." if name else ""
        if isinstance(m, nn.MultiheadAttention) and (why := unsupported_reason(m)):
            reasons.update({prefix + p: why for p in PROJECTIONS})
        if (isinstance(m, nn.TransformerEncoderLayer) and not isinstance(m.self_attn, FactorizedMultiheadAttention)
                and (why := unsupported_reason(m.self_attn))):
            for child in ("linear1", "linear2"):
                reasons[prefix + child] = (f"kept: TransformerEncoderLayer's fast path reads {child}.weight and "
                                           f"its self_attn cannot be rewritten ({why.removeprefix('skipped: ')})")
    return reasons


def fastpath_notes(model: nn.Module) -> dict[str, str]:
    """``{layer name: note}`` for plan rows whose decomposition turns a PyTorch attention fast path off."""
    notes = {}
    for name, m in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(m, nn.MultiheadAttention) and unsupported_reason(m) is None:
            notes.update({prefix + p: FASTPATH_NOTE + " (separate q/k/v)" for p in PROJECTIONS})
        if isinstance(m, nn.TransformerEncoderLayer):
            for child in ("linear1", "linear2"):
                notes[prefix + child] = "TransformerEncoderLayer fast path off (its self_attn is rewritten, exact)"
    return notes


# --- applying -------------------------------------------------------------------------------------------


def to_convert(model: nn.Module, names: list[str]) -> list[str]:
    """Names of the ``nn.MultiheadAttention`` modules to replace when the layers ``names`` are decomposed."""
    modules = dict(model.named_modules())
    wanted = set()
    for layer in names:
        parent, _, child = layer.rpartition(".")
        if child in PROJECTIONS and isinstance(modules.get(parent), nn.MultiheadAttention):
            wanted.add(parent)
        if child in ("linear1", "linear2") and isinstance(modules.get(parent), nn.TransformerEncoderLayer):
            attn = f"{parent}.self_attn" if parent else "self_attn"
            if isinstance(modules.get(attn), nn.MultiheadAttention):
                wanted.add(attn)
    return sorted(n for n in wanted if unsupported_reason(modules[n]) is None)


def converted(model: nn.Module, names: list[str]) -> dict[str, FactorizedMultiheadAttention]:
    """Exact replacements for the attention modules that decomposing ``names`` needs (not attached yet)."""
    return {n: FactorizedMultiheadAttention.from_mha(_attention_at(model, n)) for n in to_convert(model, names)}


def _attention_at(model: nn.Module, name: str) -> nn.MultiheadAttention:
    module = model.get_submodule(name)
    if not isinstance(module, nn.MultiheadAttention):
        raise ValueError(f"{name!r} is a {type(module).__name__}, not an nn.MultiheadAttention")
    return module


def attach(model: nn.Module, replacements: Mapping[str, nn.Module]) -> None:
    """Put the replacements in place and turn off the nested-tensor fast path of enclosing TransformerEncoders."""
    for name, new in replacements.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        guards.move_hooks(getattr(parent, child), new)
        setattr(parent, child, new)
    if replacements:
        for m in model.modules():
            if isinstance(m, nn.TransformerEncoder) and any(
                    isinstance(x, FactorizedMultiheadAttention) for x in m.modules()):
                m.use_nested_tensor = False


def unfuse(model: nn.Module) -> nn.Module:
    """Replace, in place, every ``nn.MultiheadAttention`` lrdlab can rewrite by an exact dense
    :class:`FactorizedMultiheadAttention`, and return ``model``.

    Afterwards every projection is a real module that the model calls, so tools that hook or time layers
    by name (``optimize_plan``'s input shapes, widgets) see q/k/v/out like any Linear. PyTorch's fused
    attention fast path is off for these modules (see the module docstring).
    """
    names = [n for n, m in model.named_modules()
             if isinstance(m, nn.MultiheadAttention) and unsupported_reason(m) is None]
    attach(model, {n: FactorizedMultiheadAttention.from_mha(_attention_at(model, n)) for n in names})
    return model
