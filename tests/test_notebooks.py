"""Every notebook runs top to bottom headless in quick mode (papermill), and is committed without outputs."""

import ast
import json
import time
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 3


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_without_outputs_and_with_parameters_cell(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), f"{path.name} has outputs"
    tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1 and "QUICK = True" in "".join(tagged[0]["source"])
    assert "widgets" not in nb.get("metadata", {}), "widget state must not be committed"
    # only parameters there: papermill replaces this cell, so anything derived from QUICK belongs in a later cell
    for node in ast.parse("".join(tagged[0]["source"])).body:
        assert isinstance(node, ast.Assign), f"{path.name}: the parameters cell holds a statement, not a parameter"
        ast.literal_eval(node.value)  # a literal, not computed from another parameter


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_quick_mode(path, tmp_path, tmp_cache):
    papermill = pytest.importorskip("papermill")
    start = time.perf_counter()
    papermill.execute_notebook(str(path), str(tmp_path / path.name), parameters={"QUICK": True},
                               cwd=str(path.parent), kernel_name="python3", progress_bar=False)
    seconds = time.perf_counter() - start
    print(f"{path.name}: {seconds:.1f} s")
    out = json.loads((tmp_path / path.name).read_text())
    errors = [o for c in out["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert any("image/png" in o.get("data", {}) for c in out["cells"] for o in c.get("outputs", [])), \
        "every notebook shows at least one figure"
