"""The recorded search's T1 table turns back into the plan it came from (the compile and breakdown records use it)."""

from __future__ import annotations

from lrdlab import Layers, Ratio, get_model, make_plan
from lrdlab.lowrank.plan import Plan
from lrdlab.measure.rank_search import rank_table
from tools.record.search import plan_from_t1


def test_plan_from_t1_round_trips_the_rank_table_with_params_that_follow_the_ranks():
    model = get_model("resnet20").eval()
    vanilla = make_plan(model, Ratio(2), Layers(exclude=["conv1"]))
    optimized = Plan.from_dict(vanilla.to_dict())
    rows = optimized.decomposed_layers
    rows[0].ranks = [r - 2 for r in rows[0].ranks]  # Tucker, r1 = r2: shown as one number
    rows[1].ranks = [rows[1].ranks[0] - 1, rows[1].ranks[1] - 3]  # unequal: shown as "a,b"
    rows[2].keep("ORG: original not beaten with confidence")
    back = plan_from_t1(model, vanilla, rank_table(vanilla, optimized).to_dict(orient="records"))
    assert [(r.name, r.ranks) for r in back.layers] == [(r.name, r.ranks) for r in optimized.layers]
    for row in rows[:2]:  # fewer params than at the vanilla ranks
        assert back[row.name].params_after < vanilla[row.name].params_after
    assert back[rows[2].name].params_after == vanilla[rows[2].name].params_before
    assert vanilla[rows[2].name].decomposed and not back[rows[2].name].decomposed  # vanilla itself is unchanged


def test_the_search_is_read_at_the_thread_count_it_was_recorded_at(tmp_path):
    import json

    import pytest

    from tools.record.search import SEARCH_FILE, recorded_search_plan, search_file

    assert search_file(1) == SEARCH_FILE and search_file(2) == "search_robust_resnet50_cpu_2threads.json"
    model = get_model("resnet20").eval()
    vanilla = make_plan(model, Ratio(2), Layers(exclude=["conv1"]))
    two, first = Plan.from_dict(vanilla.to_dict()), vanilla.decomposed_layers[0].name
    two[first].keep("ORG: searched at 2 threads")
    (tmp_path / search_file(2)).write_text(json.dumps({"t1": rank_table(vanilla, two).to_dict(orient="records")}))
    assert vanilla[first].decomposed and not recorded_search_plan(tmp_path, model, vanilla, 2)[first].decomposed
    with pytest.raises(ValueError, match="--threads 1"):
        recorded_search_plan(tmp_path, model, vanilla, 1)
