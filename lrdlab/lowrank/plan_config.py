"""What :func:`lrdlab.make_plan` is asked: a rank policy (one frozen dataclass per kind) and the layers to plan.

``make_plan(model, Ratio(2, granularity=8), Layers(exclude="conv1"))``: :class:`Ratio`, :class:`Energy`,
:class:`VBMF` and :class:`FixedRank` choose the ranks (with the options every kind shares: ``granularity``,
``rounding``, ``branches``, ``allow_larger``); :class:`Layers` says which layers are candidates and how the probe
forward runs. Each checks its fields when made, with a ValueError that names the field and a fix.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar

from torch import nn

from lrdlab.lowrank import ranks
from lrdlab.lowrank.layers import dense_weight
from lrdlab.lowrank.policies import MIN_RANK, fit_fixed_ranks, keep_below_min_rank, positive_int, real, to_patterns

if TYPE_CHECKING:
    from lrdlab.lowrank.methods import Method
    from lrdlab.lowrank.plan import LayerPlan

Info = dict[str, Any]

KINDS = "Ratio(2), Energy(0.9), VBMF() or FixedRank(16)"
# P1's setting for ResNets (``Layers(exclude=PAPER_EXCLUDE)``, ``lrdlab … --paper``): every bottleneck conv and the fc
# decomposed, not the 7×7 stem, not the downsample 1×1 convs (P1 Table 2's FLOP reductions to within 0.4 points)
PAPER_EXCLUDE = ["conv1", "*.downsample.*"]


def _set(obj: object, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)  # a frozen dataclass normalising its own field


@dataclass(frozen=True, kw_only=True, repr=False)
class RankPolicy:
    """How :func:`lrdlab.make_plan` chooses ranks: the options every kind shares (make one of the kinds,
    :class:`Ratio`, :class:`Energy`, :class:`VBMF` or :class:`FixedRank`).

    ``granularity``: ranks rounded to its multiples (``rounding`` ``"down"``, ``"up"`` or ``"nearest"``; a layer
    that cannot save at that granularity is kept). ``branches``: the core of branchable forms (Tucker-2) split
    into that many groups. ``allow_larger``: decompose a layer even when its ranks do not save parameters.
    """

    kind: ClassVar[str] = ""
    granularity: int = 1
    rounding: str = "down"
    branches: int = 1
    allow_larger: bool = False

    def __post_init__(self) -> None:
        who = type(self).__name__
        if not self.kind:
            raise ValueError(f"RankPolicy is the options every kind shares; make one kind: {KINDS}")
        _set(self, "granularity", positive_int(self.granularity, f"{who}: granularity"))
        _set(self, "branches", positive_int(self.branches, f"{who}: branches"))
        if self.rounding not in ranks.ROUNDING_MODES:
            raise ValueError(f"{who}: rounding must be one of {ranks.ROUNDING_MODES} (got {self.rounding!r})")
        if not isinstance(self.allow_larger, bool):
            raise ValueError(f"{who}: allow_larger must be True or False (got {self.allow_larger!r})")

    def __repr__(self) -> str:
        """The kind's own setting, then the options that differ from their defaults: ``Ratio(2.0, granularity=8)``."""
        own = [repr(getattr(self, f.name)) for f in fields(self) if not f.kw_only]
        changed = [f"{f.name}={getattr(self, f.name)!r}" for f in fields(self)
                   if f.kw_only and getattr(self, f.name) != f.default]
        return f"{type(self).__name__}({', '.join(own + changed)})"

    @property
    def value(self) -> Any:
        """The kind's own setting as a plan records it (the ratio, the energy, True for VBMF, the ranks)."""
        raise NotImplementedError

    def targets(self, module: nn.Module, info: Info, form: Method, name: str) -> tuple[list[int], str]:
        """Target ranks of layer ``name`` in ``form`` (not yet range-checked or rounded), and words for the reason."""
        raise NotImplementedError

    def fit(self, name: str, info: Info, form: Method, target: list[int], why: str) -> tuple[list[int], str]:
        """The targets against the form's full ranks (derived ranks already fit)."""
        return target, why

    def review(self, row: LayerPlan, info: Info) -> None:
        """A last look at a rounded row (a Ratio keeps a layer whose rank falls below ``min_rank``)."""

    def settings(self) -> dict[str, Any]:
        """The policy as a plan's ``settings`` record it (the keys plans have always had; a Ratio adds ``min_rank``)."""
        return {"policy": self.kind, "value": self.value, "granularity": self.granularity, "rounding": self.rounding,
                "beta": 1.0, "branches": self.branches, "allow_larger": self.allow_larger}


@dataclass(frozen=True, repr=False)
class Ratio(RankPolicy):
    """Each layer's weights compressed ``ratio``-fold (α in P1 §1; 2 halves them).

    ``beta``: Tucker-2's R2 = β·R1 (1 makes both ranks equal). ``min_rank``: a layer whose rank would fall below it
    (e.g. a 10-class head) is kept, with the reason; the default keeps the shipped models' heads, 1 turns it off.
    """

    kind: ClassVar[str] = "ratio"
    ratio: float
    beta: float = field(default=1.0, kw_only=True)
    min_rank: int = field(default=MIN_RANK, kw_only=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        _set(self, "ratio", real(self.ratio, "Ratio: ratio", "e.g. Ratio(2) halves each layer's weights"))
        if not self.ratio > 1:
            raise ValueError(f"Ratio: ratio must be > 1 (got {self.ratio:g}); e.g. Ratio(2) halves the weights")
        _set(self, "beta", real(self.beta, "Ratio: beta", "R2 = β·R1; 1 makes both Tucker ranks equal"))
        if not self.beta > 0:
            raise ValueError(f"Ratio: beta must be > 0 (got {self.beta:g}); R2 = β·R1, 1 makes both ranks equal")
        _set(self, "min_rank", positive_int(self.min_rank, "Ratio: min_rank"))

    @property
    def value(self) -> float:
        return self.ratio

    def targets(self, module: nn.Module, info: Info, form: Method, name: str) -> tuple[list[int], str]:
        return form.rank_for_ratio(info, self.ratio, self.beta, self.branches), f"ratio {self.ratio:g}"

    def review(self, row: LayerPlan, info: Info) -> None:
        keep_below_min_rank(row, info, self.min_rank)

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "beta": self.beta, "min_rank": self.min_rank}


@dataclass(frozen=True, repr=False)
class Energy(RankPolicy):
    """Each rank keeps ``energy`` of its unfolding's Σσ² (0.9 keeps 90%)."""

    kind: ClassVar[str] = "energy"
    energy: float

    def __post_init__(self) -> None:
        super().__post_init__()
        _set(self, "energy", real(self.energy, "Energy: energy", "e.g. Energy(0.9) keeps 90% of Σσ²"))
        if not 0 < self.energy <= 1:
            raise ValueError(f"Energy: energy must be in (0, 1] (got {self.energy:g}); e.g. Energy(0.9) keeps 90% "
                             f"of Σσ²")

    @property
    def value(self) -> float:
        return self.energy

    def targets(self, module: nn.Module, info: Info, form: Method, name: str) -> tuple[list[int], str]:
        spectra = form.spectra(dense_weight(module))
        return [ranks.energy_rank(s.numpy(), self.energy) for s in spectra], f"energy {self.energy:g}"


@dataclass(frozen=True, repr=False)
class VBMF(RankPolicy):
    """Each rank chosen by empirical variational Bayes matrix factorization (:func:`lrdlab.lowrank.ranks.vbmf_rank`)."""

    kind: ClassVar[str] = "vbmf"

    @property
    def value(self) -> bool:
        return True

    def targets(self, module: nn.Module, info: Info, form: Method, name: str) -> tuple[list[int], str]:
        mats = form.unfoldings(dense_weight(module).detach().double())
        return [max(1, ranks.vbmf_rank(m.numpy())) for m in mats], "vbmf"


LayerRank = int | str | Sequence[int]


@dataclass(frozen=True, repr=False)
class FixedRank(RankPolicy):
    """Ranks given, not derived: ``rank`` an int for every layer (capped at each layer's full rank), ``"full"``,
    or a dict from layer name to an int, a list of ints (one per rank of the layer's form) or ``"full"`` (layers
    not in it are kept; each rank must fit its layer)."""

    kind: ClassVar[str] = "rank"
    rank: int | str | Mapping[str, LayerRank]

    def __post_init__(self) -> None:
        super().__post_init__()
        rank = self.rank
        fix = "e.g. FixedRank(16), FixedRank('full') or FixedRank({'layer1.0.conv1': 8})"
        if isinstance(rank, Mapping):
            if not all(isinstance(k, str) for k in rank):
                raise ValueError(f"FixedRank: a rank dict's keys are layer names (got {list(rank)!r}); {fix}")
            _set(self, "rank", dict(rank))
        elif isinstance(rank, str):
            if rank != "full":
                raise ValueError(f"FixedRank: rank must be an int >= 1, 'full' or a dict (got {rank!r}); {fix}")
        else:
            try:
                _set(self, "rank", positive_int(rank, "FixedRank: rank"))
            except ValueError as err:
                raise ValueError(f"FixedRank: rank must be an int >= 1, 'full' or a dict {{layer name: rank}} "
                                 f"(got {rank!r}); {fix}") from err

    @property
    def value(self) -> int | str | Mapping[str, LayerRank]:
        return self.rank

    def targets(self, module: nn.Module, info: Info, form: Method, name: str) -> tuple[list[int], str]:
        chosen: Any = self.rank.get(name) if isinstance(self.rank, Mapping) else self.rank
        if chosen is None:
            return [], "not in the rank dict"
        if chosen == "full":
            return form.full_ranks(info), "full rank"
        if isinstance(chosen, numbers.Integral) and not isinstance(chosen, bool):
            return [int(chosen)] * form.n_ranks, "fixed rank"
        try:
            out = [int(r) for r in chosen]
        except (TypeError, ValueError) as err:
            raise ValueError(f"layer {name!r}: rank must be an int, 'full' or a list of ints (got {chosen!r})") \
                from err
        if len(out) == 1:
            out = out * form.n_ranks
        if len(out) != form.n_ranks:
            raise ValueError(f"layer {name!r}: method {form.name} takes {form.n_ranks} rank(s), got {out}")
        return out, "fixed rank"

    def fit(self, name: str, info: Info, form: Method, target: list[int], why: str) -> tuple[list[int], str]:
        return fit_fixed_ranks(name, info, form, target, isinstance(self.rank, Mapping), why)


@dataclass(frozen=True, repr=False)
class LossAware(RankPolicy):
    """Per-layer ranks allocated by measured truncation loss, at the parameter budget of ``Ratio(ratio)`` over the
    measured layers (the layers :func:`~lrdlab.lowrank.loss_spectra.loss_spectra` saw; others are kept):

    ``spectra = loss_spectra(model, batches)``; ``plan = make_plan(model, LossAware(1.25, spectra))``.

    Greedy by loss decrease per parameter (:func:`lrdlab.lowrank.allocation.allocate`). ``normalise``:
    ``"relative"`` weighs each layer's output error by its output energy, ``"output"`` takes it as it is;
    ``by_type``: each layer type (the name's last part, e.g. ``q_proj``) keeps the budget uniform compression gives
    it, and ranks move only between layers of one type. ``floor``: no layer's rank falls below that fraction
    of its uniform rank (0 lets the greedy rule cut a layer to rank ``granularity``). A layer's own output error
    is a proxy for the model's loss: measure the plan against uniform ``Ratio`` on held-out data (on
    SmolLM2-135M: ``data/lm_quality_smollm2.json``).
    """

    kind: ClassVar[str] = "loss_aware"
    ratio: float
    spectra: Any
    normalise: str = field(default="relative", kw_only=True)
    by_type: bool = field(default=False, kw_only=True)
    floor: float = field(default=0.5, kw_only=True)
    allocated: Mapping[str, int] = field(default_factory=dict, kw_only=True, init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        from lrdlab.lowrank import allocation
        from lrdlab.lowrank.allocation import LossSpectra

        _set(self, "ratio", real(self.ratio, "LossAware: ratio", "e.g. LossAware(2, spectra) halves the weights"))
        if not self.ratio > 1:
            raise ValueError(f"LossAware: ratio must be > 1 (got {self.ratio:g}); e.g. LossAware(2, spectra)")
        if not isinstance(self.spectra, LossSpectra):
            raise ValueError(f"LossAware: spectra must be a LossSpectra (got {type(self.spectra).__name__}); "
                             f"measure it first: spectra = loss_spectra(model, calibration_batches)")
        if self.normalise not in allocation.NORMALISATIONS:
            raise ValueError(f"LossAware: normalise must be one of {allocation.NORMALISATIONS} "
                             f"(got {self.normalise!r})")
        if not isinstance(self.by_type, bool):
            raise ValueError(f"LossAware: by_type must be True or False (got {self.by_type!r})")
        _set(self, "floor", real(self.floor, "LossAware: floor", "e.g. floor=0.5 keeps half the uniform rank"))
        if not 0 <= self.floor <= 1:
            raise ValueError(f"LossAware: floor must be in [0, 1] (got {self.floor:g}); e.g. floor=0.5 keeps at "
                             f"least half of each layer's uniform rank")
        layers = self.spectra.layers
        if self.by_type:
            groups: dict[str, list[str]] = {}
            for name in layers:
                groups.setdefault(name.rsplit(".", 1)[-1], []).append(name)
            chosen = allocation.allocate_groups(layers, self.ratio, groups, step=self.granularity,
                                                normalise=self.normalise, floor=self.floor)
        else:
            budget = allocation.uniform_budget(layers, self.ratio, self.granularity)
            chosen = allocation.allocate(layers, budget, step=self.granularity, normalise=self.normalise,
                                         min_rank=allocation.floors(layers, self.ratio, self.floor,
                                                                    self.granularity))
        _set(self, "allocated", chosen)

    def __repr__(self) -> str:
        extra = "".join(f", {k}={getattr(self, k)!r}" for k in ("normalise", "by_type", "floor", "granularity")
                        if getattr(self, k) != type(self).__dataclass_fields__[k].default)
        return f"LossAware({self.ratio!r}, {self.spectra!r}{extra})"

    @property
    def value(self) -> float:
        return self.ratio

    def targets(self, module: nn.Module, info: Info, form: Method, name: str) -> tuple[list[int], str]:
        rank = self.allocated.get(name)
        if rank is None:
            return [], "not measured by loss_spectra"
        return [rank], f"loss-aware {self.ratio:g}"

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "normalise": self.normalise, "by_type": self.by_type, "floor": self.floor}


POLICIES: dict[str, type[RankPolicy]] = {p.kind: p for p in (Ratio, Energy, VBMF, FixedRank)}


def policy_from_settings(settings: Mapping[str, Any]) -> RankPolicy | None:
    """The rank policy a plan's ``settings`` record (plans of every format lrdlab wrote; None when it records
    none, e.g. a plan made by hand)."""
    kind = POLICIES.get(settings.get("policy", ""))
    if kind is None:
        return None
    shared = {k: settings[k] for k in ("granularity", "rounding", "branches", "allow_larger") if k in settings}
    value: Any = settings.get("value")
    if kind is Ratio:
        extra = {k: settings[k] for k in ("beta", "min_rank") if k in settings}
        return Ratio(value, **shared, **extra)
    if kind is Energy:
        return Energy(value, **shared)
    if kind is FixedRank:
        return FixedRank(value, **shared)
    return VBMF(**shared)


Patterns = str | Sequence[str] | None


@dataclass(frozen=True)
class Layers:
    """Which layers :func:`lrdlab.make_plan` plans, and the probe forward that finds the ones it must keep.

    ``include`` / ``exclude`` / ``force``: glob patterns over layer names (one string is one pattern; e.g.
    ``"layer1.*"``); each must match a layer. ``include`` plans only the layers it matches, ``exclude`` keeps those
    it matches. One probe forward (on ``example_input`` / ``input_shape``, else the model's known input) finds the
    layers the model never calls, or whose weight it reads directly, and subclasses with their own forward: they
    are kept with the reason unless ``force`` names them (:mod:`lrdlab.lowrank.usage`).
    """

    include: Patterns = None
    exclude: Patterns = None
    force: Patterns = None
    example_input: Any = None
    input_shape: Sequence[int] | None = None

    def __post_init__(self) -> None:
        for name in ("include", "exclude", "force"):
            _set(self, name, tuple(to_patterns(getattr(self, name), f"Layers: {name}")))
        shape = self.input_shape
        if shape is not None:
            if isinstance(shape, str) or not isinstance(shape, Sequence) or not all(
                    isinstance(d, numbers.Integral) and not isinstance(d, bool) and d >= 1 for d in shape):
                raise ValueError(f"Layers: input_shape must be positive ints, e.g. (1, 3, 224, 224) (got {shape!r})")
            _set(self, "input_shape", tuple(int(d) for d in shape))
        if self.example_input is not None and shape is not None:
            raise ValueError("Layers: pass example_input= or input_shape=, not both (the probe runs on one input)")

    def patterns(self, name: str) -> list[str]:
        """``include`` / ``exclude`` / ``force`` as a list (how a plan records them)."""
        return list(getattr(self, name))


def check_policy(policy: object) -> RankPolicy:
    """``policy`` when it is one of the kinds, else a ValueError naming them (a bare number suggests Ratio)."""
    if isinstance(policy, RankPolicy):
        return policy
    number = isinstance(policy, numbers.Real) and not isinstance(policy, bool)
    raise ValueError(f"the rank policy must be {KINDS} (got {policy!r}); e.g. make_plan(model, "
                     f"{f'Ratio({policy!r})' if number else 'Ratio(2)'})")
