"""Trained reference models shipped inside the package: ``lrdlab.pretrained("resnet20_mnist5k")``.

Each model is a weights file ``weights/NAME.pt`` (≤ 2 MB) with ``weights/NAME.json`` beside it: the
registered architecture, how it was trained (the ``lrdlab train`` command and its recipe), the test
accuracy of the *stored* weights on the MNIST-5k test split and the machine. Weights are stored in
fp16, or as int8 with one fp32 scale per output row (symmetric, per-channel) where fp16 would not fit
in 2 MB; both are expanded to float32 on load. Re-create a file with::

    lrdlab train resnet20 --data mnist5k --epochs 8 --lr 0.1 --out runs/pretrained/resnet20_mnist5k
    python -m tools.record pretrained resnet20_mnist5k runs/pretrained/resnet20_mnist5k --model resnet20 \\
        --storage fp16 --train-command "lrdlab train resnet20 ..."
"""

from __future__ import annotations

import html
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lrdlab.measure.records import check_fields, read_record

# --- compact storage of shipped weights: floats as fp16, or large matrices as per-row int8 -------------

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


WEIGHTS_DIR = Path(__file__).parent / "weights"
STEMS: dict[str, tuple[str, ...]] = {"resnet": ("conv1",), "vit": ("conv_proj", "heads.head")}  # by family


def kept_stem(arch: str) -> list[str]:
    """The stem layers lrdlab keeps whole when it plans a model of this architecture (``exclude=``).

    The stem sees 3 input channels: its re-solved rank is not a position on its channel spectrum, and it
    holds few parameters (report F10). Families by name prefix: ``resnet*`` → ``conv1``, ``vit*`` →
    ``conv_proj`` and the classifier ``heads.head`` (its 2x rank is 4 for 10 classes); other architectures keep
    nothing.
    """
    return next((list(stem) for family, stem in STEMS.items() if arch.startswith(family)), [])


def available() -> list[str]:
    """Names of the shipped reference models."""
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.json") if (WEIGHTS_DIR / f"{p.stem}.pt").is_file())


def _check_name(name: str) -> None:
    from lrdlab.zoo.smollm import LANGUAGE_MODELS

    names = available()
    if name not in names:
        raise ValueError(f"no pretrained model named {name!r}; available: {', '.join(names) or 'none'}; "
                         f"language models (lrdlab[lm]): {', '.join(LANGUAGE_MODELS)}")


@dataclass(frozen=True)
class PretrainedInfo:
    """The record beside a shipped model's weights: architecture, data, how it was trained, its score, machine.

    An image classifier has ``num_classes`` … ``test_loss``; the byte language model (``kind="causal_lm"``) has
    ``llama_config`` … ``recorded``; the other kind's fields are None. ``str()`` is a line for a notebook;
    :meth:`to_dict` is the JSON file's form (the fields that are set)."""

    name: str
    model: str
    storage: str
    bytes: int
    data: str | dict[str, Any]
    command: str
    recipe: dict[str, Any]
    machine: dict[str, Any]
    kind: str | None = None
    num_classes: int | None = None
    input_size: list[int] | None = None
    split: str | None = None
    test_accuracy: float | None = None
    test_accuracy_fp32: float | None = None
    test_loss: float | None = None
    llama_config: dict[str, Any] | None = None
    parameters: int | None = None
    seq_len: int | None = None
    validation_perplexity: float | None = None
    validation_perplexity_fp32: float | None = None
    validation_tokens: int | None = None
    baselines: dict[str, Any] | None = None
    train_s: float | None = None
    history_perplexity: list[float] | None = None
    recorded: str | None = None

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> PretrainedInfo:
        check_fields(cls, record, f"pretrained record {record.get('name')!r}")
        return cls(**record)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def __str__(self) -> str:
        data = self.data if isinstance(self.data, str) else self.data.get("name", "text")
        if self.test_accuracy is not None:
            score = f"test accuracy {self.test_accuracy:.1f}% on the {self.split} split"
        elif self.validation_perplexity is not None:
            score = f"validation perplexity {self.validation_perplexity:.2f}"
        else:
            score = "no recorded score"
        cpu = self.machine.get("cpu", "?")
        return (f"{self.name}: {self.model} trained on {data}, {score}; stored {self.storage} ({self.bytes:,} bytes); "
                f"trained on {cpu} by `{self.command}`")

    def _repr_html_(self) -> str:
        return f"<p>{html.escape(str(self))}</p>"


def pretrained_info(name: str) -> PretrainedInfo:
    """The record beside the weights: model, recipe, command, accuracy, machine."""
    _check_name(name)
    return PretrainedInfo.from_dict(read_record(WEIGHTS_DIR / f"{name}.json"))


def trained(weights: str | Path, model: str) -> tuple[nn.Module, dict[str, Any]]:
    """``(model in eval mode, where its weights came from)`` for a shipped name (``vit_tiny_mnist5k``) or a
    state_dict file of the registered ``model`` (``lrdlab train``'s ``state_dict.pt``)."""
    from lrdlab.zoo.models import get_model

    if str(weights) in available():
        return pretrained(str(weights)), {"source": f"lrdlab.pretrained({str(weights)!r})",
                                          "training": pretrained_info(str(weights)).to_dict()}
    if not Path(weights).is_file():
        raise ValueError(f"weights {str(weights)!r} is neither a shipped model ({', '.join(available())}) "
                         "nor a state_dict file")
    net = get_model(model, num_classes=10, weights=str(weights)).eval()
    info: dict[str, Any] = {"source": f"weights {Path(weights).name}"}
    notes = Path(weights).with_suffix(".json")  # how the weights were trained, when recorded beside them
    if notes.is_file():
        info["training"] = read_record(notes.absolute())
    return net, info


# --- loading -------------------------------------------------------------------------------------------


def pretrained(name: str) -> nn.Module:
    """A trained reference model in eval mode, e.g. ``pretrained("resnet20_mnist5k")`` (see :func:`available`).

    Inputs: MNIST-5k as :func:`lrdlab.get_loaders` gives it (3×32×32, normalised); 10 classes.
    ``pretrained("smollm2_135m")`` is the real language model SmolLM2-135M-Instruct (extra ``lrdlab[lm]``; its
    tokenizer: :func:`lrdlab.zoo.smollm.load_smollm2`).
    """
    from lrdlab.zoo.models import get_model
    from lrdlab.zoo.smollm import LANGUAGE_MODELS, load_smollm2

    if name in LANGUAGE_MODELS:
        return load_smollm2().model

    info = pretrained_info(name)
    packed = torch.load(WEIGHTS_DIR / f"{name}.pt", map_location="cpu", weights_only=True)
    if info.kind == "causal_lm":  # a language model over bytes (lrdlab.zoo.lm)
        from lrdlab.zoo.lm import load_lm

        return load_lm(info, unpack_state_dict(packed))
    model = get_model(info.model, num_classes=info.num_classes)
    model.load_state_dict(unpack_state_dict(packed))
    return model.eval()
