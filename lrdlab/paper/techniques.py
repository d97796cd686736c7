"""P1 Table 2 and the branched-Tucker sweep (F6): each structural technique measured against the original.

- :func:`technique_models` — original, vanilla LRD, layer freezing and layer merging of one model.
- :func:`speed_columns` / :func:`structure_row` — their measured train / inference speed-ups and structure (T2).
- :func:`branch_structures` / :func:`branch_sweep` — branched Tucker for N ∈ {1, 2, 4, 8} (F6), at the same
  ranks (:func:`with_branches`); :func:`block_diagonal_error` — the error the dropped off-diagonal blocks add.
- :func:`accuracy_study` — accuracy of each layer-merging BN option and branch count, before and after
  a short fine-tune, on a small trained model.
- :func:`bottleneck_net` — a small Bottleneck ResNet that trains on a CPU in seconds.

The two studies return typed records (:class:`BranchSweep`, :class:`TechniqueAccuracy`) that show as tables in a
notebook; their ``to_dict()`` is what ``python -m tools.record techniques`` writes under ``data/`` (see ``--help``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from lrdlab.lowrank import factorize
from lrdlab.lowrank.decompose import decompose
from lrdlab.lowrank.merge import DEFAULT_BN, merge_bottlenecks
from lrdlab.lowrank.methods import TUCKER2, get_method
from lrdlab.lowrank.plan import Layers, Plan, Ratio, make_plan
from lrdlab.lowrank.plan_config import PAPER_EXCLUDE
from lrdlab.measure.counting import FLOP_COUNTER, structure_row
from lrdlab.measure.records import StudyRecord
from lrdlab.measure.timing_config import TimingConfig, check_timing
from lrdlab.zoo.cifar_models import bottleneck_net

TECHNIQUE_TIMING = TimingConfig(rounds=3, warmup=1, repeats=2)  # speed_columns' and branch_sweep's default
ACCURACY_TIMING = TimingConfig(rounds=5, warmup=2, repeats=3)  # accuracy_study's speed of the small net

# --- the techniques of P1 Table 2 ----------------------------------------------------------------------------


def with_branches(plan: Plan, branches: int) -> Plan:
    """A copy of ``plan`` whose Tucker-2 rows use ``branches`` groups at the *same* ranks (core params ÷ N)."""
    out = copy.deepcopy(plan)
    for row in out.layers:
        if not row.method or not row.ranks or not get_method(row.method).branchable:
            continue
        r1, r2 = row.ranks
        if r1 % branches or r2 % branches:
            raise ValueError(f"layer {row.name!r}: ranks {row.ranks} are not multiples of {branches} branches; "
                             f"make the plan with granularity={branches} (or a multiple)")
        k2 = row.kernel_size[0] * row.kernel_size[1]
        row.params_after += k2 * r1 * r2 // branches - k2 * r1 * r2 // row.branches
        row.branches = branches
    out.settings = {**out.settings, "branches": branches}
    return out


def technique_models(model: nn.Module, plan: Plan, bn: str = DEFAULT_BN, also: Sequence[str] = ()
                     ) -> dict[str, nn.Module]:
    """P1 Table 2's models: ``original``, ``vanilla LRD``, ``layer freezing`` (regular) and ``layer merging``.

    ``layer merging`` uses merge option ``bn``; each option in ``also`` adds a ``layer merging (bn=…)`` row.
    """
    from lrdlab.finetune.freezing import Freezer

    vanilla = decompose(model, plan)
    frozen = copy.deepcopy(vanilla)
    Freezer(frozen, mode="regular")  # P1's regular freezing: only the SVD ``last`` / Tucker ``core`` train
    out = {"original": model, "vanilla LRD": vanilla, "layer freezing": frozen,
           "layer merging": merge_bottlenecks(model, plan, bn=bn)}
    out.update({f"layer merging (bn={b})": merge_bottlenecks(model, plan, bn=b) for b in also if b != bn})
    return out


def speed_columns(models: dict[str, nn.Module], input_shape: Sequence[int], timing: TimingConfig = TECHNIQUE_TIMING,
                  modes: Sequence[str] = ("train", "inference")) -> dict[str, dict[str, Any]]:
    """Measured train / inference time and speed-up % vs the first model (interleaved, lrdlab.compare)."""
    from lrdlab.measure.compare import compare

    timing = check_timing(timing, TECHNIQUE_TIMING)
    out: dict[str, dict[str, Any]] = {name: {} for name in models}
    for mode in modes:
        p = "infer" if mode == "inference" else mode  # the results vocabulary: infer_*, train_*
        for r in compare(models, input_shape, mode, timing).to_dict("records"):
            name = r["name"]
            out[name].update({
                f"{p}_s": r["median_s"], f"{p}_img_s": r["throughput"],
                f"{p}_speedup_pct": 100.0 * (r["speedup_vs_first"] - 1),
                f"{p}_speedup_iqr_pct": [100.0 * (r["speedup_q1"] - 1), 100.0 * (r["speedup_q3"] - 1)],
                f"{p}_speedup_pct_ci_low": 100.0 * (r["speedup_ci_low"] - 1),
                f"{p}_speedup_pct_ci_high": 100.0 * (r["speedup_ci_high"] - 1), f"{p}_rounds": r["rounds"],
            })
    return out


# --- branched Tucker -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BranchConfig:
    """The branched-Tucker studies' plan and branch counts: a ``ratio`` plan (``exclude`` globs kept whole) with
    ranks rounded down to multiples of ``granularity``, decomposed with each count in ``branches`` at those same
    ranks, so ``granularity`` must be a multiple of every count."""

    branches: tuple[int, ...] = (1, 2, 4, 8)
    ratio: float = 2.0
    granularity: int = 8
    exclude: tuple[str, ...] = tuple(PAPER_EXCLUDE)

    def __post_init__(self) -> None:
        object.__setattr__(self, "branches", tuple(self.branches))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        if not self.branches or not all(type(n) is int and n >= 1 for n in self.branches):
            raise ValueError(f"BranchConfig: branches must be positive ints like (1, 2, 4, 8) (got {self.branches!r})")
        if type(self.granularity) is not int or self.granularity < 1:
            raise ValueError(f"BranchConfig: granularity must be a positive int (got {self.granularity!r})")
        odd = [n for n in self.branches if self.granularity % n]
        if odd:
            raise ValueError(f"BranchConfig: granularity {self.granularity} is not a multiple of branches {odd}; "
                             f"give granularity={math.lcm(self.granularity, *odd)}")
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)) or not self.ratio > 1:
            raise ValueError(f"BranchConfig: ratio must be a compression ratio > 1, e.g. 2.0 (got {self.ratio!r})")
        if not all(isinstance(p, str) for p in self.exclude):
            raise ValueError(f"BranchConfig: exclude must be layer-name globs like 'conv1' (got {self.exclude!r})")

    def plan(self, model: nn.Module, model_name: str) -> Plan:
        """The shared plan of ``model``: ratio ``ratio``, ranks multiples of ``granularity``, ``exclude`` kept."""
        return make_plan(model, Ratio(self.ratio, granularity=self.granularity), Layers(exclude=list(self.exclude)),
                         model_name=model_name)

    def to_dict(self) -> dict[str, Any]:
        return {"ratio": self.ratio, "granularity": self.granularity, "exclude": list(self.exclude)}


DEFAULT_BRANCHES = BranchConfig()

_BRANCH_COLUMNS = ("method", "branches", "params_pct", "flops_pct", "weight_rel_error", "acc_before", "acc_after",
                   "infer_speedup_pct", "train_speedup_pct")


@dataclass(frozen=True)
class BranchSweep(StudyRecord):
    """:func:`branch_sweep`'s result: one row per branch count (structure, weight error and, when timed, speed)."""

    COLUMNS = _BRANCH_COLUMNS
    model: str
    input_shape: tuple[int, ...]
    config: BranchConfig
    machine: dict[str, Any]
    speed: dict[str, Any] | None  # the timing settings; None: not timed
    rows: list[dict[str, Any]]

    def title(self) -> str:
        return f"branched Tucker sweep on {self.model}, input {self.input_shape}: % change vs the original"

    def to_dict(self) -> dict[str, Any]:
        return {"what": f"branched Tucker sweep (F6) on {self.model}: same ranks, core as N groups; % change vs "
                        "original", "model": self.model, "input_shape": list(self.input_shape),
                **self.config.to_dict(), "flop_counter": FLOP_COUNTER, "machine": self.machine, "speed": self.speed,
                "rows": self.rows}


@dataclass(frozen=True)
class TechniqueAccuracy(StudyRecord):
    """:func:`accuracy_study`'s result: the base model's summary, the shared plan, the fine-tuning settings, a row
    per layer-merging option (``merge_rows``) and per branch count (``branch_rows``, with speed)."""

    COLUMNS = ("method", *_BRANCH_COLUMNS[2:4], "acc_before", "acc_after", "infer_speedup_pct")
    base: dict[str, Any]
    plan: dict[str, Any]
    finetune: dict[str, Any]
    calibration_batches: int
    speed_input_shape: tuple[int, ...]
    original_timing: dict[str, Any]
    machine: dict[str, Any]
    merge_rows: list[dict[str, Any]]
    branch_rows: list[dict[str, Any]]

    def row_list(self) -> list[dict[str, Any]]:
        return self.merge_rows + self.branch_rows

    def title(self) -> str:
        return (f"accuracy (%) of each layer-merging option and branch count before / after a short fine-tune "
                f"({self.base['data']})")

    def to_dict(self) -> dict[str, Any]:
        return {"what": "accuracy (%) of each layer-merging option and branch count before / after a short "
                        "fine-tune", **super().to_dict(), "speed_input_shape": list(self.speed_input_shape)}


@torch.no_grad()
def block_diagonal_error(module: nn.Conv2d, ranks: Sequence[int], branches: int, tucker: str = "hosvd") -> dict:
    """Relative weight error of Tucker-2 at ``ranks`` with the core cut to ``branches`` diagonal blocks.

    Returns ``weight_rel_error`` ‖W − Ŵ_N‖/‖W‖, ``tucker_rel_error`` (N = 1, the rank truncation alone)
    and ``core_energy_dropped`` (share of the core's ‖·‖² in the dropped off-diagonal blocks).
    """
    W = module.weight.detach().double()
    u_in, core, u_out = factorize.tucker2_factors(W, ranks[0], ranks[1], method=tucker)
    blocks = factorize.block_diagonal_core(core, branches)
    r2, r1 = core.shape[:2]
    b1, b2 = r1 // branches, r2 // branches
    cut = torch.zeros_like(core)
    for g in range(branches):
        cut[g * b2:(g + 1) * b2, g * b1:(g + 1) * b1] = blocks[g * b2:(g + 1) * b2]
    norm = W.norm()
    return {
        "weight_rel_error": ((W - factorize.reconstruct_tucker2(u_in, cut, u_out)).norm() / norm).item(),
        "tucker_rel_error": ((W - factorize.reconstruct_tucker2(u_in, core, u_out)).norm() / norm).item(),
        "core_energy_dropped": (1 - blocks.norm() ** 2 / core.norm() ** 2).item() if core.norm() > 0 else 0.0,
    }


def branch_structures(model: nn.Module, plan: Plan, branches: Sequence[int], input_shape: Sequence[int],
                      ) -> tuple[dict[int, nn.Module], list[dict[str, Any]]]:
    """Decomposed models with each branch count at the plan's ranks, and their structure rows.

    Each row: ``branches``, params / FLOPs (and % vs the original), the mean relative weight error
    of the Tucker layers (``weight_rel_error``, N = 1 is Tucker alone) and ``core_energy_dropped``.
    """
    models, rows = {}, []
    tucker = [r for r in plan.layers if r.method and get_method(r.method).branchable]
    for n in branches:
        p = with_branches(plan, n)
        models[n] = decompose(model, p)
        errors = [block_diagonal_error(cast(nn.Conv2d, model.get_submodule(r.name)), r.ranks or [], n) for r in tucker]
        row = structure_row(f"N={n}", models[n], model, input_shape)
        row.update(branches=n, tucker_layers=len(tucker),
                   weight_rel_error=sum(e["weight_rel_error"] for e in errors) / max(len(errors), 1),
                   core_energy_dropped=sum(e["core_energy_dropped"] for e in errors) / max(len(errors), 1))
        rows.append(row)
    return models, rows


# --- accuracy on a small model -----------------------------------------------------------------------------


def _evaluate(model: nn.Module, loader) -> float:
    from lrdlab.finetune.loop import evaluate

    return evaluate(model, loader)["accuracy"]


def _train_base(data: str = "mnist5k", epochs: int = 4, lr: float = 0.05, batch: int = 128, seed: int = 0,
               **net_kw: Any) -> tuple[nn.Module, Any, dict[str, Any]]:
    """A :func:`bottleneck_net` trained on ``data`` (``lrdlab.get_loaders``); returns model, loaders, summary."""
    from lrdlab.finetune.fit_config import FitConfig
    from lrdlab.finetune.loop import set_seed
    from lrdlab.zoo.data import get_loaders
    from lrdlab.zoo.start import train_original

    loaders = get_loaders(data, batch_size=batch, seed=seed)
    set_seed(seed)
    net = bottleneck_net(num_classes=loaders.num_classes, in_channels=loaders.input_size[0], **net_kw)
    model, history = train_original(net, loaders, FitConfig(epochs=epochs, lr=lr, seed=seed, progress=False,
                                                            label="base"))
    summary = {"data": data, "epochs": epochs, "lr": lr, "batch": batch, "seed": seed, "net": net_kw,
               "accuracy": float(history["accuracy"].iloc[-1]), "train_s": float(history["wall_s"].iloc[-1]),
               "input_shape": list(loaders.input_size)}
    return model, loaders, summary


def _finetuned(model: nn.Module, loaders, epochs: int, lr: float, seed: int) -> dict[str, Any]:
    """Accuracy before and after fine-tuning a copy of ``model`` for ``epochs`` (OneCycle SGD)."""
    from lrdlab.finetune.fit_config import FitConfig
    from lrdlab.zoo.start import finetune

    history = finetune(copy.deepcopy(model), loaders, FitConfig(epochs=epochs, lr=lr, seed=seed, progress=False,
                                                                 label="finetune"))
    return {"acc_before": _evaluate(model, loaders.test), "acc_after": float(history["accuracy"].iloc[-1]),
            "acc_curve": [float(a) for a in history["accuracy"]], "finetune_s": float(history["wall_s"].iloc[-1])}


def merge_variants(model: nn.Module, plan: Plan, calibration: list[torch.Tensor]) -> dict[str, nn.Module]:
    """The layer-merging options to compare: each ``bn`` mode (``fresh`` with and without calibration)."""
    return {
        "vanilla LRD (= merge bn='exact')": merge_bottlenecks(model, plan, bn="exact"),
        "merge bn='fold'": merge_bottlenecks(model, plan, bn="fold"),
        "merge bn='fresh', calibrated": merge_bottlenecks(model, plan, bn="fresh", calibration=calibration),
        "merge bn='fresh', identity stats": merge_bottlenecks(model, plan, bn="fresh"),
    }


def _summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    import statistics

    out: dict[str, Any] = {"seeds": len(runs)}
    for key in ("acc_before", "acc_after", "finetune_s"):
        vals = [r[key] for r in runs]
        out[key] = statistics.mean(vals)
        out[f"{key}_min"], out[f"{key}_max"] = min(vals), max(vals)
    out["runs"] = runs
    return out


def accuracy_study(data: str = "mnist5k", base_epochs: int = 4, ft_epochs: int = 2, ft_lr: float = 0.01,
                   seeds: Sequence[int] = (0, 1, 2), config: BranchConfig = DEFAULT_BRANCHES, calib_batches: int = 8,
                   timing: TimingConfig = ACCURACY_TIMING, progress: bool = True,
                   net: dict[str, Any] | None = None) -> TechniqueAccuracy:
    """Layer-merging options and branch counts on a small Bottleneck net: accuracy before / after fine-tuning.

    One base model is trained for ``base_epochs``; the plan of ``config`` (:class:`BranchConfig`) is shared by
    all variants; each variant is fine-tuned ``ft_epochs`` at peak rate ``ft_lr`` once per seed. The ``fresh``
    merge is calibrated on ``calib_batches`` training batches. Branch variants also get measured inference /
    train speed under ``timing`` (batch of the loaders). ``net``: :func:`bottleneck_net` options.
    """
    from tqdm.auto import tqdm

    from lrdlab.measure.machine import machine_info

    if not isinstance(config, BranchConfig):
        raise ValueError(f"config must be a BranchConfig, got {type(config).__name__}; e.g. BranchConfig(ratio=3)")
    timing = check_timing(timing, ACCURACY_TIMING)
    net = {"stem_stride": 2} if net is None and data == "mnist5k" else (net or {})
    base, loaders, summary = _train_base(data, base_epochs, **net)
    plan = config.plan(base, "bottleneck_net")
    calibration = [x for (x, _), _ in zip(loaders.train, range(calib_batches))]
    variants = {"original (fine-tuned as well)": base, **merge_variants(base, plan, calibration)}
    bmodels, brows = branch_structures(base, plan, config.branches, (1, *loaders.input_size))
    variants.update({f"branches N={n}": m for n, m in bmodels.items()})
    rows = {name: structure_row(name, m, base, (1, *loaders.input_size)) for name, m in variants.items()}
    vanilla = next(n for n in variants if n.startswith("vanilla"))
    for name, m in tqdm(variants.items(), desc="accuracy study", disable=not progress):
        if name == "branches N=1":  # the very same model as vanilla LRD (tested): same numbers
            rows[name].update({k: v for k, v in rows[vanilla].items() if k not in ("method",)})
            rows[name]["same_model_as"] = vanilla
            continue
        rows[name].update(_summarise([_finetuned(m, loaders, ft_epochs, ft_lr, s) for s in seeds]))
    shape = (loaders.train.batch_size, *loaders.input_size)
    timed = {"original": base, **{f"N={n}": m for n, m in bmodels.items()}}
    speed = speed_columns(timed, shape, timing)
    for row in brows:
        row.update(rows[f"branches N={row['branches']}"])
        row.update(speed[f"N={row['branches']}"])
        row["method"] = f"N={row['branches']}"
    tucker = {r.name: r.ranks for r in plan.layers if r.method and get_method(r.method) is TUCKER2}
    return TechniqueAccuracy(
        base=summary, plan={**config.to_dict(), "tucker_ranks": tucker},
        finetune={"epochs": ft_epochs, "lr": ft_lr, "schedule": "onecycle", "optimizer": "sgd", "seeds": list(seeds)},
        calibration_batches=calib_batches, speed_input_shape=tuple(shape), original_timing=speed["original"],
        machine=machine_info("cpu").to_dict(), merge_rows=[rows[n] for n in variants if not n.startswith("branches")],
        branch_rows=brows)


def branch_sweep(model_name: str = "resnet50", config: BranchConfig = DEFAULT_BRANCHES, batch: int = 8,
                 image_size: int = 224, timing: TimingConfig | None = TECHNIQUE_TIMING) -> BranchSweep:
    """F6 on a registered model (random weights): params, FLOPs, weight error and speed for each branch count.

    All counts of ``config`` (:class:`BranchConfig`) use the same ranks, so only the core's grouping changes:
    core parameters ÷ N. Speed is timed under ``timing`` at ``batch`` images of ``image_size``; None: no timing.
    """
    from lrdlab.measure.machine import machine_info
    from lrdlab.zoo.models import get_model

    if not isinstance(config, BranchConfig):
        raise ValueError(f"config must be a BranchConfig, got {type(config).__name__}; e.g. BranchConfig(ratio=3)")
    torch.manual_seed(0)
    model = get_model(model_name).eval()
    plan = config.plan(model, model_name)
    models, rows = branch_structures(model, plan, config.branches, (1, 3, image_size, image_size))
    shape = (batch, 3, image_size, image_size)
    if timing is not None:
        timing = check_timing(timing, TECHNIQUE_TIMING)
        speed = speed_columns({"original": model, **{f"N={n}": m for n, m in models.items()}}, shape, timing)
        for row in rows:
            row.update(speed[f"N={row['branches']}"])
    timed = {"harness": "lrdlab.compare", "rounds": timing.rounds, "warmup": timing.warmup,
             "repeats": timing.repeats} if timing is not None else None
    return BranchSweep(model=model_name, input_shape=shape, config=config, machine=machine_info("cpu").to_dict(),
                       speed=timed, rows=rows)
