"""The freezing study (F6/F7): fine-tuning with each freezing mode, and the throughput of each."""

from __future__ import annotations

import copy
import html
import statistics
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from lrdlab.finetune.fit_config import FitConfig, check_choice, check_count, check_number
from lrdlab.finetune.freezing import MODES, UNITS, Freezer
from lrdlab.finetune.loop import fit
from lrdlab.measure import stats

# --- the freezing study (F7, F8) ---------------------------------------------------------------------------

STUDY_SCHEMA = {
    "history": "one row per (variant, epoch): variant (original | lrd), mode (original | none | regular | "
               "sequential), epoch (0 = right after decomposition, before fine-tuning), accuracy / top5 (test %, "
               "top-1 / top-5), loss (test cross-entropy), train_loss, train_accuracy, epoch_s (training wall s of "
               "the epoch), wall_s (cumulative training s), train_img_s (images / epoch_s), eval_img_s, lr, "
               "trainable_params, phase (sequential freezing phase)",
    "throughput": "interleaved benchmark on one fixed batch (A B C …, then C B A …, median of rounds): technique, "
                  "train_img_s, train_speedup_pct (median of per-round ratios vs original, %), infer_img_s, "
                  "infer_speedup_pct, each with *_ci_low / *_ci_high (95% bootstrap interval), train_rounds, "
                  "infer_rounds; sequential = time averaged over its phases; fit_train_img_s = median "
                  "per-epoch throughput of the actual training runs (sequential, not interleaved)",
}


@dataclass(frozen=True)
class FreezingStudyConfig:
    """What :func:`run_freezing_study` runs: ``model`` trained from scratch on ``data`` (``subset`` training images
    or all, batches of ``batch_size``) for ``epochs`` at OneCycle peak ``lr``; decomposed at ``ratio`` (the
    ``exclude`` patterns that match a layer are kept), data-aware with BN re-estimated on ``calibration_images``
    training images (0: weights only); one copy per freezing mode in ``modes`` fine-tuned for ``finetune_epochs``
    (None: ``epochs``) at ``finetune_lr``, sequential freezing rotating every ``period`` ``unit``; throughput
    timed over ``bench_rounds`` interleaved rounds. Presets: :data:`STUDY_QUICK`, :data:`STUDY_FULL`."""

    model: str = "resnet20"
    data: str = "mnist5k"
    epochs: int = 6
    finetune_epochs: int | None = None
    ratio: float = 2.0
    modes: tuple[str, ...] = MODES
    period: int = 1
    unit: str = "epoch"
    batch_size: int = 128
    lr: float = 0.1
    finetune_lr: float = 0.02
    subset: int | None = None
    exclude: tuple[str, ...] = ("conv1", "*.downsample.*")
    seed: int = 0
    bench_rounds: int = 5
    calibration_images: int = 512

    def __post_init__(self) -> None:
        me = "FreezingStudyConfig"
        for name in ("exclude", "modes"):  # a list, one string or (exclude) None are welcome too
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value or ()))
        for name, least in (("epochs", 1), ("period", 1), ("batch_size", 1), ("bench_rounds", 1), ("seed", 0),
                            ("calibration_images", 0), ("finetune_epochs", 1), ("subset", 1)):
            check_count(me, name, getattr(self, name), least, optional=name in ("finetune_epochs", "subset"))
        for name in ("lr", "finetune_lr"):
            check_number(me, name, getattr(self, name), lambda v: v > 0, "a number > 0", 0.02)
        check_number(me, "ratio", self.ratio, lambda v: v > 1, "a compression ratio > 1", 2.0)
        check_choice(me, "unit", self.unit, UNITS)
        if not self.modes or any(m not in MODES for m in self.modes):
            raise ValueError(f"{me}: modes must be some of {MODES} (got {self.modes!r}); e.g. {me}(modes={MODES!r})")


STUDY_QUICK = FreezingStudyConfig(epochs=2, finetune_epochs=2, subset=1024, bench_rounds=3)
STUDY_FULL = FreezingStudyConfig(epochs=4, finetune_epochs=3, subset=None, bench_rounds=5)


CI_KEYS = (("median", ""), ("ci_low", "_ci_low"), ("ci_high", "_ci_high"))  # summary key → column suffix


def _speed(prefix: str, base: list[float], times: list[float], n: int) -> dict[str, float]:
    """Paired round times → ``{prefix}_img_s`` and ``{prefix}_speedup_pct``, each with its 95% interval."""
    up = stats.SpeedUp.of(base, times)
    base_img_s = n / statistics.median(base)  # throughput and speed-up from the same paired measurement
    ratios, pcts = (up.median, up.ci_low, up.ci_high), (up.pct, up.pct_low, up.pct_high)
    return {**{f"{prefix}_img_s{end}": base_img_s * r for r, (_, end) in zip(ratios, CI_KEYS)},
            **{f"{prefix}_speedup_pct{end}": p for p, (_, end) in zip(pcts, CI_KEYS)}, f"{prefix}_rounds": up.rounds}


def freezing_throughput(original: nn.Module, decomposed: nn.Module, batch: tuple[int, ...], rounds: int = 5,
                        device: str = "cpu", period_order=None) -> pd.DataFrame:
    """F7: training and inference throughput of original, LRD, LRD + regular and + sequential freezing.

    Every variant's training step is timed interleaved with the others (``measure.compare``, rounds
    added until the intervals are ±3 points or its budget ends); the sequential variant is timed once
    per phase 0..L-1 (each phase trains a different factor; L is the longest rotation, 3 for Tucker-2)
    and its time in a round is the mean over those phases, since every phase lasts equally long.
    Inference is timed once for the decomposed model (freezing does not change it). Every throughput
    and speed-up has its 95% bootstrap interval (``*_ci_low`` / ``*_ci_high``).
    """
    from lrdlab.measure.compare import compare, round_times
    from lrdlab.measure.timing_config import TimingConfig

    variants: dict[str, nn.Module] = {"original": original, "lrd": decomposed}
    regular = copy.deepcopy(decomposed)
    Freezer(regular, "regular")
    variants["lrd+regular"] = regular
    seq = copy.deepcopy(decomposed)
    freezer = Freezer(seq, "sequential", order=period_order)
    phases = [f"lrd+sequential[{p}]" for p in range(max(len(o) for o in freezer.orders.values()))]
    for p, name in enumerate(phases):
        freezer.update(p)
        variants[name] = copy.deepcopy(seq)
    train = round_times(compare(variants, batch, "train",
                                timing=TimingConfig(rounds=rounds, warmup=1, repeats=3, device=device)))
    train["lrd+sequential"] = [statistics.fmean(ts) for ts in zip(*(train[p] for p in phases))]
    infer = round_times(compare({"original": original, "lrd": decomposed}, batch, "inference",
                                timing=TimingConfig(rounds=rounds, warmup=1, repeats=5, device=device)))
    n = batch[0]
    inference: dict[str | None, dict[str, float]] = {name: _speed("infer", infer["original"], t, n)
                                                     for name, t in infer.items()}
    inference[None] = dict.fromkeys(inference["lrd"], float("nan"))  # a phase alone is never deployed
    rows = []
    for tech, inf in (("original", "original"), ("lrd", "lrd"), ("lrd+regular", "lrd"), ("lrd+sequential", "lrd"),
                      *((p, None) for p in phases)):
        row: dict[str, Any] = {"technique": tech, **_speed("train", train["original"], train[tech], n),
                               **inference[inf]}
        rows.append({**row, "batch": n, "rounds": row["train_rounds"]})
    return pd.DataFrame(rows)


def run_freezing_study(config: FreezingStudyConfig | None = None, *, device: str = "cpu",
                       cache_dir: str | Path | None = None, out: str | Path | None = None,
                       save_original: str | Path | None = None, progress: bool = True) -> FreezingStudy:
    """Train the original, decompose it, fine-tune with each freezing mode, by ``config``; F7 + F8 data.

    ``save_original`` writes the trained original's ``state_dict`` there (e.g. for spectra plots).
    Fine-tuning starts from the data-aware, BN-recalibrated decomposition (``calibration_images=0``: the
    papers' weight-only start, which sits at chance level before training), and every mode fine-tunes a
    copy with the same data order. Returns a :class:`FreezingStudy` and writes it as JSON to ``out`` when
    given. :data:`STUDY_QUICK` is a few minutes on 2 cores; :data:`STUDY_FULL` is the recorded
    ``data/freezing_mnist5k.json``.
    """
    from lrdlab.lowrank.calibration import calibration_batches
    from lrdlab.lowrank.plan import applicable_patterns
    from lrdlab.measure.machine import machine_info
    from lrdlab.zoo.data import Images, get_loaders
    from lrdlab.zoo.start import decomposed_start, train_original

    c = FreezingStudyConfig() if config is None else config
    if not isinstance(c, FreezingStudyConfig):
        raise ValueError(f"config must be a FreezingStudyConfig (got {c!r}); e.g. FreezingStudyConfig(epochs=2)")
    model, data, seed, exclude = c.model, c.data, c.seed, list(c.exclude)
    finetune_epochs = c.finetune_epochs or c.epochs
    settings = {k: v for k, v in asdict(c).items() if k not in ("exclude", "calibration_images")}
    settings.update(finetune_epochs=finetune_epochs, modes=list(c.modes), device=device, exclude=exclude)
    from lrdlab.zoo.models import input_size

    small = data in ("mnist5k", "digits")  # embedded grey digits: repeat to the model's channels
    loaders = get_loaders(data, c.batch_size, Images(channels=input_size(model)[0] if small else None),
                          cache_dir=cache_dir, subset=c.subset, seed=seed)
    original, history = train_original(model, loaders, FitConfig(epochs=c.epochs, lr=c.lr, seed=seed,
                                                                 progress=progress, label="original"), device=device)
    histories = [history.assign(variant="original", mode="original")]
    if save_original is not None:
        Path(save_original).parent.mkdir(parents=True, exist_ok=True)
        torch.save(original.state_dict(), save_original)
    calibration = calibration_batches(loaders.train, c.calibration_images) if c.calibration_images else None
    plan, decomposed = decomposed_start(original, ratio=c.ratio, exclude=exclude, model_name=model,
                                        calibration=calibration)
    settings["exclude_applied"] = applicable_patterns(original, exclude)
    settings["calibration_images"] = c.calibration_images
    settings["decomposed_layers"] = len(plan.decomposed_layers)
    recipe = FitConfig(epochs=finetune_epochs, lr=c.finetune_lr, seed=seed, evaluate_start=True, progress=progress)
    for mode in c.modes:
        net = copy.deepcopy(decomposed)
        freezer = Freezer(net, mode, period=c.period, unit=c.unit)
        h = fit(net, loaders.train, loaders.test, replace(recipe, label=f"lrd {mode}"), freezer, device=device)
        histories.append(h.assign(variant="lrd", mode=mode))
    history = pd.concat(histories, ignore_index=True)
    ch, hgt, wid = loaders.input_size
    throughput = freezing_throughput(original, decomposed.eval(), (c.batch_size, ch, hgt, wid), c.bench_rounds,
                                     device)
    fit_speed = history[history["epoch"] > 0].groupby("mode")["train_img_s"].median()
    throughput["fit_train_img_s"] = throughput["technique"].map(
        lambda t: fit_speed.get("original" if t == "original" else
                                "none" if t == "lrd" else t.removeprefix("lrd+"), float("nan")))
    from lrdlab.measure.counting import count_params

    settings["params"] = {"original": count_params(original), "decomposed": count_params(decomposed)}
    result = FreezingStudy(history, throughput, settings, machine_info(device).to_dict(), STUDY_SCHEMA)
    if out is not None:
        save_study(result, out)
    return result


@dataclass(frozen=True)
class FreezingStudy:
    """A freezing study's result: fine-tuning ``history`` per (variant, mode, epoch) and the interleaved
    ``throughput`` per technique (DataFrames, columns in :data:`STUDY_SCHEMA`), the ``settings`` it ran with,
    the ``machine`` and the ``command`` that recorded it. ``study["history"]`` reads a field as before."""

    history: pd.DataFrame
    throughput: pd.DataFrame
    settings: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)
    schema: dict[str, str] = field(default_factory=dict)
    command: str = ""

    def __getitem__(self, key: str) -> Any:
        if key not in {f.name for f in fields(self)}:
            raise KeyError(key)
        return getattr(self, key)

    def final_accuracy(self) -> dict[str, float]:
        """Each mode's test accuracy (%) after its last epoch."""
        last = self.history.sort_values("epoch").groupby("mode")["accuracy"].last()
        return {str(k): float(v) for k, v in last.items()}

    def __repr__(self) -> str:
        s = self.settings
        acc = ", ".join(f"{m} {a:.1f}%" for m, a in self.final_accuracy().items())
        return (f"FreezingStudy({s.get('model', '?')} on {s.get('data', '?')}, ratio {s.get('ratio', '?')}: "
                f"final accuracy {acc}; {len(self.throughput)} throughput rows)")

    def _repr_html_(self) -> str:
        from lrdlab.explore.recorded import throughput_table

        return f"<p>{html.escape(repr(self))}</p>" + throughput_table(self.throughput).to_html(index=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (DataFrames as lists of records)."""
        return {f.name: (v.to_dict("records") if isinstance(v := getattr(self, f.name), pd.DataFrame) else v)
                for f in fields(self)}


def save_study(result: FreezingStudy | Mapping[str, Any], path: str | Path) -> Path:
    """Write a freezing study (or a study-shaped mapping of DataFrames) as one JSON file."""
    from lrdlab.measure.records import write_record

    items = result.to_dict().items() if isinstance(result, FreezingStudy) else result.items()
    plain = {k: (v.to_dict("records") if isinstance(v, pd.DataFrame) else v) for k, v in items}
    return write_record(path, plain)


def load_study(path: str | Path) -> FreezingStudy:
    """Read a saved freezing study back (files recorded before ``command`` was stored read with ``command=""``)."""
    from lrdlab.measure.records import read_record

    raw = read_record(path)
    known = {f.name for f in fields(FreezingStudy)}
    return FreezingStudy(**{k: (pd.DataFrame(v) if k in ("history", "throughput") else v)
                            for k, v in raw.items() if k in known})
