"""Each figure function on small synthetic data: check what is drawn, not only that it runs."""

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

from lrdlab.explore import plots
from lrdlab.explore.recorded import read
from lrdlab.lowrank import ranks
from lrdlab.measure import rank_search, stats


def _labels(fig):
    return [(ax.get_xlabel(), ax.get_ylabel()) for ax in fig.axes]


def test_spectra_from_model_marks_ranks_and_energy():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8, 4))
    fig = plots.plot_spectra(model, ranks_by_layer={"2": 2})
    assert isinstance(fig, Figure)
    ax_s, ax_e = fig.axes[:2]
    assert ax_s.get_yscale() == "log"
    assert "energy" in ax_e.get_ylabel()
    sigma = torch.linalg.svdvals(model[2].weight.detach().double()).numpy()
    energy = 100 * np.cumsum(sigma**2) / np.sum(sigma**2)
    # one curve per layer (2) + one rank marker on each panel
    curves = [ln for ln in ax_e.get_lines() if len(ln.get_xdata()) > 1]
    assert len(curves) == 2
    np.testing.assert_allclose(curves[1].get_ydata(), energy)
    marker = [ln for ln in ax_e.get_lines() if len(ln.get_xdata()) == 1][0]
    assert marker.get_xdata()[0] == 2 and marker.get_ydata()[0] == pytest.approx(energy[1])
    assert f"{energy[1]:.1f}% energy" in ax_e.get_legend().get_texts()[1].get_text()


def test_spectra_rejects_rank_outside_spectrum():
    with pytest.raises(ValueError, match="outside"):
        plots.plot_spectra({"a": [3.0, 2.0, 1.0]}, ranks_by_layer={"a": 4})


def test_layer_spectrum_matches_unfolding_for_conv_and_linear():
    conv = nn.Conv2d(4, 6, 3)
    s_in = plots.layer_spectrum(conv, "input")
    np.testing.assert_allclose(s_in, torch.linalg.svdvals(conv.weight.detach().double().transpose(0, 1).reshape(4, -1)))
    assert len(plots.layer_spectrum(conv, "output")) == 6
    with pytest.raises(ValueError, match="mode"):
        plots.layer_spectrum(conv, "sideways")


def test_planted_cliff_is_found_and_drawn():
    r = np.arange(250, 262)
    t = 3.4 + 0.01 * (r - 250) + 0.6 * (r > 256)
    assert stats.cliffs(r, t) == [257]
    fig = plots.plot_rank_time(pd.DataFrame({"rank": r, "time_ms": t}), original_ms=4.5)
    ax = fig.axes[0]
    assert _labels(fig)[0] == ("rank r", "time per batch (ms)")
    data, original, cliff = ax.get_lines()[:3]
    np.testing.assert_allclose(data.get_ydata(), t)
    assert original.get_ydata()[0] == 4.5
    assert cliff.get_xdata()[0] == 256.5


def test_a_smooth_straight_line_has_no_cliff():
    dense = np.arange(242, 270)
    assert stats.cliffs(dense, 2.0 + 0.05 * (dense - 242)) == []
    sparse = [32, 64, 128, 256, 384, 512, 640]  # notebook 01's sweep: every step is a big relative rise
    line = [0.1 + 0.01 * r for r in sparse]
    assert stats.cliffs(sparse, line) == []
    assert plots.rank_cliffs(pd.DataFrame({"rank": sparse, "time_ms": line})) == []
    assert stats.cliffs(sparse, [max(0.5, 0.002 * r) for r in sparse]) == []  # a bend is not a cliff
    rng = np.random.default_rng(0)
    noisy_line = [list((3.6 + 0.03 * (r - 242)) * (1 + 0.02 * rng.standard_normal(5))) for r in dense]
    assert stats.cliffs(dense, noisy_line) == []
    assert stats.cliffs([1, 2, 3], [1.0, 2.0, 3.0]) == []  # too short for a step model


def test_noisy_rounds_planted_step_found_one_high_point_is_not_a_step():
    rng = np.random.default_rng(0)
    r = np.arange(242, 270)
    truth = 3.6 + 0.4 * (r >= 257)
    rounds = [list(t * (1 + 0.02 * rng.standard_normal(5))) for t in truth]
    assert stats.cliffs(r, rounds) == [257]
    spike = np.full(r.size, 3.8)
    spike[r == 257] = 4.2  # one high point (the recorded F1 at 257), neighbours level: no step
    assert stats.cliffs(r, [list(t * (1 + 0.02 * rng.standard_normal(5))) for t in spike]) == []
    with pytest.raises(ValueError, match="ranks"):
        stats.cliffs([1, 2], [1.0])


def test_the_rank_search_picks_the_rank_just_below_the_cliff():
    """One rule: where the figures mark a cliff, the rank search's step model takes the rank below it."""
    rng = np.random.default_rng(1)
    r = np.arange(240, 264)
    samples = {int(k): list((3.5 + 0.5 * (k >= 256)) * (1 + 0.02 * rng.standard_normal(3))) for k in r}
    found = stats.cliffs(list(samples), list(samples.values()))
    assert found == [256]
    assert rank_search.robust_candidate(samples)[0] == found[0] - 1


def test_recorded_f1_has_no_cliff_at_257_as_the_readme_says():
    """Notebooks 04 and 07 and the report read the same recording with the same rule: 257 is one high point."""
    f1 = read("optimize_f1_conv512_cpu.csv")
    if f1 is None:
        pytest.skip("no recorded F1 in data/")
    found = plots.rank_cliffs(f1.rows, rounds=int(f1.meta["settings"]["rounds"]))
    assert 257 not in found
    assert found == plots.rank_cliffs(f1.rows.sample(frac=1, random_state=0), rounds=3)  # order does not matter


def test_params_removed_closed_form_matches_paper_figure_2b():
    pct = plots.params_removed_pct(512, 512, 3, [242, 270])
    assert pct[0] == pytest.approx(100 * (1 - ranks.tucker2_params(512, 512, 3, 242, 242) / (512 * 512 * 9)))
    assert 66 < pct[0] < 68 and 59 < pct[1] < 61  # P1 Fig. 2b: about 67% at r=242, 60% at r=270
    fig = plots.plot_params_removed(512, 512, 3, range(242, 271))
    line = fig.axes[0].get_lines()[0]
    assert len(line.get_xdata()) == 29 and fig.axes[0].get_ylabel() == "params removed (%)"


def test_algorithm1_traces_one_column_per_layer_with_delta_t():
    r = np.arange(10, 20)
    rows = [pd.DataFrame({"layer": name, "rank": r, "time_ms": r * k, "original_ms": 100.0, "r_opt": ro})
            for name, k, ro in (("a", 1.0, 15), ("b", 2.0, np.nan))]
    fig = plots.plot_algorithm1_traces(pd.concat(rows))
    assert len(fig.axes) == 4
    top_a, top_b, bottom_a, _ = fig.axes
    assert "R_opt = 15" in top_a.get_title() and "ORG" in top_b.get_title()
    assert len(bottom_a.patches) == 10  # one Δt bar per rank (the first is NaN)
    assert bottom_a.patches[1].get_height() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="columns"):
        plots.plot_algorithm1_traces(pd.DataFrame({"rank": r}))


def test_speedup_bars_count_and_values():
    df = pd.DataFrame({"method": ["vanilla", "optimized", "merging"], "train_speedup_pct": [6.1, 14.2, 43.6],
                       "infer_speedup_pct": [6.8, 14.0, 40.6]})
    fig = plots.plot_speedup(df)
    ax = fig.axes[0]
    heights = sorted(round(p.get_height(), 1) for p in ax.patches if p.get_height() != 0)
    assert heights == sorted([6.1, 14.2, 43.6, 6.8, 14.0, 40.6])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["training", "inference"]
    assert "speed-up" in ax.get_ylabel()


def test_throughput_bars():
    df = pd.DataFrame({"technique": ["original", "LRD", "LRD + freezing"], "train_img_s": [100, 110, 140],
                       "infer_img_s": [300, 330, 330]})
    ax = plots.plot_throughput(df).axes[0]
    assert len([p for p in ax.patches if p.get_height() > 0]) == 6
    assert ax.get_ylabel() == "throughput (images/s)"


def test_speedup_vs_flops_has_ideal_line_and_points():
    df = pd.DataFrame({"method": ["a", "b"], "flops_removed_pct": [43.0, 55.0], "speedup_pct": [6.0, 40.0]})
    ax = plots.plot_speedup_vs_flops(df).axes[0]
    ideal = ax.get_lines()[0]
    x, y = ideal.get_xdata(), ideal.get_ydata()
    assert y[np.argmin(abs(x - 50))] == pytest.approx(100, rel=0.02)  # half the FLOPs → twice as fast
    offsets = np.concatenate([c.get_offsets() for c in ax.collections])
    assert sorted(map(tuple, offsets)) == [(43.0, 6.0), (55.0, 40.0)]
    assert plots.ideal_speedup_pct(50) == pytest.approx(100)


def test_branch_and_granularity_sweeps_one_panel_per_metric():
    fig = plots.plot_branch_sweep(pd.DataFrame({"branches": [1, 2, 4], "params": [9, 6, 4], "time_ms": [3, 2, 2]}))
    assert [ax.get_ylabel() for ax in fig.axes] == ["parameters", "time per batch (ms)"]
    np.testing.assert_allclose(fig.axes[0].get_lines()[0].get_ydata(), [9, 6, 4])
    g = pd.DataFrame({"granularity": [1, 2, 4, 8, 16, 32, 64] * 2, "model": ["a"] * 7 + ["b"] * 7,
                      "time_ms": np.arange(14.0), "params_removed_pct": np.linspace(50, 60, 14)})
    fig = plots.plot_granularity_sweep(g, hue="model")
    assert len(fig.axes) == 2 and fig.axes[0].get_xscale() == "log"
    assert len([ln for ln in fig.axes[0].get_lines() if len(ln.get_xdata()) == 7]) == 2  # one line per model
    with pytest.raises(ValueError, match="needs one of"):
        plots.plot_granularity_sweep(pd.DataFrame({"granularity": [1]}))


def test_time_breakdown_stacks_layers_and_rest_per_plan():
    pct = {"median": 50.0, "ci_low": 45.0, "ci_high": 55.0, "rounds": 9}
    summaries = {name: {"original_layers_ms": 60.0 + d, "original_ms": 90.0 + d, "decomposed_layers_ms": lay,
                        "decomposed_rest_ms": 30.0, "whole": pct} for name, lay, d in (("a", 30.0, 0), ("b", 20.0, 2))}
    fig = plots.plot_time_breakdown(summaries, target_pct=60)
    ax = fig.axes[0]
    widths = sorted((round(p.get_y(), 1), p.get_width()) for p in ax.patches)
    assert [w for _, w in widths] == [20.0, 30.0, 30.0, 30.0, 30.0, 61.0]  # bottom-up: b, a, original (median)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["original", "a", "b"]
    assert list(ax.get_yticks()) == [2, 1, 0]  # the original on top
    assert any(ln.get_xdata()[0] == pytest.approx(91.0 / 1.6) for ln in ax.get_lines())  # the +60% time
    assert any("+50.0% [+45.0, +55.0]" in t.get_text() for t in ax.texts)
    with pytest.raises(ValueError, match="at least one"):
        plots.plot_time_breakdown({})


def test_convergence_one_line_per_mode_vs_epoch_and_wall_clock():
    rows = [pd.DataFrame({"mode": m, "epoch": [1, 2, 3], "wall_s": np.array([1, 2, 3]) * w,
                          "accuracy": [90, 92, 93], "loss": [0.5, 0.3, 0.2]})
            for m, w in (("sequential", 7.0), ("none", 10.0), ("regular", 8.0))]
    fig = plots.plot_convergence(pd.concat(rows))
    assert len(fig.axes) == 4
    acc_epoch, acc_wall = fig.axes[0], fig.axes[1]
    assert acc_wall.get_xlabel() == "wall-clock training time (s)"
    assert [t.get_text() for t in acc_wall.get_legend().get_texts()] == ["none", "regular", "sequential"]
    np.testing.assert_allclose(acc_wall.get_lines()[0].get_xdata(), [10, 20, 30])
    assert len(acc_epoch.get_lines()) == 3


def test_png_and_pyplot_free():
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    fig = plots.plot_params_removed(64, 64, 3, range(10, 40))
    assert plt.get_fignums() == before  # not registered with pyplot: no double display, no leak
    assert plots.to_png(fig)[:8] == b"\x89PNG\r\n\x1a\n"
