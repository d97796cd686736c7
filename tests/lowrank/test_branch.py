"""Branched Tucker (P1 §5): the core as a grouped conv holding the full core's N diagonal blocks."""

import pytest
import torch
from torch import nn

from lrdlab import Layers, Ratio, count_flops, count_params, decompose, make_plan
from lrdlab.lowrank.decompose import load_decomposed, save_decomposed
from lrdlab.lowrank.factorize import block_diagonal_core, reconstruct_tucker2, tucker2_factors
from lrdlab.lowrank.layers import decompose_layer
from lrdlab.lowrank.methods import Tucker2Options
from lrdlab.lowrank.ranks import tucker2_params, tucker2_rank_for_ratio
from lrdlab.paper.techniques import block_diagonal_error
from lrdlab.zoo.cifar_models import bottleneck_net

torch.set_num_threads(1)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def conv(C=16, S=24, k=3, stride=1, bias=True, seed=0) -> nn.Conv2d:
    torch.manual_seed(seed)
    return nn.Conv2d(C, S, k, stride=stride, padding=k // 2, bias=bias).double()


def dense_equivalent(layer) -> torch.Tensor:
    """The dense [S, C, k, k] weight a (branched) Tucker layer computes."""
    core = layer.core.weight
    n = layer.core.groups
    r2, b1 = core.shape[:2]
    full = torch.zeros(r2, b1 * n, *core.shape[2:], dtype=core.dtype)
    b2 = r2 // n
    for g in range(n):
        full[g * b2:(g + 1) * b2, g * b1:(g + 1) * b1] = core[g * b2:(g + 1) * b2]
    return reconstruct_tucker2(layer.first.weight[:, :, 0, 0].T, full, layer.last.weight[:, :, 0, 0])


@pytest.mark.parametrize("tucker", ["hosvd", "hooi"])
def test_one_branch_is_plain_tucker2_exactly(tucker):
    m = conv()
    a = decompose_layer(m, "tucker2", (8, 12), options=Tucker2Options(init=tucker), branches=1)
    u_in, core, u_out = tucker2_factors(m.weight, 8, 12, method=tucker)
    assert a.core.groups == 1 and a.branches == 1
    assert torch.equal(a.first.weight[:, :, 0, 0], u_in.T)
    assert torch.equal(a.core.weight, core)
    assert torch.equal(a.last.weight[:, :, 0, 0], u_out)
    default = decompose_layer(m, "tucker2", (8, 12), options=Tucker2Options(init=tucker))
    x = torch.randn(2, 16, 9, 9, dtype=torch.float64)
    assert torch.equal(a(x), default(x))


def test_one_branch_plan_equals_the_default_plan():
    model = bottleneck_net().eval()
    p1, p0 = make_plan(model, Ratio(2, branches=1)), make_plan(model, Ratio(2))
    assert [(r.name, r.method, r.ranks, r.params_after) for r in p1.layers] == \
           [(r.name, r.method, r.ranks, r.params_after) for r in p0.layers]
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(decompose(model, p1)(x), decompose(model, p0)(x))


@pytest.mark.parametrize("n", [1, 2, 3, 4, 6])
def test_grouped_core_is_the_block_diagonal_of_the_full_core(n):
    """The grouped conv computes exactly the dense Tucker layer whose core has its off-diagonal blocks zeroed."""
    m = conv(C=18, S=24, stride=2)
    layer = decompose_layer(m, "tucker2", (12, 12), branches=n)
    assert layer.core.groups == n and layer.core.weight.shape == (12, 12 // n, 3, 3)
    ref = nn.Conv2d(18, 24, 3, stride=2, padding=1).double()
    with torch.no_grad():
        ref.weight.copy_(dense_equivalent(layer))
        ref.bias.copy_(m.bias)
    x = torch.randn(2, 18, 11, 11, dtype=torch.float64)
    assert rel_err(layer(x), ref(x)) < 1e-12


def test_block_diagonal_core_picks_the_diagonal_blocks():
    core = torch.arange(6 * 4 * 1 * 1, dtype=torch.float64).reshape(6, 4, 1, 1)
    blocks = block_diagonal_core(core, 2)
    assert torch.equal(blocks[:3], core[:3, :2]) and torch.equal(blocks[3:], core[3:, 2:])
    assert torch.equal(block_diagonal_core(core, 1), core)
    with pytest.raises(ValueError, match="multiples"):
        block_diagonal_core(core, 4)


@pytest.mark.parametrize("n", [1, 2, 4, 8])
@pytest.mark.parametrize("C,S,k,r1,r2,stride,bias", [(64, 64, 3, 32, 32, 1, False), (32, 48, 5, 16, 24, 2, True)])
def test_params_and_flops_match_closed_forms(n, C, S, k, r1, r2, stride, bias):
    if r1 % n or r2 % n:
        pytest.skip("ranks not multiples of N")
    layer = decompose_layer(nn.Conv2d(C, S, k, stride=stride, padding=k // 2, bias=bias), "tucker2", (r1, r2),
                            branches=n)
    assert count_params(layer) == C * r1 + k * k * r1 * r2 // n + r2 * S + (S if bias else 0)
    assert count_params(layer) == tucker2_params(C, S, k, r1, r2, n) + (S if bias else 0)
    H = 16
    Ho = (H + 2 * (k // 2) - k) // stride + 1
    expected = 2 * (H * H * C * r1 + Ho * Ho * k * k * r1 * r2 // n + Ho * Ho * r2 * S)
    assert count_flops(layer, (1, C, H, H)) == expected


def test_core_params_fall_n_fold_at_the_same_rank():
    m = nn.Conv2d(64, 64, 3, padding=1, bias=False)
    cores = {n: decompose_layer(m, "tucker2", (32, 32), branches=n).core.weight.numel() for n in (1, 2, 4, 8)}
    assert cores == {1: 9 * 32 * 32, 2: 9 * 32 * 32 // 2, 4: 9 * 32 * 32 // 4, 8: 9 * 32 * 32 // 8}


def test_the_error_of_dropping_off_diagonal_blocks():
    """HOSVD factors are orthonormal, so ‖W − W_N‖² = ‖W − W_1‖² + ‖off-diagonal blocks‖²; it grows with N."""
    torch.manual_seed(5)
    weight = torch.randn(64, 64, 3, 3, dtype=torch.float64)
    u_in, core, u_out = tucker2_factors(weight, 32, 32)
    base = (weight - reconstruct_tucker2(u_in, core, u_out)).norm() ** 2
    errors = []
    for n in (1, 2, 4, 8):
        m = nn.Conv2d(64, 64, 3, padding=1, bias=False).double()
        with torch.no_grad():
            m.weight.copy_(weight)
        layer = decompose_layer(m, "tucker2", (32, 32), Tucker2Options(init="hosvd"), branches=n)
        err2 = (weight - dense_equivalent(layer)).norm() ** 2
        kept = block_diagonal_core(core, n).norm() ** 2
        assert torch.isclose(err2, base + core.norm() ** 2 - kept, rtol=1e-10)
        errors.append((err2 / weight.norm() ** 2).sqrt().item())
        assert errors[-1] == pytest.approx(block_diagonal_error(m, (32, 32), n)["weight_rel_error"], rel=1e-9)
    assert errors == sorted(errors) and errors[0] < errors[-1]


@pytest.mark.parametrize("n", [2, 4])
def test_plan_ranks_are_multiples_of_n_and_counts_agree(n):
    model = bottleneck_net().eval()
    plan = make_plan(model, Ratio(2, branches=n), Layers(exclude=["conv1"]))
    tucker = [r for r in plan.layers if r.method == "tucker2"]
    assert tucker and all(r.branches == n and r.ranks[0] % n == 0 and r.ranks[1] % n == 0 for r in tucker)
    assert all(r.branches == 1 for r in plan.layers if r.method == "svd")
    out = decompose(model, plan)
    for r in tucker:
        layer = out.get_submodule(r.name)
        assert layer.core.groups == n and count_params(layer) == r.params_after
    assert count_params(out) == count_params(model) - sum(r.params_before - r.params_after for r in plan.layers)


def test_branched_ratio_formula_gives_larger_ranks():
    r1 = tucker2_rank_for_ratio(64, 64, 3, 2)
    r4 = tucker2_rank_for_ratio(64, 64, 3, 2, branches=4)
    assert r4[0] > r1[0]
    assert tucker2_params(64, 64, 3, *r4, 4) <= 64 * 64 * 9 / 2 < tucker2_params(64, 64, 3, r4[0] + 1, r4[1] + 1, 4)


def test_branched_model_saves_and_reloads(tmp_path):
    model = bottleneck_net().eval()
    plan = make_plan(model, Ratio(2, branches=4), Layers(exclude=["conv1"]))
    out = decompose(model, plan)
    save_decomposed(out, plan, tmp_path)
    back = load_decomposed(tmp_path, bottleneck_net()).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(back(x), out(x))
    assert back.layer2[0].conv2.core.groups == 4


def test_impossible_branch_counts_raise():
    m = conv()
    with pytest.raises(ValueError, match="multiples"):
        decompose_layer(m, "tucker2", (8, 12), branches=5)
    with pytest.raises(ValueError, match="branches"):
        make_plan(bottleneck_net(), Ratio(2, branches=0))


# --- the recorded tables' building blocks ------------------------------------------------------------------


def test_with_branches_keeps_ranks_and_divides_core_params():
    from lrdlab.paper.techniques import with_branches

    model = bottleneck_net().eval()
    plan = make_plan(model, Ratio(2, granularity=8), Layers(exclude=["conv1"]))
    for n in (1, 2, 4, 8):
        p = with_branches(plan, n)
        assert [r.ranks for r in p.layers] == [r.ranks for r in plan.layers]
        out = decompose(model, p)
        for r in p.layers:
            if r.method == "tucker2":
                assert r.branches == n and count_params(out.get_submodule(r.name)) == r.params_after
    with pytest.raises(ValueError, match="multiples"):
        with_branches(make_plan(model, Ratio(2), Layers(exclude=["conv1"])), 8)


def test_branch_structures_rows():
    from lrdlab.paper.techniques import branch_structures

    model = bottleneck_net().eval()
    plan = make_plan(model, Ratio(2, granularity=8), Layers(exclude=["conv1", "*.downsample.*"]))
    models, rows = branch_structures(model, plan, (1, 2, 4, 8), (1, 3, 16, 16))
    assert [r["branches"] for r in rows] == [1, 2, 4, 8]
    assert [r["params"] for r in rows] == sorted((r["params"] for r in rows), reverse=True)
    assert [r["flops"] for r in rows] == sorted((r["flops"] for r in rows), reverse=True)
    assert rows[0]["core_energy_dropped"] == 0 and rows[-1]["core_energy_dropped"] > 0
    errors = [r["weight_rel_error"] for r in rows]
    assert errors == sorted(errors)
    assert models[4].layer3[0].conv2.core.groups == 4
