"""Where the time goes: layer times measured in place add up, the rest is what is left, and Amdahl's arithmetic."""

from __future__ import annotations

import math
import time

import pytest
import torch
from torch import nn

from lrdlab import Ratio, decompose, make_plan
from lrdlab.cli import main
from lrdlab.measure.breakdown import REST, WHOLE, breakdown_text, needed_layer_speedup, time_breakdown


class FakeClock:
    """``time.perf_counter`` that only :class:`Sleep` advances: times exact on any machine, at any load."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


CLOCK = FakeClock()  # module-level: time_breakdown deep-copies the models, and must not copy their clock


class Sleep(nn.Module):
    """Takes ``ms`` milliseconds: of :data:`CLOCK` when ``fake``, else for real (no FLOPs)."""

    def __init__(self, ms: float, fake: bool = False):
        super().__init__()
        self.ms, self.fake = ms, fake

    def forward(self, x):
        if self.fake:
            CLOCK.now += self.ms / 1e3
        else:
            time.sleep(self.ms / 1e3)
        return x


class Skip(nn.Module):
    """Runs only ``inner[1]``: ``inner[0]`` is registered but never called."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner[1](x)


def two_part(layer_ms: float, width: int, fake: bool = False) -> nn.Module:
    """A 4 ms part that is never decomposed, then the 'layer': Linear(s) of ``width`` and a sleep."""
    inner = [nn.Linear(8, 8)] if width == 8 else [nn.Linear(8, width), nn.Linear(width, 8)]
    return nn.Sequential(Sleep(4.0, fake), nn.Sequential(*inner, Sleep(layer_ms, fake))).eval()


def test_the_needed_layer_speedup_inverts_amdahls_law():
    need = needed_layer_speedup(0.68, 1.0, 0.32, 1.6)  # the rest unchanged by the decomposition
    assert 1 / (0.32 + 0.68 / need) == pytest.approx(1.6)  # Amdahl: the whole network's speed-up at that need
    assert math.isinf(needed_layer_speedup(0.5, 1.0, 0.7, 1.5))  # the rest alone is over the budget
    with pytest.raises(ValueError):
        needed_layer_speedup(0.5, 1.0, 0.5, 0.0)


def test_layer_and_rest_times_are_attributed_where_they_are_spent(monkeypatch):
    monkeypatch.setattr(time, "perf_counter", CLOCK)  # the Linears take no time on it: exact, whatever the load
    original, decomposed = two_part(6.0, 8, fake=True), two_part(2.0, 2, fake=True)
    b = time_breakdown(original, decomposed, (4, 8), ["1"], rounds=6, warmup=1, progress=False)
    df = b.parts
    assert list(df["part"]) == ["1", REST, WHOLE]
    row = df.set_index("part")
    assert row.loc["1", "original_ms"] == pytest.approx(6.0) and row.loc["1", "decomposed_ms"] == pytest.approx(2.0)
    assert row.loc[REST, "original_ms"] == pytest.approx(4.0) and row.loc[REST, "decomposed_ms"] == pytest.approx(4.0)
    assert row.loc[WHOLE, "original_ms"] == pytest.approx(10.0)
    assert row.loc[WHOLE, "decomposed_ms"] == pytest.approx(6.0)
    s = b.summary
    assert str(b) == breakdown_text(s) and b.to_dict()["parts"][0]["part"] == "1"
    assert s["layers"]["ci_low"] == pytest.approx(200)  # 6 ms → 2 ms in every round
    assert s["layers_share_pct"] == pytest.approx(60)  # 6 of 10 ms
    assert s["ceiling_pct"] == pytest.approx(150)  # 10 ms / 4 ms of rest
    assert s["layers_flop_ratio"] == pytest.approx(2.0)  # Linear 8→8 against 8→2→8
    assert "unreachable" in breakdown_text(s, target_pct=200)  # 10 ms / 3 would leave less than the 4 ms rest


def test_a_plan_names_the_layers_and_the_callers_models_are_untouched():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).train()
    plan = make_plan(model, Ratio(2))
    dec = decompose(model, plan, progress=False).train()
    b = time_breakdown(model, dec, (2, 3, 16, 16), plan, rounds=3, warmup=0, progress=False)
    assert list(b.parts["part"]) == [*(r.name for r in plan.decomposed_layers), REST, WHOLE]
    assert model.training and dec.training
    assert not any(m._forward_hooks or m._forward_pre_hooks for net in (model, dec) for m in net.modules())
    assert set(b.summary) >= {"layers", "rest", "whole", "ceiling_pct", "threads", "load_average"}


def test_bad_layers_and_rounds_are_named():
    a, b = two_part(0.0, 8), two_part(0.0, 2)
    with pytest.raises(ValueError, match="'2'.*not a submodule"):
        time_breakdown(a, b, (1, 8), ["2"], progress=False)
    with pytest.raises(ValueError, match="inside '1'"):
        time_breakdown(a, b, (1, 8), ["1", "1.0"], progress=False)
    with pytest.raises(ValueError, match="rounds"):
        time_breakdown(a, b, (1, 8), ["1"], rounds=1, progress=False)
    with pytest.raises(ValueError, match="'inner.0' did not run"):
        time_breakdown(Skip(a), Skip(b), (1, 8), ["inner.1", "inner.0"], rounds=2, progress=False)


def test_bench_breakdown_prints_the_parts_and_refuses_other_backends(capsys):
    assert main(["bench", "resnet20", "--rounds", "2", "--repeats", "1", "--breakdown"]) == 0
    out = capsys.readouterr().out
    assert "rest of the network" in out and "ceiling if the layers took no time" in out
    assert main(["bench", "resnet20", "--breakdown", "--backend", "compile"]) == 2
    assert "--breakdown" in capsys.readouterr().err
