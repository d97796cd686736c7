"""The timing harness: summary statistics on a fake timer, a known 2× answer, reproducibility, bad input.

The real-clock tests time modules that *sleep* a known time (per row, per pass) rather than compute: a sleep is
not slowed by other jobs on a loaded CPU beyond a wake-up delay, so the known answers hold on any machine and load.
"""

from __future__ import annotations

import itertools
import json
import statistics
import time

import pytest
import torch
from torch import nn

from lrdlab.cli import main
from lrdlab.measure import timing as measure
from lrdlab.measure.compare import compare, round_times
from lrdlab.measure.timing_config import TimingConfig


def fake_timer(durations):
    """A clock whose successive (start, stop) readings are `durations` apart."""
    ticks = [0.0]
    for d in durations:
        ticks += [ticks[-1] + 100.0, ticks[-1] + 100.0 + d]  # a gap between calls, then the call
    ticks = ticks[1:]
    it = iter(ticks)
    return lambda: next(it)


class Sleeper(nn.Module):
    """Sleeps ``ms_per_1024_rows`` per 1,024 input rows in the forward pass and ``backward_ms`` in the backward."""

    def __init__(self, ms_per_1024_rows: float = 10.0, backward_ms: float = 0.0):
        super().__init__()
        self.ms, self.backward_ms = ms_per_1024_rows, backward_ms
        self.weight = nn.Parameter(torch.ones(1))

    def forward(self, x):
        time.sleep(self.ms / 1000 * x.shape[0] / 1024)
        return _SleepBackward.apply(x * self.weight, self.backward_ms)


class _SleepBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, ms):
        ctx.ms = ms
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        time.sleep(ctx.ms / 1000)
        return grad, None


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


def test_twice_the_work_takes_about_twice_as_long():
    """Known answer: a layer that sleeps 20 ms per 1,024 rows takes twice as long on twice the rows."""
    layer = Sleeper(20.0)
    t1 = measure.time_layer(layer, (1024, 4), warmup=1, repeats=5)
    t2 = measure.time_layer(layer, (2048, 4), warmup=1, repeats=5)
    assert t1 >= 0.020 and 1.5 < t2 / t1 < 2.5, (t1, t2)


def test_make_step_trains_a_private_copy():
    model = tiny_net()
    before = [p.clone() for p in model.parameters()]
    step = measure.make_step(model, (4, 3, 16, 16), "train")
    losses = [float(step()) for _ in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the caller's model is untouched
    assert next(model.parameters()).device.type == "cpu" and model.training
    assert losses[0] != losses[-1]  # the copy does take SGD steps


def test_inference_options_run_on_cpu():
    model = tiny_net()
    plain = measure.make_step(model, (2, 3, 16, 16))()
    for kw in ({"dtype": "bf16"}, {"channels_last": True}):
        out = measure.make_step(model, (2, 3, 16, 16), **kw)()
        assert out.shape == plain.shape == (2, 5)
    assert measure.make_step(model, (2, 3, 16, 16), dtype="bf16")().dtype == torch.bfloat16
    with pytest.raises(ValueError, match="channels_last needs a 4-d"):
        measure.make_step(nn.Linear(4, 4), (2, 4), channels_last=True)


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
    per_round = round_times(df)  # the round times are a column, paired by round; median_s is their median
    assert list(per_round) == ["a", "b"] and all(len(t) == 3 for t in per_round.values())
    assert [statistics.median(t) for t in per_round.values()] == list(df["median_s"])


def test_compare_sees_a_slower_model():
    fast, slow = Sleeper(10.0), Sleeper(40.0)  # 10 and 40 ms a batch of 1,024 rows
    df = compare({"fast": fast, "slow": slow}, (1024, 4), timing=TimingConfig(rounds=3, repeats=3))
    assert 0.15 < df["speedup_vs_first"].iloc[1] < 0.4  # 4× the time: a speed-up of about 0.25


def test_time_layer_backward_times_the_backward_pass_too():
    layer = Sleeper(10.0, backward_ms=20.0)  # 10 ms forward on 1,024 rows, 20 ms backward
    fwd = measure.time_layer(layer, (1024, 4), repeats=5)
    both = measure.time_layer(layer, (1024, 4), backward=True, repeats=5)
    assert fwd >= 0.010 and both - fwd > 0.015, (fwd, both)


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
])
def test_bad_input_is_a_clear_error(kw, match):
    args = {"input_shape": (2, 3, 8, 8), **kw}
    with pytest.raises(ValueError, match=match):
        measure.make_step(tiny_net(), **args)


@pytest.mark.parametrize("kw, match", [({"repeats": 0}, "repeats"), ({"warmup": -1}, "warmup")])
def test_bad_counts_are_a_clear_error(kw, match):
    with pytest.raises(ValueError, match=match):
        measure.time_function(lambda: None, **kw)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="CUDA is not available"):
        measure.make_step(tiny_net(), (2, 3, 8, 8), device="cuda")
    with pytest.raises(ValueError, match="CUDA is not available"):
        measure.time_layer(nn.Linear(4, 4), (2, 4), device="cuda:0")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_events_time_a_gpu_model():
    times = measure.time_function(measure.make_step(tiny_net(), (8, 3, 32, 32), device="cuda"), "cuda", repeats=5)
    assert len(times) == 5 and min(times) > 0
    half = measure.make_step(tiny_net(), (8, 3, 32, 32), device="cuda", dtype="fp16")
    assert min(measure.time_function(half, "cuda", repeats=2)) > 0


def test_bad_mode_and_rounds():
    with pytest.raises(ValueError, match="mode"):
        compare({"a": tiny_net()}, (2, 3, 8, 8), mode="eval")
    with pytest.raises(ValueError, match="timing must be a TimingConfig"):
        compare({"a": tiny_net()}, (2, 3, 8, 8), "inference", 5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="BatchNorm"):
        measure.make_step(tiny_net(), (1, 3, 8, 8), "train")


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
