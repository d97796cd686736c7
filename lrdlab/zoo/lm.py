"""Llama-architecture language models from configs, and the small one trained on the embedded corpus.

``lrdlab.pretrained("llama_pydoc")`` is a ``transformers`` ``LlamaForCausalLM`` (grouped-query attention,
RMSNorm, SwiGLU) over UTF-8 bytes, trained by :func:`train_lm` (``lrdlab.fit``) on the CPython help topics
(:mod:`lrdlab.zoo.text`). Its weights (fp16) and record — config, recipe, command, validation perplexity
beside the unigram and bigram baselines, machine — are ``zoo/weights/llama_pydoc.{pt,json}``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lrdlab.lowrank.hf import require_transformers
from lrdlab.measure.records import read_record, write_record

TINY_LLAMA: dict[str, Any] = {  # the shipped model: ~0.8 M parameters, GQA with 2 key/value heads for 4 query heads
    "vocab_size": 256, "hidden_size": 128, "intermediate_size": 352, "num_hidden_layers": 4,
    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
    "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "bos_token_id": None, "eos_token_id": None,
    "pad_token_id": None,
}
LLAMA_100M: dict[str, Any] = {  # speed only (random weights): decode of this size is bound by memory on a CPU
    "vocab_size": 32000, "hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 12,
    "num_attention_heads": 12, "num_key_value_heads": 4, "max_position_embeddings": 2048,
    "tie_word_embeddings": False, "bos_token_id": None, "eos_token_id": None, "pad_token_id": None,
}
RECIPE: dict[str, Any] = {"seq_len": 128, "batch_size": 32, "epochs": 4, "lr": 4e-3, "optimizer": "adamw",
                          "weight_decay": 0.05, "schedule": "onecycle", "clip_grad_norm": 1.0, "seed": 0}


def llama_from_config(**config: Any) -> nn.Module:
    """A ``LlamaForCausalLM`` with random weights from ``LlamaConfig(**config)`` (float32, eager attention),
    in eval mode. Defaults: :data:`TINY_LLAMA`."""
    transformers = require_transformers()
    cfg = transformers.LlamaConfig(**{**TINY_LLAMA, **config})
    cfg._attn_implementation = "eager"  # same maths on every machine; sdpa is selectable by the caller
    return transformers.LlamaForCausalLM(cfg).eval()


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


def load_lm(info: dict[str, Any], state: dict[str, torch.Tensor]) -> nn.Module:
    """The model a shipped record describes (``info["llama_config"]``) with its (unpacked) weights, in eval mode."""
    model = llama_from_config(**info["llama_config"])
    model.load_state_dict(state)
    return model.eval()


def export_lm(name: str, run_dir: str | Path, *, command: str = "", directory: str | Path | None = None,
              seq_len: int = 128) -> dict[str, Any]:
    """Pack ``run_dir/state_dict.pt`` (from :func:`train_lm`) as fp16 ``NAME.pt`` + ``NAME.json``: config,
    recipe, command, validation perplexity (stored and float32 weights), the n-gram baselines, machine."""
    from lrdlab.finetune.loop import evaluate
    from lrdlab.measure.machine import machine_info
    from lrdlab.zoo.packing import pack_state_dict, unpack_state_dict
    from lrdlab.zoo.text import corpus_info, ngram_perplexity, text_loaders

    run_dir = Path(run_dir)
    directory = Path(directory) if directory is not None else Path(__file__).parent / "weights"
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
        "machine": machine_info("cpu"), "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_record(directory / f"{name}.json", info)
    return info
