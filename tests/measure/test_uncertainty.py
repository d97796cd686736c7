"""Uncertainty on every speed-up: bootstrap intervals, A/A checks, adaptive rounds, shared measurements, backends."""

from __future__ import annotations

import copy
import json
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from lrdlab import Layers, Ratio, make_plan
from lrdlab.cli import main
from lrdlab.measure import stats
from lrdlab.measure.bench import bench_plan
from lrdlab.measure.compare import BackendUnavailable, check_backend, compare, onnx_session
from lrdlab.measure.compute import choose_threads, compute_info, compute_policy
from lrdlab.measure.sweeps import shaped_model
from lrdlab.measure.timing_config import TimingConfig


def tiny(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()


class FakeClock:
    """A clock whose timed intervals are ``true[model] × (1 + noise·N(0,1))``, models taken in compare's order.

    compare times each model ``repeats`` times per round (two clock reads each), models in turn, the order
    reversed every other round.
    """

    def __init__(self, true: list[float], repeats: int, noise: float = 0.08, seed: int = 0):
        self.true, self.repeats, self.noise = true, repeats, noise
        self.rng = np.random.default_rng(seed)
        self.now, self.reads = 0.0, 0

    def __call__(self) -> float:
        if self.reads % 2 == 1:  # a stop: advance by the model's noisy time
            slot = self.reads // (2 * self.repeats)
            model = slot % len(self.true)
            if (slot // len(self.true)) % 2:  # compare reverses the order every other round
                model = len(self.true) - 1 - model
            self.now += self.true[model] * (1 + self.noise * self.rng.standard_normal())
        self.reads += 1
        return self.now


# --- the statistics ----------------------------------------------------------------------------------


def test_bootstrap_interval_is_deterministic_and_brackets_the_median():
    x = [1.0, 1.1, 0.9, 1.05, 0.97, 1.2, 1.01]
    a, b = stats.bootstrap_median_ci(x), stats.bootstrap_median_ci(x)
    assert a == b and a[1] <= a[0] == float(np.median(x)) <= a[2]
    assert stats.bootstrap_median_ci([2.0]) == (2.0, 2.0, 2.0)
    assert stats.bootstrap_median_ci([1.0, float("nan"), 1.0]) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError):
        stats.bootstrap_median_ci([float("nan")])
    wide = stats.bootstrap_median_ci(list(np.random.default_rng(0).normal(1, 0.2, 9)))
    narrow = stats.bootstrap_median_ci(list(np.random.default_rng(0).normal(1, 0.02, 9)))
    assert wide[2] - wide[1] > 5 * (narrow[2] - narrow[1])


def test_speedup_percent_and_verdict():
    up = stats.SpeedUp.of([2.0, 2.0, 2.0], [1.6, 1.6, 1.6])
    assert (up.median, up.ci_low, up.ci_high, up.rounds) == (1.25, 1.25, 1.25, 3)
    assert up.pct == pytest.approx(25.0) and not up.within_noise and up.verdict == "faster"
    noisy = stats.SpeedUp.from_pct({"median": 1.0, "ci_low": -2.0, "ci_high": 4.0})
    assert noisy.text() == "+1.0% [-2.0, +4.0], within noise"
    assert up.text() == "+25.0% [+25.0, +25.0]" and stats.SpeedUp.from_pct(up.to_pct()) == up
    with pytest.raises(ValueError, match="paired"):
        stats.SpeedUp.of([1.0, 2.0], [1.0])


def test_every_recorded_shape_reads_as_one_speedup():
    """The percent dict, a compare row and the flat ``*_speedup_pct`` columns of older files give one record."""
    up = stats.SpeedUp.of([2.0, 2.2, 1.9], [1.6, 1.7, 1.6])
    pct = up.to_pct()
    flat = {"train_speedup_pct": pct["median"], "train_speedup_pct_ci_low": pct["ci_low"],
            "train_speedup_pct_ci_high": pct["ci_high"], "train_rounds": 3}
    row = {"speedup_vs_first": up.median, "speedup_ci_low": up.ci_low, "speedup_ci_high": up.ci_high, "rounds": 3,
           "converged": True}
    for other in (stats.SpeedUp.from_pct(pct), stats.SpeedUp.from_flat(flat, "train_"), stats.SpeedUp.from_row(row)):
        assert other.text(rounds=True) == up.text(rounds=True)
    assert stats.SpeedUp.from_flat({"speedup_pct": 5.0}).text() == "+5.0% (no interval)"  # older recorded data
    assert stats.SpeedUp.from_flat({}) is None


def test_aa_intervals_cover_zero_at_about_the_nominal_rate():
    """A/A with deterministic noise: a model against its own copy; the 95% interval covers 1 in most seeds."""
    covered = []
    for seed in range(200):
        rng = np.random.default_rng(seed)
        a, b = rng.normal(1, 0.08, 15), rng.normal(1, 0.08, 15)
        covered.append(stats.SpeedUp.of(a, b).within_noise)
    assert np.mean(covered) >= 0.88  # percentile bootstrap of a median of 15: close to, a bit under, 95%


# --- compare: the measurement --------------------------------------------------------------------------


def test_aa_check_through_compare_with_a_fake_clock():
    model = tiny()
    df = compare({"a": model, "a copy": copy.deepcopy(model)}, (2, 3, 8, 8),
                 timing=TimingConfig(rounds=9, warmup=0, repeats=3, max_rounds=9), dedupe=False,
                 clock=FakeClock([1.0, 1.0], 3))
    row = df.iloc[1]
    assert row["same_as"] == "a copy" and row["rounds"] == 9
    assert row["speedup_ci_low"] <= 1.0 <= row["speedup_ci_high"]


def test_a_real_difference_is_outside_noise_and_throughput_agrees_with_the_speedup():
    df = compare({"slow": tiny(0), "fast": tiny(1)}, (2, 3, 8, 8), timing=TimingConfig(rounds=5, warmup=0, repeats=3),
                 dedupe=False, clock=FakeClock([1.25, 1.0], 3, noise=0.03))
    fast = df.iloc[1]
    assert fast["speedup_ci_low"] > 1.1 and fast["converged"]
    # throughput and speed-up come from the same paired measurement
    assert fast["throughput"] / df.iloc[0]["throughput"] == pytest.approx(fast["speedup_vs_first"])
    assert fast["load_average"] == df.iloc[0]["load_average"] and fast["threads"] == torch.get_num_threads()


def test_rounds_adapt_until_the_interval_is_narrow_or_the_budget_ends():
    models = {"a": tiny(0), "b": tiny(1)}
    quick = TimingConfig(rounds=3, warmup=0, repeats=2)
    quiet = compare(models, (2, 3, 8, 8), timing=quick, dedupe=False, clock=FakeClock([1.0, 0.8], 2, noise=0.0))
    assert quiet.iloc[1]["rounds"] == 3 and quiet.iloc[1]["converged"]
    noisy = compare(models, (2, 3, 8, 8), timing=replace(quick, max_rounds=12), dedupe=False,
                    clock=FakeClock([1.0, 0.8], 2, noise=0.4))
    assert 3 < noisy.iloc[1]["rounds"] <= 12
    broke = compare(models, (2, 3, 8, 8), timing=replace(quick, budget_s=0.0, max_rounds=50), dedupe=False,
                    clock=FakeClock([1.0, 0.8], 2, noise=0.4))
    assert broke.iloc[1]["rounds"] == 3 and not broke.iloc[1]["converged"]  # flagged, never a crash


def test_models_identical_in_speed_are_measured_once():
    clock = FakeClock([1.0], 2, noise=0.0)
    model = tiny()
    frozen = copy.deepcopy(model)
    for p in frozen[0].parameters():
        p.requires_grad_(False)
    df = compare({"base": tiny(1), "lrd": model, "lrd frozen": frozen}, (2, 3, 8, 8),
                 timing=TimingConfig(rounds=3, warmup=0, repeats=2), clock=clock)
    assert list(df["same_as"]) == ["base", "base", "base"]  # same structure: one measurement for all
    assert clock.reads == 3 * 2 * 2  # 3 rounds × 2 repeats × 2 reads, one model
    train = compare({"lrd": model, "lrd frozen": frozen}, (2, 3, 8, 8), mode="train",
                    timing=TimingConfig(rounds=1, warmup=0, repeats=1))
    assert list(train["same_as"]) == ["lrd", "lrd frozen"]  # training differs: both timed


# --- the compute policy ------------------------------------------------------------------------------


def test_choose_threads_leaves_busy_cores_alone():
    assert choose_threads(cores=8, load=0.0, passive=True) == 8
    assert choose_threads(cores=8, load=3.2, passive=True) == 5
    assert choose_threads(cores=2, load=7.0, passive=True) == 1
    assert choose_threads(cores=2, load=0.6, passive=False) == 1  # spinning threads on a busy machine: one
    assert choose_threads(cores=2, load=0.1, passive=False) == 2


def test_compute_policy_sets_and_restores_threads():
    before = torch.get_num_threads()
    with compute_policy(1) as n:
        assert n == 1 == torch.get_num_threads()
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError):
        with compute_policy(0):
            pass
    info = compute_info().to_dict()
    assert {"torch_threads", "omp_wait_policy", "load_average", "cpu_count"} <= set(info)


# --- backends ----------------------------------------------------------------------------------------


def test_decomposed_model_gives_the_same_outputs_in_onnxruntime():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from lrdlab import decompose

    model = tiny()
    dec = decompose(model, make_plan(model, Ratio(2), Layers(exclude=["0"])), progress=False).eval()
    x = torch.randn(2, 3, 8, 8)
    session = onnx_session(dec, tuple(x.shape))
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        assert np.allclose(out, dec(x).numpy(), atol=1e-5)


def test_bench_on_onnxruntime_reports_backend_and_interval():
    pytest.importorskip("onnxruntime")
    model = tiny()
    onnx = TimingConfig(rounds=3, warmup=1, repeats=2, backend="onnxruntime", max_rounds=3)
    report = bench_plan(model, make_plan(model, Ratio(2), Layers(exclude=["0"])), (2, 3, 8, 8), onnx)
    inf = report.to_dict()["inference"]
    assert report.settings["backend"] == "onnxruntime" and report.train is None
    assert set(inf["speedup_pct"]) == {"median", "ci_low", "ci_high", "rounds", "converged"}
    assert inf["speedup_pct"]["ci_low"] <= inf["speedup_pct"]["median"] <= inf["speedup_pct"]["ci_high"]
    assert "backend onnxruntime" in str(report) and "95% CI" in str(report)
    with pytest.raises(ValueError, match="inference only"):
        bench_plan(model, make_plan(model, Ratio(2), Layers(exclude=["0"])), (2, 3, 8, 8), onnx, train=True)


def test_missing_backend_library_is_one_line_naming_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(BackendUnavailable, match=r"lrdlab\[onnx\]"):
        check_backend("onnxruntime")
    code = main(["bench", "resnet18", "--image-size", "32", "--batch", "2", "--backend", "onnxruntime"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "lrdlab[onnx]" in err
    with pytest.raises(ValueError, match="backend"):
        check_backend("tensorrt")


def test_cli_bench_json_carries_intervals(capsys):
    code = main(["bench", "resnet18", "--image-size", "32", "--batch", "2", "--rounds", "3", "--max-rounds", "3",
                 "--repeats", "1", "--threads", "1", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    inf = report["inference"]
    assert inf["speedup_pct"]["rounds"] == 3 and isinstance(inf["within_noise"], bool)
    assert report["machine"]["torch_threads"] == 1 and "load_average" in report["machine"]
    assert shaped_model  # the decomposed side is the plan's structure with random factors
