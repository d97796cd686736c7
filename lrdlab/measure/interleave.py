"""The one interleaved timer: every variant timed once per round, in an order that gives none a fixed slot.

One ordering rule per use:

- ``"alternate"``: A B C, then C B A, … (odd rounds reversed): a few whole models, where no model may
  always run first;
- ``"shuffle"``: a fresh random order each round, seeded by the number of samples already taken (so a
  run is reproducible): the many ranks of one layer, where a fixed order would turn drift within a round
  into a fake step along the rank curve.

A step is a zero-argument function returning one round's value (seconds). :func:`interleave` returns
the :class:`Rounds` it filled; ``Rounds.speedup`` gives the paired :class:`~lrdlab.measure.stats.SpeedUp`.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np

from lrdlab.measure.stats import LEVEL, SpeedUp

K = TypeVar("K", bound=Hashable)
ORDERS = ("alternate", "shuffle")


@dataclass
class Rounds(Generic[K]):
    """Each variant's value per round (seconds), paired by round, and the order rule that produced them."""

    times: dict[K, list[float]] = field(default_factory=dict)
    order: str = "alternate"

    @property
    def count(self) -> int:
        """Rounds every variant has completed."""
        return min((len(v) for v in self.times.values()), default=0)

    def median(self, label: K) -> float:
        return statistics.median(self.times[label])

    def speedup(self, baseline: K, other: K, *, level: float = LEVEL, converged: bool = True) -> SpeedUp:
        """Paired speed-up of ``other`` over ``baseline``: per-round baseline time / other time."""
        return SpeedUp.of(self.times[baseline], self.times[other], level=level, converged=converged)


def round_order(labels: list[K], index: int, order: str, rng: np.random.Generator) -> list[K]:
    """The labels in the order of round ``index`` under ``order`` (``rng`` draws the shuffled orders)."""
    if order == "alternate":
        return labels[::-1] if index % 2 else list(labels)
    return [labels[i] for i in rng.permutation(len(labels))]


def interleave(
    steps: Mapping[K, Callable[[], float]], rounds: int, *, order: str = "alternate", into: Rounds[K] | None = None,
    on_step: Callable[[K], None] | None = None, on_round: Callable[[int], None] | None = None,
) -> Rounds[K]:
    """Run every step once per round for ``rounds`` rounds; append each value to ``into`` (returned).

    ``into`` continues an earlier run: the alternation carries on from its round count, the shuffle is
    seeded by its sample count. ``on_step(label)`` after each step, ``on_round(rounds done)`` after each
    round (progress bars).
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS} (got {order!r})")
    if not isinstance(rounds, int) or rounds < 0:
        raise ValueError(f"rounds must be a non-negative int (got {rounds!r})")
    record: Rounds[K] = into if into is not None else Rounds(order=order)
    labels = list(steps)
    rng = np.random.default_rng(sum(len(v) for v in record.times.values()))
    first = record.count
    for i in range(first, first + rounds):
        for label in round_order(labels, i, order, rng):
            record.times.setdefault(label, []).append(float(steps[label]()))
            if on_step is not None:
                on_step(label)
        if on_round is not None:
            on_round(i + 1)
    return record
