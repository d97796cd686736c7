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


@pytest.mark.parametrize("threads, words", [("0", "0 threads"), ("1,x", "not a thread count"), ("1,1", "repeats")])
def test_bench_lm_threads_take_bench_s_comma_list_and_its_one_line_errors(capsys, threads, words):
    from lrdlab.cli import main

    assert main(["bench-lm", "--config", "tiny", "--threads", threads]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err and "--threads" in err
    assert main(["bench-lm", "--config", "tiny", "--threads", "1", "2"]) == 2  # a space list is refused
    assert "unrecognized arguments: 2" in capsys.readouterr().err


def test_bench_lm_times_each_granularity_and_refuses_a_bad_one(capsys):
    from lrdlab.cli import main

    assert main(["bench-lm", "--config", "tiny", "--threads", "1", "--granularity", "1,8", "--rounds", "1",
                 "--prompt", "8", "--tokens", "1", "--batch", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["granularity"] for r in report["results"]] == [1, 1, 1, 8, 8, 8]
    by_g = {d["granularity"]: d for d in report["decomposed"]}
    assert set(by_g) == {1, 8} and all(d["params"] < report["dense_params"] for d in by_g.values())
    assert main(["bench-lm", "--config", "tiny", "--granularity", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--granularity" in err and "≥ 1" in err
