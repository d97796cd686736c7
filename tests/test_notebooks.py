"""Every notebook runs top to bottom headless in quick mode (papermill), and is committed without outputs."""

import ast
import json
import os
import shutil
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _user_cache() -> Path:
    """lrdlab's cache folder as the user has it (read before a test points ``$LRDLAB_CACHE`` elsewhere)."""
    from lrdlab.zoo.smollm import cache_dir

    return cache_dir()


USER_CACHE = _user_cache()


def share_model_cache(tmp_cache: Path) -> list[Path]:
    """Link the user's cached language model (the dequantized SmolLM2: weights, not measurements) into the
    test's temporary cache, so a notebook that loads it does not rebuild it from the GGUF file (about a minute)."""
    tmp_cache.mkdir(parents=True, exist_ok=True)
    linked = []
    for entry in USER_CACHE.glob("smollm2_135m-v*"):
        if entry.is_dir() and not (tmp_cache / entry.name).exists():
            (tmp_cache / entry.name).symlink_to(entry, target_is_directory=True)
            linked.append(tmp_cache / entry.name)
    return linked


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 3


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_json_is_valid_nbformat(path):
    """JupyterLab refuses what nbformat's schema refuses (cell ids under a minor version below 5, for one)."""
    import nbformat

    nbformat.validate(nbformat.read(path, as_version=nbformat.NO_CONVERT))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_data_found_through_the_package_and_solutions_hidden(path):
    """No path relative to the working folder; every solution cell collapsed, its code and its output, so Run All
    shows no answer until the reader opens it."""
    nb = json.loads(path.read_text())
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    for relative in ('"../data', "'../data", 'Path("..")', 'Path("data")', "Path('data')", '"data/'):
        assert relative not in code, f"{path.name} reads {relative}…: use lrdlab.measure.records.data_dir()"
    for cell in nb["cells"]:
        if cell["cell_type"] == "code" and "".join(cell["source"]).lstrip().startswith("# Solution"):
            assert "solution" in cell["metadata"].get("tags", []), f"{path.name}: an untagged solution"
            hidden = cell["metadata"].get("jupyter", {})
            assert hidden.get("source_hidden") and hidden.get("outputs_hidden"), f"{path.name}: a visible solution"


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
    # and no later cell sets a parameter again: full mode (papermill's QUICK = False) must reach every cell
    names = {n.id for n in ast.walk(ast.parse("".join(tagged[0]["source"]))) if isinstance(n, ast.Name)}
    for cell in code:
        if cell is not tagged[0]:
            stored = {n.id for n in ast.walk(ast.parse("".join(cell["source"])))
                      if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
            assert not stored & names, f"{path.name}: a later cell sets {stored & names}"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_quick_mode(path, tmp_path, tmp_cache, monkeypatch):
    """Run from a copy of the notebook in an empty folder (data is found through the package, never the working
    folder), with this checkout's lrdlab first on the kernel's path."""
    papermill = pytest.importorskip("papermill")
    copy = tmp_path / "elsewhere" / path.name
    copy.parent.mkdir()
    shutil.copy(path, copy)
    share_model_cache(tmp_cache)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    start = time.perf_counter()
    papermill.execute_notebook(str(copy), str(tmp_path / path.name), parameters={"QUICK": True},
                               cwd=str(copy.parent), kernel_name="python3", progress_bar=False)
    seconds = time.perf_counter() - start
    print(f"{path.name}: {seconds:.1f} s")
    out = json.loads((tmp_path / path.name).read_text())
    errors = [o for c in out["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert any("image/png" in o.get("data", {}) for c in out["cells"] for o in c.get("outputs", [])), \
        "every notebook shows at least one figure"


def _full_runner():
    """``tests/run_notebooks_full.py`` (a script, not a module of the package) loaded as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("run_notebooks_full", Path(__file__).parent / "run_notebooks_full.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_full_runner_merges_runs_and_lists_notebooks_not_run(tmp_path, monkeypatch):
    runner = _full_runner()
    (tmp_path / "notebooks").mkdir()
    for name in ("00_a", "01_b", "02_c", "03_d"):
        (tmp_path / "notebooks" / f"{name}.ipynb").write_text("{}")
    out = tmp_path / "times.json"
    monkeypatch.setattr(runner, "ROOT", tmp_path)
    monkeypatch.setattr(runner, "OUT", out)
    seconds = {"00_a": 5.0, "01_b": 2000.0, "02_c": 7.0}

    def fake(path, _out, timeout):
        ok = seconds[path.stem] < (timeout or 1e9)
        return {"notebook": path.name, "status": "ok" if ok else "stopped", "ok": ok, "seconds": seconds[path.stem],
                "error": None if ok else "not completed", "load_average_before": (1.0, 1.0, 1.0),
                "load_average_after": (2.0, 1.0, 1.0)}

    monkeypatch.setattr(runner, "run_one", fake)
    runner.main(["00"])
    runner.main(["--timeout", "1200", "01"])
    runner.main(["--not-run", "03", "too long under this load"])
    saved = json.loads(out.read_text())
    assert [r["notebook"] for r in saved["rows"]] == ["00_a.ipynb", "01_b.ipynb"]  # the first run's row is kept
    assert [r["status"] for r in saved["rows"]] == ["ok", "stopped"]
    assert saved["not_run"] == [{"notebook": "02_c.ipynb", "reason": "not run yet"},
                                {"notebook": "03_d.ipynb", "reason": "too long under this load"}]
    assert saved["machine"]["cpu"] and saved["target_s"] == 900
    runner.main(["02"])
    assert [r["notebook"] for r in json.loads(out.read_text())["not_run"]] == ["03_d.ipynb"]


@pytest.mark.slow
def test_full_runner_stops_a_notebook_past_its_timeout_and_reads_its_conditions(tmp_path):
    pytest.importorskip("papermill")
    import nbformat

    runner = _full_runner()
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "language": "python",
                                                           "display_name": "Python 3"}})
    nb.cells = [nbformat.v4.new_code_cell("QUICK = True", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("print('1 torch thread · load 0.1 (1/5/15 min)')"),
                nbformat.v4.new_code_cell("import time\nif not QUICK:\n    time.sleep(120)")]
    path = tmp_path / "slow.ipynb"
    nbformat.write(nb, path)
    row = runner.run_one(path, tmp_path / "out.ipynb", timeout=8)
    assert row["status"] == "stopped" and not row["ok"] and row["seconds"] < 60 and "8 s" in row["error"]
    assert row["conditions"] is None or row["conditions"].startswith("1 torch thread")
    nb.cells[2] = nbformat.v4.new_code_cell("assert not QUICK")  # full mode reached the notebook
    nbformat.write(nb, path)
    row = runner.run_one(path, tmp_path / "out.ipynb", timeout=60)
    assert row["status"] == "ok" and row["conditions"] == "1 torch thread · load 0.1 (1/5/15 min)"
