"""The timing harness: summary statistics on a fake timer, a known 2× answer, reproducibility, bad input.

Timing tolerances are generous on purpose: the CI machine has 2 cores shared with other jobs.
"""

from __future__ import annotations

import itertools
import json
import statistics

import pytest
import torch
from torch import nn

from lrdlab.cli import main
from lrdlab.measure import timing as measure
from lrdlab.measure.compare import compare
from lrdlab.measure.timing_config import TimingConfig


def fake_timer(durations):
    """A clock whose successive (start, stop) readings are `durations` apart."""
    ticks = [0.0]
    for d in durations:
        ticks += [ticks[-1] + 100.0, ticks[-1] + 100.0 + d]  # a gap between calls, then the call
    ticks = ticks[1:]
    it = iter(ticks)
    return lambda: next(it)


def tiny_net(width: int = 16) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 5))


def test_time_function_reports_each_call_on_a_fake_timer():
    durations = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]
    calls = []
    times = measure.time_function(lambda: calls.append(1), warmup=2, repeats=10, timer=fake_timer(durations))
    assert times == pytest.approx(durations)
    assert len(calls) == 12  # warm-up calls are made but not timed


def test_quartiles_are_the_median_and_inclusive_quartiles():
    q1, med, q3 = measure.quartiles([3, 1, 4, 1, 5, 9, 2, 6, 5, 3])
    assert med == 3.5
    assert (q1, q3) == (2.25, 5.0)  # sorted 1 1 2 3 3 4 5 5 6 9, linear interpolation
    assert measure.quartiles([7.0]) == (7.0, 7.0, 7.0)
    with pytest.raises(ValueError):
        measure.quartiles([])


def test_timing_summary_and_json():
    t = measure._timing([0.2, 0.1, 0.4], 8, "inference", torch.device("cpu"), None, {"x": 1})
    assert (t.q1_s, t.median_s, t.q3_s) == pytest.approx((0.15, 0.2, 0.3))
    assert t.throughput == pytest.approx(40.0)
    d = json.loads(json.dumps(t.to_dict()))
    assert d["throughput"] == pytest.approx(40.0) and d["dtype"] == "fp32" and d["device_name"]
    assert d["torch_version"] == torch.__version__ and d["settings"] == {"x": 1}


def test_twice_the_work_takes_about_twice_as_long():
    """Known answer: twice the rows through a Linear is twice the work; median of 5 interleaved ratios."""
    layer = nn.Linear(1024, 1024)  # ~2 GFLOP per call: long enough that scheduler noise is small
    ratios = []
    for _ in range(5):
        t1 = measure.time_layer(layer, (1024, 1024), warmup=2, repeats=5)
        t2 = measure.time_layer(layer, (2048, 1024), warmup=2, repeats=5)
        ratios.append(t2 / t1)
    assert 1.3 < statistics.median(ratios) < 2.8, ratios


def test_two_runs_agree_within_tolerance():
    """Stated tolerance: two medians of the same benchmark within ±40% (shared 2-core CPU)."""
    model = tiny_net(32)
    a = measure.measure_inference(model, (16, 3, 32, 32), repeats=15)
    b = measure.measure_inference(model, (16, 3, 32, 32), repeats=15)
    assert 1 / 1.4 < a.median_s / b.median_s < 1.4, (a.median_s, b.median_s, a.spread, b.spread)
    assert a.q1_s <= a.median_s <= a.q3_s


def test_measure_training_steps_a_private_copy():
    model = tiny_net()
    before = [p.clone() for p in model.parameters()]
    t = measure.measure_training(model, (4, 3, 16, 16), repeats=2, warmup=1)
    assert t.mode == "train" and t.batch == 4 and t.repeats == 2 and t.median_s > 0
    assert t.settings["input_shape"] == [4, 3, 16, 16]
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert next(model.parameters()).device.type == "cpu" and model.training


def test_inference_options_run_on_cpu():
    model = tiny_net()
    for kw in ({"dtype": "bf16"}, {"channels_last": True}):
        t = measure.measure_inference(model, (2, 3, 16, 16), repeats=2, warmup=1, **kw)
        assert t.median_s > 0
    assert measure.measure_inference(model, (2, 3, 16, 16), repeats=1, dtype="bf16").dtype == "bf16"


def test_compare_interleaves_and_baseline_is_one():
    order = []

    class Probe(nn.Module):
        def __init__(self, name):
            super().__init__()
            self.name = name

        def forward(self, x):
            order.append(self.name)
            return x

    df = compare({"a": Probe("a"), "b": Probe("b")}, (2, 3), timing=TimingConfig(rounds=3, warmup=0, repeats=1,
                                                                                 max_rounds=3))
    assert list(df["name"]) == ["a", "b"]
    assert df["speedup_vs_first"].iloc[0] == 1.0
    assert set(df.columns) >= {"name", "median_s", "throughput", "speedup_vs_first", "spread"}
    # deepcopy in make_step copies the probes, which still append to the shared list; the order alternates
    # each round (A B, B A, A B), so neither model always runs first
    assert order == ["a", "b", "b", "a", "a", "b"]


def test_compare_sees_a_slower_model():
    fast, slow = nn.Linear(256, 256), nn.Sequential(*[nn.Linear(256, 256) for _ in range(4)])
    df = compare({"fast": fast, "slow": slow}, (256, 256), timing=TimingConfig(rounds=3, repeats=5))
    assert df["speedup_vs_first"].iloc[1] < 0.7  # 4× the work


def test_time_layer_backward_is_slower_than_forward():
    conv = nn.Conv2d(32, 32, 3, padding=1)
    fwd = measure.time_layer(conv, (8, 32, 16, 16), repeats=10)
    both = measure.time_layer(conv, (8, 32, 16, 16), backward=True, repeats=10)
    assert both > 1.2 * fwd


def test_ideal_and_realised():
    assert measure.ideal_speedup(100, 50) == 2.0
    assert measure.realised_fraction(1.5, 2.0) == 0.5


@pytest.mark.parametrize("kw, match", [
    ({"input_shape": (0, 3, 8, 8)}, "batch size"),
    ({"input_shape": (3, 8, 8, -1)}, ">= 1"),
    ({"input_shape": (8,)}, "batch dimension"),
    ({"device": "tpu"}, "device"),
    ({"device": "banana"}, "device"),
    ({"dtype": "int8"}, "dtype"),
    ({"repeats": 0}, "repeats"),
    ({"warmup": -1}, "warmup"),
])
def test_bad_input_is_a_clear_error(kw, match):
    args = {"input_shape": (2, 3, 8, 8), **kw}
    with pytest.raises(ValueError, match=match):
        measure.measure_inference(tiny_net(), **args)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="CUDA is not available"):
        measure.measure_inference(tiny_net(), (2, 3, 8, 8), device="cuda")
    with pytest.raises(ValueError, match="CUDA is not available"):
        measure.time_layer(nn.Linear(4, 4), (2, 4), device="cuda:0")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_events_time_a_gpu_model():
    t = measure.measure_inference(tiny_net(), (8, 3, 32, 32), device="cuda", repeats=5)
    assert t.device.startswith("cuda") and t.median_s > 0 and t.device_name
    assert measure.measure_inference(tiny_net(), (8, 3, 32, 32), device="cuda", repeats=2, dtype="fp16").median_s > 0


def test_bad_mode_and_rounds():
    with pytest.raises(ValueError, match="mode"):
        compare({"a": tiny_net()}, (2, 3, 8, 8), mode="eval")
    with pytest.raises(ValueError, match="timing must be a TimingConfig"):
        compare({"a": tiny_net()}, (2, 3, 8, 8), "inference", 5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="BatchNorm"):
        measure.measure_training(tiny_net(), (1, 3, 8, 8))


def test_fake_timer_helper_is_consistent():
    clock = fake_timer([1, 2])
    readings = list(itertools.islice(iter(clock, None), 4))
    assert statistics.median([readings[1] - readings[0], readings[3] - readings[2]]) == 1.5


def test_cli_bench_json(capsys):
    code = main(["bench", "resnet18", "--paper", "--image-size", "32", "--batch", "2", "--rounds", "1",
                 "--repeats", "1", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ideal_speedup"] > 1.3  # 2x per layer removes ~45% of FLOPs
    inf = report["inference"]
    assert inf["original_throughput"] > 0 and inf["decomposed_throughput"] > 0 and "realised" in inf
    assert report["machine"]["torch_version"] == torch.__version__ and report["input_shape"] == [2, 3, 32, 32]


def test_cli_bench_bad_device_and_batch(capsys):
    assert main(["bench", "resnet18", "--image-size", "32", "--device", "tpu"]) == 2
    assert "device" in capsys.readouterr().err
    assert main(["bench", "resnet18", "--image-size", "32", "--batch", "0"]) == 2
    assert "batch" in capsys.readouterr().err
