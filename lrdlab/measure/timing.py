"""Measured speed: the steps (one batch of a model, one call of a layer) and the clock that times them.

Every number here is measured, never assumed: warm-up runs, then ``repeats`` timed runs
(``time.perf_counter`` on CPU; CUDA events with a synchronisation on GPU), reported as the median
with the first and third quartiles. Comparisons run interleaved (:mod:`lrdlab.measure.interleave`,
:func:`lrdlab.measure.compare.compare`) so slow drift of a shared machine hits every variant alike.
"""

from __future__ import annotations

import contextlib
import copy
import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from lrdlab.finetune.inputs import check_device

DTYPES = {None: None, "fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
MODES = ("inference", "train")


# --- checking inputs ---------------------------------------------------------------------------------


def check_shape(input_shape: Sequence[int], what: str = "input_shape") -> tuple[int, ...]:
    """A full input shape (batch first) of positive ints, or a ValueError."""
    try:
        shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} must be a sequence of ints like (8, 3, 224, 224), got {input_shape!r}") from err
    if len(shape) < 2:
        raise ValueError(f"{what} must include the batch dimension, e.g. (8, 3, 224, 224); got {shape}")
    if shape[0] < 1:
        raise ValueError(f"batch size must be >= 1 (got {shape[0]} in {what}={shape})")
    if any(s < 1 for s in shape):
        raise ValueError(f"every dimension of {what} must be >= 1 (got {shape})")
    return shape


def check_dtype(dtype: str | None) -> str:
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be None/'fp32', 'bf16' or 'fp16' (autocast), got {dtype!r}")
    return dtype or "fp32"


def check_counts(warmup: int, repeats: int) -> None:
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive int (got {repeats!r})")
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be a non-negative int (got {warmup!r})")


# --- timing ------------------------------------------------------------------------------------------


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_function(
    fn: Callable[[], Any],
    device: str | torch.device = "cpu",
    warmup: int = 3,
    repeats: int = 10,
    timer: Callable[[], float] | None = None,
) -> list[float]:
    """Seconds per call of ``fn`` for ``repeats`` calls after ``warmup`` untimed ones.

    On CUDA each call is bracketed by CUDA events and synchronised; on CPU ``timer`` (default
    ``time.perf_counter``) is read before and after. ``timer`` is injectable for tests.
    """
    check_counts(warmup, repeats)
    dev = check_device(device)
    for _ in range(warmup):
        fn()
    sync(dev)
    times = []
    if dev.type == "cuda" and timer is None:
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000.0)
        return times
    clock = timer or time.perf_counter
    for _ in range(repeats):
        t0 = clock()
        fn()
        sync(dev)
        times.append(clock() - t0)
    return times


def quartiles(times: Sequence[float]) -> tuple[float, float, float]:
    """(q1, median, q3) with the 'inclusive' method (linear interpolation; one value → all equal)."""
    if not times:
        raise ValueError("no times to summarise")
    if len(times) == 1:
        return times[0], times[0], times[0]
    q1, med, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return q1, statistics.median(times), q3


def _autocast(dev: torch.device, dtype: str | None):
    torch_dtype = DTYPES[dtype]
    if torch_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=dev.type, dtype=torch_dtype)


# --- whole models --------------------------------------------------------------------------------------


def _num_classes(out: torch.Tensor, num_classes: int | None) -> int:
    if num_classes is not None:
        return num_classes
    return out.shape[1] if out.dim() >= 2 else 1


def make_step(
    model: nn.Module,
    input_shape: Sequence[int],
    mode: str = "inference",
    device: str | torch.device = "cpu",
    dtype: str | None = None,
    channels_last: bool = False,
    compile: bool = False,
    num_classes: int | None = None,
    lr: float = 1e-3,
) -> Callable[[], Any]:
    """A zero-argument function running one batch on a private copy of ``model``.

    ``inference``: eval mode, ``torch.no_grad`` forward. ``train``: train mode, forward, cross-entropy
    on random labels (mean squared output when the output is not (N, K) logits), backward and one
    SGD step. The caller's model is never moved or changed.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES} (got {mode!r})")
    dev = check_device(device)
    shape = check_shape(input_shape)
    check_dtype(dtype)
    net = copy.deepcopy(model).to(dev)
    x = torch.randn(shape, device=dev)
    if channels_last:
        if len(shape) != 4:
            raise ValueError(f"channels_last needs a 4-d (N, C, H, W) input, got {shape}")
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    runner = torch.compile(net) if compile else net
    if mode == "inference":
        net.eval()

        def infer():
            with torch.no_grad(), _autocast(dev, dtype):
                return runner(x)

        return infer
    net.train()
    if shape[0] < 2 and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules()):
        raise ValueError("training a model with BatchNorm needs batch >= 2 (got 1)")
    with torch.no_grad():
        probe = net(x)
    k = _num_classes(probe, num_classes)
    labels = torch.randint(0, k, (shape[0],), device=dev)
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=lr, momentum=0.9)
    logits = probe.dim() == 2

    def train():
        opt.zero_grad(set_to_none=True)
        with _autocast(dev, dtype):
            out = runner(x)
            loss = nn.functional.cross_entropy(out.float(), labels) if logits else out.float().pow(2).mean()
        loss.backward()
        opt.step()
        return loss

    return train


# --- single layers -------------------------------------------------------------------------------------


def layer_step(
    module: nn.Module, input_shape: Sequence[int], device: str | torch.device = "cpu", backward: bool = False,
    dtype: str | None = None,
) -> Callable[[], Any]:
    """A zero-argument function running ``module`` once (forward, or forward + backward to input and weights)."""
    dev = check_device(device)
    shape = check_shape(input_shape)
    mod = copy.deepcopy(module).to(dev)
    x = torch.randn(shape, device=dev)
    if not backward:
        mod.eval()

        def fwd():
            with torch.no_grad(), _autocast(dev, dtype):
                return mod(x)

        return fwd
    mod.train()
    x.requires_grad_(True)
    with torch.no_grad(), _autocast(dev, dtype):
        grad_out = torch.randn_like(mod(x))
    params = list(mod.parameters())

    def fwd_bwd():
        for p in params:
            p.grad = None
        x.grad = None
        with _autocast(dev, dtype):
            out = mod(x)
        out.backward(grad_out.to(out.dtype))
        return out

    return fwd_bwd


def time_layer(
    module: nn.Module,
    input_shape: Sequence[int],
    device: str = "cpu",
    backward: bool = False,
    warmup: int = 3,
    repeats: int = 10,
    dtype: str | None = None,
) -> float:
    """Median seconds of one forward (or forward + backward) pass of ``module`` on random input."""
    check_counts(warmup, repeats)
    check_dtype(dtype)
    step = layer_step(module, input_shape, device, backward, dtype)
    return statistics.median(time_function(step, device, warmup, repeats))


def ideal_speedup(flops_before: float, flops_after: float) -> float:
    """The FLOP-ideal speed-up: original FLOPs / decomposed FLOPs."""
    if flops_after <= 0:
        return math.inf
    return flops_before / flops_after


def realised_fraction(measured_speedup: float, ideal: float) -> float:
    """How much of the ideal gain is realised: (measured − 1) / (ideal − 1); 1.0 = all of it."""
    if ideal == 1:
        return math.nan
    return (measured_speedup - 1) / (ideal - 1)
