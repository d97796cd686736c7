"""HuggingFace ``transformers`` layers lrdlab decomposes (optional extra ``lrdlab[hf]``); nothing here imports it.

- GPT-2's ``transformers.pytorch_utils.Conv1D`` is a Linear whose weight is stored transposed, ``[in, out]``
  (``y = x @ W + b``). lrdlab plans and decomposes it as the Linear ``W.T`` with the ``svd`` method; the
  result is the usual ``LowRankLayer`` of two ``nn.Linear`` (``first`` in→R, ``last`` R→out with the bias),
  whose ``weight`` reads ``[out, in]`` (the Linear form). GPT-2's fused ``c_attn`` (q, k, v in one Conv1D) is
  decomposed as one matrix: that is how the model calls it.
- BERT and most other HF models use ``nn.Linear``: nothing special.
- Tied input/output embeddings (``lm_head.weight is wte.weight``) are found by the generic shared-parameter
  check (:mod:`lrdlab.lowrank.sharing`) and left unchanged with a reason.

Models built from configs (no download) are in :mod:`lrdlab.zoo.hf_models`.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

INSTALL_HINT = "HuggingFace support needs transformers: pip install 'lrdlab[hf]' (or pip install transformers)"


def is_conv1d(module: nn.Module) -> bool:
    """True for ``transformers``' ``Conv1D`` (GPT-2, GPT, …), recognised by class name and module."""
    cls = type(module)
    return cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers")


def conv1d_weight(module: nn.Module) -> Tensor:
    """A Conv1D's weight as a Linear's ``[out, in]`` (a transposed view, no copy)."""
    weight = module.weight
    if not isinstance(weight, Tensor):
        raise ValueError(f"a {type(module).__name__} without a weight tensor")
    return weight.T


def require_transformers() -> Any:
    """Import and return ``transformers``, or raise an ImportError that says how to install it."""
    try:
        import transformers
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(INSTALL_HINT) from err
    return transformers
