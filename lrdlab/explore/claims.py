"""Orderings the notebooks state, computed from the numbers they show: "A beats B" only where the noise allows it.

Two readings are used: accuracies on the same ``n`` test images (a normal interval of the difference of two
proportions, conservative for paired scores), and ranges of repeated measurements (min–max over epochs or the 95%
interval of a speed-up), which order two settings only where they do not overlap.

One setting, every place it is shown: ResNet-50 at 2x with the searched ranks (eager, 1 thread, batch 8, 112 px).

The README (the speed-story record), docs/speed.md (the robust-search record) and notebook 04 (the time breakdown)
each show this setting from a different recording. :func:`searched_ranks_rows` reads the three records and names
what differs between them (rounds, how the network was timed, load), so that a reader sees why the numbers differ
and whether their intervals overlap; each row's text is the one its page prints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from lrdlab.measure.records import read_record


@dataclass(frozen=True)
class Order:
    """How setting A compares with B: ``"higher"``, ``"lower"`` or ``"within noise"``, and what says so."""

    verdict: str
    why: str

    def text(self, a: str, b: str) -> str:
        """``"a is higher than b (why)"`` or ``"a and b are within noise (why)"``."""
        if self.verdict == "within noise":
            return f"{a} and {b} are within noise ({self.why})"
        return f"{a} is {self.verdict} than {b} ({self.why})"


def accuracy_order(a_pct: float, b_pct: float, images: int, z: float = 1.96) -> Order:
    """Two accuracies (percent) on the same ``images`` test images: ordered only beyond the 95% half-width."""
    if images < 1 or not (0 <= a_pct <= 100 and 0 <= b_pct <= 100):
        raise ValueError(f"accuracy_order needs percentages in [0, 100] and images >= 1, got {a_pct}, {b_pct}, "
                         f"{images}: pass the accuracies in percent and the size of the test split")
    pa, pb = a_pct / 100, b_pct / 100
    half = 100 * z * math.sqrt((pa * (1 - pa) + pb * (1 - pb)) / images)
    diff = a_pct - b_pct
    why = f"{diff:+.1f} points, noise ±{half:.1f} on {images} images"
    return Order("within noise" if abs(diff) <= half else "higher" if diff > 0 else "lower", why)


def range_order(a: tuple[float, float], b: tuple[float, float], unit: str = "") -> Order:
    """Two ranges ``(low, high)`` of repeated measurements: ordered only where they do not overlap."""
    if a[0] > a[1] or b[0] > b[1]:
        raise ValueError(f"range_order needs (low, high) ranges, got {a} and {b}: pass the minimum first")
    why = f"{a[0]:.0f}–{a[1]:.0f} vs {b[0]:.0f}–{b[1]:.0f}{unit}"
    if a[0] > b[1]:
        return Order("higher", why + ", no overlap")
    if a[1] < b[0]:
        return Order("lower", why + ", no overlap")
    return Order("within noise", why + ", overlapping")


# --- one setting, every place it is shown ---------------------------------------------------------------


@dataclass(frozen=True)
class Shown:
    """One place that shows the setting: the page, its record, the speed-up with its interval, and how it was
    timed."""

    page: str
    record: str
    speedup_pct: float
    ci_low: float
    ci_high: float
    rounds: int
    flops_removed_pct: float | None  # None: the record does not state it
    load: float
    timed: str

    @property
    def text(self) -> str:
        """The speed-up as the pages print it: ``+60.7% [+55.5, +63.7]``."""
        return f"{self.speedup_pct:+.1f}% [{self.ci_low:+.1f}, {self.ci_high:+.1f}]"


def searched_ranks_rows(data: Path) -> list[Shown]:
    """The setting as the README, docs/speed.md and notebook 04 show it, from their records in ``data``."""
    rows = []
    story = read_record(data / "speed_story_resnet50_cpu.json")
    run = next(r for r in story["runs"] if r["compute"]["threads"] == 1)
    row = next(r for r in run["rows"] if r["method"] == "optimized ranks")
    rows.append(Shown("README (speed table)", "speed_story_resnet50_cpu.json", row["infer_speedup_pct"],
                      row["infer_speedup_pct_ci_low"], row["infer_speedup_pct_ci_high"], row["infer_rounds"],
                      -row["flops_pct"], story["load_average_before"][0],
                      "whole network, interleaved with the original (the quick reproduction's stage)"))
    search = read_record(data / "search_robust_resnet50_cpu.json")
    row = next(r for r in search["rows"] if r["name"] == "robust search")
    rows.append(Shown("docs/speed.md", "search_robust_resnet50_cpu.json", row["speedup_pct"], row["speedup_pct_ci_low"],
                      row["speedup_pct_ci_high"], row["rounds"], row["flops_removed_pct"],
                      search["load_average_before"][0], "whole network, interleaved, adaptive rounds"))
    bd = read_record(data / "breakdown_resnet50_cpu.json")
    s = bd["plans"]["robust search ranks"]["summary"]
    rows.append(Shown("notebook 04 (time breakdown)", "breakdown_resnet50_cpu.json", s["whole"]["median"],
                      s["whole"]["ci_low"], s["whole"]["ci_high"], s["whole"]["rounds"], None,
                      bd["load_average_before"][0], "whole network with a forward hook on every decomposed layer"))
    return rows


def differences(rows: list[Shown]) -> list[str]:
    """Which pairs of rows are within each other's intervals, and which are not (with what differs)."""
    out = []
    for i, a in enumerate(rows):
        for b in rows[i + 1:]:
            order = range_order((a.ci_low, a.ci_high), (b.ci_low, b.ci_high), " %")
            verdict = "intervals overlap" if order.verdict == "within noise" else "intervals do not overlap"
            out.append(f"{a.page} {a.text} vs {b.page} {b.text}: {verdict}; rounds {a.rounds} vs {b.rounds}, "
                       f"1-min load {a.load:.1f} vs {b.load:.1f}; timed: {a.timed} / {b.timed}")
    return out
