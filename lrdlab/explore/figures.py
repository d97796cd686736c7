"""Figures of the explorers (pure functions: data in, matplotlib Figure out; fast enough to redraw per slider move)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lrdlab.explore import plots

SCHEDULE_ORDER = ("none", "regular", "sequential every it", "sequential N=1", "sequential N=2", "sequential N=3",
                  "sequential N=4")


def _colors(names: Sequence[str]) -> dict[str, Any]:
    import seaborn as sns

    palette = sns.color_palette(plots.PALETTE, len(SCHEDULE_ORDER))
    return {n: palette[SCHEDULE_ORDER.index(n) % len(palette)] if n in SCHEDULE_ORDER else "grey" for n in names}


def freezing_grid_figure(runs: pd.DataFrame, selected: str, ratio: float, machine: str = "") -> Figure:
    """Accuracy vs epoch, accuracy vs training seconds and training throughput of every schedule at one ratio.

    ``runs``: :class:`~lrdlab.explore.freezing_runs.FreezingGrid` rows at this ratio (column ``name`` = schedule);
    the ``selected`` schedule is drawn bold; runs made here are dashed (another machine's clock).
    """
    names = [n for n in SCHEDULE_ORDER if n in set(runs["name"])] + sorted(set(runs["name"]) - set(SCHEDULE_ORDER))
    colors = _colors(names)
    with plots.style():
        fig, axes = plots.new_figure(1, 3, width=12.5, height=3.6, layout=None)
        fig.subplots_adjust(left=0.05, right=0.99, bottom=0.2, top=0.82, wspace=0.3)
        speed = []
        for _key, d in runs.groupby("key", sort=False):
            d = d.sort_values("epoch")
            name, here = d["name"].iloc[0], d["source"].iloc[0] == "here"
            bold = name == selected
            kw = {"color": colors[name], "linewidth": 2.6 if bold else 1.0, "alpha": 1.0 if bold else 0.35,
                  "marker": "o", "markersize": 4 if bold else 2, "linestyle": "--" if here else "-",
                  "label": name + (" (here)" if here else "")}
            axes[0].plot(d["epoch"], d["accuracy"], **kw)
            axes[1].plot(d["wall_s"], d["accuracy"], **kw)
            trained = d[d["epoch"] > 0]["train_img_s"]
            if not trained.empty:
                speed.append((name + (" (here)" if here else ""), name, float(trained.median()),
                              float(trained.min()), float(trained.max())))
        if not runs.empty:
            axes[0].legend(fontsize="x-small", ncol=2)
        if speed:
            labels, keys, med, lo, hi = zip(*speed)
            x = np.arange(len(labels))
            axes[2].bar(x, med, color=[colors[k] for k in keys],
                        edgecolor=["black" if k == selected else "none" for k in keys],
                        linewidth=[2.0 if k == selected else 0 for k in keys])
            axes[2].errorbar(x, med, yerr=[np.subtract(med, lo), np.subtract(hi, med)], fmt="none", ecolor="black",
                             capsize=3, linewidth=0.8)
            axes[2].set_xticks(x, labels, rotation=35, ha="right", fontsize="x-small")
        else:
            for ax in axes:
                ax.text(0.5, 0.5, "no runs at this ratio", ha="center", va="center", transform=ax.transAxes)
        axes[0].set(xlabel="fine-tuning epoch (0 = calibrated start)", ylabel="test accuracy (%)",
                    title="accuracy vs epoch")
        axes[1].set(xlabel="training seconds (reference clock)", ylabel="test accuracy (%)", title="accuracy vs time")
        axes[2].set(ylabel="training img/s (median; bar = min–max epoch)", title="training throughput")
        where = f" · recorded on {machine}" if machine else ""
        fig.suptitle(f"Fine-tuning ResNet-20 decomposed at ×{ratio:g} · selected: {selected}{where}",
                     fontsize="medium")
    return fig
