"""Hugging Face-format save and load of a decomposed causal LM, and a merge back to a dense checkpoint.

:func:`save_hf` writes a directory like ``save_pretrained`` does — ``model.safetensors`` plus ``config.json`` —
but the config's ``model_type`` is ``lrdlab_lowrank`` (the original's type, architectures and the plan are kept
under ``"lrdlab"``). A plain ``AutoModelForCausalLM.from_pretrained(dir)`` therefore raises (unknown model type)
instead of loading the original architecture with random weights where the factors should be; :func:`load_hf`
(no ``trust_remote_code``) rebuilds the original architecture from the kept config, gives it the plan's shape
and loads the factors: the same logits. :func:`merge_to_dense` multiplies the factors back out (``save_pretrained``
of its result loads anywhere, at the original size).

Tied tensors (an output head that is the input embedding) are stored once, with the names that alias them in the
config's ``"lrdlab"`` section. A model transformers dequantized from a GGUF file saves without its GGUF
``quantization_config`` (its weights are plain float tensors), and :func:`merge_to_dense` drops the GGUF quantizer,
so ``save_pretrained`` of the merged model works.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lrdlab.lowrank.decompose import apply_structure, recorded_plan, set_module
from lrdlab.lowrank.hf import config_without_gguf, drop_gguf_quantization, require_transformers
from lrdlab.lowrank.layers import LowRankLayer
from lrdlab.lowrank.plan import Plan

MODEL_TYPE = "lrdlab_lowrank"
WEIGHTS = "model.safetensors"


def shared_entries(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """``(tensors to store, {alias: stored name})``: an entry that is the same tensor as an earlier one (same
    storage, offset, shape and strides: a tied weight) is stored once and named as an alias. Entries that only
    overlap another's memory are copied (safetensors stores no overlapping tensors)."""
    stored: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[Any, ...], str] = {}
    storages: set[int] = set()
    for name, tensor in state.items():
        tensor = tensor.detach()
        pointer = tensor.untyped_storage().data_ptr()
        key = (pointer, tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype)
        if tensor.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        overlaps = tensor.numel() > 0 and pointer in storages
        storages.add(pointer)
        stored[name] = (tensor.clone(memory_format=torch.contiguous_format)  # safetensors stores row-major only
                        if overlaps or not tensor.is_contiguous() else tensor)
    return stored, aliases


def save_hf(model: nn.Module, plan: Plan, directory: str | Path) -> Path:
    """Write ``model`` (what ``decompose(original, plan)`` returned, maybe fine-tuned) to ``directory`` as
    ``model.safetensors`` + ``config.json`` recording the plan; reload with :func:`load_hf`."""
    from safetensors.torch import save_file

    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        raise ValueError(f"save_hf needs a Hugging Face model (with .config), got a {type(model).__name__}; "
                         "use lrdlab.save_decomposed for other models")
    record = recorded_plan(model, plan)
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"{directory} is a file; save_hf needs a folder")
    directory.mkdir(parents=True, exist_ok=True)
    original = config_without_gguf(config)
    stored, aliases = shared_entries(model.state_dict())
    saved = {k: v for k, v in original.items() if k not in ("model_type", "architectures")}
    saved.update(model_type=MODEL_TYPE, architectures=["LrdlabLowRankForCausalLM"], lrdlab={
        "model_type": original.get("model_type"), "architectures": original.get("architectures")
        or [type(model).__name__], "plan": record.to_dict(),
        "attn_implementation": getattr(config, "_attn_implementation", None),  # eager vs sdpa: same logits
        "tied": aliases,  # name → the stored entry it is the same tensor as
        "load_with": "lrdlab.lowrank.hf_save.load_hf(directory); merge_to_dense for a plain checkpoint"})
    save_file(stored, str(directory / WEIGHTS), metadata={"format": "pt", "lrdlab": MODEL_TYPE})
    (directory / "config.json").write_text(json.dumps(saved, indent=1, default=str) + "\n")
    return directory


def _original_model(saved: dict[str, Any]) -> nn.Module:
    transformers = require_transformers()
    info = saved["lrdlab"]
    fields = {k: v for k, v in saved.items() if k not in ("model_type", "architectures", "lrdlab")}
    config = transformers.AutoConfig.for_model(info["model_type"], **fields)
    config.architectures = info["architectures"]
    if info.get("attn_implementation"):
        config._attn_implementation = info["attn_implementation"]
    cls = getattr(transformers, info["architectures"][0], None)
    if cls is None:
        raise ValueError(f"transformers {transformers.__version__} has no class {info['architectures'][0]!r}")
    return cls(config)


def load_hf(directory: str | Path, dtype: torch.dtype | None = None) -> nn.Module:
    """The decomposed model :func:`save_hf` wrote, in eval mode (checked against the plan before loading)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.is_file() or not (directory / WEIGHTS).is_file():
        raise FileNotFoundError(f"{directory} has no config.json and {WEIGHTS}; write it with save_hf")
    try:
        saved = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:  # RecursionError: nested too deeply
        raise ValueError(f"{config_path} is not a JSON config ({type(err).__name__}); write the model with "
                         f"save_hf") from err
    if not isinstance(saved, dict) or saved.get("model_type") != MODEL_TYPE or "lrdlab" not in saved:
        kind = saved.get("model_type") if isinstance(saved, dict) else None
        raise ValueError(f"{directory} is not an lrdlab decomposed model (model_type {kind!r}); "
                         "load a dense checkpoint with transformers' from_pretrained")
    plan = Plan.from_dict(saved["lrdlab"]["plan"])
    model = apply_structure(_original_model(saved), plan)
    state = load_file(str(directory / WEIGHTS))
    for alias, name in saved["lrdlab"].get("tied", {}).items():
        if name not in state:
            raise ValueError(f"{directory}: {alias!r} is tied to {name!r}, which is not in {WEIGHTS}")
        state[alias] = state[name]
    expected = {k for k, _ in model.state_dict().items()}
    if set(state) != expected:
        raise ValueError(f"{directory}: the weights do not fit the plan (missing {sorted(expected - set(state))[:3]}, "
                         f"unexpected {sorted(set(state) - expected)[:3]})")
    model.load_state_dict(state, strict=True)
    return (model.to(dtype) if dtype is not None else model).eval()


@torch.no_grad()
def merge_to_dense(model: nn.Module) -> nn.Module:
    """``model`` with every SVD-form :class:`LowRankLayer` replaced (in place) by the ``nn.Linear`` its factors
    multiply out to: the original architecture, at the original size, for tools that take dense checkpoints.
    A GGUF quantization record left by transformers is dropped, so ``save_pretrained`` of the result works."""
    for name, layer in [(n, m) for n, m in model.named_modules() if isinstance(m, LowRankLayer)]:
        first, last = getattr(layer, "first", None), getattr(layer, "last", None)
        if layer.method != "svd" or not isinstance(first, nn.Linear) or not isinstance(last, nn.Linear):
            raise ValueError(f"layer {name!r} ({layer.method}) is not an SVD-form Linear; merge_to_dense merges "
                             "Linear layers only")
        dense = nn.Linear(first.in_features, last.out_features, bias=last.bias is not None,
                          device=last.weight.device, dtype=last.weight.dtype)
        dense.weight.copy_(last.weight @ first.weight)
        if dense.bias is not None and last.bias is not None:
            dense.bias.copy_(last.bias)
        set_module(model, name, dense)
    return drop_gguf_quantization(model)
