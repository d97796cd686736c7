"""The whole network planned with (α, g, rounding): params, FLOPs, measured throughput with its spread, accuracy.

Pure functions under the rank explorer's network view. Throughput is measured here (interleaved with the
original, :func:`lrdlab.compare`), never taken from a reference file, and memoised per plan.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from lrdlab.explore.accuracy_lab import CALIBRATION, AccuracyLab, plan_key
from lrdlab.explore.compute import conditions
from lrdlab.lowrank.decompose import decompose, planned_structure
from lrdlab.lowrank.plan import Layers, Plan, Ratio, candidate_layers, make_plan
from lrdlab.measure import compare, stats
from lrdlab.measure.counting import count_flops, count_params
from lrdlab.measure.timing_config import TimingConfig
from lrdlab.zoo.pretrained import STEMS


def network_plan(model: nn.Module, ratio: float, granularity: int, rounding: str = "down",
                 exclude: Sequence[str] | None = None) -> Plan:
    """The plan the explorer applies to the whole model, its stem kept.

    ``exclude``: the stem of the model's architecture (:attr:`~lrdlab.explore.lab_models.LabModel.stem`);
    None keeps every known stem (:data:`lrdlab.zoo.pretrained.STEMS`: ``conv1``; ``conv_proj``,
    ``heads.head``). Patterns that match no layer are dropped.
    """
    if exclude is None:
        exclude = [p for stem in STEMS.values() for p in stem]
    names = [n for n, _ in candidate_layers(model)]
    skip = [p for p in exclude if any(fnmatch.fnmatchcase(n, p) for n in names)]
    return make_plan(model, Ratio(ratio, granularity=granularity, rounding=rounding), Layers(exclude=skip or None))


class NetworkLab:
    """Whole-network numbers of one model at a setting; ``accuracy``: the current trained model's lab."""

    def __init__(self, batch: int = 8, rounds: int = 5, accuracy: AccuracyLab | None = None):
        self.batch, self.rounds, self.accuracy = batch, rounds, accuracy
        self._accuracy_labs: dict[str, AccuracyLab] = {}
        self._counts: dict[tuple, dict[str, Any]] = {}
        self._speed: dict[tuple, dict[str, Any]] = {}

    def counts(self, name: str, model: nn.Module, plan: Plan, input_size: Sequence[int],
               dtype: torch.dtype | None = None) -> dict[str, Any]:
        """Params and FLOPs (one input: an image, or ``dtype=torch.long`` token ids) of the original and the planned
        model; memoised per plan."""
        key, shape = (name, plan_key(plan)), (1, *input_size)
        if (name, "original") not in self._counts:
            self._counts[name, "original"] = {"params_before": count_params(model),
                                              "flops_before": count_flops(model, shape, dtype)}
        if key not in self._counts:
            meta = planned_structure(model, plan)
            self._counts[key] = {**self._counts[name, "original"], "params_after": count_params(meta),
                                 "flops_after": count_flops(meta, shape, dtype), "layers": len(plan.decomposed_layers)}
        return self._counts[key]

    def speed(self, name: str, model: nn.Module, plans: dict[str, Plan], input_size: Sequence[int],
              measure: bool = True, on_round: Callable[[int], None] | None = None) -> dict[str, dict[str, Any]] | None:
        """Measured inference throughput here of the original and each plan, interleaved: medians and 95% intervals.

        Returns ``{label: {img_s, speedup, speedup_ci_low, speedup_ci_high, rounds, source, ...}}`` (memoised),
        or None when not measured yet and ``measure`` is False. ``on_round(done)`` after each round (progress).
        """
        key = self._speed_key(name, plans)
        if key not in self._speed and measure:
            start = time.perf_counter()
            variants = {"original": model.eval()}
            variants.update({label: decompose(model, plan).eval() for label, plan in plans.items()})
            df = compare.compare(variants, (self.batch, *input_size), timing=self.timing(), on_round=on_round)
            where = f"measured here ({conditions()})"
            self._speed[key] = {
                str(r["name"]): {"img_s": float(r["throughput"]), "speedup": float(r["speedup_vs_first"]),
                                 "speedup_ci_low": float(r["speedup_ci_low"]),
                                 "speedup_ci_high": float(r["speedup_ci_high"]),
                                 "source": where, "rounds": int(r["rounds"]), "batch": self.batch,
                                 "seconds": time.perf_counter() - start}
                for r in df.to_dict("records")}
        return self._speed.get(key)

    @staticmethod
    def _speed_key(name: str, plans: dict[str, Plan]) -> tuple:
        return (name, *(plan_key(p) for p in plans.values()))

    def has_speed(self, name: str, plans: dict[str, Plan]) -> bool:
        """Whether :meth:`speed` has measured these plans already (it would answer at once)."""
        return self._speed_key(name, plans) in self._speed

    def timing(self) -> TimingConfig:
        """How :meth:`speed` times the network."""
        return TimingConfig(rounds=self.rounds, warmup=1, repeats=3)

    def most_rounds(self) -> int:
        """The most interleaved rounds :meth:`speed` can take (it adds rounds while an interval is wide)."""
        return compare.effective_limits(self.timing())[0]

    def accuracy_lab(self, pretrained: str) -> AccuracyLab:
        """The accuracy lab of a shipped model (made once per model), leaving :attr:`accuracy` as it is."""
        if self.accuracy is not None:
            self._accuracy_labs.setdefault(self.accuracy.name, self.accuracy)
        if pretrained not in self._accuracy_labs:
            self._accuracy_labs[pretrained] = AccuracyLab(pretrained)
        return self._accuracy_labs[pretrained]

    def use_accuracy(self, pretrained: str) -> AccuracyLab:
        """Make the accuracy lab of a shipped model (once per model) the current :attr:`accuracy`."""
        self.accuracy = self.accuracy_lab(pretrained)
        return self.accuracy

    def accuracy_of(self, plan: Plan, lab: AccuracyLab | None = None) -> dict[str, Any] | None:
        """Calibrated test accuracy after decomposition (trained models only), with the original's; ``lab``:
        the model's accuracy lab (default: the current :attr:`accuracy`)."""
        lab = lab or self.accuracy
        if lab is None:
            return None
        original = lab.original()
        acc = lab.accuracy(plan)
        has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in lab.model.modules())
        label = CALIBRATION if has_bn else "data-aware (no BatchNorm to re-estimate)"
        return {"accuracy": acc, "original": original, "calibration": label,
                "calibration_images": sum(len(x) for x in lab.calibration),
                "test_images": len(lab.test_y), "seconds": lab.last_seconds,
                "source": lab.source(plan), "original_source": lab.source()}


def speed_text(s: dict[str, Any]) -> str:
    """A measured speed-up vs the original as ``+38.0% [+36.0, +40.1] (9 interleaved rounds)``."""
    up = stats.SpeedUp(s["speedup"], s["speedup_ci_low"], s["speedup_ci_high"], s["rounds"])
    return f"{up.text()} ({s['rounds']} interleaved rounds)"


def binomial_half_width(accuracy_pct: float, images: int) -> float:
    """Half-width (points) of the 95% normal-approximation interval of an accuracy measured on ``images``."""
    p = min(max(accuracy_pct / 100, 0.0), 1.0)
    return 196.0 * (max(p * (1 - p), 1 / images) / images) ** 0.5


def accuracy_cell(a: dict[str, Any]) -> str:
    """``91.3% ±1.8`` with the test set's 95% interval, and "within noise" where it is not below the original's;
    ``{"pending": True}``: being scored here in the background."""
    if a.get("pending"):
        return "scoring here in the background (see the progress bar) …"
    if "accuracy" not in a:
        return a["text"]  # a model scored otherwise (a language model's perplexity): where to read it
    half = binomial_half_width(a["accuracy"], a["test_images"])
    text = f"<b>{a['accuracy']:.1f}%</b> ±{half:.1f} ({a['calibration']}; {a.get('source', 'scored here')})"
    if abs(a["accuracy"] - a["original"]) <= half:
        text += " · within noise of the original"
    return text


def network_text(counts: dict[str, dict[str, Any]], speed: dict[str, dict[str, Any]] | None,
                 acc: dict[str, dict[str, Any] | None], model_label: str) -> str:
    """HTML table of the whole-network view: one column per plan (unrounded, rounded), every number's source."""
    labels = list(counts)
    first = counts[labels[0]]
    head = (f"<b>whole network</b> · {model_label} · original: {first['params_before'] / 1e6:.3g}M params, "
            f"{first['flops_before'] / 1e6:.4g}M FLOPs/{first.get('per', 'image')}")
    if speed:
        o = speed["original"]
        head += f", {o['img_s']:.0f} img/s ({o['source']}, batch {o['batch']})"
    any_acc = next((a for a in acc.values() if a and "accuracy" in a), None)
    if any_acc:
        half = binomial_half_width(any_acc["original"], any_acc["test_images"])
        head += (f", accuracy {any_acc['original']:.1f}% ±{half:.1f} (95%, the {any_acc['test_images']:,} MNIST-5k "
                 f"test images; {any_acc['calibration_images']} training images calibrate)")

    per = first.get("per", "image")

    def col(label: str) -> list[str]:
        c, s, a = counts[label], (speed or {}).get(label), acc.get(label)
        cells = [str(c["layers"]), f"{c['params_after'] / 1e6:.3g}M (×{c['params_before'] / c['params_after']:.2f})",
                 f"{c['flops_after'] / 1e6:.4g}M ({100 * (1 - c['flops_after'] / c['flops_before']):.0f}% fewer)"]
        cells.append(f"{s['img_s']:.0f} img/s · {speed_text(s)}" if s else "not measured yet" if per == "image" else
                     "decode speed: notebook 09 (recorded and live)")
        cells.append(accuracy_cell(a) if a else
                     "— (untrained model: accuracy means nothing)")
        return cells

    rows = ["layers decomposed", "params", f"FLOPs / {per}", "throughput (measured here)",
            "test accuracy" if per == "image" else "quality"]
    cols = {label: col(label) for label in labels}
    body = "".join(f"<tr><td>{r}</td>" + "".join(f"<td>{cols[label][i]}</td>" for label in labels) + "</tr>"
                   for i, r in enumerate(rows))
    return (f"{head}<table class='lrd-table'><tr><th></th>" + "".join(f"<th>{label}</th>" for label in labels)
            + f"</tr>{body}</table>")
