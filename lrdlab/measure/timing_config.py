"""How whole models are timed: :class:`TimingConfig`, the settings :func:`lrdlab.compare`, :func:`lrdlab.bench_plan`,
:func:`lrdlab.choose_plan` and the sweeps of :mod:`lrdlab.measure.sweeps` share (``timing=TimingConfig(...)``)."""

from __future__ import annotations

from dataclasses import dataclass

from lrdlab.finetune.fit_config import check_count, check_type
from lrdlab.measure import timing as measure

BACKENDS = ("eager", "compile", "onnxruntime")


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class TimingConfig:
    """Where and how models are timed: each of ``rounds`` interleaved rounds runs ``warmup`` untimed and
    ``repeats`` timed batches per model (the round's value is their median).

    ``device``: ``"cpu"`` or ``"cuda"``. ``dtype``: autocast (None/"fp32", "bf16", "fp16"). ``backend``: ``"eager"``
    (PyTorch), ``"compile"`` (``torch.compile``) or ``"onnxruntime"`` (exported to ONNX; CPU inference only).
    ``channels_last``: NHWC memory format. Adaptive rounds (:func:`lrdlab.measure.compare.compare`): after
    ``rounds``, rounds are added while a speed-up's 95% interval is wider than ±``half_width`` (0.03 = 3 points),
    up to ``max_rounds`` (None: 3·rounds when rounds ≥ 3, else rounds) or ``budget_s`` seconds (None: 600, or
    what :func:`lrdlab.measure.compare.round_limits` sets; ``float("inf")``: no limit).
    """

    rounds: int = 5
    warmup: int = 2
    repeats: int = 3
    device: str = "cpu"
    dtype: str | None = None
    backend: str = "eager"
    channels_last: bool = False
    max_rounds: int | None = None
    budget_s: float | None = None
    half_width: float = 0.03

    def __post_init__(self) -> None:
        check_count("TimingConfig", "rounds", self.rounds, 1)
        check_count("TimingConfig", "warmup", self.warmup, 0)
        check_count("TimingConfig", "repeats", self.repeats, 1)
        if not isinstance(self.device, str):
            raise ValueError(f"TimingConfig: device must be a string like 'cpu' or 'cuda' (got {self.device!r})")
        try:
            measure.check_device(self.device)
            measure.check_dtype(self.dtype)
        except ValueError as err:
            raise ValueError(f"TimingConfig: {err}") from None
        if self.backend not in BACKENDS:
            raise ValueError(f"TimingConfig: backend must be one of {BACKENDS} (got {self.backend!r})")
        check_type("TimingConfig", "channels_last", self.channels_last, bool, True)
        if self.max_rounds is not None:
            check_count("TimingConfig", "max_rounds", self.max_rounds, 1)
            if self.max_rounds < self.rounds:
                raise ValueError(f"TimingConfig: max_rounds ({self.max_rounds}) is below rounds ({self.rounds}); "
                                 f"raise it, or give max_rounds=None (3·rounds)")
        if self.budget_s is not None and not (_number(self.budget_s) and self.budget_s >= 0):
            raise ValueError(f"TimingConfig: budget_s must be seconds >= 0, None (the default, 600) or "
                             f"float('inf') (no limit), got {self.budget_s!r}")
        if not (_number(self.half_width) and self.half_width > 0):
            raise ValueError(f"TimingConfig: half_width must be a positive fraction, e.g. 0.03 for ±3 points "
                             f"(got {self.half_width!r})")


def check_timing(timing: object, default: TimingConfig) -> TimingConfig:
    """``timing`` (None: ``default``) if it is a :class:`TimingConfig`, else a ValueError showing how to make one."""
    if timing is None:
        return default
    if not isinstance(timing, TimingConfig):
        raise ValueError(f"timing must be a TimingConfig, got {type(timing).__name__}; "
                         f"e.g. timing=TimingConfig(rounds=5, repeats=3)")
    return timing
