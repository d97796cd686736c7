"""Calibrated decomposition of the real language model, SmolLM2-135M-Instruct: wall time, memory, perplexity.

The model loads with :func:`lrdlab.zoo.smollm.load_smollm2` (float32). Calibration: the first ``--tokens`` tokens
(SmolLM2's own tokenizer) of the pydoc training split (the first 90% of the corpus's bytes, ``lrdlab.zoo.text``) in
``--window``-token windows, ``--batch`` windows a batch. Each mode is timed around ``decompose(model, plan,
calibration=Calibration(batches, mode=...))``; the peak resident memory above the loaded model is sampled from
``/proc/self/statm`` every 20 ms; the process's CPU time is recorded beside the wall time (on a shared, loaded
machine the wall time is mostly waiting). Perplexity: the pydoc validation split in non-overlapping windows.

Run ``python -m tools.record.lm_calibration --out data/lm_calibration_smollm2_cpu.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lrdlab.cli.common import add_ratio_argument, add_threads_argument
from lrdlab.lowrank.calibration_fit import MODES


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """The peak resident memory while the ``with`` body runs, sampled in a thread (bytes above the start)."""

    def __init__(self, every_s: float = 0.02) -> None:
        self.every_s, self.start, self.peak = every_s, 0, 0
        self._done = threading.Event()

    def __enter__(self) -> PeakMemory:
        self.start = self.peak = _rss()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._done.wait(self.every_s):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())

    @property
    def above_start_mb(self) -> float:
        return (self.peak - self.start) / 2**20


def split_text(split: str) -> str:
    """The pydoc corpus's ``split`` as text (the byte cut of :func:`lrdlab.zoo.text.corpus_ids`)."""
    from lrdlab.zoo.text import TRAIN_FRACTION, corpus_text

    raw = corpus_text().encode("utf-8")
    cut = int(len(raw) * TRAIN_FRACTION)
    return (raw[:cut] if split == "train" else raw[cut:]).decode("utf-8", errors="ignore")


def windows(tokenizer: Any, split: str, window: int, tokens: int | None = None) -> torch.Tensor:
    """Non-overlapping ``window``-token windows ``[W, window]`` of ``split`` (the first ``tokens`` tokens)."""
    ids = torch.tensor(tokenizer(split_text(split))["input_ids"], dtype=torch.long)
    if tokens is not None:
        ids = ids[:tokens]
    usable = len(ids) // window
    return ids[:usable * window].reshape(usable, window)


@torch.no_grad()
def perplexity(model: torch.nn.Module, rows: torch.Tensor, batch: int = 4) -> float:
    """exp(mean next-token loss) over every window of ``rows``."""
    total, count = 0.0, 0
    for chunk in rows.split(batch):
        logits = model(chunk).logits[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1),
                                                 reduction="sum")
        total, count = total + float(loss), count + chunk[:, 1:].numel()
    return float(torch.exp(torch.tensor(total / count)))


def run(ratio: float, modes: Sequence[str], tokens: int, window: int, batch: int, out: Path | None,
        dense: bool = True, threads: int | None = None, note: str = "") -> dict[str, Any]:
    from lrdlab import Calibration, Ratio, decompose, make_plan
    from lrdlab.lowrank.loss_weighted import resolved_mode
    from lrdlab.measure.counting import count_params
    from lrdlab.measure.machine import machine_info
    from lrdlab.measure.records import write_record
    from lrdlab.zoo.smollm import load_smollm2

    if threads is not None:
        torch.set_num_threads(threads)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    lm = load_smollm2()
    model, tokenizer = lm.model.eval(), lm.tokenizer
    load_s = time.perf_counter() - t0
    print(f"loaded {lm.name} from {lm.source} in {load_s:.0f} s", file=sys.stderr, flush=True)
    calibration = list(windows(tokenizer, "train", window, tokens).split(batch))
    validation = windows(tokenizer, "validation", window)
    plan = make_plan(model, Ratio(ratio))
    dense_ppl = perplexity(model, validation) if dense else None
    print(f"dense perplexity {dense_ppl} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    loaded_mb = _rss() / 2**20
    rows = []
    for mode in modes:
        load_start = os.getloadavg()
        with PeakMemory() as memory:
            start, cpu = time.perf_counter(), time.process_time()
            low = decompose(model, plan, calibration=Calibration(calibration, mode=mode), progress=True)
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        load_end = os.getloadavg()
        ppl = perplexity(low, validation)
        rows.append({"mode": mode, "resolved_mode": resolved_mode(model, plan, mode), "wall_s": round(wall, 1),
                     "process_cpu_s": round(cpu, 1),
                     "peak_mb_above_loaded": round(memory.above_start_mb, 1),
                     "validation_perplexity": round(ppl, 3), "params": count_params(low),
                     "load_avg_start": [round(x, 2) for x in load_start],
                     "load_avg_end": [round(x, 2) for x in load_end]})
        print(rows[-1], flush=True)
        del low
    record = {
        "what": "calibrated decomposition of SmolLM2-135M-Instruct (float32): wall time and peak resident memory "
                "above the loaded model while decompose(model, plan, calibration=Calibration(batches, mode=...)) "
                "runs, and perplexity on the pydoc validation split",
        "command": "python -m tools.record.lm_calibration " + " ".join(sys.argv[1:]),
        "machine": {**machine_info().to_dict(), "name": "AMD EPYC 2-core shared box", "note": note,
                    "load_avg_at_start": [round(x, 2) for x in load_before]},
        "model": {"name": lm.name, "source": lm.source, "load_s": round(load_s, 1), "params": count_params(model),
                  "resident_mb_loaded": round(loaded_mb, 1)},
        "calibration": {"text": "pydoc topics, training split (first 90% of the bytes), SmolLM2 tokenizer",
                        "tokens": sum(int(b.numel()) for b in calibration), "window": window,
                        "batches": len(calibration), "windows_per_batch": batch},
        "evaluation": {"text": "pydoc topics, validation split (last 10% of the bytes), non-overlapping windows",
                       "tokens": int(validation.numel()), "window": window},
        "ratio": ratio,
        "planned_layers": len(plan.decomposed_layers),
        "dense_perplexity": round(dense_ppl, 3) if dense_ppl is not None else None,
        "dense_perplexity_note": None if dense else "not measured in this run (--no-dense); issue 37 reports 11.62 "
                                                    "on the same split with 256-token windows",
        "rows": rows,
    }
    if out is not None:
        write_record(out, record)
    return record


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.record.lm_calibration", description=__doc__.splitlines()[0])
    add_ratio_argument(parser, default=1.25)
    parser.add_argument("--modes", nargs="+", default=["auto"], choices=list(MODES))
    parser.add_argument("--note", default="", help="what else ran on the machine meanwhile (recorded)")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4, help="windows per calibration batch")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--no-dense", dest="dense", action="store_false", help="skip the dense model's perplexity")
    add_threads_argument(parser, default_text="torch's")
    args = parser.parse_args(argv)
    run(args.ratio, args.modes, args.tokens, args.window, args.batch, args.out, args.dense, args.threads, args.note)


if __name__ == "__main__":
    main()
