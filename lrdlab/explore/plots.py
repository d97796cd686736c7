"""Figures of the paper (§7, F1–F10) as plain functions returning matplotlib ``Figure`` objects.

Every function takes plain data (arrays, dicts or DataFrames with the columns named in its
docstring) or a model, draws with one seaborn look, and returns a ``matplotlib.figure.Figure``
that is *not* registered with pyplot: nothing is shown twice in a notebook, nothing leaks in a
loop, and ``fig.savefig(path)`` works anywhere. In Jupyter the returned figure displays itself.

Conventions (the same in every figure): compression is ``% params removed``
(``100·(1 − new/original)``); speed-up is ``% more throughput`` (``100·(t_orig/t_new − 1)``,
the paper's sign); times are milliseconds per batch unless a column says otherwise.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.container import BarContainer
from matplotlib.figure import Figure
from torch import nn

from lrdlab.lowrank import factorize, ranks
from lrdlab.measure.sweeps import find_cliffs

PALETTE = "colorblind"
MODE_ORDER = ("none", "regular", "sequential")


@contextmanager
def style():
    """The one lrdlab look: seaborn ``whitegrid``, ``notebook`` context, colorblind palette."""
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.9), \
            matplotlib.rc_context({"axes.prop_cycle": matplotlib.cycler(color=sns.color_palette(PALETTE)),
                                   "figure.dpi": 100, "savefig.dpi": 100, "axes.titleweight": "bold"}):
        yield


class LrdFigure(Figure):
    """A ``Figure`` that shows itself as PNG in Jupyter even when pyplot was never imported."""

    def _repr_png_(self) -> bytes:
        return to_png(self, dpi=100)


@contextmanager
def one_thread():
    """Run small LAPACK calls on one thread: MKL's OpenMP threads on a busy CPU (other processes using
    the cores) made ``svdvals`` of a 1000×512 matrix 150× slower (14 s vs 0.09 s) on a 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def new_figure(nrows: int = 1, ncols: int = 1, width: float = 6.0, height: float = 4.0,
               layout: str | None = "constrained", **kw):
    """A pyplot-free ``Figure`` and its axes (``squeeze=False`` when ``kw`` asks for it).

    ``layout=None`` skips constrained layout (several times faster to draw: for widgets).
    """
    fig = LrdFigure(figsize=(width, height), layout=layout)
    axes = fig.subplots(nrows, ncols, **kw)
    return fig, axes


def to_png(fig: Figure, dpi: int = 80) -> bytes:
    """PNG bytes of ``fig`` (what widgets send to the browser)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _require(df: pd.DataFrame, columns: Iterable[str], figure: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{figure} needs columns {missing}; got {list(df.columns)}")


# --- F10: spectra -------------------------------------------------------------------------------


def layer_spectrum(module: nn.Module, mode: str = "auto") -> np.ndarray:
    """Singular values (descending) that decide a layer's rank.

    Linear and 1×1 conv: of the ``[S, C]`` weight. k×k conv: ``mode="input"`` (default for
    ``"auto"``) unfolds along input channels (Tucker's R1), ``"output"`` along output channels (R2).
    """
    W = module.weight.detach()
    if mode not in ("auto", "input", "output"):
        raise ValueError(f"mode must be 'auto', 'input' or 'output' (got {mode!r})")
    if W.ndim == 2 or (W.ndim == 4 and W.shape[2:] == (1, 1)):
        M = W.reshape(W.shape[0], -1)
    else:
        M = factorize.mode_unfolding(W, 0 if mode == "output" else 1)
    if M.shape[0] < M.shape[1]:  # same singular values; LAPACK is several times faster on the tall form
        M = M.T
    with one_thread():
        return factorize.singular_values(M).numpy()


def model_spectra(model: nn.Module, names: Sequence[str] | None = None, mode: str = "auto") -> dict[str, np.ndarray]:
    """``{layer name: singular values}`` for the named (default: all decomposable) layers of ``model``."""
    from lrdlab.lowrank.layers import unsupported_reason

    modules = dict(model.named_modules())
    if names is None:
        names = [n for n, m in modules.items()
                 if isinstance(m, (nn.Linear, nn.Conv2d)) and unsupported_reason(m) is None]
    unknown = [n for n in names if n not in modules]
    if unknown:
        raise ValueError(f"no layers named {unknown} in {type(model).__name__}")
    return {n: layer_spectrum(modules[n], mode) for n in names}


def cumulative_energy(sigma: Sequence[float]) -> np.ndarray:
    """Fraction of Σσ² kept by the first 1, 2, … singular values."""
    s2 = np.asarray(sigma, dtype=np.float64) ** 2
    total = s2.sum()
    return np.cumsum(s2) / total if total > 0 else np.ones_like(s2)


def plot_spectra(
    spectra: Mapping[str, Sequence[float]] | nn.Module,
    ranks_by_layer: Mapping[str, int] | None = None,
    names: Sequence[str] | None = None,
    normalize: bool = True,
    title: str = "Singular-value spectra",
) -> Figure:
    """F10: σ_i (log scale, left) and cumulative energy (right) per layer, with rank markers.

    ``spectra``: ``{layer: singular values}`` or a model (spectra computed with :func:`model_spectra`).
    ``ranks_by_layer``: optional ``{layer: rank}``; each is marked by a dot on both curves and its
    kept energy is written in the legend. ``normalize`` divides each spectrum by its σ_1.
    """
    if isinstance(spectra, nn.Module):
        spectra = model_spectra(spectra, names)
    elif names is not None:
        spectra = {n: spectra[n] for n in names}
    if not spectra:
        raise ValueError("plot_spectra needs at least one layer's singular values")
    ranks_by_layer = dict(ranks_by_layer or {})
    with style():
        fig, (ax_s, ax_e) = new_figure(1, 2, width=10, height=4)
        colors = sns.color_palette(PALETTE, len(spectra))
        for color, (name, sigma) in zip(colors, spectra.items()):
            s = np.asarray(sigma, dtype=np.float64)
            idx = np.arange(1, len(s) + 1)
            y = s / s[0] if normalize and s[0] > 0 else s
            energy = cumulative_energy(s)
            label = name
            r = ranks_by_layer.get(name)
            if r is not None:
                if not 1 <= r <= len(s):
                    raise ValueError(f"rank {r} for layer {name!r} is outside 1..{len(s)}")
                label += f" (r={r}: {100 * energy[r - 1]:.1f}% energy)"
            ax_s.plot(idx, y, color=color, label=label)
            ax_e.plot(idx, 100 * energy, color=color, label=label)
            if r is not None:
                ax_s.plot([r], [y[r - 1]], "o", color=color, markersize=7, markeredgecolor="black")
                ax_e.plot([r], [100 * energy[r - 1]], "o", color=color, markersize=7, markeredgecolor="black")
                ax_s.axvline(r, color=color, linestyle=":", linewidth=1)
        ax_s.set_yscale("log")
        ax_s.set(xlabel="index i", ylabel="σ_i / σ_1" if normalize else "σ_i", title="singular values (log)")
        ax_e.set(xlabel="rank r (values kept)", ylabel="cumulative energy Σσ² kept (%)",
                 title="cumulative energy", ylim=(0, 101))
        ax_e.legend(fontsize="small", loc="lower right")
        fig.suptitle(title)
    return fig


def plot_rank_time(
    df: pd.DataFrame,
    original_ms: float | None = None,
    cliffs: Sequence[int] | None = None,
    rel_jump: float = 0.05,
    title: str = "Layer time vs rank",
    ax=None,
) -> Figure:
    """F1: layer time vs rank with the cliffs marked.

    ``df`` columns: ``rank``, ``time_ms``; optional ``time_lo_ms``/``time_hi_ms`` (a band, e.g.
    quartiles). ``original_ms`` draws the undecomposed layer's time. ``cliffs`` defaults to
    :func:`find_cliffs` with ``rel_jump``.
    """
    _require(df, ["rank", "time_ms"], "plot_rank_time")
    d = df.sort_values("rank")
    if cliffs is None:
        cliffs = find_cliffs(d["rank"], d["time_ms"], rel_jump)
    with style():
        fig, ax = new_figure() if ax is None else (ax.figure, ax)
        ax.plot(d["rank"], d["time_ms"], marker=".", label="decomposed layer")
        if {"time_lo_ms", "time_hi_ms"} <= set(d.columns):
            ax.fill_between(d["rank"], d["time_lo_ms"], d["time_hi_ms"], alpha=0.25, label="spread (quartiles)")
        if original_ms is not None:
            ax.axhline(original_ms, color="black", linestyle="--", label=f"original T = {original_ms:.3g} ms")
        for i, c in enumerate(cliffs):
            ax.axvline(c - 0.5, color="tab:red", linestyle=":", label="cliff" if i == 0 else None)
        ax.set(xlabel="rank r", ylabel="time per batch (ms)", title=title)
        ax.legend(fontsize="small")
    return fig


def params_removed_pct(C: int, S: int, kernel: int | Sequence[int], rank_values: Sequence[int],
                       method: str = "tucker2") -> np.ndarray:
    """Closed-form % of a layer's weights removed at each rank (every rank of the method = r)."""
    from lrdlab.lowrank.methods import get_method

    before = ranks.dense_params(C, S, kernel)
    form = get_method(method)
    info = {"type": "Conv2d", "in_channels": C, "out_channels": S,
            "kernel_size": [kernel, kernel] if isinstance(kernel, int) else list(kernel)}
    after = [form.params(info, [r] * form.n_ranks) for r in rank_values]
    return 100.0 * (1.0 - np.asarray(after, dtype=np.float64) / before)


def plot_params_removed(
    C: int, S: int, kernel: int | Sequence[int], rank_values: Sequence[int], method: str = "tucker2",
    title: str | None = None, ax=None,
) -> Figure:
    """F2: % parameters removed vs rank for one layer (closed form, :func:`params_removed_pct`)."""
    rank_values = list(rank_values)
    pct = params_removed_pct(C, S, kernel, rank_values, method)
    k = kernel if isinstance(kernel, int) else "×".join(map(str, kernel))
    with style():
        fig, ax = new_figure() if ax is None else (ax.figure, ax)
        ax.plot(rank_values, pct, marker=".", color=sns.color_palette(PALETTE)[2], label=f"{method} [{S},{C},{k}]")
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set(xlabel="rank r", ylabel="params removed (%)",
               title=title or f"Parameter reduction vs rank ({C}→{S}, k={k})")
        ax.legend(fontsize="small")
    return fig


# --- F3: Algorithm 1 ----------------------------------------------------------------------------


def plot_algorithm1_traces(
    traces: pd.DataFrame, layers: Sequence[str] | None = None, max_layers: int = 4,
    title: str = "Algorithm 1: measured rank search",
) -> Figure:
    """F3: per layer, t(r) (top) and Δt(r) = t(r) − t(r−1) (bottom), with R_opt and the original T.

    ``traces`` columns: ``layer``, ``rank``, ``time_ms``; optional ``original_ms`` (T, constant per
    layer) and ``r_opt`` (constant per layer; NaN/None when the original is kept, "ORG").
    """
    _require(traces, ["layer", "rank", "time_ms"], "plot_algorithm1_traces")
    names = list(layers) if layers is not None else list(dict.fromkeys(traces["layer"]))[:max_layers]
    if not names:
        raise ValueError("plot_algorithm1_traces: no layers to draw")
    with style():
        fig, axes = new_figure(2, len(names), width=3.6 * len(names), height=5.5, squeeze=False, sharex="col")
        for j, name in enumerate(names):
            d = traces[traces["layer"] == name].sort_values("rank")
            if d.empty:
                raise ValueError(f"no trace rows for layer {name!r}")
            top, bottom = axes[0, j], axes[1, j]
            top.plot(d["rank"], d["time_ms"], marker=".", label="t(r)")
            dt = d["time_ms"].diff()
            bottom.bar(d["rank"], dt, width=0.8, color=sns.color_palette(PALETTE)[1], label="Δt(r)")
            T = d["original_ms"].iloc[0] if "original_ms" in d else None
            if T is not None and pd.notna(T):
                top.axhline(T, color="black", linestyle="--", label=f"original T={T:.3g} ms")
            r_opt = d["r_opt"].iloc[0] if "r_opt" in d else None
            if r_opt is not None and pd.notna(r_opt):
                for ax in (top, bottom):
                    ax.axvline(r_opt, color="tab:red", linestyle=":", label="R_opt" if ax is top else None)
                top.set_title(f"{name}\nR_opt = {int(r_opt)}", fontsize="small")
            else:
                top.set_title(f"{name}\nORG (original kept)" if "r_opt" in d else name, fontsize="small")
            top.set_ylabel("t(r) (ms)" if j == 0 else "")
            bottom.set_ylabel("Δt(r) (ms)" if j == 0 else "")
            bottom.set_xlabel("rank r")
            top.legend(fontsize="x-small")
        fig.suptitle(title)
    return fig


# --- F4 / F7: bars by technique ------------------------------------------------------------------


def plot_grouped_bars(
    df: pd.DataFrame, x: str, y: str, hue: str | None = None, ylabel: str | None = None,
    title: str = "", annotate: bool = True, order: Sequence[str] | None = None,
) -> Figure:
    """Grouped bar chart of ``df[y]`` by ``x`` (and ``hue``), values written on the bars."""
    _require(df, [c for c in (x, y, hue) if c], "plot_grouped_bars")
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
    _require(df, ["method"], "plot_speedup")
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
    _require(df, ["technique"], "plot_throughput")
    if not metrics:
        raise ValueError("plot_throughput needs train_img_s and/or infer_img_s columns")
    long = _melt_with_ci(df, "technique", metrics, "img_s")
    long["phase"] = long["phase"].map({"train_img_s": "training", "infer_img_s": "inference"})
    return plot_grouped_bars(long, "technique", "img_s", "phase", ylabel="throughput (images/s)", title=title)


# --- F5: speed-up vs FLOPs ----------------------------------------------------------------------


def ideal_speedup_pct(flops_removed_pct: Sequence[float] | float) -> np.ndarray:
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
    _require(df, ["flops_removed_pct", speedup], "plot_speedup_vs_flops")
    hue = label if label and label in df.columns else None
    style_col = "model" if "model" in df.columns else None
    with style():
        fig, ax = new_figure(width=6.5, height=4.5)
        hi = max(5.0, float(np.nanmax(df["flops_removed_pct"])) * 1.1)
        f = np.linspace(0, min(hi, 95.0), 200)
        ax.plot(f, ideal_speedup_pct(f), color="black", linestyle="--", label="ideal (time ∝ FLOPs)")
        lo, hi = _ci(speedup)
        if lo in df.columns and hi in df.columns and df[lo].notna().any():
            d = df.dropna(subset=[lo, hi])
            ax.errorbar(d["flops_removed_pct"], d[speedup], yerr=[(d[speedup] - d[lo]).clip(lower=0),
                        (d[hi] - d[speedup]).clip(lower=0)], fmt="none", ecolor="grey", capsize=3, zorder=1)
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
    _require(df, ["branches"], "plot_branch_sweep")
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
    _require(history, ["mode", "epoch", "wall_s"], "plot_convergence")
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
    _require(df, ["granularity"], "plot_granularity_sweep")
    panels = [(c, lab) for c, lab in _GRANULARITY_PANELS if c in df.columns and df[c].notna().any()]
    if not panels:
        raise ValueError(f"plot_granularity_sweep needs one of {[c for c, _ in _GRANULARITY_PANELS]}")
    return _sweep_panels(df, "granularity", "rank granularity g", panels, hue, title, log2x=True)


def figure_lines(fig: Figure) -> int:
    """Number of data lines drawn on all axes of ``fig`` (for tests and sanity checks)."""
    return sum(len(ax.get_lines()) for ax in fig.axes)
