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

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from numpy.typing import ArrayLike
from torch import nn

from lrdlab.explore.figure_kit import (  # noqa: F401
    MODE_ORDER,
    PALETTE,
    LrdFigure,
    new_figure,
    one_thread,
    require_columns,
    style,
    to_png,
)
from lrdlab.explore.result_plots import (  # noqa: F401  (one namespace of figures)
    ideal_speedup_pct,
    plot_accuracy_study,
    plot_branch_sweep,
    plot_convergence,
    plot_granularity_sweep,
    plot_grouped_bars,
    plot_speedup,
    plot_speedup_vs_flops,
    plot_throughput,
    plot_time_breakdown,
)
from lrdlab.lowrank import factorize, ranks
from lrdlab.lowrank.layers import weight_of
from lrdlab.measure.stats import cliffs as step_cliffs

# --- F10: spectra -------------------------------------------------------------------------------


def layer_spectrum(module: nn.Module, mode: str = "auto") -> np.ndarray:
    """Singular values (descending) that decide a layer's rank.

    Linear and 1×1 conv: of the ``[S, C]`` weight. k×k conv: ``mode="input"`` (default for
    ``"auto"``) unfolds along input channels (Tucker's R1), ``"output"`` along output channels (R2).
    """
    W = weight_of(module).detach()
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


def cumulative_energy(sigma: ArrayLike) -> np.ndarray:
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
        by_layer: Mapping[str, ArrayLike] = model_spectra(spectra, names)
    else:
        by_layer = spectra if names is None else {n: spectra[n] for n in names}
    if not by_layer:
        raise ValueError("plot_spectra needs at least one layer's singular values")
    ranks_by_layer = dict(ranks_by_layer or {})
    with style():
        fig, (ax_s, ax_e) = new_figure(1, 2, width=10, height=4)
        colors = sns.color_palette(PALETTE, len(by_layer))
        for color, (name, sigma) in zip(colors, by_layer.items()):
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


def rank_cliffs(df: pd.DataFrame, rounds: int = 1) -> list[int]:
    """The cliffs of a rank-time table by the rank search's measured-noise rule (:func:`lrdlab.measure.stats.cliffs`).

    ``df``: ``rank``, ``time_ms`` and optionally the quartile band ``time_lo_ms`` / ``time_hi_ms`` of ``rounds``
    interleaved rounds (:func:`lrdlab.measure.sweeps.rank_time_sweep`); the band gives the noise of a rank's
    median (robust sigma = band / 1.349, over √rounds). Without a band the neighbours' spread is the noise.
    """
    require_columns(df, ["rank", "time_ms"], "rank_cliffs")
    sigma = None
    if {"time_lo_ms", "time_hi_ms"} <= set(df.columns):
        band = (df["time_hi_ms"] - df["time_lo_ms"]) / df["time_ms"]
        sigma = float(np.median(band)) / 1.349 * 1.2533 / np.sqrt(max(rounds, 1))
    return step_cliffs(df["rank"].tolist(), df["time_ms"].tolist(), sigma)


def plot_rank_time(
    df: pd.DataFrame,
    original_ms: float | None = None,
    cliffs: Sequence[int] | None = None,
    title: str = "Layer time vs rank",
    ax=None,
) -> Figure:
    """F1: layer time vs rank with the cliffs marked.

    ``df`` columns: ``rank``, ``time_ms``; optional ``time_lo_ms``/``time_hi_ms`` (a band, e.g.
    quartiles). ``original_ms`` draws the undecomposed layer's time. ``cliffs`` defaults to
    :func:`rank_cliffs` (steps above the measured noise; none on a smooth line).
    """
    require_columns(df, ["rank", "time_ms"], "plot_rank_time")
    d = df.sort_values("rank")
    if cliffs is None:
        cliffs = rank_cliffs(d)
    with style():
        fig, ax = new_figure() if ax is None else (ax.figure, ax)
        ax.plot(d["rank"], d["time_ms"], marker=".", label="decomposed layer")
        if {"time_lo_ms", "time_hi_ms"} <= set(d.columns):
            ax.fill_between(d["rank"], d["time_lo_ms"], d["time_hi_ms"], alpha=0.25, label="spread (quartiles)")
        if original_ms is not None:
            ax.axhline(original_ms, color="black", linestyle="--", label=f"original T = {original_ms:.3g} ms")
        for i, c in enumerate(cliffs):
            ax.axvline(c - 0.5, color="tab:red", linestyle=":",
                       label="cliff (step above the noise)" if i == 0 else None)
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
    require_columns(traces, ["layer", "rank", "time_ms"], "plot_algorithm1_traces")
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


# --- F12: speed vs threads ------------------------------------------------------------------------------


def plot_thread_scaling(df: pd.DataFrame, title: str = "Speed vs torch threads") -> Figure:
    """F12: time per batch, speed-up over the original at the same thread count, and realised fraction of the
    FLOP ideal, each against the thread count, one line per technique (the original's time on the first panel).

    ``df`` columns: ``threads``, ``technique``, ``original_ms``, ``time_ms``, ``speedup_pct``, ``realised``;
    optional ``speedup_pct_ci_low/high`` (error bars).
    """
    columns = ["threads", "technique", "original_ms", "time_ms", "speedup_pct", "realised"]
    require_columns(df, columns, "plot_thread_scaling")
    with style():
        fig, axes = new_figure(ncols=3, width=13.0, height=3.8)
        orig = df.groupby("threads", as_index=False)["original_ms"].first()
        axes[0].plot(orig["threads"], orig["original_ms"], marker="o", color="black", label="original")
        for name, d in df.groupby("technique", sort=False):
            d = d.sort_values("threads")
            axes[0].plot(d["threads"], d["time_ms"], marker="o", label=name)
            err = None
            if {"speedup_pct_ci_low", "speedup_pct_ci_high"} <= set(d.columns):
                err = [(d["speedup_pct"] - d["speedup_pct_ci_low"]).clip(lower=0),
                       (d["speedup_pct_ci_high"] - d["speedup_pct"]).clip(lower=0)]
            axes[1].errorbar(d["threads"], d["speedup_pct"], yerr=err, marker="o", capsize=3, label=name)
            axes[2].plot(d["threads"], d["realised"], marker="o", label=name)
        axes[1].axhline(0, color="grey", linewidth=0.8)
        axes[0].set(xlabel="torch threads", ylabel="ms per batch", title="time")
        axes[1].set(xlabel="torch threads", ylabel="speed-up over the original (%)", title="speed-up")
        axes[2].set(xlabel="torch threads", ylabel="realised fraction of the FLOP ideal", title="realised")
        for ax in axes:
            ax.set_xticks(sorted(df["threads"].unique()))
        axes[0].legend(fontsize="small")
        fig.suptitle(title)
    return fig
