"""counting: moved from lrdlab.merge."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_layers(model: nn.Module, exclude_downsample: bool = True) -> int:
    """Conv2d + Linear layers, as P1 Table 2 counts them (downsample convs excluded: ResNet-50 → 50)."""
    return sum(
        1 for name, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear)) and not (exclude_downsample and ".downsample." in f".{name}.")
    )


FLOP_COUNTER = "torch.utils.flop_counter (2 FLOPs per multiply-add; conv/matmul only)"


def count_params(model: nn.Module) -> int:
    """All parameters of ``model`` (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Forward FLOPs of ``model`` on one input of ``input_shape`` (batch included), counted on the meta device."""
    meta = copy.deepcopy(model).to("meta").eval()
    x = torch.empty(tuple(input_shape), device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        meta(x)
    return int(counter.get_total_flops())


def percent_change(before: float, after: float) -> float:
    """Signed change in percent, as the paper's tables print it (−50.00 = halved)."""
    return 100.0 * (after - before) / before
