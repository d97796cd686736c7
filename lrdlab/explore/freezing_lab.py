"""The freezing explorer's data: the shipped freezing study's runs and throughput, and the grid's location."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from lrdlab.explore.rank_lab import REFERENCE_DIR, REFERENCE_FREEZING
from lrdlab.measure.cache import read_json

REFERENCE_GRID = REFERENCE_DIR / "freezing_grid.json"  # python -m tools.record freezing-grid
RUN_COLUMNS = ["run", "source", "mode", "period", "epoch", "wall_s", "accuracy", "loss", "train_img_s"]


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
