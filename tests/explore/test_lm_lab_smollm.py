"""Notebook 09's lab: the texts are the quality record's, the live check and the spectra measure what they say, and
the recorded tables are read as recorded. Run on the shipped byte model (tiny) with a byte tokenizer."""

import json

import numpy as np
import pytest
import torch

import lrdlab
from lrdlab.explore import lm_lab
from tests.text.byte_tokenizer import Bytes


@pytest.fixture(scope="module")
def byte_model():
    return lrdlab.pretrained("llama_pydoc")


def test_text_windows_from_a_prefix_are_the_windows_of_the_whole_text():
    tok = Bytes()
    for which in lm_lab.TEXTS:
        full = lm_lab.text_windows(tok, which)  # the whole text tokenized, as the quality record scored it
        assert torch.equal(lm_lab.text_windows(tok, which, 3), full[:3])  # from a prefix of the text
    with pytest.raises(ValueError, match="one of"):
        lm_lab.text_windows(tok, "test")


def test_docstring_windows_are_the_docstrings_text():
    from lrdlab.zoo.text import stdlib_docstrings

    windows = lm_lab.text_windows(Bytes(), "docstrings", 3, seq_len=64)
    assert windows.shape == (3, 64)
    assert bytes(windows.flatten().tolist()) == stdlib_docstrings().encode("utf-8")[:192]


def test_live_check_scores_dense_and_each_decomposition_on_the_same_windows(byte_model):
    check = lm_lab.LiveCheck(ratios=(2.0,), calibration=2, evaluation=4, seq_len=64, blocks=(1,), tokens=4,
                             history=2)
    result = lm_lab.live_check(byte_model, Bytes(), check)
    rows = result.rows.set_index("name")
    assert list(rows.index) == ["dense", "weights only 2x", "SVD-LLM 2x"]
    assert (rows.loc[["weights only 2x", "SVD-LLM 2x"], "layers decomposed"] == 7).all()  # block 1's 7 Linears
    assert (rows.loc[["weights only 2x", "SVD-LLM 2x"], "params"] < rows.loc["dense", "params"]).all()
    assert result.evaluation_tokens == 4 * 64 and result.calibration_tokens == 2 * 256
    for name, nll in result.nll.items():
        assert nll.shape == (4,) and rows.loc[name, "perplexity"] == pytest.approx(float(nll.mean().exp()))
        assert len(result.generations[name]) == 1
    assert result.order("SVD-LLM 2x", "weights only 2x").sequences == 4
    assert (rows["idle_history"] > 1).all()  # the second text, scored for every model
    assert rows.loc["weights only 2x", "perplexity"] != rows.loc["SVD-LLM 2x", "perplexity"]


def test_live_check_refuses_what_it_cannot_run():
    with pytest.raises(ValueError, match="unknown variants"):
        lm_lab.LiveCheck(variants=("GPTQ",))
    with pytest.raises(ValueError, match="evaluation >= 2"):
        lm_lab.LiveCheck(evaluation=1)


def test_spectra_by_type_keeps_the_energy_of_each_spectrum_at_the_plan_rank(byte_model):
    calib = lm_lab.batches(lm_lab.text_windows(Bytes(), "train", 4), 2)
    spectra = lm_lab.spectra_by_type(byte_model, calib, blocks=(0, 2), ratio=2.0)
    table = spectra.table
    assert sorted(set(table["block"])) == [0, 2] and set(table["type"]) == set(lm_lab.LAYER_TYPES)
    plan = lrdlab.make_plan(byte_model, lrdlab.Ratio(2))
    row = table[(table["block"] == 2) & (table["type"] == "down_proj")].iloc[0]
    name = "model.layers.2.mlp.down_proj"
    assert row["rank"] == plan[name].ranks[0]
    s = torch.linalg.svdvals(byte_model.get_submodule(name).weight.detach().double())
    assert row["weight_energy"] == pytest.approx(float((s[: row["rank"]] ** 2).sum() / (s ** 2).sum()), rel=1e-5)
    data = spectra.data[name]
    assert row["data_energy"] == pytest.approx(float((data[: row["rank"]] ** 2).sum() / (data ** 2).sum()))
    assert not np.allclose(data / data[0], spectra.weights[name] / spectra.weights[name][0])  # whitened differs
    assert spectra.tokens == 4 * 256
    fig = lm_lab.plot_type_spectra(spectra, 2)
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 2 * len(lm_lab.LAYER_TYPES)
    with pytest.raises(ValueError, match="block 5 was not measured"):
        lm_lab.plot_type_spectra(spectra, 5)


def _write(path, record):
    path.write_text(json.dumps(record))
    return path


def test_recorded_quality_keeps_each_variants_latest_row_and_the_unfinished_runs(tmp_path):
    rec = {"runs": [{"command": "first", "rows": [{"variant": "svd_llm", "ratio": 1.25, "pydoc_validation": 40.0}]},
                    {"command": "second", "rows": [{"variant": "svd_llm", "ratio": 1.25, "pydoc_validation": 38.0},
                                                   {"variant": "svd_llm", "ratio": 2.0, "pydoc_validation": 211.0}]}],
           "unfinished_runs": {"d": {"command": "third", "rows": [{"variant": "dense", "ratio": 1.0,
                                                                   "pydoc_validation": 11.6}]}}}
    df = lm_lab.recorded_quality(_write(tmp_path / "q.json", rec))
    assert list(zip(df["variant"], df["ratio"], df["pydoc_validation"], df["command"])) == [
        ("dense", 1.0, 11.6, "third"), ("svd_llm", 1.25, 38.0, "second"), ("svd_llm", 2.0, 211.0, "second")]
    with pytest.raises(ValueError, match="no rows"):
        lm_lab.recorded_quality(_write(tmp_path / "empty.json", {"runs": []}))


def test_recorded_loss_weighted_pairs_each_ratio_with_svd_llm_at_the_asked_calibration(tmp_path):
    def row(windows, ratio, variant, pydoc, idle):
        return {"calibration_windows": windows, "ratio": ratio, "variant": variant, "pydoc_validation": pydoc,
                "idle_history": idle}

    rec = {"runs": [], "loss_weighted_summary": {"rows": [
        row(16, 2.0, "plain/uniform", 200.0, 1000.0), row(16, 2.0, "diagonal/loss", 50.0, 300.0),
        row(16, 2.0, "diagonal/uniform", 100.0, 800.0), row(64, 2.0, "diagonal/loss", 40.0, 250.0),
        row(64, 2.0, "plain/uniform", 160.0, 1100.0)]}}
    path = _write(tmp_path / "q.json", rec)
    df = lm_lab.recorded_loss_weighted(path)
    assert list(df["method"]) == ["SVD-LLM", lm_lab.LOSS_WEIGHTED]
    assert df["pydoc_validation_vs_svd_llm"].tolist() == pytest.approx([1.0, 0.25])
    assert df["idle_history_vs_svd_llm"].tolist() == pytest.approx([1.0, 0.3])
    assert lm_lab.recorded_loss_weighted(path, 64)["pydoc_validation_vs_svd_llm"].tolist() == pytest.approx([1.0, 0.25])
    with pytest.raises(ValueError, match="calibration_windows"):
        lm_lab.recorded_loss_weighted(path, 8)


def test_recorded_distillation_calibration_is_each_runs_command():
    """The shipped distillation record: each run's calibration windows are those of its command's ``--calibration``
    (16 when the command has none), so starts are compared at the windows that calibrated them."""
    import re

    df = lm_lab.recorded_distillation()
    for command, calibration in zip(df["command"], df["calibration"]):
        flag = re.search(r"--calibration (\d+)", command)
        assert calibration == (int(flag.group(1)) if flag else 16), command


def test_recorded_loss_weighted_ratios_agree_with_the_recorded_ones():
    """The shipped record's own vs-SVD-LLM columns (rounded to 3 places) agree with the ratios computed here."""
    df = lm_lab.recorded_loss_weighted()
    stored = {(r["ratio"], r["variant"]): r for r in lm_lab.read_record(lm_lab.data_dir() / lm_lab.QUALITY_FILE)[
        "loss_weighted_summary"]["rows"] if r["calibration_windows"] == 16}
    lw = df[df["method"] == lm_lab.LOSS_WEIGHTED]
    assert set(lw["ratio"]) == {1.25, 1.5, 2.0}
    for _, r in lw.iterrows():
        assert r["pydoc_validation_vs_svd_llm"] == pytest.approx(stored[(r["ratio"], "diagonal/loss")][
            "pydoc_vs_svd_llm"], abs=2e-3)


def test_recorded_decode_names_each_setting_once(tmp_path, monkeypatch):
    def result(phase, batch, speedup, ideal):
        return {"phase": phase, "batch": batch, "dense_tokens_s": 10.0, "decomposed_tokens_s": 10.0 * speedup,
                "speedup": speedup, "ci_low": speedup - 0.1, "ci_high": speedup + 0.1, "bytes_ideal": ideal,
                "threads": 1, "load_average": [3.0, 2.0, 1.0], "compute": {"compute_mode": "default"}}

    _write(tmp_path / "lm_decode_smollm2_cpu.json", {
        "lm_head_decomposed": True, "bench": {"layout": "gemv"},
        "results": [result("prefill", 1, 1.5, 2.0), result("decode", 1, 1.3, 2.0)]})
    _write(tmp_path / "lm_decode_smollm2_cpu_tied_head.json", {"lm_head_decomposed": False,
                                                               "results": [result("decode", 1, 1.2, 1.65)]})
    _write(tmp_path / "lm_decode_llama100m_cpu.json", {"results": [result("decode", 1, 9.9, 2.0)]})  # not SmolLM2
    monkeypatch.setenv("LRDLAB_DATA", str(tmp_path))
    df = lm_lab.recorded_decode()
    assert list(df["setting"]) == ["prefill b1 · default", "decode b1 · default", "decode b1 · tied_head"]
    assert list(df["lm_head"]) == [True, True, False] and list(df["layout"]) == ["gemv", "gemv", "as built"]
    assert len(lm_lab.recorded_decode(["lm_decode_smollm2_cpu_tied_head.json", "absent.json"])) == 1


def test_repetition_counts_repeated_adjacent_pairs():
    assert lm_lab.repetition([1, 2, 1, 2, 1, 2]) == pytest.approx(1 - 2 / 5)
    assert lm_lab.repetition([1, 2, 3, 4]) == 0.0 and lm_lab.repetition([7, 7]) == 0.0


def test_recorded_calibration_is_read_from_the_data_folder_or_absent(tmp_path, monkeypatch):
    monkeypatch.setenv("LRDLAB_DATA", str(tmp_path))
    assert lm_lab.recorded_calibration() is None
    rows = [{"mode": "auto", "resolved_mode": "loss-weighted", "validation_perplexity": 30.0, "wall_s": 100.0,
             "peak_mb_above_loaded": 2048.0},
            {"mode": "one-shot", "validation_perplexity": 40.0, "wall_s": 50.0, "peak_mb_above_loaded": 512.0}]
    _write(tmp_path / "lm_calibration_smollm2_cpu.json", {"ratio": 1.25, "dense_perplexity": 10.0,
                                                         "evaluation": {"tokens": 1024}, "rows": rows})
    table = lm_lab.recorded_calibration()
    assert list(table["mode"]) == ["auto", "one-shot"]
    assert list(table["resolved_mode"]) == ["loss-weighted", "one-shot"]  # an old row without it: the mode asked
    assert list(table["vs_dense"]) == pytest.approx([3.0, 4.0])
    assert list(table["peak_gb_above_loaded"]) == pytest.approx([2.0, 0.5])
    assert set(table["validation_tokens"]) == {1024} and set(table["ratio"]) == {1.25}


def test_recorded_distillation_reads_each_distilled_run_against_dense(tmp_path):
    recipe = {"steps": 24, "lr": 1e-4, "schedule": "constant", "warmup": 0.0}
    curve = [{"step": 0, "perplexity": 20.0}, {"step": 8, "perplexity": 18.0}, {"step": 16, "perplexity": 17.0}]
    run = {"command": "python -m tools.record.lm_distill ...", "load_after": [2.0, 2.5, 3.0],
           "calibration_windows": 64, "calibration_docstring_windows": 8,
           "rows": [{"variant": "svd_llm", "ratio": 2.0, "pydoc_validation": 200.0, "idle_history": 900.0},
                    {"variant": "loss_weighted", "ratio": 1.25, "pydoc_validation": 19.0, "idle_history": 70.0},
                    {"variant": "loss_weighted_distilled", "ratio": 1.25, "distill": recipe, "train_s": 300.0,
                     "pydoc_validation": 15.0, "idle_history": 60.0, "curve": curve}]}
    later = {"calibration_windows": 64,  # another start (no docstrings) that no run scored; no curve
             "rows": [{**run["rows"][2], "distill": {**recipe, "steps": 48}, "curve": []}]}
    readmes = {**run, "calibration_readme_windows": 4,  # READMEs beside the docstrings: another start again
               "rows": [{**run["rows"][2], "distill": {**recipe, "steps": 96, "seed": 1,
                                                       "trainable": "all_but_embeddings"}}]}
    _write(tmp_path / "d.json", {"dense": {"pydoc_validation": 10.0, "idle_history": 30.0},
                                 "runs": [run, later, readmes]})
    df = lm_lab.recorded_distillation(tmp_path / "d.json")
    assert list(df["start"]) == [lm_lab.LOSS_WEIGHTED] * 3  # the undistilled starts are not distillations
    assert list(df["calibration_readmes"]) == [0, 0, 4]
    assert list(df["seed"]) == [0, 0, 1]  # runs recorded before the seed was a flag drew with seed 0
    assert list(df["trainable"]) == ["all", "all", "all_but_embeddings"]  # and trained every parameter
    assert df.iloc[2][["start_pydoc", "start_idle"]].isna().all()  # not the docstring-only run's start
    row = df.iloc[0]
    assert row["train_min"] == 5.0 and row["pydoc_x_dense"] == 1.5 and row["idle_x_dense"] == 2.0
    assert row["steps"] == 24 and row["load_after"] == 2.0 and row["teacher_samples"] == 0
    # the start's scores come from the run that scored it; the curve's last interval fell 1 in 8 steps
    assert (row["start_pydoc"], row["start_idle"], row["curve_slope"]) == (19.0, 70.0, -0.125)
    assert df.iloc[1][["start_pydoc", "start_idle", "curve_slope"]].isna().all()  # 64 windows without docstrings
    _write(tmp_path / "d.json", {"dense": {"pydoc_validation": 10.0, "idle_history": 30.0}, "runs": [run]})
    run["rows"][2].update(teacher_samples=96, sample_s=120.0)  # sampling the teacher counts in the minutes
    _write(tmp_path / "d.json", {"dense": {"pydoc_validation": 10.0, "idle_history": 30.0}, "runs": [run]})
    row = lm_lab.recorded_distillation(tmp_path / "d.json").iloc[0]
    assert row["teacher_samples"] == 96 and row["train_min"] == 7.0
    _write(tmp_path / "e.json", {"dense": {"pydoc_validation": 10.0, "idle_history": 30.0}, "runs": []})
    with pytest.raises(ValueError, match="no distilled rows"):
        lm_lab.recorded_distillation(tmp_path / "e.json")
    shipped = lm_lab.recorded_distillation()
    assert set(shipped["start"]) <= {"SVD-LLM", lm_lab.LOSS_WEIGHTED} and (shipped["pydoc_x_dense"] > 1).all()
