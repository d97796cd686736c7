"""Notebooks import only the public API (`lrdlab`) and the explorers (`lrdlab.explore`), as a user's code would
(issue 36 item 2): an import from inside another stage fails here."""

import ast
import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


def public(module: str) -> bool:
    return module == "lrdlab" or module == "lrdlab.explore" or module.startswith("lrdlab.explore.")


def internal_imports(path: Path) -> set[str]:
    """The lrdlab modules a notebook's code cells import that are neither ``lrdlab`` nor ``lrdlab.explore…``."""
    found = set()
    for cell in json.loads(path.read_text())["cells"]:
        if cell["cell_type"] != "code":
            continue
        source = "\n".join(line for line in "".join(cell["source"]).splitlines()
                           if not line.lstrip().startswith(("%", "!")))  # IPython magics are not Python
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
    return {m for m in found if (m == "lrdlab" or m.startswith("lrdlab.")) and not public(m)}


def test_the_checker_sees_internal_imports(tmp_path):
    nb = {"cells": [{"cell_type": "code", "source": ["%matplotlib inline\n", "import lrdlab\n",
                                                     "from lrdlab.explore import plots\n",
                                                     "from lrdlab.explore.lm_lab import live_check\n",
                                                     "if True:\n", "    from lrdlab.lowrank.plan import MIN_RANK\n",
                                                     "import lrdlab.measure.stats as s\n",
                                                     "print('from lrdlab.paper import x')\n"]}]}
    path = tmp_path / "n.ipynb"
    path.write_text(json.dumps(nb))
    assert internal_imports(path) == {"lrdlab.lowrank.plan", "lrdlab.measure.stats"}


def test_the_explorers_helpers_resolve_and_come_from_earlier_stages():
    import lrdlab.explore as explore

    stages = ["lowrank", "finetune", "measure", "zoo"]  # before explore (tests/test_architecture.py STAGES)
    for name in explore.__all__:
        assert getattr(explore, name) is not None, name
        assert explore._HELPERS[name].split(".")[1] in stages, name
    with pytest.raises(AttributeError):
        explore.no_such_thing  # noqa: B018


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebooks_import_only_the_public_api_and_the_explorers(path):
    found = internal_imports(path)
    assert not found, (f"{path.name} imports {sorted(found)} from inside the package: use `lrdlab` (export the name in "
                       "lrdlab/__init__.py) or `lrdlab.explore`")
