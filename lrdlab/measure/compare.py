"""Models timed interleaved (A B A B …), with a bootstrap interval on every speed-up, on any backend.

Backends: ``eager`` (PyTorch), ``compile`` (``torch.compile``) and ``onnxruntime`` (the model exported
to ONNX, run by ONNX Runtime on the CPU; inference only; needs the ``onnx`` extra).
"""

from __future__ import annotations

import contextlib
import copy
import io
import statistics
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any

import torch
from torch import nn

from lrdlab.measure import timing as measure
from lrdlab.measure.compute import load_average
from lrdlab.measure.interleave import Rounds, interleave
from lrdlab.measure.timing_config import BACKENDS, TimingConfig, check_timing

ONNX_EXTRA = "pip install 'lrdlab[onnx]'  (onnx, onnxruntime)"


class BackendUnavailable(ValueError):
    """A backend whose library is not installed (the message names the extra to install)."""


def check_backend(backend: str, mode: str = "inference", device: str | torch.device = "cpu") -> str:
    """The backend name, or a ValueError / :class:`BackendUnavailable` saying what is missing."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} (got {backend!r})")
    if backend == "onnxruntime":
        if mode != "inference":
            raise ValueError("the onnxruntime backend times inference only (drop --train)")
        if torch.device(device).type != "cpu":
            raise ValueError("the onnxruntime backend runs on the CPU here (use --device cpu)")
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError as err:
            raise BackendUnavailable(f"backend onnxruntime needs {err.name}: {ONNX_EXTRA}") from None
    return backend


def export_onnx(model: nn.Module, input_shape: Sequence[int]) -> bytes:
    """The model (eval mode, a private copy) exported to ONNX for ``input_shape``."""
    net = copy.deepcopy(model).cpu().eval()
    x = torch.randn(tuple(input_shape))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:  # the TorchScript exporter: ~15× faster to export than dynamo's, same graph for these models
            buf = io.BytesIO()
            torch.onnx.export(net, (x,), buf, dynamo=False, input_names=["x"], output_names=["y"])  # type: ignore[arg-type]
            return buf.getvalue()
        except Exception:  # noqa: BLE001 - removed or failing: the dynamo exporter
            program = torch.onnx.export(net, (x,), dynamo=True, input_names=["x"], output_names=["y"])
            assert program is not None
            return program.model_proto.SerializeToString()


def onnx_session(model: nn.Module, input_shape: Sequence[int], threads: int | None = None):
    """An ONNX Runtime CPU session of the exported model, using ``threads`` (default: torch's) intra-op threads."""
    check_backend("onnxruntime")
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(export_onnx(model, input_shape), opts, providers=["CPUExecutionProvider"])


def make_backend_step(model: nn.Module, input_shape: Sequence[int], mode: str = "inference",
                      device: str | torch.device = "cpu", backend: str = "eager", **kw: Any) -> Callable[[], Any]:
    """:func:`lrdlab.measure.timing.make_step` on a backend (``compile`` = ``torch.compile``)."""
    check_backend(backend, mode, device)
    if backend == "onnxruntime":
        session = onnx_session(model, input_shape)
        feed = {session.get_inputs()[0].name: torch.randn(tuple(input_shape)).numpy()}
        return lambda: session.run(None, feed)
    return measure.make_step(model, input_shape, mode, device, compile=backend == "compile", **kw)


def fingerprint(model: nn.Module, mode: str) -> str:
    """What decides a model's speed: its structure, parameter shapes, every submodule's type and plain
    attributes (and, training, what is trainable). Weights' values are left out: they do not change a time."""
    params = [(n, tuple(p.shape), str(p.dtype), p.requires_grad if mode == "train" else None)
              for n, p in model.named_parameters()]
    simple = (str, int, float, bool, tuple, type(None))
    attrs = [(n, type(m).__qualname__, sorted((k, repr(v)) for k, v in vars(m).items()
                                              if not k.startswith("_") and isinstance(v, simple)))
             for n, m in model.named_modules()]
    return repr(model) + repr(params) + repr(attrs)


ROUND_LIMITS: dict[str, float | None] = {"factor": 3, "budget_s": 600.0}  # defaults of compare's adaptive rounds


@contextlib.contextmanager
def round_limits(factor: float = 3, budget_s: float | None = 600.0) -> Iterator[None]:
    """Within the block, :func:`compare` adds rounds up to ``factor``·rounds and ``budget_s`` seconds where its
    :class:`TimingConfig` leaves ``max_rounds`` / ``budget_s`` at None (``lrdlab reproduce --quick`` uses
    ``factor=1``: a fixed number of rounds, quick and honest)."""
    saved = dict(ROUND_LIMITS)
    ROUND_LIMITS.update(factor=factor, budget_s=budget_s)
    try:
        yield
    finally:
        ROUND_LIMITS.update(saved)


def effective_limits(timing: TimingConfig) -> tuple[int, float | None]:
    """The most rounds and the seconds (None: no limit) :func:`compare` spends under ``timing``, here and now
    (:func:`round_limits` fills what ``timing`` leaves at None)."""
    factor = float(ROUND_LIMITS["factor"] or 1)
    rounds = timing.rounds
    top = timing.max_rounds if timing.max_rounds is not None else (
        max(rounds, int(factor * rounds)) if rounds >= 3 else rounds)
    budget = ROUND_LIMITS["budget_s"] if timing.budget_s is None else timing.budget_s
    return top, None if budget is None or budget == float("inf") else float(budget)


DEFAULT_TIMING = TimingConfig()


def compare(
    models: dict[str, nn.Module], input_shape: Sequence[int], mode: str = "inference",
    timing: TimingConfig = DEFAULT_TIMING, *, num_classes: int | None = None, dedupe: bool = True,
    clock: Callable[[], float] | None = None, on_round: Callable[[int], None] | None = None,
):
    """Time models interleaved, A B C then C B A (the order alternates each round, so no model always runs
    first); the first model is the baseline.

    ``timing`` (:class:`~lrdlab.measure.timing_config.TimingConfig`): device, dtype, backend and the rounds. Each
    round times every model (``warmup`` untimed + ``repeats`` timed batches; the round's value is their median).
    After ``rounds`` rounds, more are added while any speed-up's 95% interval is wider than ±``half_width``, up
    to ``max_rounds`` or ``budget_s`` seconds (:func:`effective_limits`); ``converged`` says whether it got there.
    ``num_classes``: the labels of a training step (``mode="train"``).
    With ``dedupe``, models identical in speed (same structure and parameter shapes; training: same
    trainable parameters) are timed once and share that measurement (``same_as``); an A/A check
    (a model against its own copy) passes ``dedupe=False``. ``clock`` replaces ``time.perf_counter``
    for the timed calls (tests). ``on_round(done)`` is called after each round (progress bars).

    Returns a DataFrame, one row per model: ``median_s`` (median over rounds), ``speedup_vs_first``
    (median over rounds of baseline time / this time), ``speedup_ci_low``/``speedup_ci_high`` (95%
    bootstrap interval), ``speedup_q1``/``speedup_q3``, ``throughput`` (the baseline's batch / median
    time × this speed-up: throughputs and speed-ups come from the same paired measurement),
    ``spread`` (relative IQR of the round times), ``rounds``, ``converged``, ``backend``, ``threads``
    ``load_average`` and ``round_s``: the model's round times (seconds), paired by round across rows
    (:func:`round_times` reads them by name).
    """
    import pandas as pd

    if not models:
        raise ValueError("compare needs at least one model")
    timing = check_timing(timing, DEFAULT_TIMING)
    rounds, warmup, repeats = timing.rounds, timing.warmup, timing.repeats
    dev = measure.check_device(timing.device)
    shape = measure.check_shape(input_shape)
    backend = check_backend(timing.backend, mode, dev)
    top, budget_s = effective_limits(timing)
    extra = {"num_classes": num_classes} if mode == "train" else {}
    same_as: dict[str, str] = {}
    seen: dict[str, str] = {}
    for name, m in models.items():
        fp = fingerprint(m, mode)
        same_as[name] = seen.setdefault(fp, name) if dedupe else name
    timed = [n for n in models if same_as[n] == n]
    kw = {"dtype": timing.dtype, "channels_last": timing.channels_last, **extra} if backend != "onnxruntime" else {}
    steps = {n: partial(_round_time, make_backend_step(models[n], shape, mode, dev, backend, **kw), dev, warmup,
                        repeats, clock) for n in timed}
    record: Rounds[str] = Rounds(order="alternate")
    names = list(models)
    base = same_as[names[0]]
    start = time.perf_counter()
    while True:
        interleave(steps, 1, into=record, on_round=on_round)
        done = record.count
        if done < rounds:
            continue
        ups = {n: record.speedup(base, same_as[n]) for n in names}
        wide = max((ups[n].half_width for n in names if same_as[n] != base), default=0.0)
        converged = done >= 3 and wide <= timing.half_width
        if converged or done >= top or (budget_s is not None and time.perf_counter() - start > budget_s):
            break
    per_round = record.times
    base_tp = shape[0] / statistics.median(per_round[base])
    rows = []
    for n in names:
        t = per_round[same_as[n]]
        ratios = [b / x for b, x in zip(per_round[base], t)]
        q1, med, q3 = measure.quartiles(t)
        r1, _, r3 = measure.quartiles(ratios)
        up = ups[n]
        rows.append({
            "name": n, "median_s": med, "throughput": base_tp * up.median, "speedup_vs_first": up.median,
            "speedup_ci_low": up.ci_low, "speedup_ci_high": up.ci_high, "speedup_q1": r1, "speedup_q3": r3,
            "spread": (q3 - q1) / med, "rounds": done, "converged": converged, "same_as": same_as[n],
            "mode": mode, "batch": shape[0], "backend": backend, "threads": torch.get_num_threads(),
            "load_average": load_average(), "round_s": list(t),
        })
    return pd.DataFrame(rows)


def round_times(table: Any) -> dict[str, list[float]]:
    """Each model's round times (seconds, paired by round) from a :func:`compare` table: ``{name: round_s}``."""
    return dict(zip(table["name"], table["round_s"]))


def _round_time(step: Callable[[], Any], dev: torch.device, warmup: int, repeats: int,
                clock: Callable[[], float] | None) -> float:
    """One round's value of a model: the median of ``repeats`` timed batches after ``warmup`` untimed ones."""
    return statistics.median(measure.time_function(step, dev, warmup, repeats, clock))
