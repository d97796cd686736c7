"""``python -m tools.record.lm_distill --start``: which one-shot start the distillation record begins from."""

from __future__ import annotations

import pytest

from lrdlab.finetune.lm_distill import LMDistillation
from tools.record.lm_distill import STARTS, DistillText, distill_run, main


def test_start_choices_are_checked_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--start", "random"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--start" in err and "loss-weighted" in err and "svd-llm" in err


def test_the_seed_flag_reaches_the_recipe(monkeypatch, tmp_path):
    import tools.record.lm_distill as tool

    seen = []

    def stop(ratio, recipe, *args):
        seen.append(recipe)
        raise RuntimeError("stop before loading the model")

    monkeypatch.setattr(tool, "distill_run", stop)
    monkeypatch.setattr(tool.torch, "set_num_threads", lambda n: None)  # the test process keeps its threads
    for argv, seed in ((["--seed", "3"], 3), ([], LMDistillation().seed)):
        with pytest.raises(RuntimeError, match="stop before"):
            main([*argv, "--out", str(tmp_path / "d.json")])
        assert seen[-1].seed == seed
    assert not (tmp_path / "d.json").exists()


def test_distill_run_rejects_an_unknown_start_before_loading_anything():
    assert set(STARTS) == {"svd-llm", "loss-weighted"}
    with pytest.raises(ValueError, match="unknown start 'random'"):
        distill_run(1.25, LMDistillation(), init="random")
    with pytest.raises(ValueError, match="need --start loss-weighted"):
        distill_run(1.25, LMDistillation(), DistillText(calibration_docstrings=4), init="svd-llm")
    with pytest.raises(ValueError, match="need --start loss-weighted"):
        distill_run(1.25, LMDistillation(), DistillText(calibration_readmes=4), init="svd-llm")


def test_each_calibration_text_keeps_its_own_statistics(tmp_path):
    base = str(tmp_path)
    assert DistillText(calibration=64).calibration_cache(base) == base
    assert DistillText(calibration_docstrings=192).calibration_cache(base) == str(tmp_path / "docstrings_192")
    assert (DistillText(calibration_docstrings=192, calibration_readmes=64).calibration_cache(base)
            == str(tmp_path / "docstrings_192_readmes_64"))
    assert DistillText(calibration_readmes=64).calibration_cache(None) is None


def test_sampled_windows_are_kept_for_the_next_run(tmp_path, monkeypatch):
    import torch

    import tools.record.lm_distill as tool

    calls = []

    def fake(model, count, length):
        calls.append(count)
        return torch.arange(count * length).reshape(count, length)

    monkeypatch.setattr(tool, "teacher_windows", fake)
    cache = str(tmp_path / "samples.pt")
    first = tool.sampled_windows(None, 4, 3, cache)
    again = tool.sampled_windows(None, 2, 3, cache)  # fewer: read from the file
    assert calls == [4] and torch.equal(again, first[:2])
    tool.sampled_windows(None, 2, 5, cache)  # another length: sampled afresh
    assert calls == [4, 2]


def test_docstring_windows_spread_over_the_whole_text():
    import torch

    from lrdlab.explore.lm_lab import text_windows
    from tests.text.byte_tokenizer import Bytes
    from tools.record.lm_distill import spread_windows

    every = text_windows(Bytes(), "docstrings")
    picked = spread_windows(every, 3, "--docstrings")
    half = (len(every) - 1) / 2  # the first, the middle and the last window: every module's docstrings can be drawn
    assert torch.equal(picked[0], every[0]) and torch.equal(picked[2], every[-1])
    assert any(torch.equal(picked[1], every[k]) for k in (int(half), int(half + 0.5)))
    with pytest.raises(ValueError, match="--docstrings"):
        spread_windows(every, len(every) + 1, "--docstrings")
    with pytest.raises(ValueError, match="--calibration-docstrings"):
        spread_windows(every, len(every) + 1, "--calibration-docstrings")


def test_distill_text_names_what_the_run_read():
    from lrdlab.zoo.text import package_readmes, text_digest

    plain = DistillText().describe(100)
    assert plain == {"calibration": "first 16 windows of the pydoc training split",
                     "distillation": "the 84 later windows of the pydoc training split"}
    mixed = DistillText(calibration=64, calibration_docstrings=8, docstrings=5, readmes=3).describe(100)
    assert "and 8 windows of the standard library's docstrings" in mixed["calibration"]
    assert mixed["distillation"].startswith("the 36 later windows of the pydoc training split and 5 windows")
    assert "and 3 windows of the installed packages' READMEs" in mixed["distillation"]
    assert text_digest(package_readmes()) in mixed["distillation"]  # which READMEs: they follow the environment
    calibrated = DistillText(calibration=64, calibration_docstrings=8, calibration_readmes=6).describe(100)
    assert calibrated["calibration"].endswith("and 8 windows of the standard library's docstrings (spread evenly "
                                              f"over the text) and 6 windows of the installed packages' READMEs "
                                              f"(lrdlab.zoo.text.package_readmes, spread evenly; "
                                              f"{len(package_readmes())} characters, "
                                              f"SHA-256 {text_digest(package_readmes())}…)")
    assert calibrated["distillation"] == "the 36 later windows of the pydoc training split"
