"""The look every lrdlab figure shares: seaborn style, figures not registered with pyplot, PNG bytes."""

from __future__ import annotations

import io
from collections.abc import Iterable
from contextlib import contextmanager
from typing import Literal

import matplotlib
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.rcsetup import cycler

from lrdlab.lowrank.factorize import one_thread  # noqa: F401 - the one single-thread block, re-exported for figures

PALETTE = "colorblind"
MODE_ORDER = ("none", "regular", "sequential")


@contextmanager
def style():
    """The one lrdlab look: seaborn ``whitegrid``, ``notebook`` context, colorblind palette."""
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.9), \
            matplotlib.rc_context({"axes.prop_cycle": cycler(color=sns.color_palette(PALETTE)),
                                   "figure.dpi": 100, "savefig.dpi": 100, "axes.titleweight": "bold"}):
        yield


class LrdFigure(Figure):
    """A ``Figure`` that shows itself as PNG in Jupyter even when pyplot was never imported."""

    def _repr_png_(self) -> bytes:
        return to_png(self, dpi=100)


def new_figure(nrows: int = 1, ncols: int = 1, width: float = 6.0, height: float = 4.0,
               layout: Literal["constrained", "compressed", "tight"] | None = "constrained", **kw):
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


def require_columns(df: pd.DataFrame, columns: Iterable[str], figure: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{figure} needs columns {missing}; got {list(df.columns)}")

