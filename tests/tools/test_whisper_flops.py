"""The Whisper encoder's FLOP bound at a per-layer Ratio (tools/record/whisper_flops.py, counted on meta)."""

import pytest

pytest.importorskip("transformers")
from tools.record.whisper_flops import measure  # noqa: E402


def test_whisper_tiny_encoder_cut_at_ratio_2_reaches_its_weight_share_bound_and_no_further():
    found = measure("tiny", [2.0])
    at_2 = found["Ratio(2)"]
    assert at_2["layers_decomposed"] == "26 of 26" and at_2["probe"].startswith("probed")
    assert at_2["flops_by_op"]["aten.bmm"] == found["flops_by_op"]["aten.bmm"]  # attention products untouched
    assert found["weight_free_share_percent"] > 30  # 1500 positions: QKᵀ and AV are over a third of the FLOPs
    assert at_2["bound_percent"] - 1 < at_2["flops_cut_percent"] <= at_2["bound_percent"] < 40
