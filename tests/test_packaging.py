"""environment.yml (conda users, and what CI installs) stays in step with pyproject.toml."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _pip_list() -> list[str]:
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = lines.index("  - pip:")
    return [line.strip()[2:] for line in lines[start + 1:] if line.startswith("      - ")]


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r) for r in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        wanted |= {_name(r) for r in extra if not r.startswith("lrdlab[")}
    listed = {_name(r) for r in _pip_list() if not r.startswith("-e")}
    assert listed == wanted


def test_environment_yml_pins_the_torch_pair_and_installs_lrdlab():
    pip = _pip_list()
    assert "torch==2.14.1" in pip and "torchvision==0.29.1" in pip, "never leave torchvision unpinned beside torch"
    assert "-e ." in pip


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make test" in ci


def test_the_version_is_one_number():
    import lrdlab

    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"] == lrdlab.__version__


def test_make_has_a_fast_tier_and_a_full_one_with_durations():
    make = (ROOT / "Makefile").read_text()
    fast = make[make.index("\ntest-fast:"):].split("\n\n")[0]
    full = make[make.index("\ntest:"):].split("\n\n")[0]
    assert '-m "not slow and not browser"' in fast and "--durations=" in fast
    assert "-m " not in full.split("pytest", 1)[1] and "--durations=" in full and "deadcode" in full
