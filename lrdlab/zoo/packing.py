"""Compact storage of shipped weights: floats as fp16, or large matrices as per-row int8."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

STORAGES = ("fp16", "int8")
FORMAT = "lrdlab-packed-1"
INT8_MIN_NUMEL = 4096  # smaller tensors (norms, biases) stay fp16


def quantize_int8(t: Tensor) -> dict[str, Tensor]:
    """Symmetric per-row int8: ``t ≈ q · scale`` with one fp32 scale per index of dim 0."""
    rows = t.detach().float().reshape(t.shape[0], -1)
    scale = (rows.abs().amax(1) / 127).clamp_min(1e-12)
    q = torch.round(rows / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return {"q": q.reshape(t.shape), "scale": scale}


def dequantize_int8(packed: dict[str, Tensor]) -> Tensor:
    q, scale = packed["q"], packed["scale"]
    return (q.float().reshape(q.shape[0], -1) * scale[:, None]).reshape(q.shape)


def pack_state_dict(state: dict[str, Tensor], storage: str = "fp16") -> dict[str, Any]:
    """A compact copy of ``state``: floats as fp16, or (``int8``) large ≥2-D floats as per-row int8."""
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {STORAGES} (got {storage!r})")
    tensors: dict[str, Any] = {}
    for key, t in state.items():
        if not t.is_floating_point():
            tensors[key] = t.clone()
        elif storage == "int8" and t.ndim >= 2 and t.numel() >= INT8_MIN_NUMEL:
            tensors[key] = quantize_int8(t)
        else:
            tensors[key] = t.detach().to(torch.float16).clone()
    return {"format": FORMAT, "storage": storage, "tensors": tensors}


def unpack_state_dict(packed: dict[str, Any]) -> dict[str, Tensor]:
    """The float32 ``state_dict`` a packed file stands for."""
    if not isinstance(packed, dict) or packed.get("format") != FORMAT:
        raise ValueError(f"not an lrdlab packed weights file (format {FORMAT!r} expected)")
    out = {}
    for key, t in packed["tensors"].items():
        if isinstance(t, dict):
            out[key] = dequantize_int8(t)
        else:
            out[key] = t.float() if t.is_floating_point() else t
    return out
