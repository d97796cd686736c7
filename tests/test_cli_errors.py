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
