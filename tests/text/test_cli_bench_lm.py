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


def test_bench_lm_times_the_plan_searched_at_the_decode_shape(capsys, monkeypatch):
    from lrdlab.cli import main
    from lrdlab.lowrank.layers import LowRankLayer
    from lrdlab.measure import timing

    shapes = []

    def fake_time_layer(module, input_shape, device="cpu", backward=False, warmup=3, repeats=10, dtype=None):
        shapes.append((module.in_features, tuple(input_shape)))  # LowRankLayer answers in_features too
        return 1.0 + 0.01 * module.ranks[0] if isinstance(module, LowRankLayer) else 100.0

    monkeypatch.setattr(timing, "time_layer", fake_time_layer)
    assert main(["bench-lm", "--config", "tiny", "--threads", "1", "--rounds", "1", "--prompt", "8", "--tokens", "1",
                 "--batch", "2", "--search", "decode", "--search-granularity", "4", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert shapes and all(shape == (1, 1, i) for i, shape in shapes)  # every layer timed as a batch-1 GEMV
    assert [(r.get("searched"), r["phase"]) for r in report["results"]][3:] == \
        [("decode", "prefill"), ("decode", "decode"), ("decode", "decode")]
    (searched,) = report["searched"]
    assert searched["threads"] == 1 and searched["granularity"] == 4 and searched["shape"] == "decode"
    assert len(searched["shapes"]) == 5 and sum(s["count"] for s in searched["shapes"]) == 4 * 7 + 1
    assert all(s["ranks"] == s["target"] or s["target"][0] > s["ranks"][0] % 4 == 0 for s in searched["shapes"])
    assert searched["params"] <= report["decomposed_params"]  # never over the unrounded plan's budget
    unrounded, found = report["results"][1], report["results"][4]
    assert found["bytes_ideal"] >= unrounded["bytes_ideal"]


@pytest.mark.parametrize("args, words", [(["--search", "gemv"], "the shapes are decode and prefill"),
                                         (["--search", "decode,decode"], "each at most once"),
                                         (["--search-granularity", "8,16"], "one granularity"),
                                         (["--search-granularity", "0"], "≥ 1")])
def test_bench_lm_search_refuses_bad_input_in_one_line(capsys, args, words):
    from lrdlab.cli import main

    assert main(["bench-lm", "--config", "tiny", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err, err


# --- the user's model: --model FOLDER | FILE.gguf | smollm2_135m, --lm-head, --compute ---------------------

TINY_RUN = ["--threads", "1", "--rounds", "1", "--prompt", "8", "--tokens", "1", "--batch", "2", "--json"]


@pytest.fixture
def checkpoint(tmp_path, tiny_llama):
    model = tiny_llama(vocab_size=512, tie_word_embeddings=True)
    model.save_pretrained(tmp_path / "ckpt")
    return tmp_path / "ckpt", model


@pytest.fixture
def fresh_compute(monkeypatch):
    """--compute sets process-wide state: put it back after the test."""
    import torch

    from lrdlab.measure import compute

    threads = torch.get_num_threads()
    monkeypatch.setattr(compute, "_CURRENT", None)
    yield compute
    torch.set_num_threads(threads)


def test_bench_lm_measures_a_checkpoint_folder_with_its_lm_head_decomposed(capsys, checkpoint, fresh_compute):
    from lrdlab.cli import main
    from lrdlab.measure.counting import count_params

    folder, model = checkpoint
    assert main(["bench-lm", "--model", str(folder), "--ratio", "2", *TINY_RUN]) == 0
    kept = json.loads(capsys.readouterr().out)
    assert kept["model"] == str(folder) and kept["dense_params"] == count_params(model)
    assert not kept["lm_head_decomposed"] and "untied" not in kept["plan_summary"]
    assert main(["bench-lm", "--model", str(folder), "--ratio", "2", "--lm-head", *TINY_RUN]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["lm_head_decomposed"] and "untied lm_head" in report["plan_summary"]
    assert report["decomposed_params"] > kept["decomposed_params"]  # the head's factors sit beside the embedding
    decode1 = report["results"][1]
    assert (decode1["phase"], decode1["batch"]) == ("decode", 1)
    assert decode1["bytes_ideal"] > kept["results"][1]["bytes_ideal"]  # the head is no longer read in full
    assert decode1["compute"]["compute_mode"] == "default" and decode1["compute"]["torch_threads"] == 1


def test_bench_lm_says_which_compute_ran_under_auto(capsys, checkpoint, fresh_compute, monkeypatch):
    from lrdlab.cli import main

    folder, _ = checkpoint
    monkeypatch.setattr(fresh_compute, "busy", lambda *a, **k: True)  # a loaded machine: auto picks shared
    out_file = folder.parent / "bench.json"
    assert main(["bench-lm", "--compute", "auto", "--model", str(folder), *TINY_RUN[:-1], "--out", str(out_file)]) == 0
    out = capsys.readouterr().out
    assert "compute: shared (asked auto)" in out and "Plan for" in out
    record = json.loads(out_file.read_text())
    assert record["machine"]["compute_mode"] == "shared" and record["machine"]["load_average"]
    assert "bench-lm" in record["command"] and record["results"][0]["compute"]["compute_asked"] == "auto"


def test_bench_lm_refuses_a_model_it_cannot_find_in_one_line(capsys, tmp_path):
    from lrdlab.cli import main

    assert main(["bench-lm", "--model", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "smollm2_135m" in err and ".gguf" in err, err


def test_bench_lm_records_the_layouts_and_each_model_s_fastest_round(capsys):
    from lrdlab.cli import main

    assert main(["bench-lm", "--config", "tiny", "--rounds", "2", "--dense-layout", "gemv", *TINY_RUN]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["bench"]["layout"], report["bench"]["dense_layout"]) == ("gemv", "gemv")
    for r in report["results"]:
        per_step = 1e3 * r["batch"] / r["decomposed_tokens_s"]  # the median round, ms per step
        assert 0 < r["decomposed_ms_min"] <= per_step * (1 + 1e-9) and r["dense_ms_min"] > 0
        assert r["min_round_speedup"] == pytest.approx(r["dense_ms_min"] / r["decomposed_ms_min"])
    assert main(["bench-lm", "--config", "tiny", "--layout", "rows"]) == 2
    assert "--layout" in capsys.readouterr().err


def test_bench_lm_profile_splits_decode_time_into_products_and_the_rest(capsys):
    from lrdlab.cli import main

    assert main(["bench-lm", "--config", "tiny", "--profile", *TINY_RUN]) == 0
    report = json.loads(capsys.readouterr().out)
    dense, low = report["profile"]["dense"], report["profile"]["decomposed"]
    for prof in (dense, low):
        assert prof["threads"] == 1 and prof["products"]
        assert prof["total_ms"] == pytest.approx(prof["products_ms"] + prof["other_ms"])
        assert 0 < sum(p["ms"] for p in prof["products"]) <= prof["products_ms"] * (1 + 1e-9)
    calls = {p["shapes"]: p["calls"] for p in low["products"]}
    assert sum(p["calls"] for p in low["products"]) > sum(p["calls"] for p in dense["products"])  # two per layer
    assert all(c > 0 for c in calls.values())
    row = report["results"][1]
    assert row["cpu_speedup"] > 0 and row["cpu_ci_low"] <= row["cpu_speedup"] <= row["cpu_ci_high"]
    assert row["dense_cpu_ms"] > 0 and row["decomposed_cpu_ms"] > 0


def test_decode_table_is_a_typed_record_that_prints_its_rows():
    import torch

    from lrdlab.measure.decode_table import DecodeBench, DecodeTable, decode_table
    from lrdlab.zoo.lm import TINY_LLAMA, llama_from_config

    torch.manual_seed(0)
    table = decode_table(llama_from_config(**TINY_LLAMA),
                         DecodeBench(threads=(1,), rounds=1, prompt=8, decode_tokens=1, batch=2))
    assert isinstance(table, DecodeTable) and table.decomposed_params < table.dense_params
    assert list(table.table()["phase"]) == ["prefill", "decode", "decode"]
    assert "speedup" in str(table).splitlines()[1] and "<table" in table._repr_html_()
    record = table.to_dict()  # the recorded form: no empty searched / profile keys, the rows under "results"
    assert "searched" not in record and "profile" not in record and record["results"] == table.results
    json.dumps(record)
