"""Which plan runs fastest where it is deployed: whole networks timed on the backend, chosen with confidence.

The rank search times eager layers one at a time. A compiler ranks plans differently: ``torch.compile``
fuses the BatchNorm/ReLU/add work around the layers and lays convolutions out its own way, so plans that tie
on eager can differ once compiled (``data/search_compile_resnet50_cpu.json``,
``data/plan_choice_resnet50_cpu.json``).
:func:`choose_plan` settles it on the backend itself: the original and every candidate plan are timed interleaved
as whole networks, and

- the first plan (the default: e.g. the searched ranks) is kept unless another one is faster than it with
  95% confidence (paired per-round ratios); then the fastest such plan is chosen;
- the original ("original") is kept when the chosen plan does not beat it with confidence.

:func:`pick` is that rule on recorded per-round times (pure).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from lrdlab.lowrank.plan import Plan
from lrdlab.measure.compare import check_backend
from lrdlab.measure.stats import SpeedUp
from lrdlab.measure.sweeps import PLAN_TIMING, speed_table_rounds
from lrdlab.measure.timing_config import TimingConfig, check_timing

ORIGINAL = "original"


@dataclass
class PlanChoice:
    """The chosen plan's name (``"original"``: none beats it), the plan (None for the original), why, and the table."""

    name: str
    plan: Plan | None
    reason: str
    table: Any  # DataFrame: speed_table's columns + vs_default_pct (median, ci_low, ci_high) + chosen

    def __str__(self) -> str:
        cols = ["name", "flops_removed_pct", "speedup_pct", "speedup_pct_ci_low", "speedup_pct_ci_high",
                "vs_default_pct", "vs_default_ci_low", "vs_default_ci_high", "chosen"]
        return f"{self.table[cols].round(1).to_string(index=False)}\nchosen: {self.name} ({self.reason})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"chosen", "reason", "rows"}`` (the table's rows)."""
        return {"chosen": self.name, "reason": self.reason, "rows": self.table.to_dict(orient="records")}


def pick(per_round: Mapping[str, Sequence[float]], names: Sequence[str]) -> tuple[str, str, dict[str, SpeedUp]]:
    """The choice among ``names`` (``names[0]`` is the default) from paired per-round times.

    ``per_round`` holds each name's round times and the original's (key ``"original"``). Returns
    (choice, reason, versus) where ``versus[name]`` is the speed-up of ``name`` over the default.
    """
    if not names:
        raise ValueError("choose among at least one plan")
    missing = [n for n in (ORIGINAL, *names) if n not in per_round]
    if missing:
        raise ValueError(f"no round times for {missing}")
    default = names[0]
    versus = {n: SpeedUp.of(per_round[default], per_round[n]) for n in names}
    better = [n for n in names[1:] if versus[n].ci_low > 1.0]
    if better:
        choice = max(better, key=lambda n: versus[n].median)
        why = f"faster than {default} with 95% confidence ({_bare(versus[choice])})"
    else:
        choice = default
        why = "no other plan is faster than it with 95% confidence" if len(names) > 1 else "the only plan"
    vs_original = SpeedUp.of(per_round[ORIGINAL], per_round[choice])
    if vs_original.ci_low <= 1.0:
        return ORIGINAL, f"{choice} does not beat the original with 95% confidence ({_bare(vs_original)})", versus
    return choice, f"{why}; vs the original {_bare(vs_original)}", versus


def _bare(up: SpeedUp) -> str:
    """The interval text without the within-noise note (the reason says what the interval means)."""
    return up.text().removesuffix(", within noise")


def choose_plan(model: nn.Module, plans: Mapping[str, Plan], input_shape: Sequence[int],
                timing: TimingConfig = PLAN_TIMING, *, progress: bool = True) -> PlanChoice:
    """Time ``model`` and each plan's network (random weights of the plan's shapes) on ``timing.backend``,
    interleaved with adaptive rounds (:func:`lrdlab.measure.compare.compare`), and choose by :func:`pick`.

    ``plans`` is in order of preference: the first is the default. ``model`` is not modified.
    """
    if not plans:
        raise ValueError("choose_plan needs at least one plan, e.g. {'searched': plan, 'g=32': plan_g32}")
    if ORIGINAL in plans:
        raise ValueError(f"{ORIGINAL!r} names the model itself: rename that plan")
    timing = check_timing(timing, PLAN_TIMING)
    check_backend(timing.backend, "inference", timing.device)
    table, per_round = speed_table_rounds(model, dict(plans), input_shape, timing, progress=progress)
    names = list(plans)
    choice, reason, versus = pick(per_round, names)
    table["vs_default_pct"] = [versus[n].pct for n in table["name"]]
    table["vs_default_ci_low"] = [versus[n].pct_low for n in table["name"]]
    table["vs_default_ci_high"] = [versus[n].pct_high for n in table["name"]]
    table["chosen"] = [n == choice for n in table["name"]]
    return PlanChoice(choice, plans.get(choice), reason, table)
