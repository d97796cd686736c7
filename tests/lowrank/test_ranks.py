"""Rank maths against the paper's numbers and closed forms."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lrdlab.lowrank import ranks

# P1 Table 1, "2x Ranks" column: (C, S, k) -> rank
PAPER_TABLE_1 = [
    ("layer1.0.conv1", 64, 64, 1, 16),
    ("layer1.0.conv2", 64, 64, 3, 38),
    ("layer1.0.conv3", 64, 256, 1, 25),
    ("layer4.2.conv1", 2048, 512, 1, 204),
    ("layer4.2.conv2", 512, 512, 3, 309),
    ("layer4.2.conv3", 512, 2048, 1, 204),
    ("fc", 2048, 1000, 1, 335),
]


@pytest.mark.parametrize("name,C,S,k,expected", PAPER_TABLE_1)
def test_paper_table1_ranks_at_2x(name, C, S, k, expected):
    if k == 1:
        assert ranks.svd_rank_for_ratio(C, S, 2) == expected
    else:
        assert ranks.tucker2_rank_for_ratio(C, S, k, 2) == (expected, expected)


def test_paper_example_512_conv_becomes_309():
    r1, r2 = ranks.tucker2_rank_for_ratio(512, 512, 3, 2)
    assert (r1, r2) == (309, 309)
    # and 309 is the largest rank within the 2x budget
    budget = 512 * 512 * 9 / 2
    assert ranks.tucker2_params(512, 512, 3, 309, 309) <= budget < ranks.tucker2_params(512, 512, 3, 310, 310)


@given(C=st.integers(1, 600), S=st.integers(1, 600), k=st.sampled_from([1, 3, 5]),
       ratio=st.floats(1.01, 20))
def test_ratio_ranks_are_the_largest_within_budget(C, S, k, ratio):
    svd_budget = C * S / ratio
    r = ranks.svd_rank_for_ratio(C, S, ratio)
    assert ranks.svd_params(C, S, r) <= svd_budget + 1e-6
    assert ranks.svd_params(C, S, r + 1) > svd_budget - 1e-6
    budget = C * S * k * k / ratio
    r1, _ = ranks.tucker2_rank_for_ratio(C, S, k, ratio)
    assert ranks.tucker2_params(C, S, k, r1, r1) <= budget + 1e-6
    assert ranks.tucker2_params(C, S, k, r1 + 1, r1 + 1) > budget - 1e-6


def test_branched_ratio_rank_uses_the_cheaper_core():
    plain = ranks.tucker2_rank_for_ratio(512, 512, 3, 2)[0]
    branched = ranks.tucker2_rank_for_ratio(512, 512, 3, 2, branches=4)[0]
    assert branched > plain
    assert ranks.tucker2_params(512, 512, 3, branched, branched, 4) <= 512 * 512 * 9 / 2


@pytest.mark.parametrize("bad", [1, 0.5, 0, -2, float("nan"), float("inf")])
def test_bad_ratio_raises(bad):
    with pytest.raises(ValueError, match="ratio"):
        ranks.svd_rank_for_ratio(64, 64, bad)


@pytest.mark.parametrize(
    "rank,g,mode,max_rank,expected",
    [(309, 8, "down", None, 304), (309, 8, "up", None, 312), (309, 8, "nearest", None, 312),
     (309, 64, "nearest", None, 320), (5, 8, "down", None, 8), (309, 64, "up", 300, 256),
     (38, 1, "down", None, 38), (335, 16, "down", 510, 320)],
)
def test_round_rank(rank, g, mode, max_rank, expected):
    assert ranks.round_rank(rank, g, mode, max_rank) == expected


def test_round_rank_refuses_when_no_multiple_saves():
    with pytest.raises(ValueError, match="granularity 64"):
        ranks.round_rank(16, 64, "down", max_rank=31)


def test_max_saving_rank_is_the_breakeven():
    # SVD of 64x64 saves while R(128) < 4096, i.e. R <= 31
    assert ranks.max_saving_rank(lambda r: ranks.svd_params(64, 64, r), 64 * 64, 64) == 31


def test_energy_rank():
    s = np.array([3.0, 2.0, 1.0])  # energies 9, 4, 1 of 14
    assert ranks.energy_rank(s, 9 / 14) == 1
    assert ranks.energy_rank(s, 0.7) == 2
    assert ranks.energy_rank(s, 1.0) == 3
    with pytest.raises(ValueError):
        ranks.energy_rank(s, 0)


def test_vbmf_recovers_a_planted_rank():
    rng = np.random.default_rng(0)
    L, M, true_rank = 60, 120, 7
    signal = rng.normal(size=(L, true_rank)) @ rng.normal(size=(true_rank, M))
    noisy = signal + 0.1 * math.sqrt(true_rank) * rng.normal(size=(L, M))
    assert ranks.vbmf_rank(noisy) == true_rank
    assert ranks.vbmf_rank(noisy.T) == true_rank
