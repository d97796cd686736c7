"""The package's shape: stages import only earlier stages, `import lrdlab` stays light, modules stay small,
and an installed wheel carries the reference data the explorers read and the shipped trained weights."""

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "lrdlab"
STAGES = ["lowrank", "finetune", "measure", "zoo", "explore", "paper", "cli"]  # the flow of data, in order
HEAVY = ["matplotlib", "seaborn", "ipywidgets", "mlxtend", "sklearn", "transformers", "onnxruntime"]
MAX_LINES = 400


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "lrdlab" and parts[1] in STAGES else None


def _imports(path: Path) -> set[str]:
    """Every lrdlab module a file imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {m for m in found if m.startswith("lrdlab")}


def _modules() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py") if p.name != "__init__.py" or p.parent != PKG)


def test_stages_import_only_earlier_stages():
    wrong = []
    for path in _modules():
        own = _stage("lrdlab." + ".".join(path.relative_to(PKG).with_suffix("").parts))
        for module in _imports(path):
            other = _stage(module)
            if own and other and STAGES.index(other) > STAGES.index(own):
                wrong.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not wrong, "an earlier stage imports a later one:\n" + "\n".join(wrong)


def test_modules_stay_small():
    big = {str(p.relative_to(ROOT)): n for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"


def test_import_lrdlab_loads_no_ui_plotting_or_dataset_library():
    code = ("import sys, lrdlab, lrdlab.lowrank.plan, lrdlab.lowrank.decompose, lrdlab.finetune.loop, "
            "lrdlab.measure.rank_search, lrdlab.measure.sweeps, lrdlab.cli; lrdlab.make_plan; lrdlab.decompose; "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_every_public_name_resolves():
    import lrdlab

    for name in lrdlab.__all__:
        assert getattr(lrdlab, name) is not None, name
    with pytest.raises(AttributeError):
        lrdlab.no_such_thing  # noqa: B018


@pytest.mark.slow
def test_the_wheel_carries_the_reference_data(tmp_path):
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True, cwd=tmp_path)
    wheel = next(tmp_path.glob("lrdlab-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {str(p.relative_to(ROOT)) for p in (PKG / "explore" / "reference").glob("*.json")}
    shipped |= {str(p.relative_to(ROOT)) for p in (PKG / "zoo" / "weights").glob("*")}  # lrdlab.pretrained
    assert shipped and shipped <= names, sorted(shipped - names)
    assert "lrdlab/py.typed" in names
    assert not any(n.startswith(("tests/", "notebooks/", "data/")) for n in names)
