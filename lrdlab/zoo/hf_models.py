"""HuggingFace models from configs with random weights (optional extra ``lrdlab[hf]``; nothing is downloaded)."""

from __future__ import annotations

from typing import Any

from torch import nn

from lrdlab.lowrank.hf import require_transformers


def gpt2_from_config(**config: Any) -> nn.Module:
    """A ``GPT2LMHeadModel`` with random weights from ``GPT2Config(**config)``, in eval mode."""
    transformers = require_transformers()
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(**config)).eval()


def bert_from_config(**config: Any) -> nn.Module:
    """A ``BertModel`` with random weights from ``BertConfig(**config)``, in eval mode."""
    transformers = require_transformers()
    return transformers.BertModel(transformers.BertConfig(**config)).eval()
