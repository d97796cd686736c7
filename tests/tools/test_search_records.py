"""The recorded search's T1 table turns back into the plan it came from (the compile and breakdown records use it)."""

from __future__ import annotations

from lrdlab import get_model, make_plan
from lrdlab.lowrank.plan import Plan
from lrdlab.measure.rank_search import rank_table
from tools.record.search import plan_from_t1


def test_plan_from_t1_round_trips_the_rank_table_with_params_that_follow_the_ranks():
    model = get_model("resnet20").eval()
    vanilla = make_plan(model, ratio=2, exclude=["conv1"])
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
