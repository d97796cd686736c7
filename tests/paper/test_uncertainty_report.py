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


def test_f7_throughput_rows_carry_intervals_and_sequential_averages_its_phases(monkeypatch):
    """freezing_throughput's arithmetic on known paired round times: the sequential time of a round is the mean
    of its phases' times, inference is measured once for every decomposed variant, every row has intervals."""
    from lrdlab import Layers, Ratio, decompose, make_plan
    from lrdlab.paper.freezing_study import freezing_throughput
    from lrdlab.paper.tables import throughput_table
    from lrdlab.zoo.models import get_model

    train_times = {"original": [1.0, 1.1, 0.9, 1.0], "lrd": [0.5, 0.55, 0.45, 0.5], "lrd+regular": [0.4] * 4,
                   "lrd+sequential[0]": [0.3] * 4, "lrd+sequential[1]": [0.5] * 4, "lrd+sequential[2]": [0.7] * 4}
    infer_times = {"original": [1.0] * 4, "lrd": [0.8] * 4}
    calls = []

    def fake_compare(models, shape, mode, **kw):
        calls.append((mode, list(models)))
        return pd.DataFrame({"name": list(models),
                             "round_s": [(train_times if mode == "train" else infer_times)[n] for n in models]})

    monkeypatch.setattr("lrdlab.measure.compare.compare", fake_compare)
    model = get_model("resnet20", num_classes=10).eval()
    lrd = decompose(model, make_plan(model, Ratio(2), Layers(exclude=["conv1"])), progress=False)
    t = freezing_throughput(model, lrd, (8, 3, 32, 32), rounds=4).set_index("technique")
    assert calls[1] == ("inference", ["original", "lrd"])  # freezing does not change inference: timed once
    assert t.loc["lrd", "train_speedup_pct"] == pytest.approx(100.0)
    assert t.loc["lrd+regular", "train_speedup_pct"] == pytest.approx(150.0)
    assert t.loc["lrd+sequential", "train_speedup_pct"] == pytest.approx(100.0)  # mean(0.3, 0.5, 0.7) = 0.5
    assert t.loc["lrd+sequential", "train_img_s"] == pytest.approx(2 * t.loc["original", "train_img_s"])
    assert t.loc[["lrd", "lrd+regular", "lrd+sequential"], "infer_speedup_pct"].tolist() == pytest.approx([25.0] * 3)
    assert t["infer_speedup_pct"].filter(like="[").isna().all()
    main = t.loc[["original", "lrd", "lrd+regular", "lrd+sequential"]]
    for p in ("train", "infer"):
        assert (main[f"{p}_speedup_pct_ci_low"] <= main[f"{p}_speedup_pct"]).all()
        assert (main[f"{p}_speedup_pct"] <= main[f"{p}_speedup_pct_ci_high"]).all()
        assert (main[f"{p}_rounds"] == 4).all()
    shown = throughput_table(t.reset_index()).set_index("technique")
    assert list(shown.index) == ["original", "lrd", "lrd+regular", "lrd+sequential"]
    assert shown.loc["lrd+regular", "inference speed-up % [95% CI]"] == "+25.0% [+25.0, +25.0]"
    assert shown.loc["original", "train speed-up % [95% CI]"] == "baseline"
