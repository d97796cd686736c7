"""The command line: JSON is a stable interface; errors are clear and exit non-zero."""

import json

import pytest
import torch
import torchvision

from lrdlab.cli import main
from lrdlab.lowrank.decompose import load_decomposed

REQUIRED_LAYER_FIELDS = {"name", "type", "in_channels", "out_channels", "kernel_size", "method", "ranks",
                         "params_before", "params_after", "reason"}


def test_plan_json_has_the_stable_fields(capsys):
    assert main(["plan", "resnet18", "--paper", "--image-size", "64", "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == "resnet18"
    assert REQUIRED_LAYER_FIELDS <= set(report["layers"][0])
    for key in ("params", "flops"):
        assert report[key]["decomposed"] < report[key]["original"]
    assert report["input_shape"] == [1, 3, 64, 64]
    assert "flop_counter" in report["flops"]["counter"]


def test_plan_table_and_csv(capsys):
    assert main(["plan", "resnet18", "--granularity", "8"]) == 0
    assert "layer4.1.conv2" in capsys.readouterr().out
    assert main(["plan", "resnet18", "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("name,type,C,S,kernel") and len(lines) == 22


def test_stats_then_decompose_with_a_saved_plan(tmp_path, capsys):
    plan_file = tmp_path / "plan.json"
    assert main(["plan", "resnet18", "--ratio", "3", "--exclude", "conv1", "--out", str(plan_file)]) == 0
    capsys.readouterr()
    assert main(["stats", "resnet18", "--plan", str(plan_file), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["params"]["change_pct"] < -50
    out = tmp_path / "decomposed"
    assert main(["decompose", "resnet18", "--plan", str(plan_file), "--out", str(out)]) == 0
    model = load_decomposed(out, torchvision.models.resnet18().eval())
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 1000)


@pytest.mark.parametrize("argv,message", [
    (["plan", "resnet18", "--ratio", "0.5"], "ratio"),
    (["plan", "resnet18", "--exclude", "nothing.here"], "matches no"),
    (["plan", "no_such_net"], "unknown model"),
])
def test_errors_are_clear_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_plan_for_another_model_is_refused(tmp_path, capsys):
    plan_file = tmp_path / "plan.json"
    main(["plan", "resnet50", "--out", str(plan_file)])
    capsys.readouterr()
    assert main(["stats", "resnet18", "--plan", str(plan_file)]) == 2
    assert "make a new plan" in capsys.readouterr().err


def test_record_transformers_needs_a_part_and_an_output(capsys):
    assert main(["record", "transformers", "study"]) == 2  # argparse's errors: one line, exit code 2
    assert "--out" in capsys.readouterr().err
    assert main(["record", "transformers", "everything", "--out", "x.json"]) == 2
