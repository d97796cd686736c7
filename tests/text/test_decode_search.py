"""The rank search at an LM's token shapes on the tiny Llama: each shape searched once at (batch, 1, in_features),
the searched plan within the target's parameters, bench-lm times it, bad input is one line."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
from torch import nn

from lrdlab import Ratio, decompose, make_plan
from lrdlab.lowrank.layers import LowRankLayer
from lrdlab.measure import rank_search
from lrdlab.measure.counting import count_params
from lrdlab.measure.decode_search import (
    TokenShapeSearch,
    choices_text,
    layer_patterns,
    search_at_token_shape,
    shape_groups,
)
from lrdlab.measure.search_config import SearchConfig

pytest.importorskip("transformers")


class CliffTimer:
    """Noise-free layer times: a decomposed layer costs its rank plus a cliff above 3/4 of its target rank (the
    search should step below it); the original costs ``original`` (below 1: it beats every rank)."""

    def __init__(self, targets: dict[tuple[int, int], int], original: float = 1e3):
        self.targets, self.original = targets, original
        self.shapes: list[tuple[tuple[int, int], tuple[int, ...]]] = []
        self.originals: Counter = Counter()

    def __call__(self, module: nn.Module, shape: tuple[int, ...]) -> float:
        if isinstance(module, LowRankLayer):
            io = (module.original["in_channels"], module.original["out_channels"])
            self.shapes.append((io, tuple(shape)))
            r = module.ranks[0]
            return 1.0 + 0.01 * r + (0.5 if r > 0.8 * self.targets[io] else 0.0)
        self.shapes.append(((module.in_features, module.out_features), tuple(shape)))
        self.originals[(module.in_features, module.out_features)] += 1
        return self.original


def _setup(tiny_llama, original: float = 1e3):
    model = tiny_llama()
    plan = make_plan(model, Ratio(2, min_rank=1))
    targets = {(r.in_channels, r.out_channels): r.ranks[0] for r in plan.decomposed_layers}
    return model, plan, CliffTimer(targets, original)


def _options(timer, **kw) -> TokenShapeSearch:  # every rank down to half the target: enough for the step model
    return TokenShapeSearch(lower=0.5, config=SearchConfig(time_fn=timer, progress=False), **kw)


def test_each_shape_is_searched_once_at_the_decode_shape_and_steps_below_the_cliff(tiny_llama, monkeypatch):
    model, plan, timer = _setup(tiny_llama)
    calls = []
    real = rank_search.search_layer
    monkeypatch.setattr(rank_search, "search_layer", lambda m, *a, **k: calls.append(m) or real(m, *a, **k))
    found = search_at_token_shape(model, plan, _options(timer))
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    sizes = {(m.in_features, m.out_features) for m in linears.values()}
    assert len(plan.decomposed_layers) == len(linears) == 15  # 2 blocks x 7 projections + the head
    assert len(sizes) == 5 == len(calls) == len(found.shapes)  # q/o, k/v, gate/up, down, lm_head: 5 searches
    assert set(timer.originals) == sizes
    assert {shape for _, shape in timer.shapes} == {(1, 1, i) for i, _ in sizes}  # a GEMV at batch 1
    assert all(shape == (1, 1, io[0]) for io, shape in timer.shapes)
    by_size = {(s.in_features, s.out_features): s for s in found.shapes}
    assert by_size[(64, 64)].layers == tuple(n for n in linears if n.endswith(("q_proj", "o_proj")))
    for row in found.plan.decomposed_layers:
        target = plan[row.name].ranks[0]
        assert row.ranks[0] == math.floor(0.8 * target), row  # the rank just under the cliff
        assert row.params_after < plan[row.name].params_after
    assert count_params(decompose(model, found.plan)) < count_params(decompose(model, plan))
    record = found.record()
    assert record["shape"] == "decode" and record["batch"] == record["tokens"] == 1
    assert sum(s["count"] for s in record["shapes"]) == 15
    assert "model.layers.*.self_attn.q_proj" in by_size[(64, 64)].to_dict()["layers"]
    assert json.loads(json.dumps(found.plan.to_dict()))["settings"]["optimize"]["token_shape"]["tokens"] == 1
    assert set(found.traces["layer"]) == {", ".join(layer_patterns(s.layers)) for s in found.shapes}


def test_the_budget_holds_when_the_original_wins_unless_the_options_allow_it(tiny_llama):
    model, plan, timer = _setup(tiny_llama, original=0.5)  # the original beats every rank
    found = search_at_token_shape(model, plan, _options(timer))
    assert len(found.plan.decomposed_layers) == len(plan.decomposed_layers)
    for row in found.plan.decomposed_layers:
        assert row.ranks[0] <= plan[row.name].ranks[0] and "within the target" in row.reason
    assert sum(r.params_after for r in found.plan.layers) <= sum(r.params_after for r in plan.layers)
    kept = search_at_token_shape(model, plan, _options(CliffTimer(timer.targets, 0.5), keep_original=True))
    assert not kept.plan.decomposed_layers and all(s.ranks is None for s in kept.shapes)
    assert "→ORG" in choices_text([s.to_dict() for s in kept.shapes])


def test_prefill_shape_and_groups_split_by_rank(tiny_llama):
    model, plan, timer = _setup(tiny_llama)
    found = search_at_token_shape(model, plan, _options(timer, batch=2, tokens=8))
    assert {shape for _, shape in timer.shapes} == {(2, 8, s.in_features) for s in found.shapes}
    assert found.record()["shape"] == "prefill"
    plan.layers[0].ranks = [plan.layers[0].ranks[0] - 4]  # q_proj of block 0 now differs from the other q/o
    assert len(shape_groups(model, plan)) == 6


@pytest.mark.parametrize("bad, words", [(dict(batch=0), "batch must be a positive int"),
                                        (dict(tokens=1.5), "tokens must be a positive int"),
                                        (dict(rounds=0), "rounds must be a positive int"),
                                        (dict(lower=0), "lower must be"),
                                        (dict(config="robust"), "config must be a SearchConfig"),
                                        (dict(keep_original="yes"), "keep_original")])
def test_bad_options_are_one_line(bad, words):
    with pytest.raises(ValueError, match=words) as err:
        TokenShapeSearch(**bad)
    assert "\n" not in str(err.value)


def test_bad_models_and_plans_are_one_line(tiny_llama):
    model, plan, _ = _setup(tiny_llama)
    with pytest.raises(ValueError, match="options must be a TokenShapeSearch"):
        search_at_token_shape(model, plan, {"tokens": 1})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="expected an lrdlab Plan"):
        search_at_token_shape(model, "plan")  # type: ignore[arg-type]
    for row in plan.layers:
        row.keep("test")
    with pytest.raises(ValueError, match="no rank to search"):
        search_at_token_shape(model, plan)
    conv = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8, 4))
    with pytest.raises(ValueError, match="'0' is a Conv2d: token shapes are for Linear layers"):
        search_at_token_shape(conv, make_plan(conv, Ratio(2, min_rank=1)))
