"""Models by name: one registry shared by the command line, notebooks and benchmarks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torchvision
from torch import nn


@dataclass(frozen=True)
class ModelSpec:
    """How to build a model and the input it expects (C, H, W)."""

    build: Callable[..., nn.Module]
    input_size: tuple[int, int, int]
    num_classes: int
    description: str


def _torchvision(name: str) -> Callable[..., nn.Module]:
    def build(num_classes: int = 1000, weights: str | None = None) -> nn.Module:
        return getattr(torchvision.models, name)(weights=weights, num_classes=num_classes)

    return build


MODELS: dict[str, ModelSpec] = {
    name: ModelSpec(_torchvision(name), (3, 224, 224), 1000, f"torchvision {name}")
    for name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "vit_b_16", "mobilenet_v2")
}


def get_model(name: str, num_classes: int | None = None, weights: str | None = None) -> nn.Module:
    """Build a registered model (random weights unless ``weights`` names torchvision weights)."""
    spec = MODELS.get(name)
    if spec is None:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return spec.build(num_classes=num_classes or spec.num_classes, weights=weights)


def input_size(name: str) -> tuple[int, int, int]:
    """The (C, H, W) input a registered model expects by default."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name].input_size
