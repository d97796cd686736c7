"""Models by name: one registry shared by the command line, notebooks and benchmarks."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torch.overrides import TorchFunctionMode

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


# the random fills that take a generator but no signature to read (C methods and functions)
_RANDOM_BUILTINS = frozenset({
    torch.Tensor.uniform_, torch.Tensor.normal_, torch.Tensor.random_, torch.Tensor.exponential_,
    torch.Tensor.bernoulli_, torch.Tensor.cauchy_, torch.Tensor.log_normal_, torch.Tensor.geometric_,
    torch.rand, torch.randn, torch.randint, torch.randperm, torch.normal, torch.bernoulli, torch.multinomial,
    torch.poisson})


@functools.cache
def _draws(func: Callable[..., Any]) -> bool:
    """Whether ``func`` draws random numbers from a ``generator`` argument (``torch.nn.init``'s functions too)."""
    if func in _RANDOM_BUILTINS:
        return True
    try:
        return "generator" in inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False


def _hashable(func: Any) -> bool:
    try:
        hash(func)
    except TypeError:
        return False
    return True


class _PrivateGenerator(TorchFunctionMode):
    def __init__(self, generator: torch.Generator) -> None:
        super().__init__()
        self.generator = generator

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = dict(kwargs or {})
        if kwargs.get("generator") is None and _hashable(func) and _draws(func):
            kwargs["generator"] = self.generator
        return func(*args, **kwargs)


@contextmanager
def private_random(seed: int) -> Iterator[None]:
    """Within the block, this thread's random fills (``torch.nn.init``, ``Tensor.normal_``, ``torch.randn`` …)
    draw from a private generator seeded with ``seed``: a model built here gets the weights it gets after
    ``torch.manual_seed(seed)``, and the global random stream, which other threads draw from meanwhile, is neither
    read nor moved (``fork_rng`` would rewind their draws). The mode is thread-local, like every torch function
    mode. Dropout's draws (no generator argument) are not redirected: build models here, do not train them."""
    with _PrivateGenerator(torch.Generator().manual_seed(seed)):
        yield


def input_size(name: str) -> tuple[int, int, int]:
    """The (C, H, W) input a registered model expects by default."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name].input_size
