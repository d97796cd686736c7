"""A tiny float64 Llama (hidden 32, GQA 4/2 heads, untied ``lm_head``) for the calibration tests."""

from __future__ import annotations

import torch
from torch import nn


def tiny_llama(layers: int = 2, vocab: int = 48, seed: int = 0) -> nn.Module:
    import transformers

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(config).double().eval()  # lm_head untied: a planned layer outside the stack
