"""Which calibration objective, and what keeping the head changes: ResNet-20 / MNIST-5k right after decomposition.

Rows: calibration set (two disjoint sets of 512 training images) × ratio × head (``kept``: ``min_rank=6``
keeps the 10-class ``fc``; ``squeezed``: ``min_rank=1`` decomposes it) × variant:

``weights``     weight-only decomposition (``lrdlab.decompose(model, plan)``)
``weights+bn``  the same, then BN re-estimation
``one-shot``    lrdlab's own implementation of one-shot statistics (SVD-LLM's way: every layer fitted to
                statistics of one pass of the original model), + BN re-estimation
``sequential``  each layer fitted to its own output on the partly decomposed network's inputs, + BN
``corrected``   lrdlab's default: each layer reproduces the original network's output, + BN

Run ``python -m tools.record.calibration_modes --out data/calibration_modes_mnist5k.json``; ``--vit`` adds the
file's ``vit`` section instead: ViT-tiny's relative logit error and accuracy per ratio, one-shot vs corrected.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lrdlab.measure.records import read_record, write_record

VARIANTS = ("weights", "weights+bn", "one-shot", "sequential", "corrected")
HEADS = {"kept": 6, "squeezed": 1}  # make_plan's min_rank (6: lrdlab.lowrank.plan.MIN_RANK)


def calibration_sets(loader, images: int = 512, sets: int = 2) -> list[list]:
    """``sets`` disjoint lists of input batches, ``images`` each, from the start of ``loader``."""
    from lrdlab.lowrank.calibration import calibration_batches

    batches = calibration_batches(loader, images * sets)
    flat = [x for b in batches for x in b.split(128)]
    step = images // 128
    return [flat[i * step:(i + 1) * step] for i in range(sets)]


def run(sets: Sequence[int] = (0, 1), ratios: Sequence[float] = (2.0, 3.0, 4.0), heads: Sequence[str] = ("kept",),
        variants: Sequence[str] = VARIANTS, out: str | Path | None = None) -> dict[str, Any]:
    """The rows (see the module docstring), with the machine and its load, written as JSON to ``out``."""
    import os

    import torch

    from lrdlab.finetune.loop import evaluate, set_seed
    from lrdlab.lowrank.calibration import calibrated_decompose, recalibrate_bn
    from lrdlab.lowrank.decompose import decompose
    from lrdlab.lowrank.plan import Layers, Ratio, make_plan
    from lrdlab.measure.counting import count_params
    from lrdlab.measure.machine import machine_info
    from lrdlab.zoo.data import Images, get_loaders
    from lrdlab.zoo.pretrained import kept_stem, pretrained

    set_seed(0)
    loaders = get_loaders("mnist5k", 128, Images(channels=3), seed=0)
    cal = calibration_sets(loaders.train)
    original = pretrained("resnet20_mnist5k")
    rows = [{"variant": "original", "accuracy": round(evaluate(original, loaders.test)["accuracy"], 2),
             "params": count_params(original)}]
    for s in sets:
        for head in heads:
            for ratio in ratios:
                plan = make_plan(original, Ratio(ratio, min_rank=HEADS[head]), Layers(exclude=kept_stem("resnet20")),
                                 model_name="resnet20")
                for variant in variants:
                    t0 = time.perf_counter()
                    if variant.startswith("weights"):
                        model = decompose(original, plan)
                        if variant == "weights+bn":
                            model = recalibrate_bn(copy.deepcopy(model), cal[s])
                    else:
                        model = calibrated_decompose(original, plan, cal[s], mode=variant)
                    seconds = time.perf_counter() - t0
                    acc = round(evaluate(model, loaders.test)["accuracy"], 2)
                    rows.append({"set": s, "head": head, "ratio": ratio, "variant": variant, "accuracy": acc,
                                 "params": count_params(model), "seconds": round(seconds, 1),
                                 "load": os.getloadavg()[0]})
                    print(f"set {s} {head} {ratio:g}x {variant:10s} {acc:6.2f}% ({seconds:.0f} s)", flush=True)
    result = {"command": "python -m tools.record.calibration_modes " + " ".join(sys.argv[1:]),
              "rows": rows, "model": "resnet20_mnist5k", "calibration_images": 512,
              "test": "MNIST-5k test split (1,000 images)", "threads": torch.get_num_threads(),
              "machine": machine_info("cpu").to_dict(),
              "note": "seconds are wall time on a shared machine; load = 1-min load average when the row finished"}
    if out is not None:
        write_record(out, result)
    return result


def vit_logit_errors(ratios: Sequence[float] = (2.0, 3.0, 4.0), modes: Sequence[str] = ("one-shot", "corrected"),
                     calibration_set: int = 0) -> list[dict[str, Any]]:
    """ViT-tiny / MNIST-5k (stem and head kept): per ratio and calibration mode, the relative logit error
    ``‖f̂(x) − f(x)‖ / ‖f(x)‖`` over the 1,000 test images and the test accuracy."""
    import os

    import torch

    from lrdlab.finetune.loop import set_seed
    from lrdlab.lowrank.calibration import calibrated_decompose
    from lrdlab.lowrank.plan import Layers, Ratio, make_plan
    from lrdlab.zoo.data import Images, get_loaders
    from lrdlab.zoo.pretrained import kept_stem, pretrained

    set_seed(0)
    loaders = get_loaders("mnist5k", 128, Images(channels=3), seed=0)
    cal = calibration_sets(loaders.train)[calibration_set]
    original = pretrained("vit_tiny_mnist5k").eval()
    test = list(loaders.test)
    labels = torch.cat([y for _, y in test])

    def logits(model: torch.nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([model(x) for x, _ in test])

    def accuracy(out: torch.Tensor) -> float:
        return round(100 * float((out.argmax(1) == labels).float().mean()), 2)

    reference = logits(original)
    rows = [{"model": "vit_tiny_mnist5k", "variant": "original", "accuracy": accuracy(reference)}]
    for ratio in ratios:
        plan = make_plan(original, Ratio(ratio), Layers(exclude=kept_stem("vit_tiny")), model_name="vit_tiny")
        for mode in modes:
            t0 = time.perf_counter()
            model = calibrated_decompose(original, plan, cal, mode=mode)
            seconds = time.perf_counter() - t0
            out = logits(model)
            error = float((out - reference).norm() / reference.norm())
            rows.append({"model": "vit_tiny_mnist5k", "set": calibration_set, "ratio": ratio, "variant": mode,
                         "logit_rel_error": round(error, 4), "accuracy": accuracy(out),
                         "seconds": round(seconds, 1), "load": os.getloadavg()[0]})
            print(f"vit {ratio:g}x {mode:10s} logit error {error:.4f} acc {rows[-1]['accuracy']:.2f}", flush=True)
    return rows


def record_vit(out: str | Path, ratios: Sequence[float] = (2.0, 3.0, 4.0),
               modes: Sequence[str] = ("one-shot", "corrected")) -> dict[str, Any]:
    """:func:`vit_logit_errors` as the ``vit`` section of the record ``out`` (the rest of the file kept)."""
    import torch

    from lrdlab.measure.machine import machine_info

    path = Path(out)
    result = read_record(path) if path.exists() else {"rows": []}
    result["vit"] = {"rows": vit_logit_errors(ratios, modes), "calibration_images": 512,
                     "plan": "make_plan(vit, ratio=r, exclude=kept_stem('vit_tiny')): patch embedding and head kept",
                     "threads": torch.get_num_threads(), "machine": machine_info("cpu").to_dict()}
    write_record(path, result)
    return result


LABELS = {"weights": "weights only", "weights+bn": "+ BN re-estimation", "one-shot": "one-shot + BN (lrdlab's own)",
          "sequential": "sequential + BN", "corrected": "corrected + BN (default)"}
HEAD_LABELS = {"kept": "", "squeezed": "head cut to rank 2–4: "}


def markdown_table(result: dict[str, Any], calibration_set: int = 0) -> str:
    """Accuracy per ratio (rows) and variant × head (columns) for one calibration set."""
    rows = [r for r in result["rows"] if r.get("set") == calibration_set]
    cols = [(h, v) for h in HEADS for v in VARIANTS if any(r["head"] == h and r["variant"] == v for r in rows)
            and (h, v) != ("squeezed", "weights")]  # chance level either way
    lines = ["| ratio | " + " | ".join(HEAD_LABELS[h] + LABELS[v] for h, v in cols) + " |",
             "|---" * (len(cols) + 1) + "|"]
    for ratio in sorted({r["ratio"] for r in rows}):
        at = {(r["head"], r["variant"]): r["accuracy"] for r in rows if r["ratio"] == ratio}
        lines.append(f"| {ratio:g}x | " + " | ".join(f"{at[c]:.1f}" if c in at else "—" for c in cols) + " |")
    return "\n".join(lines)


README_BEGIN = "<!-- accuracy-headline: generated from data/ by tools.record.calibration_modes.headline -->"
README_END = "<!-- /accuracy-headline -->"


def headline(data: Path) -> str:
    """The README's accuracy table: :func:`markdown_table` of ``data``/calibration_modes_mnist5k.json, set 0."""
    table = markdown_table(read_record(Path(data) / "calibration_modes_mnist5k.json"))
    return "\n".join([README_BEGIN, table, README_END])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--heads", nargs="+", default=["kept"], choices=list(HEADS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--ratios", type=float, nargs="+", default=[2.0, 3.0, 4.0])
    parser.add_argument("--out")
    parser.add_argument("--vit", action="store_true", help="only the ViT-tiny logit errors, into --out's vit section")
    args = parser.parse_args()
    if args.vit:
        record_vit(args.out, args.ratios)
    else:
        run(args.sets, args.ratios, args.heads, args.variants, args.out)
