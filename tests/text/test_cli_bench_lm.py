"""``lrdlab bench-lm`` runs on the tiny config and reports prefill and both decode batches."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")


def test_bench_lm_json(capsys):
    from lrdlab.cli import main

    assert main(["bench-lm", "--config", "tiny", "--threads", "1", "--rounds", "1", "--prompt", "8", "--tokens", "1",
                 "--batch", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [(r["phase"], r["batch"]) for r in report["results"]] == [("prefill", 1), ("decode", 1), ("decode", 2)]
    assert report["decomposed_params"] < report["dense_params"]
