"""One story about speed: the report's speed section and the README's table read the same stage's rows, and the
report says when its own run disagrees with the recording and which setting differs (the README's block and the
recording itself: tests/tools/test_record_speed_story.py)."""

from __future__ import annotations

import json

import pandas as pd

from lrdlab.explore.plots import plot_thread_scaling
from lrdlab.explore.speed_story import (
    STORY_FILE,
    SpeedConfig,
    differences,
    recorded_story,
    render_story,
    story_rows,
    story_table,
    threads_sentence,
)
from lrdlab.paper.report import Report

MACHINE = {"cpu": "Test CPU", "cpu_count": 2, "torch_version": "2.x", "omp_wait_policy": "default",
           "compute_mode": "default", "load_average": [0.2, 0.2, 0.2]}


def techniques(threads: int, speedups: dict[str, float], original_s: float = 0.1) -> dict:
    """A techniques stage result (the reproduction's T2 measurement) with the given inference speed-ups (%)."""
    rows = [{"method": "original", "flops_pct": 0.0, "infer_s": original_s, "infer_speedup_pct": 0.0,
             "infer_speedup_pct_ci_low": 0.0, "infer_speedup_pct_ci_high": 0.0, "infer_rounds": 3}]
    for name, pct in speedups.items():
        rows.append({"method": name, "flops_pct": -50.0, "infer_s": original_s / (1 + pct / 100),
                     "infer_speedup_pct": pct, "infer_speedup_pct_ci_low": pct - 3,
                     "infer_speedup_pct_ci_high": pct + 3, "infer_rounds": 3})
    return {"input_shape": [8, 3, 112, 112], "rows": rows, "compute": {"threads": threads, "mode": "default"}}


def story(tmp_path) -> dict:
    data = {"command": "python -m tools.record speed-story --threads 1,2", "search": "robust search",
            "machine": MACHINE,
            "load_average_before": [0.3, 0, 0], "load_average_after": [0.5, 0, 0],
            "runs": [techniques(1, {"vanilla LRD": 40.0, "optimized ranks": 50.0, "layer merging": 70.0}, 0.3),
                     techniques(2, {"vanilla LRD": 10.0, "optimized ranks": 12.0, "layer merging": 30.0}, 0.2)]}
    (tmp_path / STORY_FILE).write_text(json.dumps(data))
    return data


def test_rows_name_their_configuration_and_realised_fraction():
    rows = story_rows(techniques(1, {"vanilla LRD": 50.0}))
    assert rows[0].config == SpeedConfig(1, "eager", 8, 112)
    assert str(rows[0].config) == "eager, 1 thread, batch 8, 112 px"
    assert rows[0].technique == "vanilla 2x" and abs(rows[0].realised - 0.5) < 1e-9  # ideal 2x, measured 1.5x


def test_the_readme_table_has_one_row_per_configuration(tmp_path):
    assert recorded_story(tmp_path) is None  # not recorded
    story(tmp_path)
    recorded = recorded_story(tmp_path)
    assert recorded is not None and recorded.search == "robust search" and recorded.machine == MACHINE
    rows = recorded.rows
    table = story_table(rows).splitlines()
    assert str(recorded) == f"{story_table(rows)}\n\n{threads_sentence(rows)}"  # what a notebook shows
    assert table[0] == "| configuration | original ms | vanilla 2x | searched ranks | merging |"
    assert table[2].startswith("| eager, 1 thread, batch 8, 112 px | 300 | +40.0% [+37.0, +43.0]; 0.40 |")
    assert table[3].startswith("| eager, 2 threads, batch 8, 112 px | 200 |") and len(table) == 4
    assert "From 1 to 2 threads the original goes from 300 to 200 ms" in threads_sentence(rows)
    loaded = [*story_rows(techniques(1, {"vanilla LRD": 40.0}, 0.3)),
              *story_rows(techniques(2, {"vanilla LRD": 1.0}, 0.9))]
    assert "slower with more threads" in threads_sentence(loaded) and "not thread scaling" in threads_sentence(loaded)


def test_a_disagreement_names_the_settings_that_differ(tmp_path):
    story(tmp_path)
    recorded = recorded_story(tmp_path).rows
    local = story_rows(techniques(1, {"vanilla LRD": 41.0, "optimized ranks": 10.0}))
    here = {**MACHINE, "omp_wait_policy": "PASSIVE", "compute_mode": "shared"}
    notes = differences(local, recorded, here, MACHINE, "Algorithm 1", "robust search")
    assert len(notes) == 1 and notes[0].startswith("searched ranks at eager, 1 thread")  # vanilla agrees
    assert "OpenMP wait policy PASSIVE here, default recorded" in notes[0] and "compute mode shared" in notes[0]
    assert "ranks searched by Algorithm 1 here, robust search recorded" in notes[0]
    same = differences(story_rows(techniques(2, {"vanilla LRD": -20.0})), recorded, MACHINE, MACHINE, "a", "a")
    assert "no setting differs" in same[0]
    other = differences(story_rows(techniques(16, {"vanilla LRD": 5.0})), recorded, MACHINE, MACHINE, "a", "a")
    assert "no recorded row at eager, 16 threads" in other[0]


def test_the_report_puts_this_run_beside_the_recording(tmp_path):
    story(tmp_path)
    report = Report(tmp_path / "report", "test")
    render_story(report, {"techniques": techniques(2, {"vanilla LRD": 11.0, "layer merging": -5.0})}, tmp_path)
    md = report.markdown()
    assert "this run beside the README's recording" in md and "| merging | eager, 2 threads" in md
    assert "| NO |" in md and "merging at eager, 2 threads, batch 8, 112 px: -5.0% here against +30.0% recorded" in md
    assert "F12_threads.png" in md


def test_f12_draws_every_technique(tmp_path):
    story(tmp_path)
    df = recorded_story(tmp_path).table()
    assert isinstance(df, pd.DataFrame) and set(df["threads"]) == {1, 2}
    fig = plot_thread_scaling(df)
    assert len(fig.axes) == 3 and len(fig.axes[2].lines) == 3
