"""A small report writer: headings, text, tables and figures → ``report.md`` and ``report.html``."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Table:
    df: pd.DataFrame
    caption: str = ""
    floatfmt: str = "{:,.2f}"


@dataclass(frozen=True)
class FigureFile:
    path: str  # relative to the report's folder
    caption: str


Block = Heading | str | Table | FigureFile  # a str is a paragraph


@dataclass
class Report:
    """Collects blocks in order and writes them as Markdown and as standalone HTML."""

    out: Path
    title: str
    blocks: list[Block] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        (self.out / "figures").mkdir(parents=True, exist_ok=True)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(Heading(text, level))

    def text(self, text: str) -> None:
        self.blocks.append(text)

    def table(self, df: pd.DataFrame, caption: str = "", floatfmt: str = "{:,.2f}") -> None:
        self.blocks.append(Table(df, caption, floatfmt))

    def figure(self, fig: Figure, name: str, caption: str) -> Path:
        path = self.out / "figures" / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        self.blocks.append(FigureFile(f"figures/{name}.png", caption))
        return path

    @staticmethod
    def _cells(table: Table) -> pd.DataFrame:
        fmt = table.floatfmt
        return table.df.apply(lambda col: col.map(lambda v: fmt.format(v) if isinstance(v, float) else v))

    def markdown(self) -> str:
        lines = [f"# {self.title}", ""]
        for block in self.blocks:
            if isinstance(block, Heading):
                lines += ["#" * block.level + " " + block.text, ""]
            elif isinstance(block, str):
                lines += [block, ""]
            elif isinstance(block, Table):
                cells = self._cells(block).astype(str)
                lines.append("| " + " | ".join(map(str, block.df.columns)) + " |")
                lines.append("|" + "---|" * len(block.df.columns))
                lines += ["| " + " | ".join(row) + " |" for row in cells.itertuples(index=False)]
                lines += ([f"\n*{block.caption}*"] if block.caption else []) + [""]
            else:
                lines += [f"![{block.caption}]({block.path})", "", f"*{block.caption}*", ""]
        return "\n".join(lines)

    def html(self) -> str:
        parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(self.title)}</title>",
                 "<style>body{font-family:sans-serif;max-width:1000px;margin:auto}table{border-collapse:collapse}"
                 "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}img{max-width:100%}</style>",
                 f"<h1>{html.escape(self.title)}</h1>"]
        for block in self.blocks:
            if isinstance(block, Heading):
                parts.append(f"<h{block.level}>{html.escape(block.text)}</h{block.level}>")
            elif isinstance(block, str):
                parts.append(f"<p>{html.escape(block)}</p>")
            elif isinstance(block, Table):
                parts.append(self._cells(block).to_html(index=False, escape=True))
                if block.caption:
                    parts.append(f"<p><em>{html.escape(block.caption)}</em></p>")
            else:
                parts.append(f"<figure><img src='{block.path}'><figcaption>{html.escape(block.caption)}</figcaption>"
                             "</figure>")
        return "\n".join(parts)

    def write(self) -> Path:
        (self.out / "report.html").write_text(self.html())
        path = self.out / "report.md"
        path.write_text(self.markdown())
        return path
