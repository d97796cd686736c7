"""What :func:`lrdlab.measure.allocator.keep_freed_memory` saves on a distillation step of the real SmolLM2.

Each setting runs in its own process (the allocator is process-wide): SmolLM2-135M-Instruct decomposed at 1.25x
(uniform, weights only: the step's shapes are what matter), one warm-up step of
:func:`~lrdlab.finetune.lm_distill.distill_language_model`, then ``--steps`` timed steps, with the process's user and
system CPU seconds and page faults over them. Rounds alternate the order (default first, then kept first, …);
the speed-up is the median of the per-round ratios with its 95% interval::

    python -m tools.record.allocator --rounds 2 --steps 6   # writes data/allocator_smollm2_cpu.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

SETTINGS = ("default", "kept")


def child(kept: bool, steps: int, threads: int) -> dict[str, Any]:
    """One setting's seconds per step, CPU seconds and page faults over ``steps`` distillation steps, and the
    process's peak memory."""
    from lrdlab.measure.allocator import keep_freed_memory

    took = keep_freed_memory() if kept else False
    import torch

    from lrdlab import Ratio, decompose, make_plan
    from lrdlab.explore.lm_lab import text_windows
    from lrdlab.finetune.lm_distill import LMDistillation, distill_language_model
    from lrdlab.zoo.smollm import load_smollm2

    torch.set_num_threads(threads)
    lm = load_smollm2()
    student = decompose(lm.model, make_plan(lm.model, Ratio(1.25)))
    train, held_out = text_windows(lm.tokenizer, "train")[64:], text_windows(lm.tokenizer, "validation", 1)
    distill_language_model(student, lm.model, train, held_out, LMDistillation(steps=1, eval_every=1, progress=False))
    before, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    recipe = LMDistillation(steps=steps, eval_every=steps, seed=1, progress=False)
    history = distill_language_model(student, lm.model, train, held_out, recipe)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {"setting": "kept" if kept else "default", "took_effect": took,
            "s_per_step": float(history["wall_s"].iloc[-1]) / steps, "wall_s": time.perf_counter() - t,
            "user_s": after.ru_utime - before.ru_utime, "system_s": after.ru_stime - before.ru_stime,
            "minor_faults": after.ru_minflt - before.ru_minflt, "max_rss_mb": round(after.ru_maxrss / 1024)}


def record(rounds: int, steps: int, threads: int) -> dict[str, Any]:
    """``rounds`` interleaved rounds of both settings (:func:`~lrdlab.measure.interleave.interleave`), each a fresh
    process whose own seconds per step are the round's value, and the speed-up of ``kept``."""
    from lrdlab.measure.compute import load_average
    from lrdlab.measure.interleave import interleave

    rows: list[dict[str, Any]] = []

    def run(setting: str) -> float:
        cmd = [sys.executable, "-m", "tools.record.allocator", "--child", setting, "--steps", str(steps),
               f"--threads={threads}"]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append({"round": len(rows) // len(SETTINGS), **json.loads(out.strip().splitlines()[-1]),
                     "load_after": load_average()})
        print(rows[-1], flush=True)
        return float(rows[-1]["s_per_step"])

    times = interleave({s: partial(run, s) for s in SETTINGS}, rounds)
    return {"rows": rows, "speedup_pct": times.speedup("default", "kept").to_pct()}


def main(argv: Sequence[str] | None = None) -> None:
    from lrdlab.cli.common import add_threads_argument
    from lrdlab.measure.machine import machine_info
    from lrdlab.measure.records import data_dir, write_record

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6)
    add_threads_argument(ap, default_text="2")
    ap.add_argument("--child", choices=SETTINGS, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(data_dir() / "allocator_smollm2_cpu.json"))
    args = ap.parse_args(argv)
    args.threads = args.threads or 2
    if args.child:
        print(json.dumps(child(args.child == "kept", args.steps, args.threads)))
        return
    result = record(args.rounds, args.steps, args.threads)
    write_record(Path(args.out), {
        "what": "seconds per distillation step of SmolLM2-135M-Instruct decomposed at 1.25x (2 x 256 tokens, "
                "KL from the dense model), glibc's default malloc against lrdlab.measure.allocator."
                "keep_freed_memory(); each setting in its own process, rounds interleaved",
        "command": "python -m tools.record.allocator " + " ".join(sys.argv[1:]),
        "machine": {**machine_info("cpu").to_dict(), "name": "AMD EPYC 2-core shared box"},
        "threads": args.threads, "steps": args.steps, **result})


if __name__ == "__main__":
    main()
