"""The README's generated sections: each is rendered from the ``data/`` files it quotes, the tests keep the README
equal to them, and ``make readme`` (:func:`regenerate`) rewrites them after a re-recording."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

Section = tuple[str, str, Callable[[Path], str]]  # begin marker, end marker, renderer of data/ → the block


def sections() -> dict[str, Section]:
    """The generated sections by name."""
    from lrdlab.paper import speed_checks, transformers_report

    return {"speed": (speed_checks.README_BEGIN, speed_checks.README_END, speed_checks.readme_speed_section),
            "transformers": (transformers_report.README_BEGIN, transformers_report.README_END,
                             transformers_report.readme_section)}


def current_block(text: str, begin: str, end: str) -> str:
    """The block of ``text`` from ``begin`` to ``end`` inclusive (ValueError naming the marker when absent)."""
    for marker in (begin, end):
        if marker not in text:
            raise ValueError(f"README has no marker {marker!r}: add the begin/end pair where the section goes")
    return text[text.index(begin):text.index(end) + len(end)]


def regenerate(readme: str | Path = "README.md", data: str | Path = "data") -> list[str]:
    """Rewrite every generated section of ``readme`` from ``data``; returns the names of those that changed."""
    path, changed = Path(readme), []
    text = path.read_text()
    for name, (begin, end, render) in sections().items():
        old, new = current_block(text, begin, end), render(Path(data))
        if old != new:
            text, changed = text.replace(old, new), [*changed, name]
    path.write_text(text)
    return changed
