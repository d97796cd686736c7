"""The freezing explorer over a shipped grid (mode × period × ratio) and new runs in a background thread, and the
shipped freezing study's runs and throughput (:class:`FreezingLab`).

:class:`FreezingGrid` reads ``reference/freezing_grid.json`` (``python -m tools.record freezing-grid``) plus the
runs made here, and answers selections instantly. :class:`BackgroundRun` fine-tunes one new schedule in a
worker thread: it reports progress per batch, stops within one batch when cancelled, and its status is
always one of ``idle / running / done / cancelled / failed`` with what happened.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from torch import nn

from lrdlab.explore.rank_lab import REFERENCE_DIR, REFERENCE_FREEZING
from lrdlab.finetune.fit_config import check_count, check_number
from lrdlab.finetune.freezing import MODES, UNITS, Freezer
from lrdlab.measure.cache import default_cache_dir, read_json
from lrdlab.measure.machine import machine_info

REFERENCE_GRID = REFERENCE_DIR / "freezing_grid.json"  # python -m tools.record freezing-grid
RUN_COLUMNS = ["run", "source", "mode", "period", "epoch", "wall_s", "accuracy", "loss", "train_img_s"]
# period choices of the explorer: (label, period, unit)
# (the grid's sequential periods: over its 4 epochs, N=4 is regular and N=3 differs from it only in epoch 4)
PERIODS: tuple[tuple[str, int, str], ...] = (("every iteration", 1, "iteration"), ("1 epoch", 1, "epoch"),
                                             ("2 epochs", 2, "epoch"))
GRID_COLUMNS = ["key", "ratio", "mode", "period", "unit", "epoch", "accuracy", "loss", "wall_s", "train_img_s",
                "trainable_params", "source"]


def schedule_name(mode: str, period: int, unit: str) -> str:
    """``none``, ``regular``, ``sequential N=2`` or ``sequential every it`` (period matters only for sequential)."""
    if mode != "sequential":
        return mode
    return "sequential every it" if unit == "iteration" else f"sequential N={period}"


class FreezingGrid:
    """Recorded fine-tuning runs by (ratio, mode, period, unit): the shipped grid plus runs made here."""

    def __init__(self, reference: Path | None = REFERENCE_GRID, cache_dir: Path | None = None):
        raw: dict[str, Any] = {}
        if reference is not None:
            try:
                raw = json.loads(Path(reference).read_text())
            except (OSError, ValueError):
                raw = {}
        self.settings: dict[str, Any] = raw.get("settings", {})
        self.machine: dict[str, Any] = raw.get("machine", {})
        ref = pd.DataFrame(raw.get("runs", []))
        ref = ref.assign(source="reference") if not ref.empty else pd.DataFrame(columns=GRID_COLUMNS)
        self.path = Path(cache_dir or default_cache_dir()) / "freezing_grid_here.json"
        try:
            here = pd.DataFrame(json.loads(self.path.read_text()).get("runs", []))
        except (OSError, ValueError):
            here = pd.DataFrame(columns=GRID_COLUMNS)
        self.runs = pd.concat([d for d in (ref, here) if not d.empty] or [ref], ignore_index=True)
        for col in GRID_COLUMNS:
            if col not in self.runs:
                self.runs[col] = pd.Series(dtype=object)
        self.runs["name"] = [schedule_name(m, int(p), u) for m, p, u in
                             zip(self.runs["mode"], self.runs["period"], self.runs["unit"])]
        self.lock = threading.Lock()

    @property
    def ratios(self) -> list[float]:
        return sorted({float(r) for r in self.runs["ratio"]}) or [2.0]

    def at_ratio(self, ratio: float) -> pd.DataFrame:
        with self.lock:
            return self.runs[self.runs["ratio"].astype(float) == float(ratio)].copy()

    def select(self, ratio: float, mode: str, period: int, unit: str) -> pd.DataFrame:
        """The runs of one schedule (sequential: that period and unit; others: any period)."""
        d = self.at_ratio(ratio)
        hit = (d["mode"] == mode) & (((d["period"] == period) & (d["unit"] == unit)) | (mode != "sequential"))
        return d[hit]

    def add(self, history: pd.DataFrame) -> str:
        """Join one finished run (source 'here'), persist the runs made here; returns its key."""
        with self.lock:
            key = str(history["key"].iloc[0])
            n = 2
            while key in set(self.runs["key"]):
                key, n = f"{history['key'].iloc[0]}#{n}", n + 1
            rows = history.assign(key=key, source="here")
            rows["name"] = [schedule_name(m, int(p), u) for m, p, u in zip(rows["mode"], rows["period"], rows["unit"])]
            self.runs = pd.concat([self.runs, rows], ignore_index=True)
            here = self.runs[self.runs["source"] == "here"][GRID_COLUMNS]
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps({"machine": machine_info().to_dict(), "runs": here.to_dict("records")},
                                            default=float))
        return key


class Cancelled(Exception):
    """Raised inside the worker when the user cancels (between two batches)."""


class _WatchedFreezer(Freezer):
    """A Freezer whose per-batch ``sync`` also reports progress and honours a cancel request."""

    def __init__(self, *args: Any, on_batch: Callable[[int, int], None], cancel: threading.Event, **kw: Any):
        super().__init__(*args, **kw)
        self._on_batch, self._cancel = on_batch, cancel

    def sync(self, epoch: int, iteration: int) -> bool:
        if self._cancel.is_set():
            raise Cancelled
        self._on_batch(epoch, iteration)
        return super().sync(epoch, iteration)


@dataclass
class RunRequest:
    ratio: float
    mode: str
    period: int
    unit: str
    epochs: int


class BackgroundRun:
    """Fine-tune one schedule in a worker thread; ``status`` / ``fraction`` are always current and true.

    ``start_model(ratio)`` gives the calibrated decomposed model to start from; ``loaders()`` the
    (train, test) loaders. Both run in the worker, so even a first-time training never blocks the caller.
    """

    def __init__(self, grid: FreezingGrid, start_model: Callable[[float], nn.Module], loaders: Callable[[], Any],
                 lr: float = 0.02, on_change: Callable[[], None] | None = None):
        self.grid, self.start_model, self.loaders, self.lr = grid, start_model, loaders, lr
        self.on_change = on_change or (lambda: None)
        self.state, self.message, self.fraction = "idle", "no run started", 0.0
        self.thread: threading.Thread | None = None
        self.cancel_event = threading.Event()
        self.key: str | None = None

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def _set(self, state: str, message: str, fraction: float | None = None) -> None:
        self.state, self.message = state, message
        if fraction is not None:
            self.fraction = fraction
        try:
            self.on_change()
        except Exception:  # a display error must not kill the run  # noqa: BLE001
            pass

    def start(self, request: RunRequest) -> bool:
        """Start a run unless one is running (returns whether it started)."""
        if self.running:
            return False
        self.cancel_event.clear()
        self.thread = threading.Thread(target=self._work, args=(request,), daemon=True, name="lrdlab-freezing-run")
        self._set("running", f"starting {schedule_name(request.mode, request.period, request.unit)} "
                             f"at ×{request.ratio:g}", 0.0)
        self.thread.start()
        return True

    def cancel(self) -> None:
        if self.running:
            self.cancel_event.set()
            self._set("running", self.message + " — cancelling after this batch …")

    def wait(self, timeout: float | None = None) -> None:
        if self.thread is not None:
            self.thread.join(timeout)

    def _work(self, r: RunRequest) -> None:
        from lrdlab.finetune.fit_config import FitConfig
        from lrdlab.finetune.loop import fit

        name = schedule_name(r.mode, r.period, r.unit)
        begin = time.perf_counter()
        try:
            self._set("running", f"{name} ×{r.ratio:g}: preparing the calibrated start model", 0.0)
            net = copy.deepcopy(self.start_model(r.ratio))
            train, test = self.loaders()
            steps = len(train)

            def on_batch(epoch: int, iteration: int) -> None:
                if self.cancel_event.is_set():
                    return
                self.fraction = min(1.0, iteration / (steps * r.epochs))
                self._set("running", f"{name} ×{r.ratio:g}: epoch {epoch + 1}/{r.epochs}, batch "
                                     f"{iteration % steps + 1}/{steps} ({time.perf_counter() - begin:.0f} s)")

            freezer = _WatchedFreezer(net, r.mode, period=r.period, unit=r.unit, on_batch=on_batch,
                                      cancel=self.cancel_event)
            h = fit(net, train, test, FitConfig(epochs=r.epochs, lr=self.lr, evaluate_start=True, progress=False),
                    freezer)
            h = h.assign(key=f"{r.ratio:g}|{r.mode}|{r.period}|{r.unit}|here", ratio=r.ratio, mode=r.mode,
                         period=r.period, unit=r.unit)
            self.key = self.grid.add(h[[c for c in GRID_COLUMNS if c != "source"]])
            self._set("done", f"done: {name} ×{r.ratio:g}, {h['accuracy'].iloc[0]:.1f}% → "
                              f"{h['accuracy'].iloc[-1]:.1f}% in {time.perf_counter() - begin:.0f} s; joined the "
                              f"grid as a run made here", 1.0)
        except Cancelled:
            self._set("cancelled", f"cancelled: {name} ×{r.ratio:g} stopped after "
                                   f"{time.perf_counter() - begin:.0f} s; nothing was added to the grid")
        except Exception as err:  # shown to the user, never swallowed silently  # noqa: BLE001
            self._set("failed", f"failed: {type(err).__name__}: {err}")


# (mode, period, unit): none and regular have no period; sequential rotates every N epochs or every iteration
SCHEDULES: tuple[tuple[str, int, str], ...] = (
    ("none", 1, "epoch"), ("regular", 1, "epoch"),
    ("sequential", 1, "epoch"), ("sequential", 2, "epoch"), ("sequential", 1, "iteration"),
)  # over 4 epochs, sequential N=4 trains the regular factor throughout (it is regular) and N=3 differs from
# regular only in its last epoch: neither is recorded (the explorer runs them live)


@dataclass(frozen=True)
class FreezingGridConfig:
    """The freezing grid (``python -m tools.record freezing-grid``): each of ``ratios`` × ``schedules`` (mode,
    period, unit) fine-tuned from the calibrated start (``calibration_images``; the ``exclude`` layers kept) for
    ``epochs`` at OneCycle peak ``lr``, on ``subset`` training images in batches of ``batch_size``. The defaults
    are the shipped grid's recipe (:data:`GRID_RECIPE`), which the explorer's live runs use too."""

    ratios: tuple[float, ...] = (2.0, 3.0)
    subset: int = 1024
    epochs: int = 4
    lr: float = 0.003
    batch_size: int = 32
    calibration_images: int = 512
    exclude: tuple[str, ...] = ("conv1",)
    schedules: tuple[tuple[str, int, str], ...] = SCHEDULES

    def __post_init__(self) -> None:
        me = "FreezingGridConfig"
        for name in ("ratios", "exclude", "schedules"):  # lists are welcome too
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for name in ("subset", "epochs", "batch_size"):
            check_count(me, name, getattr(self, name))
        check_count(me, "calibration_images", self.calibration_images, 0)
        check_number(me, "lr", self.lr, lambda v: v > 0, "a number > 0", 0.003)
        for ratio in self.ratios:
            check_number(me, "ratios", ratio, lambda v: v > 1, "compression ratios > 1", (2.0, 3.0))
        bad = [s for s in self.schedules if len(s) != 3 or s[0] not in MODES or s[2] not in UNITS
               or isinstance(s[1], bool) or not isinstance(s[1], int) or s[1] < 1]
        if bad:
            raise ValueError(f"{me}: schedules are (mode, period, unit) with a mode of {MODES}, a period >= 1 and "
                             f"a unit of {UNITS} (got {bad}); e.g. {me}(schedules=(('sequential', 2, 'epoch'),))")


# the recipe of the shipped grid (python -m tools.record freezing-grid) and of the explorer's live runs
GRID_RECIPE = FreezingGridConfig()


def calibrated_start(ratio: float, exclude: Any = ("conv1",), calibration_images: int = 512) -> nn.Module:
    """The default calibrated model at ``ratio`` (:func:`~lrdlab.zoo.start.decomposed_start` calibrated on the first
    ``calibration_images`` training images), as the README and ``python -m tools.record accuracy`` make it."""
    from lrdlab.explore.accuracy_lab import data_loaders, trained_model
    from lrdlab.lowrank.calibration import calibration_batches
    from lrdlab.zoo.start import decomposed_start

    calibration = calibration_batches(data_loaders().train, calibration_images)
    return decomposed_start(trained_model(), ratio=ratio, exclude=exclude, model_name="resnet20",
                            calibration=calibration)[1].eval()


def default_start_model(settings: dict[str, Any]) -> Callable[[float], nn.Module]:
    """The grid's start model at a ratio, made by the grid's recorded settings (memoised per ratio)."""
    memo: dict[float, nn.Module] = {}

    def start(ratio: float) -> nn.Module:
        if ratio not in memo:
            memo[ratio] = calibrated_start(ratio, settings.get("exclude", GRID_RECIPE.exclude),
                                           int(settings.get("calibration_images", GRID_RECIPE.calibration_images)))
        return memo[ratio]

    return start


def default_loaders(settings: dict[str, Any]) -> Callable[[], tuple[Any, Any]]:
    """The grid's fine-tuning loaders (its subset and batch; the 1,000-image test split)."""
    from lrdlab.explore.accuracy_lab import data_loaders

    def loaders() -> tuple[Any, Any]:
        d = data_loaders(subset=settings.get("subset", GRID_RECIPE.subset),
                         batch_size=int(settings.get("batch_size", GRID_RECIPE.batch_size)))
        return d.train, d.test

    return loaders


# --- the shipped freezing study (F7, F8) ------------------------------------------------------------------


def runs_from_study(study: dict[str, Any]) -> pd.DataFrame:
    """A saved freezing study (``run_freezing_study`` JSON) as explorer runs: its fine-tuning histories only."""
    h = pd.DataFrame(study.get("history", []))
    if h.empty:
        return pd.DataFrame(columns=RUN_COLUMNS)
    period = int(study.get("settings", {}).get("period", 1))
    h = h[h["mode"] != "original"].copy()
    h["period"] = period
    h["run"] = [m + (f" N={period}" if m == "sequential" else "") for m in h["mode"]]
    h["source"] = "reference"
    return h[RUN_COLUMNS]


class FreezingLab:
    """The shipped freezing study (``reference``, :func:`lrdlab.run_freezing_study` JSON) without widgets.

    ``runs()`` has one row per (run, epoch) with :data:`RUN_COLUMNS`; ``throughput()`` is its interleaved
    benchmark (F7 columns of :func:`lrdlab.paper.freezing_study.freezing_throughput`); ``reference_machine``
    the machine it was recorded on.
    """

    def __init__(self, reference: Path | None = REFERENCE_FREEZING):
        ref = read_json(reference) if reference else {}
        self.reference_machine: dict[str, Any] = ref.get("machine", {})
        self._runs = runs_from_study(ref)
        self._throughput = pd.DataFrame(ref.get("throughput", []))

    def runs(self) -> pd.DataFrame:
        return self._runs.copy()

    def throughput(self) -> pd.DataFrame:
        return self._throughput.copy()
