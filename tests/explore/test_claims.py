"""Orderings the notebooks state are computed from their numbers: ranked only beyond the noise."""

import pytest

from lrdlab.explore import recorded
from lrdlab.explore.claims import accuracy_order, range_order


def test_accuracy_order_ranks_only_beyond_the_noise_of_the_test_split():
    assert accuracy_order(97.3, 97.7, 1000).verdict == "within noise"  # nb03's 4x against the original
    assert accuracy_order(95.5, 18.1, 1000).verdict == "higher"
    assert accuracy_order(90.0, 97.7, 1000).verdict == "lower"
    assert accuracy_order(97.3, 97.7, 100_000).verdict == "lower"  # the same gap on a large split is real
    with pytest.raises(ValueError, match="percent"):
        accuracy_order(0.97, 1.2, 0)


def test_range_order_needs_ranges_apart():
    none, regular, sequential = (189, 196), (206, 216), (218, 250)  # nb05's recorded ×2 throughputs (issue 35)
    assert range_order(regular, none).verdict == "higher" and "no overlap" in range_order(regular, none).why
    assert range_order(none, sequential).verdict == "lower"
    assert range_order((200, 220), (210, 230)).verdict == "within noise"
    assert "within noise" in range_order((200, 220), (210, 230)).text("a", "b")
    with pytest.raises(ValueError, match="minimum first"):
        range_order((2, 1), (0, 3))


def test_the_recorded_f11_table_contradicts_the_old_claim_of_nb03():
    """The sentence removed from nb03 ("past 3x calibration and one epoch no longer recover it") against its table:
    at 4x data+bn+ft is within noise of the original, which is why the text now reads the verdicts instead."""
    rows = recorded.read("accuracy_f11_mnist5k.json").rows
    rows = rows[(rows["model"] == "resnet20") & (rows["granularity"] == 1)]
    original = float(rows[rows["variant"] == "original"]["accuracy"].iloc[0])
    at4 = rows[(rows["ratio"] == 4.0) & (rows["variant"] == "data+bn+ft")]["accuracy"].iloc[0]
    assert accuracy_order(at4, original, 1000).verdict == "within noise"
