"""The speed story's developer tools: its README / docs block and its recording (``python -m tools.record
speed-story``), which runs the reproduction's own techniques stage at each thread count."""

from __future__ import annotations

import json
from pathlib import Path

from lrdlab.explore.speed_story import STORY_FILE
from lrdlab.measure.records import data_dir
from tools.readme import current_block
from tools.readme_blocks import STORY_BEGIN, STORY_END, speed_story_section

ROOT = Path(__file__).resolve().parents[2]
MACHINE = {"cpu": "Test CPU", "cpu_count": 2, "torch_version": "2.x", "omp_wait_policy": "default",
           "compute_mode": "default", "load_average": [0.2, 0.2, 0.2]}


def techniques(threads: int, vanilla_pct: float, original_s: float = 0.1) -> dict:
    """A techniques stage result with the original and a vanilla LRD row at ``vanilla_pct`` % speed-up."""
    row = {"method": "original", "flops_pct": 0.0, "infer_s": original_s, "infer_speedup_pct": 0.0,
           "infer_speedup_pct_ci_low": 0.0, "infer_speedup_pct_ci_high": 0.0, "infer_rounds": 3}
    lrd = {**row, "method": "vanilla LRD", "flops_pct": -50.0, "infer_s": original_s / (1 + vanilla_pct / 100),
           "infer_speedup_pct": vanilla_pct, "infer_speedup_pct_ci_low": vanilla_pct - 3,
           "infer_speedup_pct_ci_high": vanilla_pct + 3}
    return {"input_shape": [8, 3, 112, 112], "rows": [row, lrd], "compute": {"threads": threads, "mode": "default"}}


def test_the_block_names_machine_records_and_the_command(tmp_path):
    (tmp_path / STORY_FILE).write_text(json.dumps({
        "command": "python -m tools.record speed-story --threads 1,2", "search": "robust search", "machine": MACHINE,
        "load_average_before": [0.3, 0, 0], "load_average_after": [0.5, 0, 0],
        "runs": [techniques(1, 40.0, 0.3), techniques(2, 10.0, 0.2)]}))
    section = speed_story_section(tmp_path)
    assert "Test CPU" in section and f"(data/{STORY_FILE})" in section and "(docs/speed.md)" in section
    assert section.startswith(STORY_BEGIN) and section.endswith(STORY_END)
    assert "`python -m tools.record speed-story --threads 1,2`" in section and "lrdlab record" not in section
    assert "| eager, 2 threads, batch 8, 112 px | 200 | +10.0% [+7.0, +13.0]" in section
    assert "(../data/" in speed_story_section(tmp_path, links="../")
    assert "No speed recording yet" in speed_story_section(tmp_path / "nothing-here")


def test_docs_speed_is_the_generated_block():
    doc = (ROOT / "docs" / "speed.md").read_text()
    assert current_block(doc, STORY_BEGIN, STORY_END) == speed_story_section(ROOT / "data", links="../"), \
        "docs/speed.md is stale: make readme"


def test_the_recording_runs_the_reproductions_stage_at_each_thread_count(tmp_path, monkeypatch):
    import torch

    from lrdlab.paper import reproduce
    from tools.record.speed_story import record_speed_story

    seen = []

    def stage(settings, results):  # the real stage times ResNet-50; here: which settings and ranks it gets
        seen.append((settings.quick, settings.bench_shape, torch.get_num_threads(),
                     results["optimize"]["resnet50"]["plan"]["model"]))
        return techniques(torch.get_num_threads(), 10.0)

    monkeypatch.setattr(reproduce, "stage_techniques", stage)
    before = torch.get_num_threads()
    path = record_speed_story(tmp_path, threads=(1,), data=data_dir())
    assert seen == [(True, (8, 3, 112, 112), 1, "resnet50")] and torch.get_num_threads() == before
    text = path.read_text()
    assert text.endswith("}\n") and text.startswith('{\n "what"')  # the one format: indent 1, a trailing newline
    recorded = json.loads(text)
    assert recorded["runs"][0]["compute"]["threads"] == 1 and "compute_mode" in recorded["machine"]
    assert recorded["command"] == "python -m tools.record speed-story --threads 1"
    assert "| eager, 1 thread, batch 8, 112 px |" in speed_story_section(tmp_path)
