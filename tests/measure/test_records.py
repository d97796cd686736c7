"""The one writer and reader of recorded results: one format, names looked up in data/, the shipped files unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lrdlab.measure.records import data_dir, read_record, record_path, record_text, write_record

DATA = Path(__file__).resolve().parents[2] / "data"


def test_one_format_with_numbers_from_numpy_and_torch(tmp_path):
    record = {"what": "x", "rows": [{"ms": np.float32(1.5), "n": np.int64(3), "ok": np.bool_(True)}],
              "t": torch.tensor(2.0), "shape": torch.Size([1, 3]), "v": np.arange(2), "path": Path("a/b")}
    path = write_record(tmp_path / "new" / "r.json", record)  # the folder is created
    text = path.read_text()
    assert text.startswith('{\n "what": "x",\n "rows": [') and text.endswith("}\n")
    assert json.loads(text) == {"what": "x", "rows": [{"ms": 1.5, "n": 3, "ok": True}], "t": 2.0, "shape": [1, 3],
                                "v": [0, 1], "path": "a/b"}
    assert text == record_text(read_record(path))  # reading and writing again changes nothing


def test_a_bare_name_is_read_from_the_data_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("LRDLAB_DATA", str(tmp_path))
    write_record(tmp_path / "x_cpu.json", {"rows": []})
    assert data_dir() == tmp_path and record_path("x_cpu.json") == tmp_path / "x_cpu.json"
    assert read_record("x_cpu.json") == {"rows": []}
    assert record_path(Path("elsewhere") / "x_cpu.json") == Path("elsewhere/x_cpu.json")
    with pytest.raises(FileNotFoundError, match="no recorded file .*missing.json: record it first"):
        read_record("missing.json")


# Plan files (a Plan's own format, no record fields): the bench record beside them names the command.
PLAN_FILES = {"optimize_resnet50_cpu_plan.json", "optimize_resnet50_cpu_plan_train.json"}
# Files whose recorder belongs to another lane this round (issue 36 item 7): still without a command.
NO_COMMAND_YET = {"lm_perplexity_pydoc.json"}
RUNNABLE = ("python -m tools.record", "lrdlab ", "python -m lrdlab.cli ", "python -m lrdlab.paper.",
            "make ", "OMP_NUM_THREADS=1 ", "LRDLAB_CACHE=", "nice -n 5 ")


def _shipped_records():
    ref = Path(__file__).resolve().parents[2] / "lrdlab" / "explore" / "reference"
    return [p for p in sorted(DATA.glob("*.json")) + sorted(ref.glob("*.json"))
            if p.name not in PLAN_FILES | NO_COMMAND_YET]


def test_every_shipped_record_names_a_command_that_runs_today_and_its_machine():
    """Each file says how to re-create it with today's commands (``lrdlab record`` moved to ``python -m
    tools.record``) and where it was measured; a bare name reads from data/."""
    files = _shipped_records()
    assert len(files) > 30
    for path in files:
        rec = read_record(path)
        command = rec.get("command", "")
        assert command.startswith(RUNNABLE), f"{path.name}: command {command!r} (say how to re-create the file)"
        assert "lrdlab record " not in command, f"{path.name}: `lrdlab record` is `python -m tools.record` now"
        if command.startswith("python -m tools.record "):  # a sub-command python -m tools.record knows
            from tools.record.__main__ import build_parser

            what = command.split()[3]
            assert what in build_parser()._subparsers._group_actions[0].choices, f"{path.name}: {what}"
        assert "machine" in rec or "inputs" in rec or path.name == "branch_sweep.json", f"{path.name}: no machine"
    assert read_record("aa_check_cpu.json")["command"].startswith("python -m tools.record")  # by name


def test_a_study_record_shows_its_columns_and_writes_its_fields(tmp_path):
    from dataclasses import dataclass
    from typing import Any

    from lrdlab.measure.records import StudyRecord

    @dataclass(frozen=True)
    class Study(StudyRecord):
        COLUMNS = ("name", "acc")
        rows: list[dict[str, Any]]
        machine: dict[str, Any]

    study = Study(rows=[{"name": "a", "acc": 91.5, "hidden": 1}], machine={"cpu": "x"})
    assert str(study).splitlines()[1].split() == ["name", "acc"] and "hidden" not in str(study)
    assert "<table" in study._repr_html_() and list(study.table().columns) == ["name", "acc", "hidden"]
    path = write_record(tmp_path / "s.json", {"study": study})  # nested records are written as their to_dict()
    assert read_record(path) == {"study": {"rows": study.rows, "machine": {"cpu": "x"}}}


def test_a_record_with_fields_its_class_does_not_know_is_refused_by_name():
    from lrdlab.measure.records import check_fields
    from lrdlab.zoo.pretrained import PretrainedInfo

    with pytest.raises(ValueError, match=r"pretrained record 'x' has fields \['later'\] that PretrainedInfo does "
                                         r"not know: add them to lrdlab.zoo.pretrained.PretrainedInfo"):
        PretrainedInfo.from_dict({"name": "x", "later": 1})
    check_fields(PretrainedInfo, {"name": "x"}, "a record")  # known fields only: nothing raised
