"""Orderings the notebooks state, computed from the numbers they show: "A beats B" only where the noise allows it.

Two readings are used: accuracies on the same ``n`` test images (a normal interval of the difference of two
proportions, conservative for paired scores), and ranges of repeated measurements (min–max over epochs or the 95%
interval of a speed-up), which order two settings only where they do not overlap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


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
