"""A small report writer: headings, text, tables and figures → ``report.md`` and ``report.html``."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure


@dataclass
class Report:
    """Collects blocks in order and writes them as Markdown and as standalone HTML."""

    out: Path
    title: str
    blocks: list[tuple[str, object]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        (self.out / "figures").mkdir(parents=True, exist_ok=True)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("heading", (level, text)))

    def text(self, text: str) -> None:
        self.blocks.append(("text", text))

    def table(self, df: pd.DataFrame, caption: str = "", floatfmt: str = "{:,.2f}") -> None:
        self.blocks.append(("table", (df, caption, floatfmt)))

    def figure(self, fig: Figure, name: str, caption: str) -> Path:
        path = self.out / "figures" / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        self.blocks.append(("figure", (f"figures/{name}.png", caption)))
        return path

    @staticmethod
    def _cells(df: pd.DataFrame, floatfmt: str) -> pd.DataFrame:
        return df.apply(lambda col: col.map(lambda v: floatfmt.format(v) if isinstance(v, float) else v))

    def markdown(self) -> str:
        lines = [f"# {self.title}", ""]
        for kind, body in self.blocks:
            if kind == "heading":
                level, text = body
                lines += ["#" * level + " " + text, ""]
            elif kind == "text":
                lines += [body, ""]
            elif kind == "table":
                df, caption, fmt = body
                cells = self._cells(df, fmt).astype(str)
                lines.append("| " + " | ".join(map(str, df.columns)) + " |")
                lines.append("|" + "---|" * len(df.columns))
                lines += ["| " + " | ".join(row) + " |" for row in cells.itertuples(index=False)]
                lines += ([f"\n*{caption}*"] if caption else []) + [""]
            else:
                path, caption = body
                lines += [f"![{caption}]({path})", "", f"*{caption}*", ""]
        return "\n".join(lines)

    def html(self) -> str:
        parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(self.title)}</title>",
                 "<style>body{font-family:sans-serif;max-width:1000px;margin:auto}table{border-collapse:collapse}"
                 "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}img{max-width:100%}</style>",
                 f"<h1>{html.escape(self.title)}</h1>"]
        for kind, body in self.blocks:
            if kind == "heading":
                level, text = body
                parts.append(f"<h{level}>{html.escape(text)}</h{level}>")
            elif kind == "text":
                parts.append(f"<p>{html.escape(body)}</p>")
            elif kind == "table":
                df, caption, fmt = body
                parts.append(self._cells(df, fmt).to_html(index=False, escape=True))
                if caption:
                    parts.append(f"<p><em>{html.escape(caption)}</em></p>")
            else:
                path, caption = body
                parts.append(f"<figure><img src='{path}'><figcaption>{html.escape(caption)}</figcaption></figure>")
        return "\n".join(parts)

    def write(self) -> Path:
        (self.out / "report.html").write_text(self.html())
        path = self.out / "report.md"
        path.write_text(self.markdown())
        return path
