"""The explorers driven without a browser: set control values, read the state, readout and image."""

import json
import statistics

import pytest
import torch

from lrdlab.explore import freezing_runs, plots, rank_lab, widgets
from lrdlab.lowrank import factorize
from lrdlab.lowrank.plan import Ratio, make_plan


@pytest.fixture
def lab(tmp_cache):
    return rank_lab.RankLab(cache=rank_lab.TimeCache(path=tmp_cache / "t.json", reference=None), batch=2)


def test_state_ranks_params_and_error_agree_with_the_library(lab):
    s = lab.state("resnet18", "layer1.0.conv2", 2.0, 8)
    row = make_plan(rank_lab._model("resnet18"), Ratio(2.0, granularity=8))["layer1.0.conv2"]
    assert s["ranks"] == tuple(row.ranks) == (32, 32) and s["target_ranks"] == [38, 38]
    assert s["params_after"] == row.params_after
    assert s["compression_ratio"] == pytest.approx(row.params_before / row.params_after)
    assert s["flops_before"] == 2 * 64 * 64 * 9 * 56 * 56  # one 224×224 image: 56×56 outputs
    assert s["flops_after"] < s["flops_before"]
    W = rank_lab._model("resnet18").get_submodule("layer1.0.conv2").weight
    with plots.one_thread():
        rec = factorize.reconstruct_tucker2(*factorize.tucker2_factors(W, 32, 32))
    assert s["rel_error"] == pytest.approx(((rec - W).norm() / W.norm()).item(), rel=1e-4)
    assert s["time_ms"] is None and s["original_ms"] is None  # empty cache


def test_svd_layer_error_is_eckart_young(lab):
    s = lab.state("resnet18", "fc", 4.0, 1)
    W = rank_lab._model("resnet18").fc.weight.detach().double()
    with plots.one_thread():
        sigma = torch.linalg.svdvals(W)
    r = s["ranks"][0]
    assert s["rel_error"] == pytest.approx((sigma[r:].norm() / sigma.norm()).item(), rel=1e-6)


def test_measure_fills_the_disk_cache_with_progress(lab, tmp_cache):
    s = lab.state("resnet18", "layer4.1.conv2", 2.0, 64)
    calls = []
    s = lab.ensure_times(s, progress=lambda done, total: calls.append((done, total)))
    assert s["time_ms"] > 0 and s["original_ms"] > 0 and s["time_source"] == "here"
    assert calls == [(1, 3), (2, 3), (3, 3)]  # one step per interleaved round of (original, rounded, unrounded)
    assert s["unrounded"]["time_source"] == "here" and s["unrounded"]["ranks"] != s["ranks"]
    saved = json.loads((tmp_cache / "t.json").read_text())
    assert saved["machine"]["torch_version"] == torch.__version__
    assert sum(len(labels) for labels in saved["entries"].values()) == 3
    again = rank_lab.RankLab(cache=rank_lab.TimeCache(path=tmp_cache / "t.json", reference=None), batch=2)
    assert again.state("resnet18", "layer4.1.conv2", 2.0, 64)["time_ms"] == s["time_ms"]


def test_reference_times_are_used_and_labelled(tmp_cache, tmp_path):
    ref = tmp_path / "ref.json"
    key = "resnet18|fc|orig|2x512"
    ref.write_text(json.dumps({"machine": {"cpu": "Test CPU"}, "times": {key: 1.5}}))
    lab = rank_lab.RankLab(cache=rank_lab.TimeCache(path=tmp_cache / "t.json", reference=ref), batch=2)
    s = lab.state("resnet18", "fc", 2.0, 1)
    assert (s["original_ms"], s["original_source"]) == (1.5, "reference")
    assert "reference file, Test CPU" in rank_lab.readout_text(s, "Test CPU")


def test_times_from_different_sources_are_never_divided(tmp_cache, tmp_path):
    ref = tmp_path / "ref.json"
    ref.write_text(json.dumps({"machine": {"cpu": "Other CPU"}, "times": {"resnet18|fc|orig|2x512": 1.5}}))
    lab = rank_lab.RankLab(cache=rank_lab.TimeCache(path=tmp_cache / "t.json", reference=ref), batch=2)
    s = lab.state("resnet18", "fc", 2.0, 8)
    lab.cache.put(*rank_lab._key("resnet18", "fc", s["ranks"], s["input_shape"]), [0.009])
    s = lab.state("resnet18", "fc", 2.0, 8)
    assert (s["original_source"], s["time_source"]) == ("reference", "here")
    text = rank_lab.readout_text(s, "Other CPU")
    assert "not compared" in text and "%" not in text.split("speed-up")[1]
    s = lab.ensure_times(s)  # mixed sources: everything shown is re-timed here, together
    assert {s["original_source"], s["time_source"], s["unrounded"]["time_source"]} == {"here"}
    assert "not compared" not in rank_lab.readout_text(s, "Other CPU")


def test_a_kept_layer_says_why(lab):
    s = lab.state("resnet18", "conv1", 8.0, 64, "up")
    if s["ranks"] is None:
        assert "kept" in rank_lab.readout_text(s) and s["reason"] and s["reason"] in rank_lab.readout_text(s)


def test_rank_explorer_slider_redraws_fast_over_cached_data(lab):
    ex = widgets.RankExplorer(model="resnet18", layer="layer4.1.conv2", lab=lab, background=False)
    for g in rank_lab.GRANULARITIES:  # first pass measures what is missing (at once: background=False)
        ex.granularity.value = g
    ex.render_seconds.clear()
    images, readouts = set(), set()
    for g in reversed(rank_lab.GRANULARITIES):  # second pass: everything cached
        ex.granularity.value = g
        images.add(ex.image.value)
        readouts.add(ex.readout.value)
        assert ex.state["granularity"] == g and ex.state["ranks"][0] % g == 0
        assert f"g={g}" in ex.readout.value and "unrounded (g=1)" in ex.readout.value
    ex.render_seconds.clear()
    drawn = ex._figure.full_draws
    for g in rank_lab.GRANULARITIES:  # third pass: every setting drawn before with these times (PNG memo)
        ex.granularity.value = g
    median = statistics.median(ex.render_seconds)
    print(f"rank explorer redraw over cached data: median {median * 1000:.0f} ms, max "
          f"{max(ex.render_seconds) * 1000:.0f} ms over {len(ex.render_seconds)} moves")
    assert ex._figure.full_draws == drawn  # no figure laid out: each move is a lookup (no timing bound: any load)
    assert len(readouts) >= 5 and len(images) >= 5  # distinct ranks → distinct plots
    assert ex.progress.layout.visibility == "hidden"


def test_rank_explorer_switches_model_and_layer(lab):
    ex = widgets.RankExplorer(model="resnet18", layer="fc", lab=lab, auto_measure=False)
    ex.model.value = "resnet34"
    assert ex.layer.value in ex.layer.options and ex.state["model"] == "resnet34"
    ex.layer.value = "layer1.0.conv1"
    assert ex.state["layer"] == "layer1.0.conv1" and ex.state["time_ms"] is None
    assert "not measured" in ex.readout.value


def test_measuring_the_network_disables_its_button_and_counts_rounds(lab):
    from lrdlab.explore.network_lab import NetworkLab

    net = NetworkLab(batch=1, rounds=1)
    ex = widgets.RankExplorer(model="resnet18", layer="fc", lab=lab, auto_measure=False, network=net)
    seen: dict[str, list] = {"disabled": [], "rounds": [], "status": []}
    ex.measure_net.observe(lambda c: seen["disabled"].append(c["new"]), names="disabled")
    ex.progress.observe(lambda c: seen["rounds"].append((c["new"], ex.progress.layout.visibility)), names="value")
    ex.status.observe(lambda c: seen["status"].append(c["new"]), names="value")
    ex.measure_net.click()
    assert seen["disabled"] == [True, False]  # disabled while it ran, enabled after
    assert seen["rounds"] and all(vis == "visible" for _, vis in seen["rounds"])  # the bar counted visible rounds
    assert any("measuring the whole network" in s for s in seen["status"])  # said what it measures first
    assert ex.network["speed"] is not None and ex.progress.layout.visibility == "hidden"
    assert ex.status.value.startswith("updated in")
    ex.ratio.value = ex.ratio.value  # a redraw with the speed memoised shows no bar and measures nothing
    assert not ex.measure_net.disabled and ex.progress.layout.visibility == "hidden"


def _pixels(png: bytes):
    import io

    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_reused_rank_figure_draws_what_a_new_one_draws(lab):
    from lrdlab.explore.figures import RankFigure, rank_figure

    lab.cache.put(*rank_lab._key("resnet18", "fc", None, (2, 512)), [0.004, 0.0041, 0.0039])
    states = [lab.state("resnet18", "layer2.0.conv2", 2.0, 8), lab.state("resnet18", "fc", 4.0, 1),
              lab.state("resnet18", "layer1.0.conv1", 2.0, 32, "up")]  # Tucker-2 (two spectra), SVD with a time
    reused = RankFigure(dpi=72)
    for state in states + states[:1]:  # each drawn over the previous one's axes
        new = _pixels(plots.to_png(rank_figure(lab, state), dpi=72))[..., :3]
        again = reused.pixels(lab, state)
        assert new.shape == again.shape and (new == again).all(), state["layer"]
        sent = _pixels(reused.png(lab, state)).astype(int)  # 256 colours: every pixel within a few levels
        assert sent.shape == new.shape and abs(sent - new).max() <= 24 and abs(sent - new).mean() < 3
    assert len(reused.fig.axes) == 3
    assert reused.full_draws == 3  # one background per layer: the revisit only blits its markers and title
    reused.png(lab, lab.state("resnet18", "layer2.0.conv2", 3.0, 16))  # another setting of a drawn layer
    assert reused.full_draws == 3


def test_rank_explorer_prerenders_nearby_layers_and_an_update_stops_it(lab, monkeypatch):
    monkeypatch.setattr(widgets.RankExplorer, "PRERENDER_GRID", False)  # the layer's whole grid: its own test
    ex = widgets.RankExplorer(model="resnet18", layer="layer2.0.conv1", lab=lab, auto_measure=False, prerender=True)
    ex.prerender_thread.join(600)  # a generous wait, not a bound: the thread ends once its list is drawn
    names = list(ex.layer.options)
    here = names.index("layer2.0.conv1")
    near = {names[i] for i in range(len(names)) if abs(i - here) <= 2}
    # this model's layers' backgrounds (a move there only blits; other loaded models' opening layers are drawn too)
    drawn = {key[1] for key in ex._figure._backgrounds if key[0] == "resnet18"}
    assert near <= drawn and len(drawn) == min(len(names), ex.PRERENDER_LAYERS + 1)
    settings = {v[1:] for v in ex._states if v[1] == "layer2.0.conv1"}  # one slider move away: states prepared
    g, ratio = ex.granularity.value, ex.ratio.value
    assert {("layer2.0.conv1", ratio, 16, "down"), ("layer2.0.conv1", ratio, 4, "down"), ("layer2.0.conv1", 2.5, g,
            "down"), ("layer2.0.conv1", 1.5, g, "down"), ("layer2.0.conv1", ratio, g, "up")} <= settings
    ex.render_seconds.clear()
    ex.layer.value = names[here + 1]  # a prerendered layer: the image of the memo, the same a new drawing gives
    fresh = widgets.RankExplorer(model="resnet18", layer=names[here + 1], lab=lab, auto_measure=False,
                                 prerender=False)
    assert (_pixels(ex.image.value) == _pixels(fresh.image.value)).all()
    ex.ratio.value = 4.0  # a new setting: the running prerender stops, the next starts for α = 4
    thread = ex.prerender_thread
    ex.granularity.value = 16
    assert not thread.is_alive() or thread is not ex.prerender_thread
    ex.prerender_thread.join(600)
    assert {v[1] for v in ex._states if v[2:] == (4.0, 16, "down")} >= near - {names[here]} | {names[here + 1]}


def test_rank_explorer_prerenders_every_setting_of_the_layer_and_a_move_there_is_a_lookup(lab, monkeypatch):
    monkeypatch.setattr(widgets.RankExplorer, "PRERENDER_LAYERS", 0)  # this layer's grid only
    ex = widgets.RankExplorer(model="resnet18", layer="fc", lab=lab, auto_measure=False, prerender=True)
    grid = ex._layer_grid()
    assert len(grid) == len(set(grid)) == len(rank_lab.RATIOS) * len(rank_lab.GRANULARITIES) * len(rank_lab.ROUNDINGS)
    assert grid[0] == ("fc", ex.ratio.value, ex.granularity.value, ex.rounding.value)
    steps = [abs(rank_lab.RATIOS.index(a) - rank_lab.RATIOS.index(ex.ratio.value))
             + abs(rank_lab.GRANULARITIES.index(g) - rank_lab.GRANULARITIES.index(ex.granularity.value))
             + (r != ex.rounding.value) for _, a, g, r in grid]
    assert steps == sorted(steps)  # nearest first
    ex.prerender_thread.join(600)  # a generous wait, not a bound: the thread ends once the grid is drawn
    assert not ex.prerender_thread.is_alive()
    assert {v[1:] for v in ex._states if v[:2] == ("resnet18", "fc")} == set(grid)
    drawn, memo = ex._figure.full_draws, len(ex._png)
    ex.prerender = False
    ex.ratio.value, ex.granularity.value, ex.rounding.value = 8.0, 64, "nearest"  # far from the start
    assert len(ex._png) == memo and ex._figure.full_draws == drawn  # looked up: nothing drawn by the moves
    fresh = widgets.RankExplorer(model="resnet18", layer="fc", ratio=8.0, granularity=64, rounding="nearest",
                                 lab=lab, auto_measure=False, prerender=False)
    assert (_pixels(ex.image.value) == _pixels(fresh.image.value)).all() and ex.readout.value == fresh.readout.value


# --- freezing explorer ----------------------------------------------------------------------------------


def _study(tmp_path):
    """A tiny study file in run_freezing_study's format (numbers are placeholders for the reader's logic)."""
    history = [{"variant": v, "mode": m, "epoch": e, "wall_s": 2.0 * e, "accuracy": 50 + 10 * e, "loss": 1.0 / (e + 1),
                "train_img_s": 100.0 if e else None}
               for v, m in (("original", "original"), ("lrd", "none"), ("lrd", "regular"), ("lrd", "sequential"))
               for e in range(3)]
    throughput = [{"technique": t, "train_img_s": x} for t, x in (("original", 100), ("lrd", 110),
                                                                  ("lrd+sequential[0]", 120))]
    path = tmp_path / "study.json"
    path.write_text(json.dumps({"history": history, "throughput": throughput, "machine": {"cpu": "Test CPU"},
                                "settings": {"model": "resnet20", "data": "digits", "epochs": 1, "period": 1,
                                             "finetune_epochs": 1, "batch_size": 64}}))
    return path


def test_study_runs_become_explorer_runs(tmp_path):
    runs = freezing_runs.runs_from_study(json.loads(_study(tmp_path).read_text()))
    assert set(runs["run"]) == {"none", "regular", "sequential N=1"}  # the from-scratch original is not a fine-tune
    assert list(runs.columns) == freezing_runs.RUN_COLUMNS and (runs["source"] == "reference").all()
    lab = freezing_runs.FreezingLab(_study(tmp_path))
    assert lab.runs().equals(runs) and lab.reference_machine == {"cpu": "Test CPU"}
    assert list(lab.throughput()["technique"]) == ["original", "lrd", "lrd+sequential[0]"]


def test_rank_readout_speedup_has_an_interval_only_for_paired_rounds():
    state = {"original_ms": 2.0, "original_source": "here", "original_samples": [0.002, 0.0021, 0.0019]}
    d = {"time_ms": 1.0, "time_source": "here", "time_samples": [0.001, 0.00105, 0.00095]}
    text = rank_lab.speedup_text(state, d)
    assert text.startswith("+100.0% [") and text.endswith("(3 rounds)") and "within noise" not in text
    assert rank_lab.speedup_text({**state, "original_samples": [0.002]}, d) == "+100.0% (no interval)"
    assert "not compared" in rank_lab.speedup_text(state, {**d, "time_source": "reference"})
    same = {"time_ms": 2.0, "time_source": "here", "time_samples": [0.0021, 0.0019, 0.002]}
    assert rank_lab.speedup_text(state, same).endswith("within noise (3 rounds)")


def test_accuracy_cell_names_the_binomial_interval_and_within_noise():
    from lrdlab.explore.network_lab import accuracy_cell, binomial_half_width

    assert binomial_half_width(96.0, 300) == pytest.approx(196 * (0.96 * 0.04 / 300) ** 0.5)
    base = {"original": 96.0, "test_images": 300, "calibration": "data-aware"}
    assert "within noise of the original" in accuracy_cell({**base, "accuracy": 96.7})  # "beats" it by 0.7 points
    assert "within noise" not in accuracy_cell({**base, "accuracy": 83.3})
    assert "±2.2" in accuracy_cell({**base, "accuracy": 96.0})


def test_network_readout_follows_a_model_switch_made_while_the_old_one_is_computed(lab):
    """The regression of the browser test: a redraw of the previous model's network (after scoring) that ends after
    the switch must not show the previous model's numbers under the new model's name."""
    import threading

    from lrdlab.measure.counting import count_params

    ex = widgets.RankExplorer(model="resnet18", layer="fc", lab=lab, auto_measure=False)
    entered, release = threading.Event(), threading.Event()
    real = ex.network_state

    def slow_for_resnet18(measure, key=None):
        key = key or ex._network_key_now()
        if key[0] == "resnet18":
            entered.set()
            release.wait(60)
        return real(measure, key)

    ex.network_state = slow_for_resnet18
    redraw = threading.Thread(target=ex._redraw_network)  # what the scoring job does when its plans are scored
    redraw.start()
    assert entered.wait(60)
    ex.model.value = "resnet34"  # the switch, while resnet18's readout is being computed
    release.set()
    redraw.join(60)
    ex.wait()
    params = count_params(rank_lab._model("resnet34")) / 1e6
    assert ex.network["key"][0] == "resnet34" and ex.state["model"] == "resnet34"
    assert f"original: {params:.3g}M params" in ex.net_readout.value and "resnet34" in ex.net_readout.value
    assert "accuracy means nothing" in ex.net_readout.value


def test_every_readout_names_its_setting_even_for_a_kept_layer(lab):
    """Two settings never share a readout (the browser sees a move only when the readout changes)."""
    states = [lab.state("resnet18", "conv1", 8.0, 64, mode) for mode in rank_lab.ROUNDINGS]
    states += [lab.state("resnet18", "conv1", 8.0, 32, "down")]
    texts = [rank_lab.readout_text(s) for s in states]
    assert len(set(texts)) == len(texts)
    assert all(f"g={s['granularity']} ({s['rounding']})" in t for s, t in zip(states, texts))
