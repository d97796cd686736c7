"""Writing the shipped reference weights (maintainers; not in the wheel): pack a training run as ``NAME.pt`` (fp16)
+ ``NAME.json`` (accuracy or perplexity of the stored weights, recipe, command, machine) in ``lrdlab/zoo/weights/``.

``python -m tools.record pretrained`` runs :func:`export_pretrained` on a run of ``lrdlab train``; the language
model is trained by :func:`train_lm` and packed by :func:`export_lm`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lrdlab.measure.records import read_record, write_record
from lrdlab.zoo.lm import RECIPE, TINY_LLAMA, llama_from_config
from lrdlab.zoo.pretrained import WEIGHTS_DIR, pack_state_dict, unpack_state_dict


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
        "machine": machine_info("cpu").to_dict(),
    }
    write_record(directory / f"{name}.json", info)
    return info


def train_lm(out: str | Path | None = None, *, progress: bool = True, **recipe: Any) -> tuple[nn.Module, Any]:
    """Train :data:`TINY_LLAMA` on the corpus with :func:`lrdlab.fit` by :data:`RECIPE` (overridable);
    returns ``(model, history)`` and, with ``out``, writes ``state_dict.pt`` and ``history.json`` there."""
    from lrdlab.finetune.fit_config import FitConfig
    from lrdlab.finetune.loop import fit, set_seed
    from lrdlab.zoo.text import text_loaders

    r = {**RECIPE, **recipe}
    set_seed(r["seed"])
    model = llama_from_config()
    loaders = text_loaders(r["seq_len"], r["batch_size"], seed=r["seed"])
    config = FitConfig(epochs=r["epochs"], lr=r["lr"], optimizer=r["optimizer"], weight_decay=r["weight_decay"],
                       schedule=r["schedule"], clip_grad_norm=r["clip_grad_norm"], seed=r["seed"], progress=progress,
                       label="llama_pydoc")
    history = fit(model, loaders.train, loaders.test, config)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), out / "state_dict.pt")
        history.to_json(out / "history.json", orient="records", indent=1)
        write_record(out / "recipe.json", r)
    return model.eval(), history


def export_lm(name: str, run_dir: str | Path, *, command: str = "", directory: str | Path | None = None,
              seq_len: int = 128) -> dict[str, Any]:
    """Pack ``run_dir/state_dict.pt`` (from :func:`train_lm`) as fp16 ``NAME.pt`` + ``NAME.json``: config,
    recipe, command, validation perplexity (stored and float32 weights), the n-gram baselines, machine."""
    from lrdlab.finetune.loop import evaluate
    from lrdlab.measure.machine import machine_info
    from lrdlab.zoo.text import corpus_info, ngram_perplexity, text_loaders

    run_dir = Path(run_dir)
    directory = Path(directory) if directory is not None else WEIGHTS_DIR
    state = torch.load(run_dir / "state_dict.pt", map_location="cpu", weights_only=True)
    model = llama_from_config()
    model.load_state_dict(state)
    test = text_loaders(seq_len).test
    fp32 = evaluate(model, test)
    packed = pack_state_dict(state, "fp16")
    model.load_state_dict(unpack_state_dict(packed))
    stored = evaluate(model, test)
    history, recipe = read_record(run_dir / "history.json"), read_record(run_dir / "recipe.json")
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(packed, directory / f"{name}.pt")
    info = {
        "name": name, "kind": "causal_lm", "model": "LlamaForCausalLM", "llama_config": TINY_LLAMA,
        "parameters": sum(p.numel() for p in model.parameters()), "storage": "fp16",
        "bytes": (directory / f"{name}.pt").stat().st_size, "data": corpus_info(), "seq_len": seq_len,
        "validation_perplexity": round(stored["perplexity"], 4),
        "validation_perplexity_fp32": round(fp32["perplexity"], 4),
        "validation_tokens": stored["images"],
        "baselines": {"unigram_perplexity": round(ngram_perplexity(1), 4),
                      "bigram_perplexity": round(ngram_perplexity(2), 4)},
        "command": command, "recipe": recipe,
        "train_s": round(sum(h.get("epoch_s", 0) for h in history), 1),
        "history_perplexity": [round(float(torch.tensor(h["loss"]).exp()), 3) for h in history],
        "machine": machine_info("cpu").to_dict(), "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_record(directory / f"{name}.json", info)
    return info
