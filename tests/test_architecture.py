"""The package's shape: stages import only earlier stages, no module imports itself back (not even from inside
a function), no private name crosses modules, public functions take few parameters, `import lrdlab` stays light,
each concept has one home (one speed-up record, one interleaved timer, each shared CLI option defined once), the
papers' code is a small share of the library (developer tools live in tools/, outside it), and an installed wheel
carries the reference data the explorers read and the shipped weights, and no tools. Functions stay simple by
ruff's per-function complexity limit (C901, pyproject.toml), not by a cap on module length."""

import ast
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "lrdlab"
STAGES = ["lowrank", "finetune", "measure", "zoo", "explore", "paper", "cli"]  # the flow of data, in order
HEAVY = ["matplotlib", "seaborn", "ipywidgets", "mlxtend", "sklearn", "transformers", "onnxruntime"]


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


MAX_PARAMS = 10
# Public functions over MAX_PARAMS parameters today, each to move its options into a config object; none may join.
TOO_MANY_PARAMS: set[str] = set()
# lrdlab/paper/ holds only what `lrdlab reproduce` and its report need; recording and README generation are developer
# tools in tools/ (23% of the package before tools/ existed, 15% after, 13% with the recorders moved out too).
PAPER_SHARE = 0.14
# Import cycles allowed (none: move the shared part down a level instead).
CYCLE_EXCEPTIONS: list[set[str]] = []
# Modules whose private names other modules may use (none: make the name public or move it).
PRIVATE_EXCEPTIONS: set[str] = set()


def _name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_nodes(tree: ast.AST):
    """Every node except those under ``if TYPE_CHECKING:`` (annotations only: never imported at run time)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if not (isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
            todo.extend(ast.iter_child_nodes(node))


def _graph() -> dict[str, set[str]]:
    """Module → the lrdlab modules it imports at run time (top level or inside functions)."""
    names = {_name(p) for p in PKG.rglob("*.py")}
    graph = {}
    for path in PKG.rglob("*.py"):
        found = set()
        for node in _runtime_nodes(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in names else node.module
                          for a in node.names}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
        graph[_name(path)] = {m for m in found if m in names} - {_name(path)}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_stages_import_only_earlier_stages():
    wrong = []
    for path in _modules():
        own = _stage("lrdlab." + ".".join(path.relative_to(PKG).with_suffix("").parts))
        for module in _imports(path):
            other = _stage(module)
            if own and other and STAGES.index(other) > STAGES.index(own):
                wrong.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not wrong, "an earlier stage imports a later one:\n" + "\n".join(wrong)


def test_no_import_cycles_even_through_function_level_imports():
    cycles = [sorted(c) for c in _cycles(_graph()) if c not in CYCLE_EXCEPTIONS]
    assert not cycles, f"modules that import each other (move the shared part down a level): {cycles}"


def test_cycle_detector_sees_function_level_imports():
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [{"a", "b"}]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_private_name_is_imported_across_modules():
    modules = {_name(p) for p in PKG.rglob("*.py")}
    wrong = []
    for path in _modules():
        aliases: dict[str, str] = {}
        for node in _runtime_nodes(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lrdlab"):
                for a in node.names:
                    full = f"{node.module}.{a.name}"
                    if full in modules:
                        aliases[a.asname or a.name] = full
                    elif a.name.startswith("_") and node.module not in PRIVATE_EXCEPTIONS:
                        wrong.append(f"{_name(path)} imports {full}")
            elif isinstance(node, ast.Import):
                aliases.update({a.asname: a.name for a in node.names if a.asname and a.name in modules})
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")
                    and aliases[node.value.id] not in PRIVATE_EXCEPTIONS):
                wrong.append(f"{_name(path)} uses {aliases[node.value.id]}.{node.attr}")
    assert not wrong, "private names used outside their module (make them public or move them):\n" + "\n".join(wrong)


def test_public_functions_take_few_parameters():
    over = {}
    for path in _modules():
        def visit(body, prefix):
            for node in body:
                if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                    visit(node.body, f"{prefix}{node.name}.")
                elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and not node.name.startswith("_"):
                    a = node.args
                    n = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs)
                    n -= bool(a.args) and a.args[0].arg in ("self", "cls")
                    if n > MAX_PARAMS:
                        over[f"{prefix}{node.name}"] = n

        visit(ast.parse(path.read_text()).body, _name(path) + ".")
    new = {k: v for k, v in over.items() if k not in TOO_MANY_PARAMS}
    assert not new, f"public functions over {MAX_PARAMS} parameters (group options in a config dataclass): {new}"
    fixed = TOO_MANY_PARAMS - set(over)
    assert not fixed, f"these now take few enough parameters: drop them from TOO_MANY_PARAMS: {sorted(fixed)}"


def _lines(paths) -> int:
    return sum(len(p.read_text().splitlines()) for p in paths)


def test_the_papers_code_is_a_small_share_of_the_package():
    paper, package = _lines((PKG / "paper").rglob("*.py")), _lines(PKG.rglob("*.py"))
    share = paper / package
    assert share <= PAPER_SHARE, (f"lrdlab/paper/ is {paper} of {package} lines ({share:.1%} > {PAPER_SHARE:.0%}): "
                                  "move recording and generating code to tools/, keep what `lrdlab reproduce` needs")


def test_the_package_never_imports_the_developer_tools():
    wrong = [f"{_name(p)} imports {m}" for p in _modules() for m in _tool_imports(p)]
    assert not wrong, "lrdlab must work without the checkout's tools/ (they are not in the wheel):\n" + "\n".join(wrong)


def _tool_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {m for m in found if m == "tools" or m.startswith("tools.")}


# One home per concept: a pattern → the files (under lrdlab/ and tools/) where it may appear. Anything else is a
# second copy of something that exists (use the home instead).
ONE_HOME: dict[str, set[str]] = {
    # speed-ups: the one record is measure/stats.py's SpeedUp (of, from_pct, from_row, from_flat, text, to_pct)
    r"(?m)^def (ratio_summary|verdict|within_noise|half_width|_recorded)\(": set(),  # dict-based copies of it
    r"class SpeedUp\b": {"lrdlab/measure/stats.py"},
    r"def speedup_text\(": {"lrdlab/explore/recorded.py",
                            "lrdlab/explore/rank_lab.py"},  # the explorer's text of a live widget state
    # timing: the one interleaved loop (A B, then B A) is measure/interleave.py; the one clock is time_function
    r"\[::\s*-1\s*\]?\s*if\b[^\n]*% 2": {"lrdlab/measure/interleave.py"},
    r"def (measure_inference|measure_training)\(|class Timing\b": set(),
    # one count check (finetune/fit_config.check_count) and each shared CLI option defined once (cli/common.py)
    r"def _count\(": set(),
    r"[\"']--(threads|ratio|granularity)[\"']": {"lrdlab/cli/common.py"},
}


def _home_violations(files: dict[str, str]) -> list[str]:
    return [f"{name}: {pattern}" for pattern, homes in ONE_HOME.items() for name, text in files.items()
            if name not in homes and re.search(pattern, text)]


def test_each_concept_has_one_home():
    files = {str(p.relative_to(ROOT)): p.read_text() for d in ("lrdlab", "tools") for p in (ROOT / d).rglob("*.py")}
    wrong = _home_violations(files)
    assert not wrong, "a second copy of something that has one home (see ONE_HOME):\n" + "\n".join(wrong)
    assert all(h in files for homes in ONE_HOME.values() for h in homes), "a home in ONE_HOME no longer exists"


def test_the_one_home_check_sees_copies():
    copies = {"a.py": "def ratio_summary(a, b):", "b.py": "order = steps[:: -1 if r % 2 else 1]",
              "c.py": 'p.add_argument("--threads", type=int)', "d.py": "def _count(v, name, least):"}
    assert len(_home_violations(copies)) == 4
    assert _home_violations({"lrdlab/cli/common.py": 'p.add_argument("--threads")'}) == []


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
    assert not any(n.startswith(("tests/", "notebooks/", "data/", "tools/")) for n in names)


def test_docs_architecture_names_every_module():
    doc = (ROOT / "docs" / "architecture.md").read_text()
    missing = [str(p.relative_to(ROOT)) for p in _modules()
               if p.name not in ("__init__.py", "__main__.py") and f"`{p.stem}`" not in doc]
    assert not missing, f"docs/architecture.md does not name these modules: {missing}"
