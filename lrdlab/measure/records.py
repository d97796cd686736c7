"""The one writer and the one reader of recorded results (the JSON files in ``data/`` and beside the explorers).

One format: indent 1, UTF-8 text, a trailing newline; numpy and torch scalars as plain numbers, anything else JSON
cannot hold (a path, a dtype) as its text. The writer adds nothing: a record names its machine and load average
itself, taken when it was measured (at write time the load would be another one).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar


def data_dir() -> Path:
    """Where recorded results live: ``$LRDLAB_DATA``, else the checkout's ``data/`` folder."""
    return Path(os.environ.get("LRDLAB_DATA", Path(__file__).resolve().parents[2] / "data"))


def _plain(value: Any) -> Any:
    """What :func:`json.dumps` cannot write: an array's numbers, a record's ``to_dict()``, another number as a float,
    else its text."""
    if hasattr(value, "tolist"):  # numpy and torch scalars and arrays
        return value.tolist()
    if hasattr(value, "to_dict"):  # a typed record (StudyRecord, BenchReport, a config)
        return value.to_dict()
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def record_text(record: Any) -> str:
    """``record`` as the text :func:`write_record` writes."""
    return json.dumps(record, indent=1, default=_plain) + "\n"


def write_record(path: str | Path, record: Any) -> Path:
    """Write ``record`` (a dict of JSON values) to ``path`` in the one format, creating the folder; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(record_text(record))
    return path


def record_path(name_or_path: str | Path) -> Path:
    """A bare file name (``"aa_check_cpu.json"``) is looked up in :func:`data_dir`; a path with a folder is itself."""
    path = Path(name_or_path)
    return data_dir() / path if len(path.parts) == 1 else path


def read_record(name_or_path: str | Path) -> Any:
    """A recorded JSON file, by name in :func:`data_dir` or by path (FileNotFoundError naming it when absent)."""
    path = record_path(name_or_path)
    if not path.is_file():
        raise FileNotFoundError(f"no recorded file {path}: record it first (the commands are in docs/reproduction.md)")
    return json.loads(path.read_text())


def check_fields(cls: type, raw: dict[str, Any], what: str) -> None:
    """Raise ``ValueError`` if the recorded ``raw`` has fields the record class ``cls`` does not know (``what``
    names the record in the message), so that a newer file is not silently read in part."""
    unknown = sorted(set(raw) - {f.name for f in fields(cls)})
    if unknown:
        raise ValueError(f"{what} has fields {unknown} that {cls.__name__} does not know: add them to "
                         f"{cls.__module__}.{cls.__qualname__}")


@dataclass(frozen=True)
class StudyRecord:
    """Base of a study's typed result: its ``rows`` (one dict per measured variant) and what it ran with.

    A notebook shows it as a table of the rows' :attr:`COLUMNS` (``str()`` the same as text); :meth:`table` is all
    the rows as a DataFrame and :meth:`to_dict` the recorded JSON form (the fields by name)."""

    COLUMNS: ClassVar[tuple[str, ...]] = ()

    def row_list(self) -> list[dict[str, Any]]:
        """The rows shown: the ``rows`` field (a subclass with other row fields overrides this)."""
        return list(self.rows)  # type: ignore[attr-defined]

    def title(self) -> str:
        return type(self).__name__

    def table(self):
        """The rows as a pandas DataFrame (every column)."""
        import pandas as pd

        return pd.DataFrame(self.row_list())

    def _shown(self):
        table = self.table()
        return table[[c for c in self.COLUMNS if c in table.columns] or list(table.columns)]

    def __str__(self) -> str:
        return f"{self.title()}\n{self._shown().to_string(index=False)}"

    def _repr_html_(self) -> str:
        return f"<p>{self.title()}</p>{self._shown().to_html(index=False)}"

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}
