"""Recorded results as tables (``data/*.json`` and ``*.csv``): rows plus the machine and command.

Every recorded file names the machine it was measured on and the command that wrote it; notebooks and
the report read them through :func:`read` so that each number they show can say where it came from. The JSON
itself is read and written by :mod:`lrdlab.measure.records` (the one reader and writer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from lrdlab.measure.records import data_dir, read_record
from lrdlab.measure.stats import SpeedUp

__all__ = ["ROW_KEYS", "Recorded", "available", "data_dir", "read", "speedup_text", "throughput_table"]
ROW_KEYS = ("rows", "merge_rows", "branch_rows")


@dataclass
class Recorded:
    """One recorded result: its rows as a table, the machine and command, and the whole file (``meta``)."""

    name: str
    rows: pd.DataFrame
    machine: dict[str, Any] = field(default_factory=dict)
    command: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def source(self) -> str:
        """One line naming the machine: CPU or GPU, threads, torch version."""
        m = self.machine
        where = m.get("device_name") or m.get("cpu", "?")
        return f"{where}, {m.get('torch_threads', '?')} thread(s), torch {m.get('torch_version', '?')}"

    def table(self, key: str) -> pd.DataFrame:
        """Another list of rows in the same file (e.g. ``merge_rows``), as a table."""
        return pd.DataFrame(self.meta.get(key) or [])


def _sidecar(path: Path) -> dict[str, Any]:
    """The JSON that describes a CSV: same stem, or the stem without its last ``_part``."""
    for candidate in (path.with_suffix(".json"), path.with_name(path.stem.rsplit("_", 1)[0] + ".json")):
        if candidate.is_file():
            return read_record(candidate.absolute())
    return {}


def available(pattern: str = "*", directory: str | Path | None = None) -> list[str]:
    """Names of the recorded files matching ``pattern`` (e.g. ``"techniques_*.json"``), sorted."""
    root = Path(directory) if directory else data_dir()
    return sorted(p.name for p in root.glob(pattern) if p.suffix in (".json", ".csv"))


def read(name: str, directory: str | Path | None = None, rows: str = "rows") -> Recorded | None:
    """Read ``data/<name>``; ``None`` when it has not been recorded (yet) on this checkout.

    JSON: ``rows`` picks the list of rows (default ``"rows"``); CSV: the rows, with the machine and
    command from the JSON beside it.
    """
    path = (Path(directory) if directory else data_dir()) / name
    if not path.is_file():
        return None
    if path.suffix == ".csv":
        meta = _sidecar(path)
        table = pd.read_csv(path)
    elif path.suffix == ".json":
        meta = read_record(path.absolute())
        table = pd.DataFrame(meta.get(rows) or [])
    else:
        raise ValueError(f"recorded results are .json or .csv files (got {name!r})")
    return Recorded(name=name, rows=table, machine=meta.get("machine", {}), command=meta.get("command", ""),
                    meta=meta)


def speedup_text(row: Any, prefix: str = "") -> str:
    """A recorded row's ``{prefix}speedup_pct`` columns as :meth:`SpeedUp.text` (``"—"`` when it has none)."""
    up = SpeedUp.from_flat(row, prefix)
    return "—" if up is None else up.text()


def throughput_table(throughput: pd.DataFrame) -> pd.DataFrame:
    """F7 as a reader sees it: per technique, training / inference images/s and speed-up with its interval
    (the sequential freezing phases are summarised in ``lrd+sequential``; the original is the baseline)."""
    def speed(r: dict[str, Any], prefix: str) -> str:
        return "baseline" if r["technique"] == "original" else speedup_text(r, prefix)

    rows = throughput[~throughput["technique"].str.contains(r"\[")].to_dict("records")
    return pd.DataFrame([{"technique": r["technique"], "train img/s": round(r["train_img_s"], 1),
                          "train speed-up % [95% CI]": speed(r, "train_"),
                          "inference img/s": round(r["infer_img_s"], 1),
                          "inference speed-up % [95% CI]": speed(r, "infer_")} for r in rows])
