"""Figures of whole-model results: F4/F7 bars by technique, F5 speed-up vs FLOPs, F6 branches, F8
convergence, F9 granularity, F11 accuracy vs compression, where the time goes (reached through
:mod:`lrdlab.explore.plots`, the one namespace of figures)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.container import BarContainer
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

from lrdlab.explore.figure_kit import MODE_ORDER, PALETTE, new_figure, require_columns, style
from lrdlab.measure.records import StudyRecord, read_record

# --- F4 / F7: bars by technique ------------------------------------------------------------------


def plot_grouped_bars(
    df: pd.DataFrame, x: str, y: str, hue: str | None = None, ylabel: str | None = None,
    title: str = "", annotate: bool = True, order: Sequence[str] | None = None,
) -> Figure:
    """Grouped bar chart of ``df[y]`` by ``x`` (and ``hue``), values written on the bars."""
    require_columns(df, [c for c in (x, y, hue) if c], "plot_grouped_bars")
    with style():
        fig, ax = new_figure(width=max(6.0, 1.1 * df[x].nunique() * max(1, df[hue].nunique() if hue else 1) ** 0.5))
        sns.barplot(data=df, x=x, y=y, hue=hue, ax=ax, palette=PALETTE if hue else None, order=order,
                    errorbar=None)
        if annotate:
            for container in ax.containers:
                ax.bar_label(container, fmt="%.1f", fontsize="x-small", padding=2)
        _bar_errors(ax, df, x, y, hue, order)
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set(xlabel=x.replace("_", " "), ylabel=ylabel or y, title=title)
        if hue:
            ax.legend(title=hue.replace("_", " "), fontsize="small")
        ax.tick_params(axis="x", labelrotation=15)
    return fig


def _ci(y: str) -> tuple[str, str]:
    """The columns holding ``y``'s 95% interval: ``{y}_ci_low`` and ``{y}_ci_high``."""
    return f"{y}_ci_low", f"{y}_ci_high"


def _bar_errors(ax, df: pd.DataFrame, x: str, y: str, hue: str | None, order: Sequence[str] | None) -> None:
    """Error bars (the 95% interval) on a seaborn bar chart, where ``df`` has ``{y}_ci_low/high``."""
    lo, hi = _ci(y)
    if lo not in df.columns or hi not in df.columns or df[lo].isna().all():
        return
    xs = list(order) if order is not None else list(dict.fromkeys(df[x]))
    levels = list(dict.fromkeys(df[hue])) if hue else [None]
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    for container, level in zip(bars, levels):
        for bar, xv in zip(container, xs):
            sel = df[(df[x] == xv) & ((df[hue] == level) if hue else True)]
            if sel.empty or pd.isna(sel[lo].iloc[0]):
                continue
            v, a, b = (float(sel[c].iloc[0]) for c in (y, lo, hi))
            ax.errorbar(bar.get_x() + bar.get_width() / 2, v, yerr=[[max(v - a, 0)], [max(b - v, 0)]],
                        color="black", capsize=3, linewidth=1)


def plot_speedup(df: pd.DataFrame, title: str = "Speed-up by technique") -> Figure:
    """F4: train and inference speed-up (%) by technique.

    ``df`` columns: ``method`` and ``train_speedup_pct`` / ``infer_speedup_pct`` (either or both);
    optional ``model`` (one panel-group per model: bars are labelled ``model: method``); error bars
    (95% intervals) from ``*_speedup_pct_ci_low`` / ``*_speedup_pct_ci_high`` where present.
    """
    metrics = [c for c in ("train_speedup_pct", "infer_speedup_pct") if c in df.columns]
    require_columns(df, ["method"], "plot_speedup")
    if not metrics:
        raise ValueError("plot_speedup needs train_speedup_pct and/or infer_speedup_pct columns")
    d = df.copy()
    if "model" in d.columns and d["model"].nunique() > 1:
        d["method"] = d["model"].astype(str) + ": " + d["method"].astype(str)
    long = _melt_with_ci(d, "method", metrics, "speedup_pct")
    long["phase"] = long["phase"].map({"train_speedup_pct": "training", "infer_speedup_pct": "inference"})
    return plot_grouped_bars(long, "method", "speedup_pct", "phase", ylabel="speed-up (% more throughput)",
                             title=title)


def _melt_with_ci(df: pd.DataFrame, ident: str, metrics: list[str], value: str) -> pd.DataFrame:
    """Long format (``ident``, phase, ``value``) carrying each metric's ``_ci_low/_ci_high`` when present."""
    parts = []
    for m in metrics:
        part = pd.DataFrame({ident: df[ident].values, "phase": m, value: df[m].values})
        for src, dst in zip(_ci(m), _ci(value)):
            part[dst] = df[src].values if src in df.columns else np.nan
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def plot_throughput(df: pd.DataFrame, title: str = "Throughput by technique") -> Figure:
    """F7: training and inference throughput (images/s) by technique.

    ``df`` columns: ``technique`` and ``train_img_s`` / ``infer_img_s`` (either or both); error bars
    from ``*_img_s_ci_low`` / ``*_img_s_ci_high`` where present.
    """
    metrics = [c for c in ("train_img_s", "infer_img_s") if c in df.columns]
    require_columns(df, ["technique"], "plot_throughput")
    if not metrics:
        raise ValueError("plot_throughput needs train_img_s and/or infer_img_s columns")
    long = _melt_with_ci(df, "technique", metrics, "img_s")
    long["phase"] = long["phase"].map({"train_img_s": "training", "infer_img_s": "inference"})
    return plot_grouped_bars(long, "technique", "img_s", "phase", ylabel="throughput (images/s)", title=title)


# --- F5: speed-up vs FLOPs ----------------------------------------------------------------------


def ideal_speedup_pct(flops_removed_pct: ArrayLike) -> np.ndarray:
    """Speed-up (%) if time were proportional to FLOPs: ``100·(1/(1 − f/100) − 1)``."""
    f = np.asarray(flops_removed_pct, dtype=np.float64)
    return 100.0 * (1.0 / (1.0 - f / 100.0) - 1.0)


def plot_speedup_vs_flops(
    df: pd.DataFrame, label: str | None = "method", speedup: str = "speedup_pct",
    title: str = "Measured speed-up vs FLOP reduction",
) -> Figure:
    """F5: measured speed-up (%) against FLOPs removed (%), with the ideal curve (time ∝ FLOPs).

    ``df`` columns: ``flops_removed_pct``, ``speedup`` (default ``speedup_pct``), optional ``label``
    (hue; default ``method``) and ``model`` (marker style); error bars from ``{speedup}_ci_low/high``.
    """
    require_columns(df, ["flops_removed_pct", speedup], "plot_speedup_vs_flops")
    hue = label if label and label in df.columns else None
    style_col = "model" if "model" in df.columns else None
    with style():
        fig, ax = new_figure(width=6.5, height=4.5)
        hi = max(5.0, float(np.nanmax(df["flops_removed_pct"])) * 1.1)
        f = np.linspace(0, min(hi, 95.0), 200)
        ax.plot(f, ideal_speedup_pct(f), color="black", linestyle="--", label="ideal (time ∝ FLOPs)")
        lo, up = _ci(speedup)
        if lo in df.columns and up in df.columns and df[lo].notna().any():
            d = df.dropna(subset=[lo, up])
            ax.errorbar(d["flops_removed_pct"], d[speedup], yerr=[(d[speedup] - d[lo]).clip(lower=0),
                        (d[up] - d[speedup]).clip(lower=0)], fmt="none", ecolor="grey", capsize=3, zorder=1)
        sns.scatterplot(data=df, x="flops_removed_pct", y=speedup, hue=hue, style=style_col, s=70, ax=ax,
                        palette=PALETTE if hue else None, zorder=2)
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set(xlabel="FLOPs removed (%)", ylabel="measured speed-up (% more throughput)", title=title)
        ax.legend(fontsize="small")
    return fig


# --- F6: branch sweep ---------------------------------------------------------------------------

_BRANCH_PANELS = (("params", "parameters"), ("flops", "FLOPs"), ("weight_rel_error", "relative weight error"),
                  ("time_ms", "time per batch (ms)"), ("accuracy", "accuracy (%)"))


def plot_branch_sweep(df: pd.DataFrame, hue: str | None = None, title: str = "Branched Tucker sweep") -> Figure:
    """F6: params, FLOPs, weight error, time and accuracy vs branches N (one panel per present column).

    ``df`` columns: ``branches`` and any of ``params``, ``flops``, ``weight_rel_error``, ``time_ms``, ``accuracy``;
    optional ``hue`` column (e.g. ``layer`` or ``model``) draws one line per value.
    """
    require_columns(df, ["branches"], "plot_branch_sweep")
    panels = [(c, lab) for c, lab in _BRANCH_PANELS if c in df.columns and df[c].notna().any()]
    if not panels:
        raise ValueError(f"plot_branch_sweep needs one of {[c for c, _ in _BRANCH_PANELS]}")
    return _sweep_panels(df, "branches", "branches N (groups of the core)", panels, hue, title, log2x=True)


def _sweep_panels(df, x, xlabel, panels, hue, title, log2x=False) -> Figure:
    with style():
        fig, axes = new_figure(1, len(panels), width=3.4 * len(panels), height=3.6, squeeze=False)
        for ax, (col, lab) in zip(axes[0], panels):
            sns.lineplot(data=df, x=x, y=col, hue=hue if hue in df.columns else None, marker="o", ax=ax,
                         palette=PALETTE if hue in df.columns else None, errorbar=None)
            lo, hi = _ci(col)
            if lo in df.columns and hi in df.columns and df[lo].notna().any():
                ax.errorbar(df[x], df[col], yerr=[(df[col] - df[lo]).clip(lower=0), (df[hi] - df[col]).clip(lower=0)],
                            fmt="none", ecolor="grey", capsize=3)
            if log2x:
                ax.set_xscale("log", base=2)
                ax.set_xticks(sorted(df[x].unique()), [str(v) for v in sorted(df[x].unique())])
            else:
                ax.set_xticks(sorted(df[x].unique()))
            ax.set(xlabel=xlabel, ylabel=lab, title=lab)
            if ax.get_legend() is not None and ax is not axes[0][-1]:
                ax.get_legend().remove()
        fig.suptitle(title)
    return fig


# --- F8: convergence with freezing --------------------------------------------------------------


def plot_convergence(
    history: pd.DataFrame, metrics: Sequence[str] = ("accuracy", "loss"), title: str = "Convergence with freezing",
) -> Figure:
    """F8: each metric vs epoch (left) and vs wall-clock seconds (right), one line per freezing mode.

    ``history`` columns: ``mode`` (none / regular / sequential, or any label), ``epoch``, ``wall_s``
    (cumulative training seconds) and the ``metrics`` (e.g. ``accuracy`` in %, ``loss``).
    """
    metrics = [m for m in metrics if m in history.columns]
    require_columns(history, ["mode", "epoch", "wall_s"], "plot_convergence")
    if not metrics:
        raise ValueError("plot_convergence needs at least one metric column (e.g. accuracy, loss)")
    modes = [m for m in MODE_ORDER if m in set(history["mode"])] + \
        sorted(set(history["mode"]) - set(MODE_ORDER), key=str)
    colors = dict(zip(modes, sns.color_palette(PALETTE, len(modes))))
    with style():
        fig, axes = new_figure(len(metrics), 2, width=10, height=3.4 * len(metrics), squeeze=False)
        for i, metric in enumerate(metrics):
            for j, (x, xlabel) in enumerate((("epoch", "epoch"), ("wall_s", "wall-clock training time (s)"))):
                ax = axes[i, j]
                for mode in modes:
                    d = history[history["mode"] == mode].sort_values(x)
                    ax.plot(d[x], d[metric], marker="o", markersize=4, color=colors[mode], label=str(mode))
                ax.set(xlabel=xlabel, ylabel=metric, title=f"{metric} vs {xlabel.split(' (')[0]}")
                if i == 0 and j == 1:
                    ax.legend(title="freezing", fontsize="small")
        fig.suptitle(title)
    return fig


# --- F9: granularity sweep ----------------------------------------------------------------------

_GRANULARITY_PANELS = (("time_ms", "time per batch (ms)"), ("speedup_pct", "speed-up (%)"),
                       ("params_removed_pct", "params removed (%)"), ("accuracy", "accuracy (%)"))


def plot_granularity_sweep(df: pd.DataFrame, hue: str | None = None, title: str = "Rank granularity sweep") -> Figure:
    """F9: time / speed-up, params removed and accuracy vs rank granularity g (log₂ axis).

    ``df`` columns: ``granularity`` and any of ``time_ms``, ``speedup_pct``, ``params_removed_pct``,
    ``accuracy``; optional ``hue`` column (e.g. ``model``); error bars from ``speedup_pct_ci_low/high``.
    """
    require_columns(df, ["granularity"], "plot_granularity_sweep")
    panels = [(c, lab) for c, lab in _GRANULARITY_PANELS if c in df.columns and df[c].notna().any()]
    if not panels:
        raise ValueError(f"plot_granularity_sweep needs one of {[c for c, _ in _GRANULARITY_PANELS]}")
    return _sweep_panels(df, "granularity", "rank granularity g", panels, hue, title, log2x=True)


# --- where the time goes: decomposed layers vs the rest ---------------------------------------------


def plot_time_breakdown(summaries: Mapping[str, Mapping[str, Any]], target_pct: float | None = None,
                        title: str = "Where the time goes (inference, per batch)") -> Figure:
    """Stacked bars: the decomposed layers' time and the rest of the network's, original and each plan.

    ``summaries``: plan name → a :func:`lrdlab.measure.breakdown.time_breakdown` summary. Each plan's
    bar is labelled with its whole-network speed-up and 95% interval; ``target_pct`` draws the time a
    speed-up of that size needs. The original bar is the median over the plans' own measurements.
    """
    from lrdlab.measure.stats import SpeedUp

    if not summaries:
        raise ValueError("plot_time_breakdown needs at least one breakdown summary")
    measured = list(summaries.values())
    rows = [("original", float(np.median([s["original_layers_ms"] for s in measured])),
             float(np.median([s["original_ms"] - s["original_layers_ms"] for s in measured])), "")]
    rows += [(name, s["decomposed_layers_ms"], s["decomposed_rest_ms"], SpeedUp.from_pct(s["whole"]).text())
             for name, s in summaries.items()]
    with style():
        fig, ax = new_figure(width=7.5, height=1.2 + 0.6 * len(rows))
        y = np.arange(len(rows))[::-1]
        layers, rest = [r[1] for r in rows], [r[2] for r in rows]
        colors = sns.color_palette(PALETTE, 2)
        ax.barh(y, layers, color=colors[0], label="decomposed layers (in place)")
        ax.barh(y, rest, left=layers, color="lightgrey", label="rest of the network (untouched)")
        for yi, (_, a, b, text) in zip(y, rows):
            ax.text(a + b, yi, f"  {a + b:.0f} ms  {text}", va="center", fontsize="x-small")
        if target_pct is not None:
            ax.axvline((rows[0][1] + rows[0][2]) / (1 + target_pct / 100), color="black", linestyle="--",
                       linewidth=1, label=f"time for {target_pct:+.0f}%")
        ax.set_yticks(y, [r[0] for r in rows])
        ax.set_xlim(0, 1.45 * max(a + b for _, a, b, _ in rows))
        ax.set(xlabel="ms per batch (median of interleaved rounds)", title=title)
        ax.legend(fontsize="x-small", loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, frameon=False)
    return fig


# --- F11: accuracy vs compression ----------------------------------------------------------------


def plot_accuracy_study(result: StudyRecord | Mapping[str, Any] | str | Path, model: str = "resnet20",
                        granularity: int = 1) -> Figure:
    """F11: test accuracy vs compression ratio, one line per variant; params and FLOPs (% of the original)
    on a second axis. ``result``: the accuracy study (``lrdlab.paper.accuracy_study.run_accuracy_study``), its
    JSON form or file (``data/accuracy_f11_mnist5k.json``)."""
    data = result.to_dict() if isinstance(result, StudyRecord) else result if isinstance(result, Mapping) \
        else read_record(result)
    rows = [r for r in data["rows"] if r["model"] == model and r["granularity"] == granularity]
    if not rows:
        raise ValueError(f"no rows for model {model!r} at granularity {granularity} in this study")
    variants = data.get("settings", {}).get("variants") or list(dict.fromkeys(r["variant"] for r in rows))
    with style():
        fig, ax = new_figure(width=7, height=4.6)
        base = next((r for r in rows if r["variant"] == "original"), None)
        if base is not None:
            ax.axhline(base["accuracy"], color="k", lw=0.8, ls=":", label=f"original {base['accuracy']:.1f}%")
        for variant in [v for v in variants if v != "original"]:
            pts = sorted((r["ratio"], r["accuracy"]) for r in rows if r["variant"] == variant)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=variant)
        ax.set(xlabel="compression ratio α (per layer, stem kept)", ylabel="MNIST-5k test accuracy (%)",
               ylim=(0, 100), title=f"F11: {model}, accuracy right after decomposition")
        twin = ax.twinx()
        sizes = sorted({(r["ratio"], r["params"] / r["params_original"], r["flops"] / r["flops_original"])
                        for r in rows if r["variant"] == "weights"})
        if sizes:
            ratios, params, flops = zip(*sizes)
            twin.plot(ratios, [100 * p for p in params], color="grey", ls="--", label="params %")
            twin.plot(ratios, [100 * f for f in flops], color="grey", ls="-.", label="FLOPs %")
        twin.set(ylabel="params / FLOPs (% of original)", ylim=(0, 105))
        twin.grid(False)
        lines, more = ax.get_legend_handles_labels(), twin.get_legend_handles_labels()
        ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize="x-small", loc="upper center",
                  bbox_to_anchor=(0.5, -0.16), ncol=4, frameon=False)  # below the axes: no line hidden
    return fig
