"""Issue 13 at the command line: every expected error is one line on stderr, exit code 2, naming the fix."""

import pytest

from lrdlab.cli import main


def fails(argv, capsys) -> str:
    """Run the CLI, expect exit code 2 and one line on stderr; return that line."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"lrdlab {argv[0]}: error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_a_missing_plan_file(tmp_path, capsys):
    err = fails(["stats", "resnet20", "--plan", str(tmp_path / "missing.json")], capsys)
    assert "no plan file" in err and "lrdlab plan MODEL --out missing.json" in err


def test_a_plan_file_that_is_not_json(tmp_path, capsys):
    bad = tmp_path / "plan.json"
    bad.write_text("ratio: 2\n")
    err = fails(["decompose", "resnet20", "--plan", str(bad), "--out", str(tmp_path / "out")], capsys)
    assert "is not a JSON plan" in err and "Plan.save" in err
    assert not (tmp_path / "out").exists()


def test_paper_setting_on_a_model_without_downsample_convs(capsys):
    assert main(["plan", "resnet20", "--paper", "--format", "csv"]) == 0
    out = capsys.readouterr().out
    assert "excluded by 'conv1'" in out and "downsample" not in out


def test_one_rank_for_every_layer_caps_the_stem(capsys):
    assert main(["plan", "resnet20", "--rank", "8", "--format", "csv"]) == 0
    stem = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("conv1,"))
    assert "channel_svd" in stem


def test_a_saved_plan_with_policy_options_is_ambiguous(tmp_path, capsys):
    plan = tmp_path / "plan.json"
    assert main(["plan", "resnet20", "--out", str(plan)]) == 0
    capsys.readouterr()
    err = fails(["stats", "resnet20", "--plan", str(plan), "--ratio", "3", "--exclude", "conv1"], capsys)
    assert "--ratio, --exclude would be ignored; drop them or drop --plan" in err


@pytest.mark.parametrize("argv, message", [
    (["plan", "resnet20", "--image-size", "0"], "--image-size must be >= 1"),
    (["plan", "resnet20", "--granularity", "0"], "--granularity must be >= 1"),
    (["plan", "resnet20", "--method", "tt"], "method must be 'auto' or one of"),
    (["stats", "resnet20", "--num-classes", "-3"], "--num-classes must be >= 1"),
    (["train", "resnet20", "--epochs", "0"], "--epochs must be >= 1"),
    (["train", "resnet20", "--batch", "0"], "--batch must be >= 1"),
])
def test_impossible_numbers_and_names(argv, message, capsys):
    assert message in fails(argv, capsys)


def test_unwritable_plan_path(tmp_path, capsys):
    err = fails(["plan", "resnet20", "--out", str(tmp_path / "no" / "such" / "plan.json")], capsys)
    assert "does not exist; create it" in err


def test_decompose_into_a_file(tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("keep me")
    err = fails(["decompose", "resnet20", "--out", str(taken)], capsys)
    assert "is a file" in err and taken.read_text() == "keep me"


def test_train_from_missing_weights(tmp_path, capsys):
    err = fails(["train", "resnet20", "--weights", str(tmp_path / "w.pt"), "--epochs", "1", "--subset", "64",
                 "--out", str(tmp_path / "run")], capsys)
    assert "w.pt" in err


# --- argparse's own errors, outputs checked before the work, TQDM_DISABLE, threads -------------------------


def usage_error(argv, capsys) -> str:
    """argparse's errors too: one line on stderr, exit code 2, no usage block."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lrdlab") and ": error: " in err and "\n" not in err and "usage:" not in err
    return err


@pytest.mark.parametrize("argv, message", [
    (["plan", "resnet20", "--bogus"], "unrecognized arguments: --bogus"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["plan"], "required: model"),
    (["bench", "resnet20", "--threads", "0"], "0 threads: this machine has"),
    (["bench", "resnet20", "--threads", "1,two"], "'1,two' is not a thread count"),
    (["bench", "resnet20", "--threads", "100000"], "give 1 to"),
    (["optimize", "resnet20", "--threads", "1,1", "--out", "x.json"], "only `lrdlab bench` and `bench-lm` take a list"),
    (["bench", "resnet20", "--compute", "fast"], "invalid choice: 'fast'"),
])
def test_usage_errors_are_one_line(argv, message, capsys):
    assert message in usage_error(argv, capsys)


def test_a_bad_compute_environment_variable(monkeypatch, capsys):
    monkeypatch.setenv("LRDLAB_COMPUTE", "turbo")
    assert "LRDLAB_COMPUTE='turbo' is not a compute mode" in fails(["models"], capsys)


def test_outputs_are_checked_before_the_work(tmp_path, capsys, monkeypatch):
    import lrdlab.cli.library as library

    def no_work(*a, **k):
        raise AssertionError("the work started before the output was checked")

    monkeypatch.setattr(library, "build_model", no_work)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for argv, message in [
        (["optimize", "resnet20", "--out", str(tmp_path / "no" / "plan.json")], "does not exist; create it"),
        (["optimize", "resnet20", "--out", str(tmp_path)], "is a folder; give a file"),
        (["optimize", "resnet20", "--out", str(tmp_path / "p.json"), "--traces", str(a_file / "t.csv")],
         "is not a writable folder"),
        (["choose", "resnet20", str(a_file), "--out", str(tmp_path / "missing" / "best.json")], "does not exist"),
    ]:
        assert message in fails(argv, capsys)


def test_tqdm_disable_silences_bars_lrdlab_asks_for(tmp_path, capsys, monkeypatch):
    argv = ["decompose", "resnet20", "--out", str(tmp_path / "out")]  # decompose passes progress=True
    assert main(argv) == 0
    assert "decompose" in capsys.readouterr().err  # the bar, by default
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "decompose" not in err and "%|" not in err
