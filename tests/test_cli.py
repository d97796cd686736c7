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


def test_bench_record_writes_the_report_in_the_one_recorded_format(tmp_path, capsys):
    from lrdlab.measure.records import read_record, record_text

    out = tmp_path / "bench.json"
    argv = ["bench", "resnet20", "--threads", "1", "--rounds", "2", "--max-rounds", "2", "--batch", "1",
            "--image-size", "16", "--repeats", "1", "--record", str(out)]
    assert main(argv) == 0
    record = read_record(out)
    assert record["command"] == "lrdlab " + " ".join(argv) and record["machine"]["torch_threads"] == 1
    assert len(record["load_average_before"]) == 3 and "inference" in record and "ideal_speedup" in record
    assert out.read_text() == record_text(record)  # indent 1, a trailing newline
    assert main([*argv[:-1], str(tmp_path / "missing" / "b.json")]) == 2  # checked before the work
    assert "does not exist" in capsys.readouterr().err
