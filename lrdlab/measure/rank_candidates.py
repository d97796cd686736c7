"""The ranks a search tries, and P1's Algorithm 1 choice (the rank just below the largest drop in time)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from lrdlab.lowrank.methods import get_method

TimeFn = Callable[[nn.Module, tuple[int, ...]], float]
METHODS = ("robust", "paper")
DEFAULT_ROUNDS = {"robust": 3, "paper": 1}


def candidate_ranks(R: int, lower: float = 0.75, granularity: int = 1) -> list[int]:
    """Ranks to search, descending: the target R, then multiples of ``granularity`` down to ceil(lower·R)."""
    if not isinstance(R, int) or R < 1:
        raise ValueError(f"target rank must be a positive int (got {R!r})")
    if not (0 < lower <= 1):
        raise ValueError(f"lower must be a fraction of the target rank in (0, 1] (got {lower!r})")
    if not isinstance(granularity, int) or granularity < 1:
        raise ValueError(f"granularity must be a positive int (got {granularity!r})")
    r_min = max(1, math.ceil(lower * R))
    top = (R - 1) // granularity * granularity
    return [R] + [r for r in range(top, r_min - 1, -granularity) if r >= 1]


def pick_rank(trace: dict[int, float]) -> int:
    """P1's rule: the rank just below the largest drop in time, argmax over searched r of t(r⁺) − t(r).

    ``trace`` maps rank → time; r⁺ is the next larger searched rank. With no positive drop the
    largest rank (the target) is kept. One noisy point can win this argmax: see :func:`robust_candidate`.
    """
    if not trace:
        raise ValueError("empty rank trace")
    rs = sorted(trace, reverse=True)
    best, best_drop = rs[0], 0.0
    for hi, lo in zip(rs, rs[1:]):
        drop = trace[hi] - trace[lo]
        if drop > best_drop:
            best, best_drop = lo, drop
    return best


def scaled_ranks(target: Sequence[int], r: int, multiple: int = 1) -> tuple[int, ...]:
    """Ranks at leading rank r, the others scaled like the target (Tucker r2 = r·R2/R1; r1 = r2 when R1 = R2).

    ``multiple`` (the branches of a branched Tucker core) rounds the scaled ranks down to its multiples.
    """
    R = target[0]
    return tuple([r] + [max(multiple, round(r * t / R) // multiple * multiple) for t in target[1:]])


@dataclass(frozen=True)
class SearchSpace:
    """One layer's search space: decomposed by ``method`` at ``target`` ranks (leading rank R), the ranks searched
    are R, then the multiples of ``granularity`` (and of ``branches``, the groups of a branched Tucker core) down to
    ceil(``lower``·R); the other ranks scale with the leading one (:func:`scaled_ranks`)."""

    method: str
    target: tuple[int, ...]
    lower: float = 0.75
    granularity: int = 1
    branches: int = 1

    def __post_init__(self) -> None:
        get_method(self.method)  # a ValueError naming the registered methods
        try:
            target = tuple(int(r) for r in self.target)
        except (TypeError, ValueError):
            target = ()
        if not target or any(r < 1 for r in target):
            raise ValueError(f"SearchSpace: target must be the layer's ranks, positive ints like (64, 64) "
                             f"(got {self.target!r})")
        object.__setattr__(self, "target", target)
        if isinstance(self.branches, bool) or not isinstance(self.branches, numbers.Integral) or self.branches < 1:
            raise ValueError(f"SearchSpace: branches must be a positive int (got {self.branches!r})")
        candidate_ranks(1, self.lower, self.granularity)  # validates lower and granularity

    def ranks(self) -> dict[int, tuple[int, ...]]:
        """Leading rank → the layer's full ranks, for every rank searched (descending)."""
        step = math.lcm(self.granularity, self.branches)
        return {r: scaled_ranks(self.target, r, self.branches)
                for r in candidate_ranks(self.target[0], self.lower, step)}


def rank_label(ranks: Sequence[int]) -> str:
    return ",".join(str(r) for r in ranks)


def show_ranks(ranks: Sequence[int]) -> str:
    """Ranks as the paper prints them: one number when they are all equal (Tucker r1 = r2)."""
    return str(ranks[0]) if len(set(ranks)) == 1 else rank_label(ranks)
