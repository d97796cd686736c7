"""The README quotes recorded results: its tables must agree with the data/ files they name."""

import re
from pathlib import Path

import pytest

from lrdlab.explore.recorded import read

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ["weights", "weights+bn", "data", "data+bn", "data+bn+ft"]


def _table_after(marker: str) -> list[list[str]]:
    lines = (ROOT / "docs" / "accuracy.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if marker in line)
    rows = []
    for line in lines[start + 1:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return [r for r in rows[2:] if r]  # drop the header and the --- row


@pytest.mark.parametrize("model", ["resnet20", "vit_tiny"])
def test_accuracy_table_matches_the_recorded_study(model):
    marker = f"<!-- accuracy-table: data/accuracy_f11_mnist5k.json {model} -->"
    rows = _table_after(marker)
    assert rows, f"the README lost its {model} accuracy table"
    recorded = read("accuracy_f11_mnist5k.json").rows
    recorded = recorded[(recorded["model"] == model) & (recorded["granularity"] == 1)]
    for cells in rows:
        ratio = float(cells[0])
        at = recorded[recorded["ratio"] == ratio]
        assert int(cells[1].replace(",", "")) == int(at["params"].iloc[0]), f"params at {ratio}"
        for variant, cell in zip(VARIANTS, cells[2:]):
            value = at[at["variant"] == variant]["accuracy"].iloc[0]
            assert float(cell) == round(float(value), 1), f"{variant} at ratio {ratio}: README {cell}, data {value}"
    # and the whole table is the one tools/readme_blocks.py renders from that file (every ratio, none left out)
    from lrdlab.measure.records import read_record
    from tools.readme_blocks import accuracy_table

    table = accuracy_table(read_record("accuracy_f11_mnist5k.json"), model)
    readme = (ROOT / "docs" / "accuracy.md").read_text()
    assert f"{marker}\n{table}\n" in readme, "regenerate: tools.readme_blocks.accuracy_table(result, model)"


DOC_PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("page", DOC_PAGES, ids=[p.name for p in DOC_PAGES])
def test_pages_name_only_commands_that_exist(page):
    from lrdlab.cli import build_parser
    from tools.record.__main__ import build_parser as record_parser

    text = page.read_text()
    commands = set(build_parser()._subparsers._group_actions[0].choices)  # noqa: SLF001
    records = set(record_parser()._subparsers._group_actions[0].choices)  # noqa: SLF001
    for what in re.findall(r"`lrdlab ([a-z][a-z-]*)", text):
        assert what in commands, f"{page.name} names `lrdlab {what}`, which does not exist (see lrdlab --help)"
    for what in re.findall(r"python -m tools\.record ([a-z-]+)", text):
        assert what in records, f"{page.name} names `python -m tools.record {what}`, which does not exist"


@pytest.mark.slow
def test_readme_accuracy_snippet_does_what_its_comments_say():
    text = (ROOT / "README.md").read_text()
    block = text.split("```python", 1)[1].split("```", 1)[0]
    snippet = block[block.index("# accuracy:"):]
    calibrate, finetune = snippet[:snippet.index("tuned =")], snippet[snippet.index("tuned ="):]
    scope: dict = {}
    exec(compile("import lrdlab\n" + calibrate, "README.md", "exec"), scope)  # noqa: S102 - the README's own code
    calibrated = scope["lrdlab"].evaluate(scope["small"], scope["loaders"].test)["accuracy"]
    assert calibrated >= 96.0, f"README says ≈ 97% at 3x, got {calibrated:.1f}"
    exec(compile(finetune, "README.md", "exec"), scope)  # noqa: S102
    assert scope["tuned"]["accuracy"].iloc[-1] >= 96.0, "one distilled epoch keeps the calibrated model's accuracy"


def test_transformer_section_is_the_one_generated_from_data():
    from tools.readme import current_block
    from tools.readme_blocks import TRANSFORMERS_BEGIN, TRANSFORMERS_END, transformers_section

    block = current_block((ROOT / "docs" / "transformers.md").read_text(), TRANSFORMERS_BEGIN, TRANSFORMERS_END)
    assert block == transformers_section(ROOT / "data"), "run `make readme`"


def test_readme_is_short_and_its_generated_blocks_are_current():
    from tools.readme import PAGES, current_block, sections

    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 120, "the README is a two-minute read: move detail to docs/"
    for name in PAGES["README.md"]:
        begin, end, render = sections()[name]
        assert current_block(text, begin, end) == render(ROOT / "data"), f"README's {name} block is stale: make readme"
    for page in PAGES:
        assert (ROOT / page).exists() and f"]({page})" in text or page == "README.md", f"README links {page}"
