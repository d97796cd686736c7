"""A plan against its original, whole model: :func:`bench_plan` and its typed record :class:`BenchReport`.

Both models are timed interleaved (:func:`lrdlab.compare`) beside the FLOP ideal; :func:`bench_threads` repeats the
bench at each torch thread count, one after another. A network of thin decomposed layers has more, smaller
parallel regions than the original, so it gains less from each extra thread: the speed-up at one thread is not
the speed-up at all cores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from torch import nn

from lrdlab.lowrank.decompose import check_plan
from lrdlab.lowrank.plan import Plan
from lrdlab.measure import timing as measure
from lrdlab.measure.compare import DEFAULT_TIMING, check_backend, compare, effective_limits
from lrdlab.measure.compute import check_threads, compute_policy, current_compute
from lrdlab.measure.machine import machine_info
from lrdlab.measure.stats import SpeedUp
from lrdlab.measure.sweeps import model_costs, shaped_model
from lrdlab.measure.timing_config import TimingConfig, check_timing


@dataclass(frozen=True)
class ModeBench:
    """One mode (inference or train) of a bench: median times and throughputs of both models, the paired
    speed-up with its 95% interval, its quartiles, and ``realised`` = (speed-up − 1) / (FLOP ideal − 1)."""

    speedup: SpeedUp
    original_s: float
    decomposed_s: float
    original_throughput: float
    decomposed_throughput: float
    speedup_q1: float
    speedup_q3: float
    spread_original: float
    spread_decomposed: float
    realised: float
    realised_ci: tuple[float, float]
    threads: int
    load_average: Any

    def to_dict(self) -> dict[str, Any]:
        """The recorded (JSON) form: the speed-up as ``speedup_pct`` percent, ``speedup`` its median ratio."""
        out = {k: v for k, v in asdict(self).items() if k != "speedup"}
        return {"speedup_pct": self.speedup.to_pct(), "within_noise": self.speedup.within_noise,
                "speedup": self.speedup.median, **out, "realised_ci": list(self.realised_ci)}


@dataclass(frozen=True)
class BenchReport:
    """:func:`bench_plan`'s result: what ran where, params and FLOPs of both models, the FLOP-ideal speed-up
    (original FLOPs / decomposed FLOPs) and a :class:`ModeBench` per mode (``train`` None unless timed).
    ``str(report)`` is a few lines of text; :meth:`to_dict` the recorded JSON form."""

    model: str | None
    input_shape: tuple[int, ...]
    machine: dict[str, Any]
    settings: dict[str, Any]
    layers_decomposed: int
    params: tuple[int, int]  # original, decomposed
    flops: tuple[int, int]
    ideal_speedup: float
    inference: ModeBench
    train: ModeBench | None = None
    compute: dict[str, Any] | None = None  # the compute mode it ran under (bench_threads, the CLI)

    def modes(self) -> dict[str, ModeBench]:
        return {m: b for m, b in (("inference", self.inference), ("train", self.train)) if b is not None}

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model, "input_shape": list(self.input_shape), "machine": self.machine,
            "settings": self.settings, "layers_decomposed": self.layers_decomposed,
            "params": dict(zip(("original", "decomposed"), self.params)),
            "flops": dict(zip(("original", "decomposed"), self.flops)), "ideal_speedup": self.ideal_speedup,
            **{mode: b.to_dict() for mode, b in self.modes().items()}}
        return out if self.compute is None else {**out, "compute": self.compute}

    def __str__(self) -> str:
        m = self.machine
        lines = [
            f"{self.model}, input {self.input_shape}, {m['device']} ({m['device_name']}, {m['torch_threads']} "
            f"threads), torch {m['torch_version']}, backend {self.settings['backend']}",
            f"params {self.params[0]:,} → {self.params[1]:,}; FLOPs {self.flops[0]:,} → {self.flops[1]:,}; "
            f"FLOP-ideal speed-up ×{self.ideal_speedup:.3f}",
        ]
        for mode, r in self.modes().items():
            lines.append(
                f"{mode:9s}: original {r.original_throughput:.1f}/s, decomposed {r.decomposed_throughput:.1f}/s, "
                f"speed-up {r.speedup.text()} (95% CI, {r.speedup.rounds} rounds"
                f"{'' if r.speedup.converged else ', not converged'}), "
                f"{100 * r.realised:.0f}% of the FLOP ideal realised; load {r.load_average}")
        return "\n".join(lines)

    def _repr_pretty_(self, p: Any, _cycle: bool) -> None:  # IPython / Jupyter: the text, not the fields
        p.text(str(self))


def bench_plan(
    model: nn.Module,
    plan: Plan,
    input_shape: Sequence[int],
    timing: TimingConfig = DEFAULT_TIMING,
    *,
    train: bool = False,
    progress: bool = False,
) -> BenchReport:
    """Original vs decomposed (plan structure, random factor weights) measured interleaved, with the FLOP ideal.

    Per mode (inference, and train with ``train``) the median times, throughputs and the measured speed-up
    (median of per-round ratios, 95% bootstrap interval; rounds adapt until it is ±3 points or the budget ends).
    ``timing`` (:class:`~lrdlab.measure.timing_config.TimingConfig`): device, rounds, and the backend: eager
    (default), compile (both models compiled) or onnxruntime (both exported to ONNX; inference only).
    """
    check_plan(model, plan)
    shape = measure.check_shape(input_shape)
    timing = check_timing(timing, DEFAULT_TIMING)
    dev = measure.check_device(timing.device)
    modes = ["inference"] + (["train"] if train else [])
    for mode in modes:
        check_backend(timing.backend, mode, dev)
    max_rounds, budget_s = effective_limits(timing)
    decomposed = shaped_model(model, plan)
    before, after = model_costs(model, shape), model_costs(decomposed, shape)
    ideal = measure.ideal_speedup(before["flops"], after["flops"])
    timed: dict[str, ModeBench] = {}
    for mode in modes:
        if progress:
            print(f"timing original vs decomposed ({mode}, {timing.rounds} interleaved rounds) …", flush=True)
        o, d = compare({"original": model, "decomposed": decomposed}, shape, mode, timing).iloc[:2].itertuples()
        timed[mode] = ModeBench(
            speedup=SpeedUp.from_row(d._asdict()), original_s=float(o.median_s), decomposed_s=float(d.median_s),
            original_throughput=float(o.throughput), decomposed_throughput=float(d.throughput),
            speedup_q1=float(d.speedup_q1), speedup_q3=float(d.speedup_q3), spread_original=float(o.spread),
            spread_decomposed=float(d.spread), realised=measure.realised_fraction(float(d.speedup_vs_first), ideal),
            realised_ci=(measure.realised_fraction(float(d.speedup_ci_low), ideal),
                         measure.realised_fraction(float(d.speedup_ci_high), ideal)),
            threads=int(d.threads), load_average=d.load_average)
    settings = {"rounds": timing.rounds, "max_rounds": max_rounds, "budget_s": budget_s, "warmup": timing.warmup,
                "repeats": timing.repeats, "dtype": measure.check_dtype(timing.dtype),
                "channels_last": timing.channels_last, "backend": timing.backend}
    return BenchReport(model=plan.model, input_shape=shape, machine=machine_info(dev).to_dict(), settings=settings,
                       layers_decomposed=len(plan.decomposed_layers), params=(before["params"], after["params"]),
                       flops=(before["flops"], after["flops"]), ideal_speedup=ideal, inference=timed["inference"],
                       train=timed.get("train"))


def bench_threads(model: nn.Module, plan: Plan, input_shape: Sequence[int], threads: Sequence[int],
                  timing: TimingConfig | None = None, *, train: bool = False,
                  progress: bool = False) -> list[BenchReport]:
    """:func:`bench_plan` at each thread count (``timing`` None: its default); each report also names the
    compute it ran with."""
    counts = [check_threads(n) for n in threads]
    reports = []
    for n in counts:
        with compute_policy(n):
            report = bench_plan(model, plan, input_shape, timing or DEFAULT_TIMING, train=train, progress=progress)
            reports.append(replace(report, compute=current_compute().to_dict()))
    return reports


def threads_table(reports: Sequence[BenchReport], mode: str = "inference") -> str:
    """One row per thread count: original ms, decomposed ms, speed-up [95% CI], realised fraction of the FLOP ideal."""
    first = reports[0]
    c, s = first.compute or {}, first.settings
    lines = [f"{first.model}, {mode}, input {first.input_shape}, backend {s['backend']}, "
             f"compute {c.get('mode')}, OpenMP wait policy {c.get('wait_policy')}, "
             f"FLOP-ideal ×{first.ideal_speedup:.3f}",
             f"{'threads':>7s}  {'original ms':>11s}  {'decomposed ms':>13s}  {'speed-up [95% CI]':<36s} "
             f"{'realised':>8s}  load"]
    for r in reports:
        m = r.modes()[mode]
        lines.append(f"{(r.compute or {}).get('threads', m.threads):>7d}  {1e3 * m.original_s:>11.1f}  "
                     f"{1e3 * m.decomposed_s:>13.1f}  {m.speedup.text():<36s} {m.realised:>8.2f}  {m.load_average}")
    return "\n".join(lines)
