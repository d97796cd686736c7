"""The generated sections of the README and of docs/: each is rendered from the ``data/`` files it quotes, the
tests keep the pages equal to them, and ``python -m tools.readme`` (``make readme``, :func:`regenerate`) rewrites
them after a re-recording."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

Section = tuple[str, str, Callable[[Path], str]]  # begin marker, end marker, renderer of data/ → the block


def sections() -> dict[str, Section]:
    """The generated sections by name."""
    from tools import lm_section as lm_study
    from tools import readme_blocks as blocks
    from tools.record import calibration_modes

    return {"speed": (blocks.SPEED_BEGIN, blocks.SPEED_END, blocks.speed_section),
            "transformers": (blocks.TRANSFORMERS_BEGIN, blocks.TRANSFORMERS_END, blocks.transformers_section),
            "speed-story": (blocks.STORY_BEGIN, blocks.STORY_END, blocks.speed_story_section),
            "speed-story-doc": (blocks.STORY_BEGIN, blocks.STORY_END,
                                lambda data: blocks.speed_story_section(data, links="../")),
            "accuracy": (calibration_modes.README_BEGIN, calibration_modes.README_END, calibration_modes.headline),
            "language-models": (lm_study.SECTION_BEGIN, lm_study.SECTION_END, lm_study.lm_section)}


PAGES = {"README.md": ("accuracy", "speed-story"), "docs/speed.md": ("speed-story-doc", "speed"),
         "docs/transformers.md": ("transformers",),
         "docs/language_models.md": ("language-models",)}  # page (from the repository root) → its generated sections


def current_block(text: str, begin: str, end: str) -> str:
    """The block of ``text`` from ``begin`` to ``end`` inclusive (ValueError naming the marker when absent)."""
    for marker in (begin, end):
        if marker not in text:
            raise ValueError(f"page has no marker {marker!r}: add the begin/end pair where the section goes")
    return text[text.index(begin):text.index(end) + len(end)]


def rewrite(page: str | Path, names: tuple[str, ...], data: str | Path = "data") -> list[str]:
    """Rewrite the sections ``names`` of ``page`` from ``data``; returns the names of those that changed. A missing
    marker raises ValueError before anything is written."""
    path = Path(page)
    changed: list[str] = []
    text = path.read_text()
    for name in names:
        begin, end, render = sections()[name]
        old, new = current_block(text, begin, end), render(Path(data))
        if old != new:
            text, changed = text.replace(old, new), [*changed, name]
    path.write_text(text)
    return changed


def regenerate(root: str | Path = ".", data: str | Path | None = None) -> list[str]:
    """Rewrite every generated section of the README and docs/ under ``root``; returns ``page:section`` names."""
    root = Path(root)
    data = Path(data) if data is not None else root / "data"
    return [f"{page}:{name}" for page, names in PAGES.items() for name in rewrite(root / page, names, data)]


if __name__ == "__main__":
    print("regenerated:", ", ".join(regenerate()) or "nothing")
