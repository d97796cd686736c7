"""The tiny Llama every text test builds: random weights, GQA (4 query heads, 2 key/value heads), byte vocabulary."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

TINY_LLAMA_TEST: dict[str, Any] = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)


@pytest.fixture(scope="session")
def tiny_llama() -> Callable[..., nn.Module]:
    """A factory: ``tiny_llama(seed=0, **config)`` is a fresh random-weight tiny Llama (eval mode, seeded)."""
    pytest.importorskip("transformers")
    from lrdlab.zoo.lm import llama_from_config

    def make(seed: int = 0, **config: Any) -> nn.Module:
        torch.manual_seed(seed)
        return llama_from_config(**{**TINY_LLAMA_TEST, **config})

    return make
