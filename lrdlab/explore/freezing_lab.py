"""The freezing explorer's data: freezing setups, the recorded runs, and their figure."""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from torch import nn

from lrdlab.explore import plots
from lrdlab.explore.rank_lab import REFERENCE_DIR, REFERENCE_FREEZING
from lrdlab.lowrank.plan import Layers, Ratio, make_plan
from lrdlab.measure.cache import default_cache_dir, read_json
from lrdlab.measure.machine import machine_info
from lrdlab.zoo import models

# --- the freezing explorer ----------------------------------------------------------------------

REFERENCE_GRID = REFERENCE_DIR / "freezing_grid.json"  # python -m tools.record freezing-grid
RUN_COLUMNS = ["run", "source", "mode", "period", "epoch", "wall_s", "accuracy", "loss", "train_img_s"]


@dataclass
class FreezingSetup:
    """The short runs' recipe: a model trained from scratch on the embedded data, decomposed, fine-tuned."""

    model: str = "resnet20"
    data: str = "mnist5k"
    pretrain_epochs: int = 3
    finetune_epochs: int = 3
    ratio: float = 2.0
    batch_size: int = 128
    lr: float = 0.1
    finetune_lr: float = 0.02
    subset: int | None = None
    seed: int = 0
    image_size: int | None = None
    channels: int | None = None
    exclude: tuple[str, ...] = ("conv1", "*.downsample.*")

    def key(self) -> str:
        return "_".join(f"{v}" for v in (self.model, self.data, self.pretrain_epochs, self.ratio, self.subset,
                                         self.seed, self.image_size, self.channels, self.lr))

    @classmethod
    def from_study(cls, settings: dict[str, Any]) -> FreezingSetup:
        """The setup matching a :func:`lrdlab.run_freezing_study` result's ``settings``."""
        names = {"epochs": "pretrain_epochs"}
        kw = {names.get(k, k): v for k, v in settings.items()}
        kw = {k: v for k, v in kw.items() if k in cls.__dataclass_fields__}
        if "exclude" in kw:
            kw["exclude"] = tuple(kw["exclude"])
        return cls(**kw)


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
    """Freezing runs without widgets: cached histories (shipped reference + runs made here) and new short runs.

    ``runs()`` has one row per (run, epoch) with :data:`RUN_COLUMNS`; ``throughput()`` is the shipped
    interleaved benchmark (F7 columns of :func:`lrdlab.train.freezing_throughput`).
    """

    def __init__(self, setup: FreezingSetup | None = None, reference: Path | None = REFERENCE_FREEZING,
                 cache_dir: Path | None = None):
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.path = self.cache_dir / "freezing_runs.json"
        ref = read_json(reference) if reference else {}
        self.setup = setup or FreezingSetup.from_study(ref.get("settings", {}))
        self.reference_machine = ref.get("machine", {})
        self._reference = runs_from_study(ref)
        self._throughput = pd.DataFrame(ref.get("throughput", []))
        local = read_json(self.path)
        self._local = pd.DataFrame(local.get("history", []), columns=RUN_COLUMNS)
        self._base: tuple[nn.Module, Any] | None = None

    def runs(self) -> pd.DataFrame:
        return pd.concat([d for d in (self._reference, self._local) if not d.empty] or [self._reference],
                         ignore_index=True)

    def throughput(self) -> pd.DataFrame:
        return self._throughput.copy()

    def find(self, mode: str, period: int) -> list[str]:
        """Names of the cached runs with this mode (and period, for sequential)."""
        runs = self.runs()
        hit = runs[(runs["mode"] == mode) & ((runs["period"] == period) | (mode != "sequential"))]
        return list(dict.fromkeys(hit["run"]))

    def _loaders(self):
        from lrdlab.zoo.data import Images, get_loaders

        s = self.setup
        return get_loaders(s.data, s.batch_size, Images(size=s.image_size, channels=s.channels), subset=s.subset,
                           seed=s.seed, cache_dir=self.cache_dir / "datasets")

    def base_model(self, progress: Callable[[str], None] | None = None) -> nn.Module:
        """The trained-then-decomposed starting point of every short run (trained once, cached on disk)."""
        from lrdlab.finetune.fit_config import FitConfig
        from lrdlab.finetune.loop import fit, set_seed
        from lrdlab.lowrank.decompose import decompose, load_decomposed, save_decomposed

        if self._base is not None:
            return self._base[0]
        s = self.setup
        folder = self.cache_dir / f"freezing_base_{s.key()}"
        loaders = self._loaders()
        if (folder / "plan.json").exists():
            net = load_decomposed(folder, models.get_model(s.model, num_classes=loaders.num_classes))
        else:
            if progress:
                progress(f"training {s.model} from scratch for {s.pretrain_epochs} epochs (once; cached)")
            set_seed(s.seed)
            original = models.get_model(s.model, num_classes=loaders.num_classes)
            fit(original, loaders.train, loaders.test, FitConfig(epochs=s.pretrain_epochs, lr=s.lr, seed=s.seed,
                                                                 progress=False))
            names = [n for n, m in original.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
            exclude = [p for p in s.exclude if any(fnmatch.fnmatchcase(n, p) for n in names)]
            plan = make_plan(original.eval(), Ratio(s.ratio), Layers(exclude=exclude or None), model_name=s.model)
            net = decompose(original, plan)
            save_decomposed(net, plan, folder)
        self._base = (net, loaders)
        return net

    def run_short(self, mode: str, period: int = 1, epochs: int | None = None,
                  progress: Callable[[str], None] | None = None, save: bool = True) -> pd.DataFrame:
        """Fine-tune a copy of :meth:`base_model` with ``Freezer(mode, period)``; add its history to the cache."""
        import copy

        from lrdlab.finetune.fit_config import FitConfig
        from lrdlab.finetune.freezing import MODES, Freezer
        from lrdlab.finetune.loop import fit

        if mode not in MODES:
            raise ValueError(f"freezing mode must be one of {MODES} (got {mode!r})")
        base = self.base_model(progress)
        assert self._base is not None  # base_model built it
        loaders = self._base[1]
        s = self.setup
        net = copy.deepcopy(base)
        freezer = Freezer(net, mode, period=period, unit="epoch")
        epochs = epochs or s.finetune_epochs

        def report(row: dict[str, Any]) -> None:
            if progress:
                progress(f"{mode} N={period}: epoch {row['epoch']}/{epochs}, accuracy {row['accuracy']:.2f}%")

        config = FitConfig(epochs=epochs, lr=s.finetune_lr, seed=s.seed, evaluate_start=True, progress=False)
        h = fit(net, loaders.train, loaders.test, config, freezer, callbacks=[report])
        name = f"{mode}" + (f" N={period}" if mode == "sequential" else "")
        h = h.assign(run=name, mode=mode, period=period)
        return self.add(h, source="here" if save else "unsaved")

    def add(self, history: pd.DataFrame, source: str = "here") -> pd.DataFrame:
        """Add one run's history (``fit`` columns plus run, mode, period) and persist it when ``source == 'here'``."""
        rows = history.assign(source=source)[RUN_COLUMNS]
        taken = set(self.runs()["run"])
        name, base, i = rows["run"].iloc[0], rows["run"].iloc[0], 2
        while name in taken:
            name, i = f"{base} #{i}", i + 1
        rows = rows.assign(run=name)
        self._local = pd.concat([d for d in (self._local, rows) if not d.empty], ignore_index=True)
        if source == "here":
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            local = self._local[self._local["source"] == "here"]
            self.path.write_text(json.dumps({"machine": machine_info(), "setup": self.setup.__dict__,
                                             "history": local.to_dict("records")}, default=float))
        return rows


def freezing_figure(runs: pd.DataFrame, highlight: list[str] | None = None,
                    throughput: pd.DataFrame | None = None) -> Figure:
    """Accuracy vs epoch and vs wall-clock, and training throughput per run; ``highlight`` runs drawn bold.

    ``runs``: :data:`RUN_COLUMNS`. ``throughput``: optional F7 table (technique, train_img_s) drawn as bars.
    """
    highlight = list(highlight or [])
    names = list(dict.fromkeys(runs["run"]))
    colors = dict(zip(names, __import__("seaborn").color_palette(plots.PALETTE, max(1, len(names)))))
    panels = 4 if throughput is not None and not throughput.empty else 3
    with plots.style():
        fig, axes = plots.new_figure(1, panels, width=3.6 * panels, height=3.6, layout=None)
        fig.subplots_adjust(left=0.05, right=0.99, bottom=0.16, top=0.82, wspace=0.32)
        for name in names:
            d = runs[runs["run"] == name].sort_values("epoch")
            bold = name in highlight
            kw = {"color": colors[name], "linewidth": 2.6 if bold else 1.0, "alpha": 1.0 if bold else 0.45,
                  "marker": "o", "markersize": 4 if bold else 2,
                  "label": f"{name}{' (' + d['source'].iloc[0] + ')' if d['source'].iloc[0] != 'reference' else ''}"}
            axes[0].plot(d["epoch"], d["accuracy"], **kw)
            axes[1].plot(d["wall_s"], d["accuracy"], **kw)
            trained = d[d["epoch"] > 0]
            axes[2].plot(trained["epoch"], trained["train_img_s"], **kw)
        axes[0].set(xlabel="fine-tuning epoch", ylabel="test accuracy (%)", title="accuracy vs epoch")
        axes[1].set(xlabel="wall-clock training time (s)", ylabel="test accuracy (%)", title="accuracy vs time")
        axes[2].set(xlabel="fine-tuning epoch", ylabel="training throughput (img/s)", title="throughput per epoch")
        axes[0].legend(fontsize="x-small")
        if throughput is not None and panels == 4:
            t = throughput[~throughput["technique"].str.contains(r"\[", regex=True)]
            axes[3].bar(t["technique"], t["train_img_s"], color=__import__("seaborn").color_palette(plots.PALETTE)[0])
            axes[3].set(ylabel="training img/s", title="interleaved benchmark (F7)")
            axes[3].tick_params(axis="x", labelrotation=30, labelsize="x-small")
        fig.suptitle("Fine-tuning a decomposed model with freezing")
    return fig
