"""The transformer study's pieces on a 1-block ViT and random data (fast): tables, JSON, the report section."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lrdlab.explore.transformers_report import load_transformers_study, multiple_summary, render_transformers
from lrdlab.paper.report import Report
from lrdlab.zoo.cifar_models import vit_tiny
from tools.record import transformers_study as study


def tiny_setup():
    torch.manual_seed(0)
    # wide enough that every rank at 4x stays above make_plan's min_rank
    model = vit_tiny(num_classes=3, image_size=8, patch_size=4, num_layers=1, num_heads=2, hidden_dim=64, mlp_dim=128)
    x, y = torch.randn(24, 3, 8, 8), torch.randint(0, 3, (24,))
    loaders = SimpleNamespace(train=DataLoader(TensorDataset(x, y), batch_size=8),
                              test=DataLoader(TensorDataset(x, y), batch_size=12), num_classes=3, input_size=(3, 8, 8))
    return model.eval(), loaders


def test_accuracy_vs_ratio_shrinks_the_model_and_fine_tunes_where_asked():
    model, loaders = tiny_setup()
    df = study.accuracy_vs_ratio(model, loaders, [2, 4], finetune_ratios=[2])
    assert list(df["ratio"]) == [1.0, 2, 4]
    assert df["params"].iloc[0] > df["params"].iloc[1] > df["params"].iloc[2]
    assert df["accuracy_finetuned"].notna().tolist() == [False, True, False]
    assert not df["calibrated"].any()


def test_gemm_times_and_their_summary():
    gemm = study.gemm_rank_times([(16, 32)], [7, 8, 9, 10, 16], tokens=64, rounds=1, repeats=1)
    assert len(gemm) == 5 and (gemm["ms"] > 0).all()
    summary = multiple_summary(gemm, multiples=(8, 16))
    assert set(summary["multiple"]) == {8, 16}
    assert summary.set_index("multiple").loc[8, "ranks_on"] == 2


def test_multiple_summary_finds_a_planted_gain_against_the_rank_line_and_not_noise():
    rng = np.random.default_rng(0)
    ranks = np.arange(40, 73)
    line = 0.2 + 0.01 * ranks  # a fixed cost + time ∝ rank: µs per rank falls with rank by itself
    noise = 1 + 0.02 * rng.standard_normal(ranks.size)
    cheap = np.where(ranks % 16 == 0, 0.8, 1.0)  # multiples of 16 run 20% under the line
    planted = pd.DataFrame({"in": 192, "out": 192, "rank": ranks, "ms": line * noise * cheap})
    s = multiple_summary(planted, multiples=(16,)).iloc[0]
    assert s["verdict"] == "cheaper" and s["on_vs_fit_pct"] == pytest.approx(-20, abs=4)
    flat = planted.assign(ms=line * noise)
    s = multiple_summary(flat, multiples=(16, 64)).set_index("multiple")
    assert (s["verdict"] == "within noise").all()  # µs/rank would call rank 64 ~9% cheaper: the fixed cost


def test_whole_study_writes_json_that_the_report_renders(tmp_path):
    model, loaders = tiny_setup()
    out = tmp_path / "tfm.json"
    study.run_transformers_study(model, loaders, ratios=[2], finetune_ratios=[], freeze_epochs=1, period=1,
                                 granularities=[1, 4], gemm_window=[7, 8], batch=4, rounds=1, out=out,
                                 model_info={"source": "test"})
    res = load_transformers_study(out)
    tuned = res.accuracy.set_index("ratio")["accuracy_finetuned"]
    assert tuned[2] == res.freezing_history.query("mode == 'none' and epoch == 1")["accuracy"].iloc[0]
    assert isinstance(res.accuracy, pd.DataFrame) and set(res.freezing_history["mode"]) == {
        "none", "regular", "sequential"}
    assert list(res.gemm_granularity["variant"]) == ["original", "g=1", "g=4"]
    assert res.machine["cpu"] in str(res) and "<table" in res._repr_html_()  # what a notebook shows
    report = Report(tmp_path / "report", "t")
    render_transformers(report, out)
    text = report.markdown()
    assert "ViT-tiny" in text and "freezing mode" in text and (tmp_path / "report" / "figures").exists()
