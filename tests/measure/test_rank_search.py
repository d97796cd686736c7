"""The rank search: Algorithm 1's argmax-drop rule (method="paper"), the robust default on a noise-free fake
timer, the ORG fallback, the cache, sweeps. Noisy planted truths are in test_robust_search.py."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
import torchvision
from torch import nn

from lrdlab import Layers, Ratio, decompose, make_plan
from lrdlab.cli import main
from lrdlab.lowrank.layers import LowRankLayer
from lrdlab.lowrank.plan import Plan
from lrdlab.measure.compare import compare
from lrdlab.measure.rank_search import candidate_ranks, optimize_plan, pick_rank, rank_table, scaled_ranks
from lrdlab.measure.search_config import SearchConfig
from lrdlab.measure.shapes import layer_input_shapes
from lrdlab.measure.sweeps import granularity_sweep, rank_time_sweep, shaped_model
from lrdlab.measure.timing_config import TimingConfig

ONE_ROUND = TimingConfig(rounds=1, warmup=0, repeats=1)


def tiny() -> nn.Module:
    """Plan at ratio 2 (conv '0' excluded): '2' and '4' are 32→32 at rank 19, '6' 32→64 at 27, '9' Linear at 4."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    ).eval()


def tiny_plan(model):
    return make_plan(model, Ratio(2, min_rank=1), Layers(exclude=["0"]))  # the 64→10 head too (rank 4)


class FakeTimer:
    """Deterministic layer times: 32→32 Tucker has a cliff between ranks 17 and 16; 32→64 and Linear never win."""

    def __init__(self):
        self.calls = Counter()

    def __call__(self, module, shape):
        if isinstance(module, LowRankLayer):
            C, S = module.original["in_channels"], module.original["out_channels"]
            self.calls[(C, S, module.ranks)] += 1
            if (C, S) == (32, 32):
                return 1.0 + 0.01 * module.ranks[0] + (0.5 if module.ranks[0] >= 17 else 0.0)
            return 5.0  # slower than every original
        self.calls[("original", module.in_channels if hasattr(module, "in_channels") else module.in_features)] += 1
        return 2.0


# --- the rule ------------------------------------------------------------------------------------


def test_cliff_at_257_to_256_picks_256():
    trace = {r: (4.0 if r >= 257 else 3.4) + 0.001 * (r % 3) for r in range(242, 270)}
    assert pick_rank(trace) == 256


def test_no_drop_keeps_the_target_rank():
    assert pick_rank({r: 10.0 - 0.1 * r for r in range(20, 31)}) == 30  # lower ranks are only slower
    assert pick_rank({8: 1.0}) == 8
    with pytest.raises(ValueError):
        pick_rank({})


def test_largest_drop_wins_over_smaller_ones():
    trace = {10: 5.0, 9: 4.9, 8: 3.0, 7: 2.9, 6: 1.0}  # drops: 0.1, 1.9, 0.1, 1.9 → first (largest rank) wins
    assert pick_rank(trace) == 8
    trace[6] = 0.5
    assert pick_rank(trace) == 6


def test_candidate_ranks():
    assert candidate_ranks(309, 0.99) == [309, 308, 307, 306]
    assert candidate_ranks(309, 0.9, 8)[:4] == [309, 304, 296, 288]
    assert min(candidate_ranks(309, 0.9, 8)) >= 279
    assert candidate_ranks(64, 0.5, 16) == [64, 48, 32]
    assert candidate_ranks(5, 1.0) == [5]
    for bad in [dict(lower=0), dict(lower=1.5), dict(granularity=0)]:
        with pytest.raises(ValueError):
            candidate_ranks(64, **{"lower": 0.5, "granularity": 1, **bad})


def test_scaled_ranks_keep_the_target_shape():
    assert scaled_ranks((309, 309), 256) == (256, 256)
    assert scaled_ranks((64, 128), 32) == (32, 64)
    assert scaled_ranks((200,), 150) == (150,)


# --- the whole search with a fake timer -----------------------------------------------------------


@pytest.mark.parametrize("method", ["paper", "robust"])
def test_fallback_and_cliff_with_a_fake_timer(tmp_path, method):
    model = tiny()
    plan = tiny_plan(model)
    timer = FakeTimer()
    new, traces = optimize_plan(model, plan, (2, 3, 8, 8), SearchConfig(
        lower=0.5, cache_dir=tmp_path, time_fn=timer, progress=False, method=method))
    assert new["2"].ranks == [16, 16] and new["2"].reason == "optimized: 19→16"
    assert new["4"].ranks == [16, 16]
    org = "ORG: original faster" if method == "paper" else "ORG: original not beaten with confidence"
    for name in ("6", "9"):
        assert not new[name].decomposed and new[name].reason == org
        assert new[name].params_after == new[name].params_before
    assert new["0"].reason == plan["0"].reason  # untouched rows stay as they were
    table = rank_table(plan, new)
    assert list(table.columns) == ["layer", "C", "S", "2x rank", "optimized"]
    by_layer = table.set_index("layer")
    assert by_layer.loc["6", "optimized"] == "ORG" and by_layer.loc["2", "2x rank"] == "19"
    assert by_layer.loc["2", "optimized"] == "16"
    chosen = traces[traces["chosen"]]
    assert set(chosen["layer"]) == {"2", "4"} and set(chosen["rank"]) == {16}
    assert traces[traces["layer"] == "6"]["r_opt"].isna().all()
    # identical shapes ('2' and '4') were searched once: paper 1 round; robust 3 rounds + refinement + confirmation
    assert timer.calls[(32, 32, (16, 16))] == (1 if method == "paper" else 3 + 15 + 10)
    assert timer.calls[(32, 32, (10, 10))] == (1 if method == "paper" else 3)
    assert new.settings["optimize"]["cache_misses"] > 0 and new.settings["optimize"]["method"] == method


def test_cache_hit_means_no_retiming(tmp_path):
    model = tiny()
    plan = tiny_plan(model)
    kw = dict(lower=0.5, cache_dir=tmp_path)
    paper = dict(progress=False, method="paper")
    first, _ = optimize_plan(model, plan, (2, 3, 8, 8), SearchConfig(time_fn=FakeTimer(), **kw, **paper))
    assert (tmp_path / "layer_times.json").exists()
    again = FakeTimer()
    second, _ = optimize_plan(model, plan, (2, 3, 8, 8), SearchConfig(time_fn=again, **kw, **paper))
    assert sum(again.calls.values()) == 0
    assert second.to_dict()["layers"] == first.to_dict()["layers"]
    assert second.settings["optimize"]["cache_misses"] == 0
    # another batch size, or a more careful measurement, is another key: timed afresh
    for shape, more in (((4, 3, 8, 8), {}), ((2, 3, 8, 8), {"rounds": 3})):
        other = FakeTimer()
        optimize_plan(model, plan, shape, SearchConfig(time_fn=other, **{**kw, **more}, **paper))
        assert sum(other.calls.values()) > 0


def test_robust_rerun_reuses_the_search_but_confirms_afresh(tmp_path):
    model = tiny()
    plan = tiny_plan(model)
    kw = dict(lower=0.5, cache_dir=tmp_path)
    first, _ = optimize_plan(model, plan, (2, 3, 8, 8), SearchConfig(time_fn=FakeTimer(), progress=False, **kw))
    again = FakeTimer()
    second, _ = optimize_plan(model, plan, (2, 3, 8, 8), SearchConfig(time_fn=again, progress=False, **kw))
    assert second.to_dict()["layers"] == first.to_dict()["layers"]
    assert again.calls[(32, 32, (10, 10))] == 0  # far from the step: answered by the cache
    assert again.calls[(32, 32, (16, 16))] == 15 + 10  # refinement (15 rounds) and the fresh confirmation run


def test_noisy_cache_entries_are_measured_again(tmp_path):
    from lrdlab.measure.cache import TimeCache

    cache = TimeCache(tmp_path, max_spread=0.2)
    cache.put("k", "a", [1.0, 1.0, 1.02])
    cache.put("k", "b", [1.0, 2.0, 3.0])  # spread 100%: not trusted
    cache.put("k", "c", [5.0])  # one sample: spread unknown, kept
    cache.save()
    again = TimeCache(tmp_path, max_spread=0.2)
    assert again.get("k", "a") == [1.0, 1.0, 1.02] and again.get("k", "c") == [5.0]
    assert again.get("k", "b") is None and again.stale == 1
    assert again.lookup("k", "b") == (2.0, "here")  # the explorer still shows the median
    other = TimeCache(tmp_path)  # a second writer: saving merges, nobody's entries are lost
    other.put("k2", "x", [0.5])
    other.save()
    again.put("k", "d", [0.1])
    again.save()
    assert set(TimeCache(tmp_path).entries) == {"k", "k2"}


def test_margin_and_rounds():
    model = tiny()
    plan = tiny_plan(model)
    for method in ("paper", "robust"):
        strict, _ = optimize_plan(model, plan, (2, 3, 8, 8), SearchConfig(
            lower=0.5, cache=False, margin=0.5, time_fn=FakeTimer(), progress=False, method=method))
        assert not strict["2"].decomposed  # 1.16 is not < 0.5 · 2.0
    timer = FakeTimer()
    optimize_plan(model, plan, (2, 3, 8, 8), SearchConfig(
        lower=0.5, rounds=3, cache=False, time_fn=timer, progress=False, method="paper"))
    assert timer.calls[(32, 32, (16, 16))] == 3


def test_optimized_plan_decomposes_and_round_trips(tmp_path):
    model = tiny()
    new, _ = optimize_plan(model, tiny_plan(model), (2, 3, 8, 8), SearchConfig(
        lower=0.5, cache=False, time_fn=FakeTimer(), progress=False))
    again = Plan.from_dict(json.loads(new.to_json()))
    out = decompose(model, again)
    assert isinstance(out[2], LowRankLayer) and out[2].ranks == (16, 16) and isinstance(out[6], nn.Conv2d)
    assert out(torch.randn(2, 3, 8, 8)).shape == (2, 10)


def test_layer_input_shapes_are_the_real_activations():
    model = torchvision.models.resnet18(num_classes=10)
    shapes = layer_input_shapes(model, ["layer1.0.conv1", "layer4.0.conv1", "layer4.0.conv2", "fc"], (2, 3, 64, 64))
    assert shapes == {"layer1.0.conv1": (2, 64, 16, 16), "layer4.0.conv1": (2, 256, 4, 4),
                      "layer4.0.conv2": (2, 512, 2, 2), "fc": (2, 512)}


def test_bad_inputs_are_clear_errors():
    model = tiny()
    plan = tiny_plan(model)
    other = make_plan(torchvision.models.resnet18(num_classes=10), Ratio(2))
    with pytest.raises(ValueError, match="plan"):
        optimize_plan(model, other, (2, 3, 8, 8), SearchConfig(cache=False, time_fn=FakeTimer(), progress=False))
    with pytest.raises(ValueError, match="batch"):
        optimize_plan(model, plan, (0, 3, 8, 8), SearchConfig(cache=False, time_fn=FakeTimer(), progress=False))
    with pytest.raises(ValueError, match="device"):
        optimize_plan(model, plan, (2, 3, 8, 8), SearchConfig(device="tpu", cache=False, progress=False))
    for kw, cfg in ((dict(lower=0), {}), ({}, dict(granularity=0)), (dict(rounds=0), {}), ({}, dict(margin=1)),
                    ({}, dict(dtype="int4")), ({}, dict(confirm_rounds=0)), ({}, dict(method="argmax"))):
        with pytest.raises(ValueError):
            optimize_plan(model, plan, (2, 3, 8, 8),
                          SearchConfig(cache=False, time_fn=FakeTimer(), progress=False, **kw, **cfg))
    with pytest.raises(ValueError, match="config must be a SearchConfig"):
        optimize_plan(model, plan, (2, 3, 8, 8), {"method": "paper"})  # type: ignore[arg-type]


# --- real timing ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_optimized_plan_is_never_slower_on_cpu(tmp_path):
    """The per-layer ORG fallback keeps the optimized model at least as fast as the original (within noise)."""
    model = torchvision.models.resnet18(num_classes=10).eval()
    plan = make_plan(model, Ratio(2), Layers(exclude=["conv1", "*.downsample.*"]))
    shape = (8, 3, 32, 32)
    new, traces = optimize_plan(model, plan, shape, SearchConfig(
        lower=0.95, repeats=5, rounds=2, cache_dir=tmp_path, margin=0.05, progress=False, method="paper"))
    for name, d in traces.groupby("layer"):
        if d["chosen"].any():  # a kept decomposition was measured at least 5% faster than the original layer
            assert d.loc[d["chosen"], "time_s"].iloc[0] < 0.95 * d["original_s"].iloc[0]
        else:
            assert not new[name].decomposed and new[name].reason.startswith("ORG: original")
    df = compare({"original": model, "optimized": shaped_model(model, new)}, shape,
                 timing=TimingConfig(rounds=9, repeats=5))
    opt = df.iloc[1]
    # "never slower within noise": the median ratio is within 15% of 1 or the upper quartile reaches 1
    assert opt["speedup_vs_first"] > 0.85 or opt["speedup_q3"] >= 1.0, df.to_string()


def test_granularity_sweep_columns_and_params():
    model = tiny()
    df = granularity_sweep(model, (2, 3, 8, 8), granularities=(1, 2, 4), exclude=["0"], timing=ONE_ROUND,
                           progress=False)
    assert list(df["granularity"]) == [1, 2, 4]
    assert {"params", "flops", "time_ms", "speedup", "speedup_pct", "ideal_speedup", "realised",
            "params_removed_pct", "flops_removed_pct"} <= set(df.columns)
    assert df["params"].is_monotonic_decreasing  # rounding down to multiples of 2g never grows a rank
    assert (df["params_removed_pct"] > 40).all()


def test_granularity_sweep_train_columns():
    df = granularity_sweep(tiny(), (2, 3, 8, 8), granularities=(4,), exclude=["0"], timing=ONE_ROUND, train=True,
                           progress=False)
    assert df["train_time_ms"].iloc[0] > 0 and "train_speedup" in df.columns


def test_rank_time_sweep():
    df = rank_time_sweep(32, 32, 3, [8, 12, 16], (2, 32, 8, 8), TimingConfig(rounds=1, repeats=2, warmup=1),
                         progress=False)
    assert list(df["rank"]) == [8, 12, 16]
    assert (df["time_lo_ms"] <= df["time_ms"]).all() and (df["time_ms"] <= df["time_hi_ms"]).all()
    assert df["params_removed_pct"].is_monotonic_decreasing
    assert df["params"].iloc[0] == 32 * 8 + 9 * 8 * 8 + 8 * 32
    with pytest.raises(ValueError, match="channels"):
        rank_time_sweep(32, 32, 3, [8], (2, 16, 8, 8))
    with pytest.raises(ValueError, match="eager"):
        rank_time_sweep(32, 32, 3, [8], (2, 32, 8, 8), TimingConfig(backend="compile"))


def test_cli_optimize_writes_a_plan(tmp_path, capsys):
    out = tmp_path / "plan.json"
    code = main(["optimize", "resnet18", "--paper", "--image-size", "32", "--batch", "2", "--lower", "0.99",
                 "--repeats", "1", "--cache-dir", str(tmp_path / "cache"), "--out", str(out),
                 "--traces", str(tmp_path / "t.csv")])
    assert code == 0
    text = capsys.readouterr().out
    assert "2x rank" in text and "optimized" in text
    plan = Plan.load(out)
    assert all(r.reason.startswith(("optimized: ", "ORG: original")) for r in plan.layers
               if r.target_ranks is not None or r.decomposed)
    assert (tmp_path / "t.csv").read_text().startswith("layer,")


def test_branched_tucker_searches_multiples_of_the_branches():
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.Conv2d(32, 64, 3, padding=1))
    plan = make_plan(model, Ratio(2, branches=4), Layers(exclude=["0"]))
    new, traces = optimize_plan(model, plan, (2, 3, 8, 8), SearchConfig(
        lower=0.5, cache=False, time_fn=FakeTimer(), progress=False))
    for label in traces["ranks"]:
        assert all(int(r) % 4 == 0 for r in label.split(","))
    assert scaled_ranks((32, 44), 16, 4) == (16, 20)


def test_search_space_lists_the_ranks_searched_and_refuses_bad_fields():
    from lrdlab.measure.rank_search import SearchSpace, search_layer

    space = SearchSpace("tucker2", [64, 32], lower=0.75, granularity=8, branches=2)
    assert space.target == (64, 32)  # a plan row's list becomes a tuple
    assert space.ranks() == {64: (64, 32), 56: (56, 28), 48: (48, 24)}
    assert list(SearchSpace("svd", (10,), lower=0.5, granularity=3).ranks()) == [10, 9, 6]
    for kw, match in [({"method": "nope"}, "unknown decomposition method"), ({"target": ()}, "target"),
                      ({"target": (0,)}, "target"), ({"lower": 1.5}, "lower"), ({"granularity": 0}, "granularity"),
                      ({"branches": 0}, "branches")]:
        with pytest.raises(ValueError, match=match):
            SearchSpace(**{"method": "svd", "target": (8,), **kw})
    with pytest.raises(ValueError, match="space must be a SearchSpace"):
        search_layer(nn.Linear(8, 8), "svd", (2, 8), lambda m, s: 1.0)  # type: ignore[arg-type]
    search = search_layer(nn.Linear(16, 16), SearchSpace("svd", (8,), granularity=2), (2, 16), lambda m, s: 1.0,
                          rounds=2)
    assert sorted(search.samples) == [6, 8] and len(search.original) == 2
