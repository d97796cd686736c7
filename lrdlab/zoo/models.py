"""Models by name: one registry shared by the command line, notebooks and benchmarks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from lrdlab.zoo import cifar_models


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


def _lrdlab(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    def build(num_classes: int = 10, weights: str | None = None) -> nn.Module:
        if weights is not None:
            raise ValueError(f"{fn.__name__} has no published weights; pass a local file path as weights")
        return fn(num_classes=num_classes)

    return build


MODELS: dict[str, ModelSpec] = {
    name: ModelSpec(_torchvision(name), (3, 224, 224), 1000, f"torchvision {name}")
    for name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "vit_b_16", "mobilenet_v2")
}
MODELS.update({
    "resnet20": ModelSpec(_lrdlab(cifar_models.resnet20), (3, 32, 32), 10, "He et al. CIFAR ResNet-20 (option A)"),
    "resnet32": ModelSpec(_lrdlab(cifar_models.resnet32), (3, 32, 32), 10, "He et al. CIFAR ResNet-32 (option A)"),
    "resnet56": ModelSpec(_lrdlab(cifar_models.resnet56), (3, 32, 32), 10, "He et al. CIFAR ResNet-56 (option A)"),
    "vit_tiny": ModelSpec(_lrdlab(cifar_models.vit_tiny), (3, 32, 32), 10,
                          "torchvision ViT, 32x32, patch 4, 6 layers, dim 192"),
})


def _state_dict_from_file(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):  # common checkpoint wrappers (lrdlab's own checkpoints use "model")
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds no state_dict (got {type(state).__name__})")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_weights(model: nn.Module, path: str | Path) -> list[str]:
    """Load a local ``state_dict`` file into ``model``; returns the keys skipped for a shape mismatch.

    Keys whose shape differs (typically the classifier, when ``num_classes`` differs from the file's)
    keep their fresh initialisation; any other missing or unexpected key is an error.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"weights file {path} not found; pass the path of a saved state_dict (.pt/.pth)")
    state = _state_dict_from_file(path)
    own = model.state_dict()
    skipped = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    result = model.load_state_dict({k: v for k, v in state.items() if k not in skipped}, strict=False)
    missing = [k for k in result.missing_keys if k not in skipped]
    if missing or result.unexpected_keys:
        raise ValueError(f"weights file {path} does not fit this model: missing {missing[:5]}, "
                         f"unexpected {result.unexpected_keys[:5]}; was it saved from the same architecture?")
    return skipped


def _is_file_like(weights: str) -> bool:
    return Path(weights).suffix in (".pt", ".pth", ".bin") or Path(weights).is_file() or "/" in weights


def get_model(name: str, num_classes: int | None = None, weights: str | Path | None = None) -> nn.Module:
    """Build a registered model, with random weights unless ``weights`` is given.

    ``weights`` is either a local file holding a ``state_dict`` (any model; no download: this is how
    users with pretrained weights use them offline), or a torchvision weights name such as
    ``"IMAGENET1K_V1"`` (torchvision models only; torchvision downloads it unless it is cached).
    """
    spec = MODELS.get(name)
    if spec is None:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    classes = num_classes or spec.num_classes
    if weights is not None and _is_file_like(str(weights)):
        model = spec.build(num_classes=classes, weights=None)
        load_weights(model, weights)
    else:
        model = spec.build(num_classes=classes, weights=weights)
    setattr(model, "lrdlab_name", name)  # noqa: B010 - make_plan records it: a plan names the registered model
    setattr(model, "lrdlab_input_size", tuple(spec.input_size))  # noqa: B010 - calibration errors name the shape
    return model


def input_size(name: str) -> tuple[int, int, int]:
    """The (C, H, W) input a registered model expects by default."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name].input_size
