"""How the measured rank search runs: :class:`SearchConfig`, every option of
:func:`lrdlab.measure.rank_search.optimize_plan` (where and what it times, the algorithm, its statistics, the cache)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from lrdlab.finetune.fit_config import check_count, check_type
from lrdlab.measure import timing as measure
from lrdlab.measure.rank_candidates import METHODS

TimeFn = Callable[[nn.Module, tuple[int, ...]], float]


@dataclass(frozen=True)
class SearchConfig:
    """The search's algorithm and statistics (``optimize_plan(..., config=SearchConfig(...))``).

    ``method``: ``"robust"`` (default; step model, refinement and confirmation) or ``"paper"`` (P1 Algorithm 1
    as written). ``granularity``: ranks searched are its multiples. ``dtype``: autocast (None/"fp32", "bf16",
    "fp16"). ``warmup``: untimed runs before each timing. Robust: while no step is found and a rank's median is
    noisier than ``resolution``, rounds grow to ``max_rounds``; ``confirm_rounds`` starts the confirmation run;
    ``min_step`` is the smallest relative step the step model accepts. ``margin``: a decomposition must be this
    much faster than the original. ``time_fn`` replaces the timer, (module, input_shape) → seconds (tests).
    ``progress``: progress bars.

    Where and what: ``device``; ``backward`` times forward + backward; ranks from the plan's R down to
    ceil(``lower``·R); each rank timed ``rounds`` times interleaved (None: 3 robust, 1 paper), each the median of
    ``repeats`` runs. ``cache_dir``: the layer-time cache's folder (None: the lrdlab cache, ``$LRDLAB_CACHE`` else
    ``~/.cache/lrdlab``, as everywhere); ``cache=False`` measures afresh and writes nothing.
    """

    method: str = "robust"
    granularity: int = 1
    dtype: str | None = None
    warmup: int = 3
    max_rounds: int = 9
    resolution: float = 0.03
    confirm_rounds: int = 10
    margin: float = 0.0
    min_step: float = 0.02
    time_fn: TimeFn | None = None
    progress: bool = True
    device: str = "cpu"
    backward: bool = False
    lower: float = 0.75
    repeats: int = 10
    rounds: int | None = None
    cache_dir: str | Path | None = None
    cache: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS} (got {self.method!r})")
        measure.check_dtype(self.dtype)
        check_count("SearchConfig", "warmup", self.warmup, 0)
        check_count("SearchConfig", "max_rounds", self.max_rounds, 1)
        check_count("SearchConfig", "confirm_rounds", self.confirm_rounds, 1)
        check_count("SearchConfig", "repeats", self.repeats, 1)
        if self.rounds is not None:
            check_count("SearchConfig", "rounds", self.rounds, 1)
        for name in ("backward", "cache", "progress"):
            check_type("SearchConfig", name, getattr(self, name), bool, True)
        if not (0 <= self.margin < 1):
            raise ValueError(f"margin must be in [0, 1) (got {self.margin!r})")
        for name in ("resolution", "min_step"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"SearchConfig: {name} must be a positive number (got {value!r})")
        if self.time_fn is not None and not callable(self.time_fn):
            raise ValueError(f"SearchConfig: time_fn must be callable (module, input_shape) → seconds, "
                             f"got {type(self.time_fn).__name__}")
