"""The input of a probe forward when the user gives none: what the model's own metadata says it takes.

In order: ``model.example_input`` (an attribute a user or library sets), the input :func:`lrdlab.get_model`
recorded, a timm model's ``pretrained_cfg["input_size"]``, a HuggingFace model's forward arguments built from its
config (token ids, ``pixel_values`` of ``image_size``, ``input_values`` of one second of audio, Whisper's
``input_features`` of ``num_mel_bins × 2·max_source_positions``, ``decoder_input_ids`` for encoder-decoders), a
torchvision detection model's list of images, a torchvision video model's clip, and a torchvision image model's
224×224 image. None when nothing is known: the plan then says "not probed" (:mod:`lrdlab.lowrank.usage`).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class ProbeInput:
    """Positional and keyword arguments of one forward, and where they came from (for the plan's note)."""

    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    source: str = ""


def _first_float(model: nn.Module) -> torch.Tensor | None:
    """The model's first floating parameter (a probe input takes its dtype and device), or None."""
    return next((p for p in model.parameters() if p.is_floating_point()), None)


def random_input(model: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    """A random input in the model's dtype and device that leaves torch's global random state alone."""
    p = _first_float(model)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float32 if p is None else p.dtype)
    return x.to("cpu" if p is None else p.device)


def _ids(model: nn.Module, length: int = 8) -> torch.Tensor:
    p = _first_float(model)
    return torch.ones(1, length, dtype=torch.long, device=None if p is None else p.device)


def _sub(config: Any, key: str) -> Any:
    """``config.key``, else the vision / audio sub-config's (CLIP keeps ``image_size`` in ``vision_config``)."""
    for holder in (config, getattr(config, "vision_config", None), getattr(config, "audio_config", None)):
        value = getattr(holder, key, None) if holder is not None else None
        if value is not None:
            return value
    return None


def _hf_kwargs(model: nn.Module) -> dict[str, Any] | None:
    """Keyword arguments for a HuggingFace model's forward, built from its config, or None."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "main_input_name"):
        return None
    try:
        params = set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return None
    kwargs: dict[str, Any] = {}
    if "input_ids" in params and getattr(config, "vocab_size", None) or model.main_input_name == "input_ids":
        kwargs["input_ids"] = _ids(model)
    if "pixel_values" in params and (size := _sub(config, "image_size")):
        hw = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        kwargs["pixel_values"] = random_input(model, (1, _sub(config, "num_channels") or 3, *hw))
    if "input_values" in params:
        kwargs["input_values"] = random_input(model, (1, 16000))
    if "input_features" in params and (mels := getattr(config, "num_mel_bins", None)):
        frames = 2 * (getattr(config, "max_source_positions", None) or 1500)
        kwargs["input_features"] = random_input(model, (1, mels, frames))
    if kwargs and "decoder_input_ids" in params and getattr(config, "is_encoder_decoder", False):
        kwargs["decoder_input_ids"] = _ids(model, 4)
    if model.main_input_name not in kwargs:
        return None
    return kwargs


def _first_conv(model: nn.Module) -> nn.modules.conv._ConvNd | None:
    return next((m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)


def _torchvision(model: nn.Module) -> ProbeInput | None:
    where = type(model).__module__
    if not where.startswith("torchvision.models"):
        return None
    if where.startswith("torchvision.models.detection"):
        size = min(getattr(getattr(model, "transform", None), "min_size", (320,)))
        return ProbeInput((
            [random_input(model, (3, size, size))],), {}, f"one {size}×{size} image (torchvision detection)")
    if where.startswith("torchvision.models.optical_flow"):
        pair = random_input(model, (1, 3, 128, 128))
        return ProbeInput((pair, pair), {}, "two 128×128 frames (torchvision optical flow)")
    conv = _first_conv(model)
    if isinstance(conv, nn.Conv3d):
        return ProbeInput((random_input(model, (1, conv.in_channels, 8, 112, 112)),), {},
                          "a clip [1, 3, 8, 112, 112] (torchvision video)")
    if isinstance(conv, nn.Conv2d):
        return ProbeInput((random_input(model, (1, conv.in_channels, 224, 224)),), {},
                          f"an image [1, {conv.in_channels}, 224, 224] (torchvision)")
    return None


def inferred_input(model: nn.Module) -> ProbeInput | None:
    """The probe input the model's own metadata gives (see the module docstring), or None."""
    example = getattr(model, "example_input", None)
    if example is not None and not callable(example):
        if isinstance(example, dict):
            return ProbeInput((), dict(example), "model.example_input")
        return ProbeInput(tuple(example) if isinstance(example, tuple) else (example,), {}, "model.example_input")
    size = getattr(model, "lrdlab_input_size", None)  # set by lrdlab.get_model
    if size is not None:
        shape = (1, *size)
        return ProbeInput((random_input(model, shape),), {}, f"the registry's input {list(shape)}")
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)  # timm
    if isinstance(cfg, dict) and isinstance(cfg.get("input_size"), (tuple, list)):
        shape = (1, *cfg["input_size"])
        return ProbeInput((random_input(model, shape),), {}, f"timm's input size {list(shape)}")
    kwargs = _hf_kwargs(model)
    if kwargs is not None:
        words = ", ".join(f"{k} {list(v.shape)}" for k, v in kwargs.items())
        return ProbeInput((), kwargs, f"inputs from the HF config ({words})")
    return _torchvision(model)
