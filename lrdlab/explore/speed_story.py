"""One story about speed: the report's speed section, the README's speed table and F12 from one measurement.

``python -m tools.record speed-story`` (a developer tool of the checkout) runs the reproduction's own techniques
stage (:func:`lrdlab.paper.reproduce.stage_techniques`, quick settings: batch 8, 112 px, eager) at each thread count
and writes ``data/speed_story_resnet50_cpu.json``. The README's table (:func:`story_table`), docs/speed.md and F12
read that file; the report puts its own run beside the recorded row of the same configuration and, when they
disagree beyond their intervals, names the settings that differ (:func:`differences`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

STORY_FILE = "speed_story_resnet50_cpu.json"
TECHNIQUES = {"vanilla LRD": "vanilla 2x", "optimized ranks": "searched ranks", "layer merging": "merging"}


@dataclass(frozen=True)
class SpeedConfig:
    """What a speed-up depends on besides the model: threads, backend, batch and resolution."""

    threads: int
    backend: str
    batch: int
    image_size: int

    def __str__(self) -> str:
        return (f"{self.backend}, {self.threads} thread{'s' if self.threads != 1 else ''}, batch {self.batch}, "
                f"{self.image_size} px")


@dataclass(frozen=True)
class StoryRow:
    """One technique's inference speed-up over the original in one configuration."""

    config: SpeedConfig
    technique: str
    speedup_pct: dict[str, Any]
    realised: float
    original_ms: float
    time_ms: float

    @property
    def cell(self) -> str:
        from lrdlab.measure.stats import SpeedUp

        return f"{SpeedUp.from_pct(self.speedup_pct).text()}; {self.realised:.2f}"


def story_rows(techniques: dict[str, Any], threads: int | None = None) -> list[StoryRow]:
    """The story's rows from a techniques stage result (the report's T2 measurement)."""
    from lrdlab.measure.timing import realised_fraction

    n, _, h, _ = techniques["input_shape"]
    count = threads or techniques.get("compute", {}).get("threads") or _row_threads(techniques)
    config = SpeedConfig(int(count), "eager", int(n), int(h))
    by_name = {r["method"]: r for r in techniques["rows"]}
    rows = []
    for name, label in TECHNIQUES.items():
        if name not in by_name:
            continue
        r = by_name[name]
        pct = {"median": r["infer_speedup_pct"], "ci_low": r["infer_speedup_pct_ci_low"],
               "ci_high": r["infer_speedup_pct_ci_high"], "rounds": int(r["infer_rounds"])}
        ideal = 1 / (1 + r["flops_pct"] / 100)
        rows.append(StoryRow(config, label, pct, realised_fraction(1 + pct["median"] / 100, ideal),
                             1e3 * by_name["original"]["infer_s"], 1e3 * r["infer_s"]))
    return rows


def _row_threads(techniques: dict[str, Any]) -> int:
    import torch

    return torch.get_num_threads()


@dataclass(frozen=True)
class SpeedStory:
    """The recorded speed story (``data/speed_story_resnet50_cpu.json``): one :class:`StoryRow` per thread count and
    technique, the command, the rank search, the machine and the load around it.

    A notebook shows it as the README's table and the threads sentence (``str()`` the same); :meth:`table` is F12's
    DataFrame."""

    command: str
    search: str | None
    machine: dict[str, Any]
    load_average_before: list[float]
    load_average_after: list[float]
    rows: list[StoryRow]

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> SpeedStory:
        return cls(record["command"], record.get("search"), record["machine"], record["load_average_before"],
                   record["load_average_after"], [row for run in record["runs"] for row in story_rows(run)])

    def table(self):
        return story_frame(self.rows)

    def __str__(self) -> str:
        return "\n\n".join(part for part in (story_table(self.rows), threads_sentence(self.rows)) if part)

    def _repr_markdown_(self) -> str:
        return str(self)


def recorded_story(data: Path) -> SpeedStory | None:
    """The recorded story file, or None where it has not been recorded."""
    from lrdlab.measure.records import read_record

    path = data / STORY_FILE
    return SpeedStory.from_dict(read_record(path)) if path.is_file() else None


def story_table(rows: list[StoryRow]) -> str:
    """Markdown: one row per configuration, one column per technique: speed-up % [95% CI]; realised fraction."""
    labels = [t for t in TECHNIQUES.values() if any(r.technique == t for r in rows)]
    configs = list(dict.fromkeys(r.config for r in rows))
    lines = ["| configuration | original ms | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
    for c in configs:
        mine = {r.technique: r for r in rows if r.config == c}
        first = next(iter(mine.values()))
        lines.append(f"| {c} | {first.original_ms:.0f} | "
                     + " | ".join(mine[t].cell if t in mine else "—" for t in labels) + " |")
    return "\n".join(lines)


def threads_sentence(rows: list[StoryRow]) -> str:
    """What the extra threads did, read off the rows (empty with one thread count)."""
    counts = sorted({r.config.threads for r in rows})
    if len(counts) < 2:
        return ""
    lo, hi = counts[0], counts[-1]
    at = {(r.config.threads, r.technique): r for r in rows}
    orig = (at[(lo, "vanilla 2x")].original_ms, at[(hi, "vanilla 2x")].original_ms) if (lo, "vanilla 2x") in at \
        and (hi, "vanilla 2x") in at else None
    parts = [f"{t} {at[(lo, t)].speedup_pct['median']:+.0f}% → {at[(hi, t)].speedup_pct['median']:+.0f}%"
             for t in TECHNIQUES.values() if (lo, t) in at and (hi, t) in at]
    head = (f"From {lo} to {hi} threads the original goes from {orig[0]:.0f} to {orig[1]:.0f} ms" if orig
            else f"From {lo} to {hi} threads")
    if orig and orig[1] >= orig[0]:
        return (f"{head}, slower with more threads: the threads competed with other jobs for the cores, so this is "
                f"the shared case, not thread scaling; the speed-ups go {', '.join(parts)}.")
    return (f"{head}, while the speed-ups go {', '.join(parts)}: thin decomposed layers have more, smaller "
            "parallel regions, so they gain less from each extra thread than the original does.")


# --- this run against the recording -----------------------------------------------------------------


def _overlap(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return bool(a["ci_low"] <= b["ci_high"] and b["ci_low"] <= a["ci_high"])


def setting_differences(here: dict[str, Any], there: dict[str, Any]) -> list[str]:
    """Settings beyond the configuration that differ between two machine records (CPU, torch, waits, load)."""
    out = []
    for key, label in (("cpu", "CPU"), ("cpu_count", "cores"), ("torch_version", "torch"),
                       ("omp_wait_policy", "OpenMP wait policy"), ("compute_mode", "compute mode")):
        a, b = here.get(key), there.get(key, "default" if key == "compute_mode" else None)
        if a is not None and b is not None and str(a).split()[0] != str(b).split()[0]:
            out.append(f"{label} {a} here, {b} recorded")
    loads = [(m.get("load_average") or [0])[0] for m in (here, there)]
    cores = here.get("cpu_count") or 1
    if max(loads) >= max(1.0, cores / 2) and abs(loads[0] - loads[1]) >= 0.5:
        out.append(f"load {loads[0]:.1f} here, {loads[1]:.1f} recorded")
    return out


def differences(local: list[StoryRow], recorded: list[StoryRow], here: dict[str, Any], there: dict[str, Any],
                search_here: str, search_there: str) -> list[str]:
    """One sentence per technique where this run and the recording disagree beyond their intervals, naming what
    differs; a technique without a recorded row at this run's configuration says so."""
    notes = []
    for row in local:
        same = [r for r in recorded if r.technique == row.technique and r.config == row.config]
        if not same:
            have = sorted({str(r.config) for r in recorded if r.technique == row.technique})
            if have:
                notes.append(f"{row.technique}: no recorded row at {row.config} (recorded: {'; '.join(have)}); "
                             "the setting that differs is in the configuration")
            continue
        rec = same[0]
        if _overlap(row.speedup_pct, rec.speedup_pct):
            continue
        why = setting_differences(here, there)
        if row.technique == "searched ranks" and search_here != search_there:
            why.append(f"ranks searched by {search_here} here, {search_there} recorded")
        notes.append(f"{row.technique} at {row.config}: {row.speedup_pct['median']:+.1f}% here against "
                     f"{rec.speedup_pct['median']:+.1f}% recorded, beyond both intervals; "
                     + (f"settings that differ: {'; '.join(why)}" if why else
                        "no setting differs: drift between runs on a shared machine (an interval covers the noise "
                        "within one run, not between runs)"))
    return notes


# --- the report's section ---------------------------------------------------------------------------


def render_story(report, results: dict[str, Any], data: Path | None = None) -> None:
    """This run's speed-ups beside the recorded ones of the same configuration, the disagreements named, and F12."""
    import pandas as pd

    from lrdlab.measure.machine import machine_info
    from lrdlab.measure.records import data_dir

    if "techniques" not in results:
        return
    local = story_rows(results["techniques"])
    story = recorded_story(data or data_dir())
    recorded = story.rows if story else []
    report.heading("Speed at a glance — this run beside the README's recording")
    table = []
    for row in local:
        rec = next((r for r in recorded if r.technique == row.technique and r.config == row.config), None)
        table.append({"technique": row.technique, "configuration": str(row.config), "this run": row.cell,
                      "recorded (README)": rec.cell if rec else "no row at this configuration",
                      "agree": "—" if rec is None else ("yes" if _overlap(row.speedup_pct, rec.speedup_pct) else
                                                        "NO")})
    machine = machine_info()
    here = {**machine.to_dict(), "load_average": results["techniques"].get("compute", {}).get("load_average")
            or machine.load_average}
    report.table(pd.DataFrame(table), "Inference speed-up % [95% CI]; realised fraction of the FLOP ideal. Same "
                 f"stage, same settings as the recording ({STORY_FILE}); the README's table is rendered from it.")
    if story is None:
        report.text(f"No recording ({STORY_FILE}) to compare with: `python -m tools.record speed-story` (in a "
                    "checkout) makes one.")
        return
    search_here = "P1's Algorithm 1 (quick reproduction)"
    notes = differences(local, recorded, here, story.machine, search_here, story.search or "?")
    report.text("\n".join(f"- {n}" for n in notes) if notes else
                "Every speed-up here agrees with the recorded one of the same configuration within their intervals.")
    sentence = threads_sentence(recorded)
    if sentence:
        from lrdlab.explore.plots import plot_thread_scaling

        report.figure(plot_thread_scaling(story_frame(recorded)), "F12_threads",
                      f"F12 (recorded, {STORY_FILE}): time per batch, speed-up over the original at the same thread "
                      f"count (95% intervals) and realised fraction of the FLOP ideal, vs torch threads. {sentence}")


def story_frame(rows: list[StoryRow]):
    """The rows as F12's table: threads, technique, original_ms, time_ms, speedup_pct (+ interval), realised."""
    import pandas as pd

    return pd.DataFrame([{"threads": r.config.threads, "technique": r.technique, "original_ms": r.original_ms,
                          "time_ms": r.time_ms, "speedup_pct": r.speedup_pct["median"],
                          "speedup_pct_ci_low": r.speedup_pct["ci_low"],
                          "speedup_pct_ci_high": r.speedup_pct["ci_high"], "realised": r.realised} for r in rows])
