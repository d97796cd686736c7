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

from pathlib import Path
from typing import Any

import torch
from torch import nn

from lrdlab.measure.records import read_record, write_record
from lrdlab.zoo.packing import (  # noqa: F401  (re-exported: one place to pack and unpack shipped weights)
    FORMAT,
    STORAGES,
    dequantize_int8,
    pack_state_dict,
    quantize_int8,
    unpack_state_dict,
)

WEIGHTS_DIR = Path(__file__).parent / "weights"
STEMS: dict[str, tuple[str, ...]] = {"resnet": ("conv1",), "vit": ("conv_proj", "heads.head")}  # by family


def kept_stem(arch: str) -> list[str]:
    """The stem layers lrdlab keeps whole when it plans a model of this architecture (``exclude=``).

    The stem sees 3 input channels: its re-solved rank is not a position on its channel spectrum, and it
    holds few parameters (report F10). Families by name prefix: ``resnet*`` → ``conv1``, ``vit*`` →
    ``conv_proj`` and the classifier ``heads.head`` (its 2x rank is 4 for 10 classes: the calibrated ViT-tiny at
    2x scores 50% with it decomposed, 97.6% with it kept); other architectures keep nothing.
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


def pretrained_info(name: str) -> dict[str, Any]:
    """The JSON record beside the weights: model, recipe, command, accuracy, machine."""
    _check_name(name)
    return read_record(WEIGHTS_DIR / f"{name}.json")


def trained(weights: str | Path, model: str) -> tuple[nn.Module, dict[str, Any]]:
    """``(model in eval mode, where its weights came from)`` for a shipped name (``vit_tiny_mnist5k``) or a
    state_dict file of the registered ``model`` (``lrdlab train``'s ``state_dict.pt``)."""
    from lrdlab.zoo.models import get_model

    if str(weights) in available():
        return pretrained(str(weights)), {"source": f"lrdlab.pretrained({str(weights)!r})",
                                          "training": pretrained_info(str(weights))}
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
    if info.get("kind") == "causal_lm":  # a language model over bytes (lrdlab.zoo.lm)
        from lrdlab.zoo.lm import load_lm

        return load_lm(info, unpack_state_dict(packed))
    model = get_model(info["model"], num_classes=info["num_classes"])
    model.load_state_dict(unpack_state_dict(packed))
    return model.eval()


# --- writing (maintainers) -----------------------------------------------------------------------------


def export_pretrained(name: str, run_dir: str | Path, model_name: str, *, storage: str = "fp16",
                      command: str = "", data: str = "mnist5k", directory: str | Path = WEIGHTS_DIR,
                      batch_size: int = 250) -> dict[str, Any]:
    """Pack ``run_dir/state_dict.pt`` (from ``lrdlab train``) as ``NAME.pt`` + ``NAME.json`` in ``directory``.

    The JSON records the accuracy of the stored (packed) weights and of the float32 ones on ``data``'s
    test split, the recipe (``run_dir/history.json``), ``command`` and the machine.
    """
    from lrdlab.finetune.loop import evaluate
    from lrdlab.measure.machine import machine_info
    from lrdlab.zoo.data import Images, get_loaders
    from lrdlab.zoo.models import get_model, input_size

    run_dir, directory = Path(run_dir), Path(directory)
    state = torch.load(run_dir / "state_dict.pt", map_location="cpu", weights_only=True)
    loaders = get_loaders(data, batch_size, Images(channels=input_size(model_name)[0]))
    model = get_model(model_name, num_classes=loaders.num_classes)
    model.load_state_dict(state)
    fp32 = evaluate(model, loaders.test)
    packed = pack_state_dict(state, storage)
    model.load_state_dict(unpack_state_dict(packed))
    stored = evaluate(model, loaders.test)
    history = read_record(run_dir / "history.json") if (run_dir / "history.json").is_file() else []
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(packed, directory / f"{name}.pt")
    info = {
        "name": name, "model": model_name, "num_classes": loaders.num_classes,
        "input_size": list(input_size(model_name)),
        "data": data, "split": "MNIST-5k: 4,000 train / 1,000 test (stratified, seed 0)",
        "storage": storage, "bytes": (directory / f"{name}.pt").stat().st_size,
        "test_accuracy": round(stored["accuracy"], 2), "test_accuracy_fp32": round(fp32["accuracy"], 2),
        "test_loss": round(stored["loss"], 4), "command": command,
        "recipe": {"epochs": len(history), "train_s": round(sum(h.get("epoch_s", 0) for h in history), 1),
                   "final_train_accuracy": history[-1].get("train_accuracy") if history else None,
                   "history_accuracy": [round(h["accuracy"], 2) for h in history]},
        "machine": machine_info("cpu"),
    }
    write_record(directory / f"{name}.json", info)
    return info
