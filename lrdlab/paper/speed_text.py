"""Recorded speed-ups as a reader sees them: the interval text of a table row and the F7 throughput table."""

from __future__ import annotations

from typing import Any

import pandas as pd

from lrdlab.measure.stats import verdict


def speedup_text(row: dict[str, Any], prefix: str = "") -> str:
    """``"+12.3% [+8.1, +16.0]"`` (", within noise" when the interval covers 0); the bare median when a
    recorded result predates intervals."""
    med = row.get(f"{prefix}speedup_pct")
    lo, hi = row.get(f"{prefix}speedup_pct_ci_low"), row.get(f"{prefix}speedup_pct_ci_high")
    if med is None or pd.isna(med):
        return "—"
    if lo is None or hi is None or pd.isna(lo) or pd.isna(hi):
        return f"{med:+.1f}% (no interval)"
    return verdict({"median": med, "ci_low": lo, "ci_high": hi})


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
