"""DDP: ``fit`` under ``torchrun --nproc_per_node=2`` (gloo, CPU) equals a single-process run.

The global batch is split across ranks by the DistributedSampler, DDP averages the gradients, and
each rank's loss is a mean over its half-batch, so two processes follow the single process's
trajectory up to float rounding. The model has no BatchNorm (per-rank batch statistics would differ).
Freezing is included: a factor frozen on every rank must get no averaged gradient either.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import sys
    import torch
    from torch import nn
    from lrdlab.finetune.distributed import init_distributed, world
    from lrdlab.zoo.data import get_loaders
    from lrdlab.finetune.freezing import Freezer
    from lrdlab.lowrank.layers import decompose_layer
    from lrdlab.finetune.fit_config import FitConfig
    from lrdlab.finetune.loop import fit

    torch.set_num_threads(1)
    init_distributed()
    loaders = get_loaders("digits", 64, subset=1024)
    results = {}
    for mode in ("none", "sequential"):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        model[1] = decompose_layer(model[1], "svd", (8,))
        freezer = Freezer(model, mode, period=3, unit="iteration")
        history = fit(model, loaders.train, loaders.test, FitConfig(epochs=2, lr=0.1, progress=False), freezer)
        results[mode] = {"state": model.state_dict(), "history": history.to_dict("list")}
    if world()[0] == 0:
        torch.save(results, sys.argv[1])
""")


def run(cmd: list[str], tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_two_gloo_processes_match_one(tmp_path):
    script = tmp_path / "ddp_fit.py"
    script.write_text(SCRIPT)
    run([sys.executable, str(script), "single.pt"], tmp_path)
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), "ddp.pt"],
        tmp_path)
    single, ddp = (torch.load(tmp_path / f, weights_only=False) for f in ("single.pt", "ddp.pt"))
    for mode in ("none", "sequential"):
        s, d = single[mode], ddp[mode]
        assert s["history"]["world_size"] == [1, 1] and d["history"]["world_size"] == [2, 2]
        assert s["history"]["phase"] == d["history"]["phase"]
        for name, value in s["state"].items():
            torch.testing.assert_close(d["state"][name], value, rtol=1e-4, atol=1e-5, msg=f"{mode}: {name}")
        for key in ("loss", "train_loss"):
            assert d["history"][key] == pytest.approx(s["history"][key], rel=1e-4), (mode, key)
        assert d["history"]["accuracy"] == pytest.approx(s["history"]["accuracy"], abs=0.6), mode
    # sequential freezing really froze something: its weights differ from plain fine-tuning
    seq, plain = single["sequential"]["state"], single["none"]["state"]
    assert not torch.allclose(seq["1.first.weight"], plain["1.first.weight"])


@pytest.mark.slow
def test_lrdlab_train_runs_under_torchrun(tmp_path):
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "lrdlab.cli",
         "train", "resnet20", "--data", "digits", "--subset", "256", "--epochs", "1", "--batch", "64",
         "--ratio", "2", "--exclude", "conv1", "--freeze", "sequential", "--out", "run"], tmp_path)
    import pandas as pd

    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert history["world_size"].tolist() == [2, 2] and history["epoch"].tolist() == [0, 1]
    assert (tmp_path / "run" / "checkpoint.pt").is_file() and (tmp_path / "run" / "plan.json").is_file()
