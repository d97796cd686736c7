"""The speed numbers of docs/ agree with the data/ files they quote (this test fails when they do not)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from tools.readme import current_block, rewrite, sections
from tools.readme_blocks import SPEED_BEGIN, SPEED_END, between_runs, speed_section

ROOT = Path(__file__).resolve().parents[2]
SPEED = (ROOT / "docs" / "speed.md").read_text()
REPRODUCTION = (ROOT / "docs" / "reproduction.md").read_text()
DATA = ROOT / "data"


def test_speed_section_is_the_one_generated_from_data():
    assert current_block(SPEED, SPEED_BEGIN, SPEED_END) == speed_section(DATA), "run `make readme`"


def _t1() -> dict[str, dict[str, str]]:
    with open(DATA / "optimize_resnet50_cpu_t1.csv") as f:
        return {row["layer"]: row for row in csv.DictReader(f)}


@pytest.mark.parametrize("layer", ["layer4.2.conv2", "fc"])
def test_optimized_rank_claims_match_the_t1_file(layer):
    m = re.search(rf"`{re.escape(layer)}`\s+goes\s+(\d+) → (\d+)", REPRODUCTION)
    assert m, f"docs/reproduction.md should quote {layer}'s optimized rank"
    row = _t1()[layer]
    assert (m.group(1), m.group(2)) == (row["2x rank"], row["optimized"])


def test_f1_claim_matches_the_sweep_file():
    rows = {int(r["rank"]): r for r in json.loads((DATA / "optimize_f1_conv512_cpu.json").read_text())["rows"]}
    m = re.search(r"257 → 256 \((\d+\.\d+) → (\d+\.\d+) ms\); rank 258 takes\s+(\d+\.\d+) ms", REPRODUCTION)
    assert m, "docs/reproduction.md should quote the F1 sweep around ranks 256–258"
    assert [float(x) for x in m.groups()] == [round(rows[r]["time_ms"], 2) for r in (257, 256, 258)]


def test_make_readme_rewrites_stale_sections_and_nothing_else(tmp_path):
    readme = tmp_path / "README.md"
    (speed_begin, speed_end, _), (tf_begin, tf_end, _) = sections()["speed"], sections()["transformers"]
    readme.write_text(f"intro\n{speed_begin}\nstale\n{speed_end}\nmiddle\n{tf_begin}\nold\n{tf_end}\nend\n")
    assert rewrite(readme, ("speed", "transformers"), DATA) == ["speed", "transformers"]
    text = readme.read_text()
    assert text.startswith("intro\n") and "\nmiddle\n" in text and text.endswith("\nend\n") and "stale" not in text
    assert speed_section(DATA) in text
    assert rewrite(readme, ("speed", "transformers"), DATA) == []  # idempotent
    readme.write_text("no markers")
    with pytest.raises(ValueError, match="marker"):
        rewrite(readme, ("speed", "transformers"), DATA)
    assert readme.read_text() == "no markers"  # bad input changes nothing


def test_freezing_claims_match_the_study_file():
    rows = {r["technique"]: r for r in json.loads((DATA / "freezing_mnist5k.json").read_text())["throughput"]}
    num = r"([−+-]?\d+\.\d)"
    ci = rf"{num}% \[{num}, {num}\]"
    m = re.search(rf"training {ci}\);.*?\(\s*{ci}, {ci}; `data/freezing_mnist5k.json`", REPRODUCTION, re.S)
    assert m, "docs/reproduction.md should quote the freezing study's training speed-ups with their intervals"
    quoted = [float(x.replace("−", "-")) for x in m.groups()]
    recorded = [round(rows[t][f"train_speedup_pct{k}"], 1) for t in ("lrd", "lrd+regular", "lrd+sequential")
                for k in ("", "_ci_low", "_ci_high")]
    assert quoted == recorded


def test_f9_overlap_claim_matches_the_bench_file():
    assert "g = 8, 16, 32 and the searched ranks all overlap" in " ".join(REPRODUCTION.split())
    rows = {r["name"]: r for r in json.loads((DATA / "bench_resnet50_cpu.json").read_text())["rows"]}
    named = [rows[n] for n in ("g=8", "g=16", "g=32", "optimized (fwd)")]
    assert max(r["speedup_pct_ci_low"] for r in named) <= min(r["speedup_pct_ci_high"] for r in named)


def test_between_runs_names_only_the_medians_that_moved_beyond_their_intervals():
    def row(name, med, hw):
        return {"name": name, "speedup_pct": med, "speedup_pct_ci_low": med - hw, "speedup_pct_ci_high": med + hw,
                "rounds": 60, "converged": False}

    first = [row("robust search ranks", 68.0, 4.0), row("g=32", 80.0, 4.0)]
    steady = [row("robust search ranks", 67.0, 3.0), row("robust search at g=32", 78.0, 3.0)]
    drift = [row("robust search ranks", 67.0, 3.0), row("robust search at g=32", 73.0, 3.0)]
    assert "each moved less" in between_runs(first, steady)
    text = between_runs(first, drift)
    assert "g=32 moved more than its intervals' half-width" in text and "searched ranks moved" not in text
