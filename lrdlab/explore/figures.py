"""Figures of the explorers (pure functions: data in, matplotlib Figure out; fast enough to redraw per slider move)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox

from lrdlab.explore import plots

TEST_IMAGES = 1000  # the freezing grid's test split (MNIST-5k): the error bars' binomial interval
MIN_ACCURACY_SPAN = 4.0  # points: the accuracy panels never zoom into less than this
SCHEDULE_ORDER = ("none", "regular", "sequential every it", "sequential N=1", "sequential N=2", "sequential N=3",
                  "sequential N=4")


def _colors(names: Sequence[str]) -> dict[str, Any]:
    import seaborn as sns

    palette = sns.color_palette(plots.PALETTE, len(SCHEDULE_ORDER))
    return {n: palette[SCHEDULE_ORDER.index(n) % len(palette)] if n in SCHEDULE_ORDER else "grey" for n in names}


def _titles(axes: Sequence[Any], titles: Sequence[str]) -> None:
    """Titles at a fixed height: matplotlib then skips measuring every tick label to place them (~2x faster draws)."""
    for ax, title in zip(axes, titles):
        ax.set_title(title, y=1.01)


def _plain_log_axis(ax: Any) -> None:
    """Log-axis labels as plain numbers, no minor ticks: no mathtext to lay out (the slowest part of a redraw)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))  # ticks at 1-2-5: several per decade
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_locator(NullLocator())


def _schedule_lines(ax_epoch: Any, ax_time: Any, runs: pd.DataFrame, selected: str, colors: dict[str, Any],
                    suffix: str = "") -> list[tuple[str, str, float, float, float]]:
    """Each run's accuracy vs epoch and vs training seconds; returns (label, name, median, min, max) img/s."""
    speed = []
    for _key, d in runs.groupby("key", sort=False):
        d = d.sort_values("epoch")
        name = d["name"].iloc[0]
        bold = name == selected
        kw = {"color": colors[name], "linewidth": 2.6 if bold else 1.0, "alpha": 1.0 if bold else 0.35,
              "marker": "o", "markersize": 4 if bold else 2, "linestyle": "--" if suffix else "-",
              "label": name + suffix}
        if ax_epoch is not None:
            ax_epoch.plot(d["epoch"], d["accuracy"], **kw)
            if bold:  # the selected schedule's 95% binomial interval on the test split: what noise looks like
                p = d["accuracy"].to_numpy() / 100
                half = 100 * 1.96 * np.sqrt(p * (1 - p) / TEST_IMAGES)
                ax_epoch.errorbar(d["epoch"], d["accuracy"], yerr=half, fmt="none", ecolor=kw["color"], capsize=3,
                                  linewidth=1.0)
        ax_time.plot(d["wall_s"], d["accuracy"], **kw)
        trained = d[d["epoch"] > 0]["train_img_s"]
        if not trained.empty:
            speed.append((name + suffix, name, float(trained.median()), float(trained.min()), float(trained.max())))
    return speed


def freezing_grid_figure(runs: pd.DataFrame, selected: str, ratio: float, machine: str = "") -> Figure:
    """Accuracy vs epoch, accuracy vs training seconds and training throughput of every schedule at one ratio.

    ``runs``: :class:`~lrdlab.explore.freezing_runs.FreezingGrid` rows at this ratio (column ``name`` = schedule,
    ``source`` reference / here); the ``selected`` schedule is drawn bold. The recorded grid fills the first three
    panels; runs made here get a fourth panel of their own (this machine's clock), never drawn into the grid.
    """
    names = [n for n in SCHEDULE_ORDER if n in set(runs["name"])] + sorted(set(runs["name"]) - set(SCHEDULE_ORDER))
    colors = _colors(names)
    recorded, here = runs[runs["source"] != "here"], runs[runs["source"] == "here"]
    panels = 4 if not here.empty else 3
    with plots.style():
        fig, axes = plots.new_figure(1, panels, width=4.2 * panels, height=3.8, layout=None)
        fig.subplots_adjust(left=0.05, right=0.99, bottom=0.24, top=0.8, wspace=0.32)
        speed = _schedule_lines(axes[0], axes[1], recorded, selected, colors)
        if not recorded.empty:
            axes[0].legend(fontsize="x-small", ncol=2, loc="lower right")
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
            for ax in axes[:3]:
                ax.text(0.5, 0.5, "no recorded runs at this ratio", ha="center", va="center", transform=ax.transAxes)
        for ax in axes[:2] if panels == 3 else (*axes[:2], axes[3]):
            low, high = ax.get_ylim()
            if high - low < MIN_ACCURACY_SPAN:  # a few tenths of a point must not fill the panel: noise is ±1
                mid = (low + high) / 2
                ax.set_ylim(mid - MIN_ACCURACY_SPAN / 2, min(100.5, mid + MIN_ACCURACY_SPAN / 2))
        clock = f"recorded on {machine}" if machine else "recorded clock"
        axes[0].set(xlabel="fine-tuning epoch (0 = calibrated start)", ylabel="test accuracy (%)")
        axes[1].set(xlabel=f"training seconds ({clock})", ylabel="test accuracy (%)")
        axes[2].set(ylabel="training img/s (recorded)")
        titles = ["accuracy vs epoch (recorded)", "accuracy vs time (recorded)", "throughput (median, min–max)"]
        if panels == 4:
            _schedule_lines(None, axes[3], here, selected, colors, suffix=" (here)")
            axes[3].set(xlabel="training seconds (this machine)", ylabel="test accuracy (%)")
            axes[3].legend(fontsize="x-small", loc="lower right")
            titles.append("runs made here")
        _titles(axes, titles)
        fig.suptitle(f"Fine-tuning ResNet-20 decomposed at ×{ratio:g} · selected: {selected}", fontsize="medium")
    return fig


def _rank_axes() -> tuple[Figure, Any]:
    """The rank figure's empty canvas: three panels side by side (call inside :func:`plots.style`)."""
    fig, axes = plots.new_figure(1, 3, width=12.5, height=3.6, layout=None)
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.14, top=0.82, wspace=0.3)
    return fig, axes


def _clear_data(axes: Sequence[Any]) -> None:
    """Remove what :func:`_draw_rank` drew (lines, texts, legends), keeping the axes and their ticks for reuse."""
    for ax in axes:
        for artist in [*ax.lines, *ax.texts]:
            artist.remove()
        if ax.get_legend() is not None:
            ax.get_legend().remove()
        ax.set_prop_cycle(None)  # the colours start again where a new axes' start (the style's palette)
        ax.relim()
        ax.viewLim.set_points(Bbox.unit().get_points())  # a new axes' limits, kept where nothing is drawn
        ax.set_autoscale_on(True)


def rank_figure(lab: Any, state: dict[str, Any], reference_cpu: str | None = None) -> Figure:
    """Rank explorer figure: every channel spectrum with the unrounded and rounded ranks, energy, and layer times.

    ``lab``: a :class:`~lrdlab.explore.rank_lab.RankLab` (for the layer's spectra and the time cache). Times are
    drawn per source (reference file vs measured here), never mixed on one line.
    """
    with plots.style():
        fig, axes = _rank_axes()
        _draw_rank(fig, axes, lab, state, reference_cpu)
    return fig


_TITLE_AT = (0.5, 0.98)  # where the rank figure's title goes (suptitle's place), in figure coordinates


_MATPLOTLIB = threading.RLock()  # held by every draw of every RankFigure (see there)


class RankFigure:
    """The rank figure for widgets, drawn in two layers on two identical figures.

    What depends on the layer and its times (spectra, energy, time curves, axes, legends) is drawn once per layer
    on the *back* figure (:meth:`background`, under a lock: a background thread may prepare it) and kept as
    pixels with the axes' limits and line colours; a move restores those pixels on the *front* figure and draws
    only the rank markers and the title (blitting), then encodes the PNG with fast compression. A move within a
    prepared layer costs milliseconds and never waits for matplotlib's layout; a move to an unprepared layer
    draws its background first (or waits for the one being prepared). ``backgrounds``: another RankFigure whose
    layer backgrounds this one shares (a background thread draws on its own figure). Every draw of every
    RankFigure holds one process-wide lock: matplotlib's style context (global rcParams) and its font cache are
    not thread-safe, so two explorers' threads must never draw at once; a move waits at most for one background
    step, since background work pauses between steps while a move runs.
    """

    BACKGROUNDS = 64  # layers kept (one RGBA image each, ≈ 1 MB at 72 dpi), oldest dropped first

    def __init__(self, dpi: int = 72, backgrounds: RankFigure | None = None):
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        self.dpi = dpi
        with _MATPLOTLIB, plots.style():
            self.fig, self.axes = _rank_axes()
            self._title = _setting_title(self.fig, "")
            self._back, self._back_axes = _rank_axes()
            self._layer_title = _layer_title(self._back, "")
        self.canvas, self._back_canvas = FigureCanvasAgg(self.fig), FigureCanvasAgg(self._back)
        self.fig.set_dpi(dpi)
        self._back.set_dpi(dpi)
        self.axes[0].set_yscale("log")  # the spectra's axis: limits come from each background
        self._backgrounds: dict[tuple, tuple[Any, list[Any], list[Any]]] = \
            {} if backgrounds is None else backgrounds._backgrounds
        self._limits: list[Any] | None = None  # the axes' limits the front figure has now
        # (model, layer, input shape) → the key of its newest background
        self._latest: dict[tuple, tuple] = {} if backgrounds is None else backgrounds._latest
        self.full_draws = 0  # how many backgrounds were drawn (tests read it)

    @staticmethod
    def background_key(lab: Any, state: dict[str, Any]) -> tuple:
        """What the background depends on: the model, the layer and its times."""
        times = lab.times(state["model"], state["layer"], state["input_shape"])
        total = round(float(times["time_ms"].sum()), 9) if len(times) else 0.0
        return (state["model"], state["layer"], tuple(state["input_shape"]), len(times), total,
                tuple(sorted(set(times["source"]))) if len(times) else ())

    def background(self, lab: Any, state: dict[str, Any], reference_cpu: str | None = None,
                   stale_ok: bool = False) -> tuple:
        """Draw the layer's background (what no move within the layer changes), unless kept already; returns
        its pixels, the axes' limits and the spectra's colours. ``stale_ok``: the layer's latest background will do
        when its times changed since (a background thread draws the new one; :meth:`stale` says when)."""
        key = self.background_key(lab, state)
        if stale_ok:
            hit = self._backgrounds.get(key) or self._backgrounds.get(self._latest.get(key[:3], ()))
            if hit is not None:
                return hit
        with _MATPLOTLIB:
            if key in self._backgrounds:
                return self._backgrounds[key]
            with plots.style():
                _clear_data(self._back_axes)
                _draw_static(self._back_axes, lab, state, reference_cpu)
                self._layer_title.set_text(_layer_title_text(state))
                self._back_canvas.draw()
            limits = [(ax.get_xlim(), ax.get_ylim()) for ax in self._back_axes]
            colours = [line.get_color() for line in self._back_axes[0].lines]
            while len(self._backgrounds) >= self.BACKGROUNDS:
                self._backgrounds.pop(next(iter(self._backgrounds)), None)
            self._backgrounds[key] = (self._back_canvas.copy_from_bbox(self._back.bbox), limits, colours)
            self._latest[key[:3]] = key
            self.full_draws += 1
            return self._backgrounds[key]

    def stale(self, lab: Any, state: dict[str, Any]) -> bool:
        """Whether :meth:`background` with ``stale_ok`` would give the layer's background of older times."""
        key = self.background_key(lab, state)
        return key not in self._backgrounds and self._latest.get(key[:3], ()) in self._backgrounds

    def pixels(self, lab: Any, state: dict[str, Any], reference_cpu: str | None = None,
               stale_ok: bool = False) -> np.ndarray:
        """RGB pixels of :func:`rank_figure` of ``state`` at :attr:`dpi` (the background drawn first if new;
        ``stale_ok``: see :meth:`background`)."""
        region, limits, colours = self.background(lab, state, reference_cpu, stale_ok)
        with _MATPLOTLIB:
            if limits is not self._limits:  # a move within the layer keeps its limits: no axis to set anew
                for ax, (xlim, ylim) in zip(self.axes, limits):
                    ax.set_autoscale_on(False)
                    ax.set_xlim(xlim)
                    ax.set_ylim(ylim)
                self._limits = limits
            self.canvas.restore_region(region)
            renderer = self.canvas.get_renderer()
            for ax, artist in _marker_artists(self.axes, lab, state, colours):
                artist.set_clip_box(ax.bbox)
                artist.draw(renderer)
            self._title.set_text(_setting_title_text(state))  # the layer's part is in the background
            self._title.draw(renderer)
            return np.asarray(self.canvas.buffer_rgba())[..., :3].copy()

    def png(self, lab: Any, state: dict[str, Any], reference_cpu: str | None = None, stale_ok: bool = False) -> bytes:
        """PNG bytes of :meth:`pixels`: 256 colours (a line figure's; each pixel within a few levels of the drawn
        one) with fast compression, which encodes about twice as fast as RGBA."""
        import io

        from PIL import Image

        image = Image.fromarray(self.pixels(lab, state, reference_cpu, stale_ok)).quantize(256,
                                                                                  method=Image.Quantize.FASTOCTREE)
        buf = io.BytesIO()
        image.save(buf, format="png", compress_level=1)
        return buf.getvalue()


def _draw_rank(fig: Figure, axes: Sequence[Any], lab: Any, state: dict[str, Any], reference_cpu: str | None) -> None:
    _draw_static(axes, lab, state, reference_cpu)
    _markers(axes, lab, state, [line.get_color() for line in axes[0].lines])
    _layer_title(fig, _layer_title_text(state))
    _setting_title(fig, _setting_title_text(state))


def _layer_title(fig: Figure, text: str) -> Any:
    """The title's first part (model and layer): it ends at the centre."""
    return fig.text(*_TITLE_AT, text, ha="right", va="top", fontsize="medium")


def _setting_title(fig: Figure, text: str) -> Any:
    """The title's second part (α, g, rounding): it starts at the centre."""
    return fig.text(*_TITLE_AT, text, ha="left", va="top", fontsize="medium")


def _draw_static(axes: Sequence[Any], lab: Any, state: dict[str, Any], reference_cpu: str | None) -> None:
    """What depends only on the layer and its times: spectra, energy, time curves, labels, legends."""
    from lrdlab.lowrank.methods import get_method

    ax_s, ax_e, ax_t = axes
    data = lab.layer(state["model"], state["layer"])
    names = get_method(data.method).rank_names
    for i, sigma in enumerate(data.spectra):
        sigma = np.asarray(sigma, dtype=float)
        idx = np.arange(1, len(sigma) + 1)
        label = names[i] if i < len(names) else f"mode {i}"
        (line,) = ax_s.semilogy(idx, np.maximum(sigma / sigma[0], 1e-6), label=label)
        ax_e.plot(idx, 100 * plots.cumulative_energy(sigma), color=line.get_color(), label=label)
    ax_s.set(xlabel="index i", ylabel="σ_i / σ_1 (floored at 1e-6)")
    _plain_log_axis(ax_s)
    ax_e.set(xlabel="rank", ylabel="energy kept (%)", ylim=(0, 101))
    ax_s.legend(fontsize="x-small", loc="lower left")
    times = lab.times(state["model"], state["layer"], state["input_shape"])
    for source, d in times.groupby("source"):
        where = "measured here" if source == "here" else f"reference file, {reference_cpu or '?'}"
        dec, orig = d[d["rank"] > 0], d[d["rank"] == 0]
        (line,) = ax_t.plot(dec["rank"], dec["time_ms"], "o-" if source == "here" else "s--", markersize=4,
                            label=f"decomposed ({where})")
        if not orig.empty:
            ax_t.axhline(float(orig["time_ms"].iloc[0]), color=line.get_color(), linestyle=":",
                         label=f"original ({where})")
    ax_t.set(xlabel=f"rank ({names[0]})", ylabel=f"time per batch of {state['input_shape'][0]} (ms)")
    _titles((ax_s, ax_e, ax_t), ("channel spectra", "cumulative energy (○ g=1, ● rounded)", "layer time"))
    ax_t.set_ylim(bottom=0)
    if ax_t.lines:
        ax_t.legend(fontsize="x-small", loc="lower right")
    else:
        ax_t.text(0.5, 0.5, "not measured yet", ha="center", va="center", transform=ax_t.transAxes)


def _markers(axes: Sequence[Any], lab: Any, state: dict[str, Any], colours: list[Any]) -> None:
    """The unrounded (○) and rounded (●) ranks on the spectra, energy and time panels, added to the axes."""
    for ax, artist in _marker_artists(axes, lab, state, colours):
        ax.add_line(artist)


def _marker_artists(axes: Sequence[Any], lab: Any, state: dict[str, Any], colours: list[Any]) -> list[tuple[Any, Any]]:
    """The markers of :func:`_markers` as (axes, ``Line2D`` in its data coordinates) pairs, not added to the axes
    (a move draws them straight onto the restored background)."""
    from matplotlib.lines import Line2D

    def point(ax: Any, x: float, y: float, **kw: Any) -> tuple[Any, Any]:
        line = Line2D([x], [y], marker="o", linestyle="none", **kw)
        line.set_figure(ax.figure)
        line.set_transform(ax.transData)
        return ax, line

    ax_s, ax_e, ax_t = axes
    data = lab.layer(state["model"], state["layer"])
    twin = state.get("unrounded", {})
    out = []
    for i, sigma in enumerate(data.spectra):
        sigma = np.asarray(sigma, dtype=float)
        rel, energy = sigma / sigma[0], 100 * plots.cumulative_energy(sigma)
        colour = colours[i] if i < len(colours) else "grey"
        for ranks, filled in ((twin.get("ranks"), False), (state["ranks"], True)):
            if ranks and i < len(ranks):
                r = min(ranks[i], len(sigma))
                kw = {"color": colour, "markeredgecolor": "black", "markersize": 8,
                      "markerfacecolor": colour if filled else "white"}
                out.append(point(ax_s, r, max(rel[r - 1], 1e-6), **kw))
                out.append(point(ax_e, r, energy[r - 1], **kw))
    for d, filled in ((twin, False), (state, True)):
        if d.get("ranks") and d.get("time_ms") is not None:
            out.append(point(ax_t, d["ranks"][0], d["time_ms"], color="tab:red", markersize=9,
                             markeredgecolor="black", markerfacecolor="tab:red" if filled else "white"))
    return out


def _layer_title_text(state: dict[str, Any]) -> str:
    return (f"{state['model']} · {state['layer']} ({state['C']}→{state['S']}, "
            f"k={'×'.join(map(str, state['kernel']))}, {state['method']}) · ")


def _setting_title_text(state: dict[str, Any]) -> str:
    kept = " · KEPT: " + str(state["reason"]) if state["ranks"] is None else ""
    return f"α={state['ratio']:g}, g={state['granularity']} ({state['rounding']}){kept}"
