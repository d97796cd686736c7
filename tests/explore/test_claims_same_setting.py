"""One setting, one number: the README, docs/speed.md and notebook 04 show ResNet-50's searched ranks from records,
and the notebook names what differs between them."""

import json
from pathlib import Path

from lrdlab.explore.claims import differences, searched_ranks_rows
from lrdlab.measure.records import data_dir

ROOT = Path(__file__).resolve().parents[2]


def test_each_page_prints_the_number_of_its_record():
    rows = {r.page.split(" ")[0]: r for r in searched_ranks_rows(data_dir())}
    assert rows["README"].text in (ROOT / "README.md").read_text()
    assert rows["docs/speed.md"].text in (ROOT / "docs" / "speed.md").read_text()
    nb = json.loads((ROOT / "notebooks" / "04_rank_optimization.ipynb").read_text())
    code = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    assert "searched_ranks_rows(" in code and "differences(" in code  # the notebook renders the same records


def test_differences_name_rounds_load_and_how_timed_for_every_pair():
    rows = searched_ranks_rows(data_dir())
    lines = differences(rows)
    assert len(lines) == len(rows) * (len(rows) - 1) // 2
    for line in lines:
        assert "rounds" in line and "load" in line and "timed" in line
        assert ("do not overlap" in line) != ("intervals overlap" in line)
