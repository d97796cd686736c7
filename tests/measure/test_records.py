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


def test_the_shipped_files_read_as_they_parse():
    files = sorted(DATA.glob("*.json"))
    assert len(files) > 20 and all(read_record(p) == json.loads(p.read_text()) for p in files)
    assert read_record("aa_check_cpu.json") == json.loads((DATA / "aa_check_cpu.json").read_text())  # by name
