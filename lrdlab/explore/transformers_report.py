"""Report section for the transformer study (``data/transformers_mnist5k.json``) and the transformer targets.

Hook it into the reproduction report with one call where the other sections are rendered::

    from lrdlab.explore.transformers_report import render_transformers
    render_transformers(report, "data/transformers_mnist5k.json", "data/transformers_targets_cpu.json")
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lrdlab.explore.recorded import throughput_table
from lrdlab.measure.records import check_fields, read_record
from lrdlab.measure.stats import robust_sigma

FRAMES = ("accuracy", "freezing_history", "freezing_throughput", "gemm_ranks", "gemm_granularity")


@dataclass(frozen=True)
class TransformersStudy:
    """A recorded transformer study (``data/transformers_mnist5k.json``): its tables as DataFrames (accuracy vs
    ratio, freezing history and throughput, the GEMM rank and granularity sweeps), the settings, machine, command
    and load around it. ``str()`` says where and how it was measured; a notebook shows that and the accuracy table."""

    accuracy: pd.DataFrame
    freezing_history: pd.DataFrame
    freezing_throughput: pd.DataFrame
    gemm_ranks: pd.DataFrame
    gemm_granularity: pd.DataFrame
    settings: dict[str, Any]
    machine: dict[str, Any]
    load_average_before: list[float]
    load_average_after: list[float]
    command: str = ""
    schema: dict[str, Any] | None = None
    wall_s: float | None = None

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TransformersStudy:
        check_fields(cls, raw, "the transformer study")
        return cls(**{k: (pd.DataFrame(v) if k in FRAMES else v) for k, v in raw.items()})

    def __str__(self) -> str:
        return (f"transformer study on {self.machine.get('cpu', '?')}, {self.machine.get('torch_threads', '?')} "
                f"thread(s), load average {self.load_average_before[0]:.1f} → {self.load_average_after[0]:.1f}; "
                f"command: {self.command or '?'}")

    def _repr_html_(self) -> str:
        return f"<p>{html.escape(str(self))}</p>{self.accuracy.to_html(index=False)}"


def load_transformers_study(path: str | Path) -> TransformersStudy:
    """A saved transformer study with its tables as DataFrames."""
    return TransformersStudy.from_dict(read_record(path))


def multiple_summary(gemm: pd.DataFrame, multiples: tuple[int, ...] = (8, 16, 32, 64)) -> pd.DataFrame:
    """Per GEMM shape and multiple m: are ranks that are multiples of m faster than the rank curve predicts?

    Time grows about linearly with rank, so the ranks off the multiples get a line t = a + b·r (least
    squares); ``on_vs_fit_pct`` is the median relative residual of the ranks on the multiples (negative:
    cheaper than the line) and ``noise_pct`` the robust spread of the off-multiple residuals. ``verdict``
    is "cheaper" / "dearer" when the on-multiple median lies beyond twice its standard error, else
    "within noise". (Comparing µs per rank instead would favour the high ranks, where a fixed cost is
    spread thinner.)
    """
    rows = []
    for (c, s), df in gemm.groupby(["in", "out"]):
        for m in multiples:
            on, off = df[df["rank"] % m == 0], df[df["rank"] % m != 0]
            if not len(on) or len(off) < 3:
                continue
            b, a = np.polyfit(off["rank"], off["ms"], 1)
            rel_on = on["ms"] / (a + b * on["rank"]) - 1
            noise = robust_sigma(off["ms"] / (a + b * off["rank"]) - 1)
            med = float(np.median(rel_on))
            bar = 2 * noise * 1.2533 / np.sqrt(len(on))  # twice the standard error of a median of len(on) values
            rows.append({"shape": f"{c}→{s}", "multiple": m, "ranks_on": len(on), "on_vs_fit_pct": 100 * med,
                         "noise_pct": 100 * noise,
                         "verdict": "cheaper" if med < -bar else "dearer" if med > bar else "within noise"})
    return pd.DataFrame(rows)


def _dashes(df: pd.DataFrame) -> pd.DataFrame:
    """Missing values as "—" (the report's Markdown writer needs a value in every cell)."""
    return df.astype(object).where(df.notna(), "—")


def render_transformers(report: Any, study: str | Path | TransformersStudy,
                        targets: str | Path | dict[str, Any] | None = None) -> None:
    """Append the transformer section (tables; a convergence figure when matplotlib is there) to ``report``
    (a :class:`lrdlab.paper.report.Report`)."""
    res = study if isinstance(study, TransformersStudy) else load_transformers_study(study)
    st, machine = res.settings, res.machine
    report.heading("Transformers — ViT-tiny on MNIST-5k (P2's transformer results)")
    trained = st.get("model") or {}
    ft = st["finetune"]
    recipe = f"{ft.get('optimizer', 'adamw')} lr {ft['lr']:g}"
    recipe += f", batch {ft['batch_size']}" if "batch_size" in ft else ""
    recipe += ", distilled from the original" if ft.get("distill") else ""
    report.text(f"ViT-tiny ({trained.get('source', 'given weights')}); decomposed with SVD on every attention "
                f"projection (q/k/v/out) and MLP Linear; fine-tuning {st['finetune_epochs']} epoch(s), {recipe}; "
                f"calibration: {st['calibration']}. Machine: {machine['cpu']}, "
                f"{machine['torch_threads']} threads, load average {res.load_average_before[0]:.1f} → "
                f"{res.load_average_after[0]:.1f}. Command: `{res.command}`.")
    acc = res.accuracy
    report.table(_dashes(acc), "Test accuracy (%) vs compression ratio: zero-shot and after fine-tuning (mode none).")
    history = res.freezing_history
    final = history[history["epoch"] == history.groupby("mode")["epoch"].transform("max")]
    report.table(final[["mode", "epoch", "accuracy", "loss", "train_img_s", "wall_s"]],
                 f"Fine-tuning at {st['freeze_ratio']}x per freezing mode (sequential: every "
                 f"{st['period_iterations']} iterations).")
    report.table(throughput_table(res.freezing_throughput),
                 "Training / inference throughput, timed interleaved (sequential: mean over its phases; 95% "
                 "bootstrap intervals).")
    report.table(_dashes(res.gemm_granularity),
                 "Whole model at each rank granularity g (interleaved).")
    report.table(multiple_summary(res.gemm_ranks),
                 f"Factorized projection time on {st['gemm_tokens']} tokens: ranks that are multiples of m against a "
                 "line fitted through the other ranks (negative = cheaper than the line; noise = spread of the "
                 "others).")
    try:
        from lrdlab.explore.plots import plot_convergence
    except ImportError:  # pragma: no cover - the explore extra is missing
        plot_convergence = None  # type: ignore[assignment]
    if plot_convergence is not None and hasattr(report, "figure"):
        report.figure(plot_convergence(history), "transformers_convergence",
                      "ViT-tiny at 2x: test accuracy and loss during fine-tuning per freezing mode.")
    if targets is not None:
        tg = read_record(targets) if not isinstance(targets, dict) else targets
        vit, gpt2 = tg.get("vit_b_16", {}), tg.get("gpt2", {})
        rows = [{"target": k, "met": v} for k, v in vit.get("targets", {}).items()]
        all_conv1d = gpt2.get("conv1d_decomposed") == gpt2.get("conv1d_layers")
        rows += [{"target": "gpt2: all Conv1D decomposed", "met": all_conv1d},
                 {"target": "gpt2: tied head kept tied", "met": gpt2.get("lm_head_still_tied")}]
        report.table(pd.DataFrame(rows), "Transformer targets on ViT-B/16 and a 2-layer GPT-2 (random weights).")
