"""Choosing a plan on the backend: a later plan wins only when faster than the default with confidence,
and no plan is kept that does not beat the original."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from lrdlab import FixedRank, make_plan
from lrdlab.cli import main
from lrdlab.measure.plan_choice import ORIGINAL, choose_plan, pick
from lrdlab.measure.timing_config import TimingConfig


def rounds(level: float, noise: float, n: int = 30, seed: int = 0) -> list[float]:
    """``n`` round times around ``level`` seconds with multiplicative noise ``noise`` (lognormal sigma)."""
    return list(level * np.exp(np.random.default_rng(seed).normal(0.0, noise, n)))


def test_a_plan_clearly_faster_than_the_default_is_chosen():
    times = {ORIGINAL: rounds(1.0, 0.05, seed=1), "searched": rounds(0.70, 0.05, seed=2),
             "g=32": rounds(0.55, 0.05, seed=3), "g=64": rounds(0.65, 0.05, seed=4)}
    choice, reason, versus = pick(times, ["searched", "g=32", "g=64"])
    assert choice == "g=32" and "faster than searched" in reason
    assert versus["searched"].median == pytest.approx(1.0)
    assert versus["g=32"].ci_low > 1.2


def test_a_difference_within_noise_keeps_the_default():
    times = {ORIGINAL: rounds(1.0, 0.10, seed=1), "searched": rounds(0.70, 0.10, seed=2),
             "g=32": rounds(0.69, 0.10, seed=3)}
    choice, reason, versus = pick(times, ["searched", "g=32"])
    assert versus["g=32"].ci_low <= 1.0 < versus["g=32"].ci_high  # the premise: g=32 is within noise
    assert choice == "searched" and "no other plan" in reason


def test_the_original_is_kept_when_no_plan_beats_it_with_confidence():
    times = {ORIGINAL: rounds(1.0, 0.10, seed=1), "searched": rounds(0.99, 0.10, seed=2)}
    choice, reason, _ = pick(times, ["searched"])
    assert choice == ORIGINAL and "does not beat the original" in reason


def test_pick_errors_name_what_is_missing():
    with pytest.raises(ValueError, match="at least one plan"):
        pick({ORIGINAL: [1.0]}, [])
    with pytest.raises(ValueError, match="g=32"):
        pick({ORIGINAL: [1.0], "searched": [0.5]}, ["searched", "g=32"])


def wide() -> nn.Module:
    return nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 512)).eval()


def test_choose_plan_times_whole_networks_and_leaves_the_model_alone():
    torch.manual_seed(0)
    model = wide()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    slow = make_plan(model, FixedRank(255))  # ~as many FLOPs as the original: not a clear win
    fast = make_plan(model, FixedRank(8))    # 32x fewer FLOPs in both layers
    choice = choose_plan(model, {"rank 255": slow, "rank 8": fast}, (256, 512), TimingConfig(rounds=5, warmup=1),
                         progress=False)
    assert choice.name == "rank 8" and choice.plan is fast
    table = choice.table.set_index("name")
    assert bool(table.loc["rank 8", "chosen"]) and not bool(table.loc["rank 255", "chosen"])
    assert table.loc["rank 8", "vs_default_ci_low"] > 0 and table.loc["rank 255", "vs_default_pct"] == 0
    assert "chosen: rank 8" in str(choice)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_choose_plan_refuses_bad_input():
    model = wide()
    plan = make_plan(model, FixedRank(8))
    with pytest.raises(ValueError, match="at least one plan"):
        choose_plan(model, {}, (4, 512))
    with pytest.raises(ValueError, match="rename"):
        choose_plan(model, {"original": plan}, (4, 512))
    with pytest.raises(ValueError, match="backend"):
        choose_plan(model, {"rank 8": plan}, (4, 512), TimingConfig(backend="tensorrt"))


def test_cli_choose_writes_the_chosen_plan(tmp_path, capsys):
    for name, rank in (("slow", 60), ("fast", 4)):
        assert main(["plan", "resnet20", "--rank", str(rank), "--out", str(tmp_path / f"{name}.json")]) == 0
    out = tmp_path / "chosen.json"
    code = main(["choose", "resnet20", str(tmp_path / "slow.json"), str(tmp_path / "fast.json"), "--batch", "16",
                 "--rounds", "4", "--threads", "1", "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0 and "chosen:" in text
    chosen = text.rsplit("chosen:", 1)[1].split()[0]
    if chosen == "original":
        assert not out.exists()
    else:
        assert json.loads(out.read_text()) == json.loads((tmp_path / f"{chosen}.json").read_text())


def test_cli_choose_json(tmp_path, capsys):
    assert main(["plan", "resnet20", "--rank", "4", "--out", str(tmp_path / "a.json")]) == 0
    capsys.readouterr()
    assert main(["choose", "resnet20", str(tmp_path / "a.json"), "--rounds", "3", "--threads", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["chosen"] in ("a", "original") and [r["name"] for r in report["rows"]] == ["a"]


def test_cli_choose_errors_are_one_line(tmp_path, capsys):
    assert main(["choose", "resnet20", str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing.json" in err
