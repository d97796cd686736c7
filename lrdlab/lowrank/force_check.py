"""The full-rank check of layers a plan decomposes because ``Layers(force=...)`` names them.

A forced layer was kept for a reason (its own ``forward``, its weight read elsewhere, ...), so plain factors may
compute something else. Before a plan decomposes it, :func:`check_forced` replaces it by its factors at full rank
(which reproduce the plain layer exactly) and compares on the probe input: the layer's own output where the forward
calls it, else the model's output. A layer whose output moves more than round-off is refused with the measured
error; nothing of the user's model changes (a swapped layer is put back, modes and the random state restored).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils import _pytree

from lrdlab.lowrank import usage
from lrdlab.lowrank.layers import decompose_layer, describe
from lrdlab.lowrank.methods import default_method

RELATIVE_TOLERANCE = 1e-4  # full-rank factors reproduce a plain float32 layer to ~1e-6 (relative RMS)


def tolerance(dtype: torch.dtype) -> float:
    """The relative output error a full-rank decomposition may show from round-off alone in ``dtype``."""
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else 0.0
    return max(RELATIVE_TOLERANCE, 30 * eps)


def _floats(output: Any) -> list[Tensor]:
    return [t for t in _pytree.tree_leaves(output) if isinstance(t, Tensor) and t.is_floating_point()]


def output_error(expected: Any, actual: Any) -> tuple[float, float]:
    """``(RMS of the difference, RMS of expected)`` over the floating tensors of two outputs of one structure."""
    a, b = _floats(expected), _floats(actual)
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        return math.inf, 0.0
    count = sum(x.numel() for x in a) or 1
    diff = sum(float((y.double() - x.double()).pow(2).sum()) for x, y in zip(a, b))
    scale = sum(float(x.double().pow(2).sum()) for x in a)
    return math.sqrt(diff / count), math.sqrt(scale / count)


@contextmanager
def _quiet_eval(model: nn.Module) -> Iterator[None]:
    """Eval mode, no grad, torch's random state untouched; every module's mode restored afterwards."""
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            yield
    finally:
        for m, mode in modes.items():
            m.training = mode


def _full_rank(module: nn.Module) -> nn.Module:
    info = describe(module)
    form = default_method(info)
    return decompose_layer(module, form, form.full_ranks(info))


def _swap(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    old = parent.get_submodule(child)
    setattr(parent, child, new)
    return old


def check_forced(model: nn.Module, forced: dict[str, nn.Module], example_input: Any = None,
                 input_shape: Sequence[int] | None = None) -> None:
    """``ValueError`` unless every forced layer, decomposed at full rank, reproduces its output on the probe input."""
    if not forced:
        return
    found = usage.probe_input(model, example_input, input_shape)
    names = list(forced)
    if found is None:
        raise ValueError(f"Layers(force={names}) decomposes layers lrdlab would keep, so each is first checked at "
                         f"full rank on an input: pass Layers(input_shape=...) or Layers(example_input=...)")
    args, kwargs, where, _ = found
    seen: dict[str, tuple[tuple, Any]] = {}

    def recorder(name: str) -> Any:
        def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
            seen.setdefault(name, (inputs, output))
        return hook

    owned = dict(model.named_modules())
    forced = {n: m for n, m in forced.items() if owned.get(n) is m}  # attention q/k/v views: rewritten exactly
    handles = [m.register_forward_hook(recorder(n)) for n, m in forced.items()]
    with _quiet_eval(model):
        try:
            expected = model(*args, **kwargs)
        finally:
            for h in handles:
                h.remove()
        for name, module in forced.items():
            full = _full_rank(module)
            if name in seen:  # the forward calls it: compare the layer's own output on its own input
                inputs, output = seen[name]
                actual, target = full(*inputs), output
            else:  # used some other way (its weight read): compare the model's output with it swapped in
                old = _swap(model, name, full)
                try:
                    actual, target = model(*args, **kwargs), expected
                finally:
                    _swap(model, name, old)
            error, scale = output_error(target, actual)
            dtype = next((t.dtype for t in _floats(target)), torch.float32)
            if not error <= tolerance(dtype) * max(scale, 1e-30):
                what = "its output" if name in seen else "the model's output"
                raise ValueError(
                    f"Layers(force=[{name!r}]): {type(module).__name__} {name!r} decomposed at full rank changes "
                    f"{what} on {where} by {error:.3g} (RMS; the output's RMS is {scale:.3g}), so plain factors "
                    f"do not compute what its forward does; remove it from force (it stays whole)")
