"""HuggingFace ``transformers`` layers lrdlab decomposes (optional extra ``lrdlab[hf]``); nothing here imports it.

- GPT-2's ``transformers.pytorch_utils.Conv1D`` is a Linear whose weight is stored transposed, ``[in, out]``
  (``y = x @ W + b``). lrdlab plans and decomposes it as the Linear ``W.T`` with the ``svd`` method; the
  result is the usual ``LowRankLayer`` of two ``nn.Linear`` (``first`` in→R, ``last`` R→out with the bias),
  whose ``weight`` reads ``[out, in]`` (the Linear form). GPT-2's fused ``c_attn`` (q, k, v in one Conv1D) is
  decomposed as one matrix: that is how the model calls it.
- BERT and most other HF models use ``nn.Linear``: nothing special.
- Tied input/output embeddings (``lm_head.weight is wte.weight``) are found by the generic shared-parameter
  check (:func:`lrdlab.lowrank.guards.shared_reasons`) and left unchanged with a reason, unless the plan unties
  the output head (:mod:`lrdlab.lowrank.lm_head`).
- A model transformers loaded from a GGUF file is dequantized to plain float tensors but keeps a GGUF
  ``quantization_config`` and quantizer, which make ``save_pretrained`` refuse it: :func:`drop_gguf_quantization`.

Models built from configs (no download) are in :mod:`lrdlab.zoo.lm`.
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


def _is_gguf(quantization: Any) -> bool:
    method = quantization.get("quant_method") if isinstance(quantization, dict) else \
        getattr(quantization, "quant_method", None)
    return str(getattr(method, "value", method)) == "gguf"  # a QuantizationMethod enum or its string


def is_gguf_quantized(model: nn.Module) -> bool:
    """True for a model transformers loaded with ``gguf_file=``: its config names GGUF as its quantization."""
    return _is_gguf(getattr(getattr(model, "config", None), "quantization_config", None))


def drop_gguf_quantization(model: nn.Module) -> nn.Module:
    """``model`` (in place) without the GGUF quantization record and quantizer transformers leaves on a model it
    dequantized from a GGUF file (its weights are plain float tensors), so that ``save_pretrained`` accepts it.
    Other quantization methods are left as they are."""
    if not is_gguf_quantized(model):
        return model
    config: Any = getattr(model, "config", None)
    del config.quantization_config
    for attribute, value in (("hf_quantizer", None), ("is_quantized", False), ("quantization_method", None)):
        if attribute in vars(model):
            setattr(model, attribute, value)
    return model


def config_without_gguf(config: Any) -> dict[str, Any]:
    """``config.to_dict()`` without a GGUF ``quantization_config`` (the dequantized weights need none)."""
    fields: dict[str, Any] = config.to_dict()
    if _is_gguf(fields.get("quantization_config")):
        fields.pop("quantization_config")
    return fields

