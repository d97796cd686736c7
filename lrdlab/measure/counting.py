"""Counted cost: parameters and FLOPs of a model on an input shape."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lrdlab.lowrank.token_batches import model_call, run_model


def count_layers(model: nn.Module, exclude_downsample: bool = True) -> int:
    """Conv2d + Linear layers, as P1 Table 2 counts them (downsample convs excluded: ResNet-50 → 50)."""
    return sum(
        1 for name, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear)) and not (exclude_downsample and ".downsample." in f".{name}.")
    )


FLOP_COUNTER = "torch.utils.flop_counter (2 FLOPs per multiply-add; conv/matmul only)"


def grouped_mm_flops(a_shape: Sequence[int], b_shape: Sequence[int], *args: Any, out_shape: Sequence[int],
                     **kwargs: Any) -> int:
    """FLOPs of ``torch._grouped_mm`` (HF MoE experts' default CPU/GPU kernel), which torch's counter leaves out:
    groups split the rows of a 2-D ``a`` or the columns of a 2-D ``b`` (each output element is a ``K``-long dot
    product), or, both 2-D, the contracted dimension ``K``."""
    if len(a_shape) == 2 and len(b_shape) == 2:
        return 2 * a_shape[0] * a_shape[1] * b_shape[1]
    return 2 * math.prod(out_shape) * a_shape[-1]


def _counter() -> FlopCounterMode:
    return FlopCounterMode(display=False, custom_mapping={torch.ops.aten._grouped_mm: grouped_mm_flops})


def count_params(model: nn.Module) -> int:
    """All parameters of ``model`` (trainable or not); a parameter shared by several modules (tied) counts once."""
    return sum(p.numel() for p in model.parameters())  # parameters() yields each Parameter object once


def count_flops(model: nn.Module, input_shape: Sequence[int] | torch.Tensor | Any,
                dtype: torch.dtype | None = None) -> int:
    """Forward FLOPs of ``model`` on one input (batch included), counted on the meta device.

    ``input_shape`` is a shape (a float input, or ``dtype``: ``torch.long`` for token ids), an example input tensor
    (its shape and dtype are used), or any batch the model's forward takes (a dict of keyword arguments, a tuple,
    a list of images: :func:`~lrdlab.lowrank.token_batches.model_call`), counted on the real model. A model whose
    forward needs real values (some HuggingFace models check their inputs) is counted on the example itself.
    Counting runs in eval mode, without gradients, with the parameters' ``requires_grad`` switched off meanwhile
    (torch's module tracker fails on some models otherwise: HF Mamba, DeBERTa-v2) and restored. ``torch._grouped_mm``
    (HF MoE experts) is counted too (:func:`grouped_mm_flops`).
    """
    if not isinstance(input_shape, torch.Tensor) and not _is_shape(input_shape):
        return _count_real(model, model_call(model, input_shape))
    example = input_shape if isinstance(input_shape, torch.Tensor) else None
    if example is not None and dtype is None:
        dtype = example.dtype
    shape = tuple(example.shape) if example is not None else tuple(input_shape)
    meta = copy.deepcopy(model).to("meta").eval().requires_grad_(False)
    try:
        with _counter() as counter, torch.no_grad():
            meta(torch.zeros(shape, dtype=dtype, device="meta"))
    except (NotImplementedError, RuntimeError):
        real = example if example is not None else torch.zeros(shape, dtype=dtype)
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        return _count_real(model, real.to(device))
    return int(counter.get_total_flops())


def _is_shape(value: Any) -> bool:
    return isinstance(value, Sequence) and all(isinstance(d, int) and not isinstance(d, bool) for d in value)


def _count_real(model: nn.Module, call: Any) -> int:
    """FLOPs of ``model`` on ``call`` (a tensor or a ModelCall), in eval mode without gradients, restored after."""
    was_training = model.training
    grads = {p: p.requires_grad for p in model.parameters()}
    try:
        model.eval().requires_grad_(False)
        with _counter() as counter, torch.no_grad():
            run_model(model, call)
    finally:
        model.train(was_training)
        for p, flag in grads.items():
            p.requires_grad_(flag)
    return int(counter.get_total_flops())


def percent_change(before: float, after: float) -> float:
    """Signed change in percent, as the paper's tables print it (−50.00 = halved)."""
    return 100.0 * (after - before) / before


def structure_row(name: str, model: nn.Module, original: nn.Module, input_shape: Sequence[int]) -> dict[str, Any]:
    """Layers (P1's count), params and forward FLOPs of ``model``, and their % change vs ``original``."""
    p0, p1 = count_params(original), count_params(model)
    f0, f1 = count_flops(original, input_shape), count_flops(model, input_shape)
    return {
        "method": name, "layers": count_layers(model), "params": p1, "params_pct": percent_change(p0, p1),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "flops": f1, "flops_pct": percent_change(f0, f1),
    }
