"""``python -m tools.record``: the developer tool that re-records data/ (its sub-commands, errors, the one format)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lrdlab.cli import build_parser
from tools.record.__main__ import build_parser as record_parser
from tools.record.__main__ import main
from tools.record.accuracy import finetune_sweep

ROOT = Path(__file__).resolve().parents[2]


def test_record_transformers_needs_a_part_and_an_output(capsys):
    assert main(["transformers", "study"]) == 2  # argparse's errors: one line, exit code 2
    assert "--out" in capsys.readouterr().err
    assert main(["transformers", "everything", "--out", "x.json"]) == 2
    err = capsys.readouterr().err.strip()
    assert "invalid choice" in err and len(err.splitlines()) == 1


def test_outputs_are_checked_before_the_work(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert main(["speed", "--out", str(a_file)]) == 2  # the check comes before anything is measured
    err = capsys.readouterr().err.strip()
    assert "is a file; give a folder" in err and err.startswith("python -m tools.record speed: error:")
    assert main(["techniques", "table", "--out", str(tmp_path / "no" / "t.json")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_the_library_cli_has_no_record_command_and_the_tool_has_every_recording():
    commands = set(build_parser()._subparsers._group_actions[0].choices)  # noqa: SLF001
    assert "record" not in commands and "reproduce" in commands
    records = set(record_parser()._subparsers._group_actions[0].choices)  # noqa: SLF001
    assert {"speed", "speed-checks", "speed-story", "techniques", "transformers", "accuracy", "pretrained",
            "freezing-grid", "reference-times", "reference-freezing", "finetune-sweep", "freezing"} <= records


def test_python_dash_m_tools_record_runs_from_the_checkout():
    out = subprocess.run([sys.executable, "-m", "tools.record", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and "speed-story" in out.stdout


@pytest.mark.slow
def test_finetune_sweep_rows(tmp_path):
    cfg = {"optimizer": "sgd", "lr": 0.01, "batch_size": 256, "distill": True}
    result = finetune_sweep(ratio=3.0, configs=[cfg], seeds=[0], calibration_images=128, out=tmp_path / "s.json",
                            progress=False)
    (row,) = result["rows"]
    assert row["distill"] and row["seed"] == 0 and 0 <= row["accuracy"] <= 100
    assert result["original_accuracy"] > result["start_accuracy"]  # 3x costs accuracy before fine-tuning
    assert (tmp_path / "s.json").is_file()


def test_record_lm_speed_checks_its_arguments_before_the_work(tmp_path, capsys):
    assert "lm-speed" in set(record_parser()._subparsers._group_actions[0].choices)  # noqa: SLF001
    args = record_parser().parse_args(["lm-speed"])
    assert (args.out, args.granularity, args.search, args.search_granularity, args.rounds) == \
        (Path("data/lm_decode_llama100m_cpu.json"), [1, 64], ["decode"], 16, 11)
    assert main(["lm-speed", "--search", "everything"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "decode and prefill" in err
    assert main(["lm-speed", "--out", str(tmp_path / "no" / "lm.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
