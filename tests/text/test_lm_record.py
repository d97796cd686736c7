"""The recorded language-model numbers: docs/language_models.md quotes them as rendered, and they hold the targets."""

from __future__ import annotations

import json
from pathlib import Path

from lrdlab.paper.lm_study import SECTION_BEGIN, SECTION_END, lm_section
from tools.readme import current_block

ROOT = Path(__file__).resolve().parents[2]


def test_the_language_models_page_quotes_the_recorded_numbers():
    page = (ROOT / "docs" / "language_models.md").read_text()
    assert current_block(page, SECTION_BEGIN, SECTION_END) == lm_section(ROOT / "data"), "run `make readme`"


def test_the_calibrated_default_is_never_worse_than_one_shot_whitening_and_beats_the_baselines():
    rec = json.loads((ROOT / "data" / "lm_perplexity_pydoc.json").read_text())
    assert [r["ratio"] for r in rec["rows"]] == [1.25, 1.5, 2.0, 3.0]
    for r in rec["rows"]:
        assert r["calibrated"] <= r["one_shot_whitening"], r
    assert rec["rows"][0]["calibrated"] <= 1.10 * rec["dense_perplexity"]  # 1.25x, no gradient step
    assert rec["dense_perplexity"] < 0.5 * rec["baselines"]["bigram_perplexity"]
