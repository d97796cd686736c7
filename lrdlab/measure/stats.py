"""Pure statistics of timings: bootstrap intervals of speed-ups, noise levels and a step (change-point) model.

Every speed-up lrdlab reports is a :class:`SpeedUp`: the median of the per-round ratios (baseline
time / model time, measured interleaved) and a 95% percentile-bootstrap interval of that median. An
interval that covers 1 (0 %) is "within noise". Its recorded form is ``SpeedUp.to_pct()``.

No torch here: numpy only, deterministic (seeded) resampling, so the same samples always give the
same interval.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Values = Sequence[float] | np.ndarray  # a 1-D run of numbers

LEVEL = 0.95
N_BOOT = 2000


def bootstrap_median_ci(values: Values, level: float = LEVEL, n_boot: int = N_BOOT,
                        seed: int = 0) -> tuple[float, float, float]:
    """(median, low, high): the median of ``values`` and its percentile-bootstrap ``level`` interval.

    One value gives a zero-width interval (nothing is known about its spread; callers flag that by
    ``rounds``). NaNs are dropped; no finite value raises ValueError.
    """
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        raise ValueError("no finite values to summarise")
    if not (0 < level < 1):
        raise ValueError(f"level must be in (0, 1) (got {level!r})")
    med = float(np.median(x))
    if x.size == 1:
        return med, med, med
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    boots = np.median(x[idx], axis=1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(boots, [alpha, 1 - alpha])
    return med, float(min(lo, med)), float(max(hi, med))


@dataclass(frozen=True)
class SpeedUp:
    """A paired speed-up: the median over rounds of baseline time / this time and its 95% bootstrap
    interval, as ratios (1.2 = 20 % faster); ``converged``: the rounds reached the wanted precision."""

    median: float
    ci_low: float
    ci_high: float
    rounds: int
    converged: bool = True

    @classmethod
    def of(cls, baseline: Values, other: Values, *, level: float = LEVEL, converged: bool = True) -> SpeedUp:
        """From paired rounds: the per-round ratios baseline / other and their median's bootstrap interval."""
        b, o = np.asarray(baseline, dtype=np.float64), np.asarray(other, dtype=np.float64)
        if b.shape != o.shape:
            raise ValueError(f"paired rounds needed: {b.size} baseline vs {o.size} other times")
        med, lo, hi = bootstrap_median_ci(b / o, level)
        return cls(med, lo, hi, int(b.size), converged)

    @classmethod
    def from_pct(cls, pct: Mapping[str, Any]) -> SpeedUp:
        """From a recorded percent dict ``{"median", "ci_low", "ci_high"[, "rounds", "converged"]}``."""
        return cls(1 + pct["median"] / 100, 1 + pct["ci_low"] / 100, 1 + pct["ci_high"] / 100,
                   int(pct.get("rounds", 0) or 0), bool(pct.get("converged", True)))

    @classmethod
    def from_row(cls, row: Any, prefix: str = "") -> SpeedUp:
        """From a :func:`lrdlab.measure.compare.compare` row (``speedup_vs_first``, ``speedup_ci_low``, …)."""
        return cls(float(row[f"{prefix}speedup_vs_first"]), float(row[f"{prefix}speedup_ci_low"]),
                   float(row[f"{prefix}speedup_ci_high"]), int(row[f"{prefix}rounds"]),
                   bool(row[f"{prefix}converged"]))

    @classmethod
    def from_flat(cls, row: Any, prefix: str = "") -> SpeedUp | None:
        """From the flat recorded percent columns ``{prefix}speedup_pct``, ``…_ci_low``, ``…_ci_high`` (the freezing
        study's rows); None when the row has no speed-up. A row that predates intervals has a NaN interval."""
        def get(key: str) -> float | None:
            v = row.get(f"{prefix}{key}")
            return None if v is None or v != v else float(v)  # v != v: NaN

        med = get("speedup_pct")
        if med is None:
            return None
        lo, hi = get("speedup_pct_ci_low"), get("speedup_pct_ci_high")
        nan = float("nan")
        return cls.from_pct({"median": med, "ci_low": nan if lo is None else lo, "ci_high": nan if hi is None else hi,
                             "rounds": int(get("rounds") or 0), "converged": bool(row.get(f"{prefix}converged", True))})

    @property
    def pct(self) -> float:
        """The median speed-up in percent: 1.2 → +20.0."""
        return 100.0 * (self.median - 1.0)

    @property
    def pct_low(self) -> float:
        return 100.0 * (self.ci_low - 1.0)

    @property
    def pct_high(self) -> float:
        return 100.0 * (self.ci_high - 1.0)

    @property
    def within_noise(self) -> bool:
        """The interval covers no change."""
        return self.ci_low <= 1.0 <= self.ci_high

    @property
    def half_width(self) -> float:
        """Half the interval's width (ratio units; 0.03 = ±3 points)."""
        return (self.ci_high - self.ci_low) / 2.0

    @property
    def verdict(self) -> str:
        """``"faster"``, ``"slower"`` or ``"within noise"``, at the interval's confidence."""
        return "within noise" if self.within_noise else ("faster" if self.ci_low > 1.0 else "slower")

    def text(self, rounds: bool = False) -> str:
        """``"+12.3% [+8.1, +16.0]"``, then ``", within noise"`` when the interval covers 0; with ``rounds``
        also ``" (9 rounds)"`` (``", not converged"`` inside when it did not)."""
        if math.isnan(self.ci_low) or math.isnan(self.ci_high):
            return f"{self.pct:+.1f}% (no interval)"
        out = f"{self.pct:+.1f}% [{self.pct_low:+.1f}, {self.pct_high:+.1f}]"
        out += ", within noise" if self.within_noise else ""
        if rounds:
            out += f" ({self.rounds} rounds{'' if self.converged else ', not converged'})"
        return out

    def to_pct(self) -> dict[str, Any]:
        """The recorded form: ``{"median", "ci_low", "ci_high", "rounds", "converged"}`` in percent."""
        return {"median": self.pct, "ci_low": self.pct_low, "ci_high": self.pct_high, "rounds": self.rounds,
                "converged": self.converged}


# --- noise of a rank curve ---------------------------------------------------------------------------


def robust_sigma(values: Values) -> float:
    """1.4826 · MAD: the standard deviation of the normal part of ``values``, blind to a few spikes."""
    x = np.asarray(values, dtype=np.float64)
    if x.size < 2:
        return 0.0
    return float(1.4826 * np.median(np.abs(x - np.median(x))))


def curve_noise(samples: Sequence[Values]) -> float:
    """Relative noise of one sample of a rank curve, from the spread of each rank's repeated samples.

    ``samples[i]`` are the rounds of rank i. Each rank's samples are scaled by their median; the
    answer is the median over ranks of their robust sigma (a relative standard deviation).
    """
    sig = [robust_sigma(np.asarray(s, dtype=np.float64) / np.median(s)) for s in samples if len(s) >= 2]
    return float(np.median(sig)) if sig else 0.0


# --- the step model ----------------------------------------------------------------------------------


def _split_score(y: np.ndarray, sigma: float, min_size: int) -> tuple[float, int]:
    """Best single split of ``y`` into two runs: (z score of the median difference, index of the split).

    The split minimises the summed absolute deviations from each run's median (an L1 step fit: a
    spike moves it no more than any other point); its z score is the difference of the two runs'
    medians over that difference's standard error.
    """
    best_cost, at = math.inf, -1
    for k in range(min_size, y.size - min_size + 1):
        left, right = y[:k], y[k:]
        cost = float(np.abs(left - np.median(left)).sum() + np.abs(right - np.median(right)).sum())
        if cost < best_cost - 1e-12:
            best_cost, at = cost, k
    if at < 0:
        return 0.0, -1
    left, right = y[:at], y[at:]
    diff = abs(float(np.median(left) - np.median(right)))
    se = sigma * 1.2533 * math.sqrt(1 / left.size + 1 / right.size)  # s.e. of a difference of medians
    return diff / se, at


def fit_steps(levels: Values, sigma: float, z: float | None = None, min_step: float = 0.02,
              min_size: int = 2) -> list[int]:
    """Change points of a step model fitted to ``levels`` by binary segmentation (robust: medians).

    ``levels`` are the per-rank times in search order; ``sigma`` is the noise of one level, relative
    (e.g. 0.05). A split is kept only when the two runs' medians differ by more than ``z`` standard
    errors (default: 1.5 plus a multiple-testing allowance √(2 ln n)) and by more than ``min_step``
    (relative). Returns the indices i where a new run starts (levels[i-1] → levels[i] is a step).
    """
    y = np.asarray(levels, dtype=np.float64)
    if y.size < 2 * min_size:
        return []
    scale = float(np.median(y))
    y = y / scale
    z = 1.5 + math.sqrt(2 * math.log(max(y.size, 2))) if z is None else z
    sigma = max(sigma, 1e-9)
    out: list[int] = []

    def recurse(lo: int, hi: int) -> None:
        seg = y[lo:hi]
        if seg.size < 2 * min_size:
            return
        score, k = _split_score(seg, sigma, min_size)
        if k < 0:
            return
        diff = abs(float(np.median(seg[:k]) - np.median(seg[k:])))
        if score < z or diff < min_step:
            return
        out.append(lo + k)
        recurse(lo, lo + k)
        recurse(lo + k, hi)

    recurse(0, y.size)
    return sorted(out)


def step_levels(levels: Values, changes: Sequence[int]) -> list[float]:
    """The fitted level (median) of each run between the change points."""
    y = np.asarray(levels, dtype=np.float64)
    edges = [0, *changes, y.size]
    return [float(np.median(y[a:b])) for a, b in zip(edges, edges[1:])]


def place_step(rounds: Sequence[Values]) -> int | None:
    """Where a step down lies in a short window of ranks timed in the same interleaved rounds.

    ``rounds[i]`` holds rank i's samples (ranks in search order, high → low), sample j of every rank
    from round j. Each round is first divided by its own median, so a machine that speeds up or slows
    down between rounds moves nothing. The boundary k (ranks[:k] high, ranks[k:] low, both sides
    non-empty) minimises the summed absolute deviations of every sample from its side's median (an L1
    two-level fit: one spike cannot move it far). Returns k, or None when no split steps down.
    """
    x = np.asarray(rounds, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        return None
    x = x / np.median(x, axis=0, keepdims=True)
    best, best_cost = None, math.inf
    for k in range(1, x.shape[0]):
        high, low = x[:k].ravel(), x[k:].ravel()
        mh, ml = float(np.median(high)), float(np.median(low))
        cost = float(np.abs(high - mh).sum() + np.abs(low - ml).sum())
        if mh > ml and cost < best_cost:
            best, best_cost = k, cost
    return best


def cliffs(ranks: Sequence[int], values: Values | Sequence[Values], sigma: float | None = None,
           min_step: float = 0.02) -> list[int]:
    """Ranks r where the time steps up above the ranks below by more than the measured noise: the cliffs.

    The rank search's rule (:func:`fit_steps`, the one rule every notebook, figure and report uses). ``values``: one
    time per rank, or each rank's samples (one per interleaved round). A straight trend of time with rank is fitted
    with the steps (Theil–Sen within the runs between steps), so a smooth line has no cliff. The noise of a rank's
    time is the larger of ``sigma`` (relative; default from the samples' spread: robust sigma · 1.2533 / √rounds)
    and the robust spread of neighbouring differences; a step must exceed it by :func:`fit_steps`'s z and
    ``min_step`` (relative), and most of it must lie between two neighbouring ranks (a bend is not a cliff); a run of
    one rank (one high point) is never a step. A cliff at r: r is the lowest rank of the higher run.
    """
    r = np.asarray(ranks, dtype=np.float64)
    samples = [np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in values]
    if r.size != len(samples):
        raise ValueError(f"cliffs: {r.size} ranks but {len(samples)} values; pass one time (or one list of samples) "
                         "per rank")
    order = np.argsort(-r)  # the rank search's order: high → low
    r = r[order]
    samples = [samples[i] for i in order]
    med = np.array([float(np.median(s)) for s in samples])
    if med.size < 4 or not np.all(np.isfinite(med)) or np.median(med) <= 0:
        return []
    rounds = min(s.size for s in samples)
    measured = sigma if sigma is not None else (curve_noise(samples) * 1.2533 / math.sqrt(rounds) if rounds >= 2
                                                else 0.0)
    slope, changes, seen = 0.0, [], set()
    for _ in range(6):  # steps and slope fitted in turn until the steps repeat
        level = med - slope * (r - float(np.median(r)))
        noise = max(measured, robust_sigma(np.diff(level / np.median(level))) / math.sqrt(2))
        changes = fit_steps(level, noise, min_step=min_step)
        if tuple(changes) in seen:
            break
        seen.add(tuple(changes))
        slope = _run_slope(r, med, changes)
    fitted = step_levels(level, changes)
    # a cliff steps up, and between two neighbouring ranks (most of it), not along a bend
    return sorted(int(r[c - 1]) for i, c in enumerate(changes)
                  if fitted[i] > fitted[i + 1] and level[c - 1] - level[c] >= 0.5 * (fitted[i] - fitted[i + 1]))


def _run_slope(r: np.ndarray, y: np.ndarray, changes: Sequence[int]) -> float:
    """Theil–Sen slope of ``y`` over ``r`` from the pairs inside each run between change points."""
    edges = [0, *changes, y.size]
    slopes = [(y[j] - y[i]) / (r[j] - r[i]) for a, b in zip(edges, edges[1:])
              for i in range(a, b) for j in range(i + 1, b) if r[j] != r[i]]
    return float(np.median(slopes)) if slopes else 0.0
