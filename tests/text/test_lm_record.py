"""The recorded language-model numbers: docs/language_models.md quotes them as rendered, and they hold the targets."""

from __future__ import annotations

import json
from pathlib import Path

from tools.lm_section import SECTION_BEGIN, SECTION_END, lm_section
from tools.readme import current_block

ROOT = Path(__file__).resolve().parents[2]


def test_the_language_models_page_quotes_the_recorded_numbers():
    page = (ROOT / "docs" / "language_models.md").read_text()
    assert current_block(page, SECTION_BEGIN, SECTION_END) == lm_section(ROOT / "data"), "run `make readme`"


def test_the_corrected_fit_is_never_worse_than_one_shot_whitening_and_beats_the_baselines():
    rec = json.loads((ROOT / "data" / "lm_perplexity_pydoc.json").read_text())
    assert [r["ratio"] for r in rec["rows"]] == [1.25, 1.5, 2.0, 3.0]
    for r in rec["rows"]:
        assert r["calibrated"] <= r["one_shot_whitening"], r
    assert rec["rows"][0]["calibrated"] <= 1.10 * rec["dense_perplexity"]  # 1.25x, no gradient step
    assert rec["dense_perplexity"] < 0.5 * rec["baselines"]["bigram_perplexity"]


def test_the_page_renders_searched_rows_and_the_ranks_picked(tmp_path):
    for name in ("lm_perplexity_pydoc.json", "lm_decode_llama100m_cpu.json"):
        (tmp_path / name).write_text((ROOT / "data" / name).read_text())
    speed = json.loads((tmp_path / "lm_decode_llama100m_cpu.json").read_text())
    speed["results"].append({**speed["results"][1], "granularity": 16, "searched": "decode"})
    shapes = [{"layers": ["model.layers.*.self_attn.o_proj", "model.layers.*.self_attn.q_proj"], "count": 24,
               "in_features": 768, "out_features": 768, "method": "svd", "target": [192], "ranks": [176],
               "reason": ""},
              {"layers": ["lm_head"], "count": 1, "in_features": 768, "out_features": 32000, "method": "svd",
               "target": [375], "ranks": None, "reason": ""}]
    speed["searched"] = [{"shape": "decode", "batch": 1, "tokens": 1, "granularity": 16, "threads": 1,
                          "seconds": 21.4, "shapes": shapes}]
    (tmp_path / "lm_decode_llama100m_cpu.json").write_text(json.dumps(speed))
    page = lm_section(tmp_path)
    assert speed["results"][1]["threads"] == 1 and "| 1 | searched at decode | decode | 1 |" in page
    assert "Ranks searched at decode (batch 1, multiples of 16) at 1 thread(s), in 21 s: o_proj/q_proj 192→176, " \
           "lm_head 375→ORG." in page
