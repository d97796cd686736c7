"""HuggingFace models from configs with random weights (nothing is downloaded; extra ``lrdlab[hf]``): Llama, GPT-2
and BERT, and the small Llama trained on the embedded corpus.

``lrdlab.pretrained("llama_pydoc")`` is a ``transformers`` ``LlamaForCausalLM`` (grouped-query attention,
RMSNorm, SwiGLU) over UTF-8 bytes, trained with ``lrdlab.fit`` on the CPython help topics
(:mod:`lrdlab.zoo.text`). Its weights (fp16) and record — config, recipe, command, validation perplexity
beside the unigram and bigram baselines, machine — are ``zoo/weights/llama_pydoc.{pt,json}``, written by the
checkout's ``tools/record/weights.py`` (not in the wheel).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lrdlab.lowrank.hf import require_transformers

if TYPE_CHECKING:
    from lrdlab.zoo.pretrained import PretrainedInfo

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


def gpt2_from_config(**config: Any) -> nn.Module:
    """A ``GPT2LMHeadModel`` with random weights from ``GPT2Config(**config)``, in eval mode."""
    transformers = require_transformers()
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(**config)).eval()


def load_lm(info: PretrainedInfo, state: dict[str, torch.Tensor]) -> nn.Module:
    """The model a shipped record describes (``info.llama_config``) with its (unpacked) weights, in eval mode."""
    model = llama_from_config(**(info.llama_config or {}))
    model.load_state_dict(state)
    return model.eval()
