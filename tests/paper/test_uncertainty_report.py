"""The report and its figures carry the intervals: 'within noise' text and error bars on F4, F5, F7 and F9."""

from __future__ import annotations

import pandas as pd
import pytest

from lrdlab.explore import plots
from lrdlab.paper.tables import speedup_text


def _errorbars(fig) -> int:
    """Error-bar line collections drawn on a figure."""
    from matplotlib.collections import LineCollection

    return sum(isinstance(c, LineCollection) for ax in fig.axes for c in ax.collections)


def test_speedup_text_says_within_noise_when_the_interval_covers_zero():
    assert speedup_text({"speedup_pct": 10.1, "speedup_pct_ci_low": -3.0, "speedup_pct_ci_high": 22.0}) == \
        "+10.1% [-3.0, +22.0], within noise"
    assert speedup_text({"infer_speedup_pct": 35.5, "infer_speedup_pct_ci_low": 30.0,
                         "infer_speedup_pct_ci_high": 41.0}, "infer_") == "+35.5% [+30.0, +41.0]"
    assert speedup_text({"speedup_pct": 5.0}) == "+5.0% (no interval)"  # older recorded data
    assert speedup_text({}) == "—"


@pytest.fixture
def techniques():
    return pd.DataFrame({
        "method": ["vanilla LRD", "layer merging"], "train_speedup_pct": [20.0, 30.0],
        "infer_speedup_pct": [35.0, 50.0], "train_speedup_pct_ci_low": [15.0, 25.0],
        "train_speedup_pct_ci_high": [25.0, 36.0], "infer_speedup_pct_ci_low": [30.0, 44.0],
        "infer_speedup_pct_ci_high": [41.0, 57.0],
    })


def test_f4_bars_have_error_bars_only_with_intervals(techniques):
    assert _errorbars(plots.plot_speedup(techniques)) == 4
    assert _errorbars(plots.plot_speedup(techniques[["method", "train_speedup_pct", "infer_speedup_pct"]])) == 0


def test_f5_f7_f9_draw_error_bars():
    f5 = pd.DataFrame({"method": ["a", "b"], "flops_removed_pct": [40.0, 50.0], "speedup_pct": [30.0, 45.0],
                       "speedup_pct_ci_low": [25.0, 40.0], "speedup_pct_ci_high": [36.0, 50.0]})
    assert _errorbars(plots.plot_speedup_vs_flops(f5)) >= 1
    f7 = pd.DataFrame({"technique": ["original", "lrd"], "train_img_s": [100.0, 130.0],
                       "train_img_s_ci_low": [100.0, 120.0], "train_img_s_ci_high": [100.0, 140.0]})
    assert _errorbars(plots.plot_throughput(f7)) == 2
    f9 = pd.DataFrame({"granularity": [1, 8, 32], "speedup_pct": [35.0, 40.0, 53.0],
                       "speedup_pct_ci_low": [30.0, 33.0, 49.0], "speedup_pct_ci_high": [41.0, 47.0, 57.0],
                       "params_removed_pct": [48.0, 49.0, 51.0]})
    assert _errorbars(plots.plot_granularity_sweep(f9)) == 1
