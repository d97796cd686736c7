"""The compute modes: torch's own threading by default, the shared-machine policy only when asked or loaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from lrdlab import Ratio, make_plan
from lrdlab.measure import compute
from lrdlab.measure.bench import bench_threads, threads_table
from lrdlab.measure.compute import apply_compute, busy, compute_info, current_compute
from lrdlab.measure.timing_config import TimingConfig

REPO = Path(__file__).resolve().parents[2]

PROBE = ("import json, os, sys\nfrom lrdlab.cli import build_parser\nfrom lrdlab.cli.common import "
         "apply_compute_from_args\nargs = build_parser().parse_args(sys.argv[1:])\napply_compute_from_args(args)\n"
         "import torch\nfrom lrdlab.measure.compute import compute_info\n"
         "print(json.dumps({'env': os.environ.get('OMP_WAIT_POLICY'), **compute_info().to_dict()}))\n")


def cli_compute(*argv: str, env: dict[str, str] | None = None) -> dict:
    """What a fresh ``lrdlab ARGV`` process runs with, before any work (torch not loaded yet)."""
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "LRDLAB_COMPUTE")}
    out = subprocess.run([sys.executable, "-c", PROBE, *argv], env={**base, "PYTHONPATH": str(REPO), **(env or {})},
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_cli_leaves_torch_alone_by_default():
    info = cli_compute("plan", "resnet20")
    assert info["env"] is None and info["omp_wait_policy"] == "default" and info["compute_mode"] == "default"
    fresh = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                           capture_output=True, text=True, check=True)
    assert info["torch_threads"] == int(fresh.stdout)  # torch's own thread count


@pytest.mark.parametrize("argv, env", [(("--compute", "shared", "plan", "resnet20"), None),
                                       (("plan", "resnet20", "--compute", "shared"), None),
                                       (("plan", "resnet20"), {"LRDLAB_COMPUTE": "shared"})])
def test_shared_mode_is_opt_in_and_sets_passive_waits_before_torch_loads(argv, env):
    info = cli_compute(*argv, env=env)
    assert info["env"] == "PASSIVE" and info["omp_wait_policy"] == "PASSIVE" and info["compute_mode"] == "shared"
    assert "compute_note" not in info


def test_the_flag_beats_the_environment():
    assert cli_compute("plan", "resnet20", "--compute", "default", env={"LRDLAB_COMPUTE": "shared"})["env"] is None


def test_shared_mode_after_torch_loaded_warns_and_records_it(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    before = torch.get_num_threads()
    try:
        with pytest.warns(RuntimeWarning, match="cannot take effect: torch is already loaded"):
            settings = apply_compute("shared")
        assert "OMP_WAIT_POLICY" not in os.environ  # nothing pretended
        assert settings.mode == "shared" and settings.wait_policy == "default" and "stays default" in settings.note
        assert compute_info().settings.note == settings.note
    finally:
        torch.set_num_threads(before)
        monkeypatch.setattr(compute, "_CURRENT", None)


def test_default_mode_changes_nothing(monkeypatch):
    monkeypatch.delenv("LRDLAB_COMPUTE", raising=False)
    before, env = torch.get_num_threads(), os.environ.get("OMP_WAIT_POLICY")
    try:
        settings = apply_compute()
        assert settings.mode == "default" and settings.threads == before and os.environ.get("OMP_WAIT_POLICY") == env
        assert "compute default" in str(settings) and f"{before} torch thread" in str(settings)
    finally:
        monkeypatch.setattr(compute, "_CURRENT", None)


def test_auto_is_shared_only_under_load():
    assert not busy(cores=8, load=2.0) and busy(cores=8, load=4.5)
    assert not busy(cores=2, load=0.6) and busy(cores=2, load=1.2)
    assert current_compute().asked in ("default", "shared", "auto")


def test_bad_thread_counts_and_modes():
    with pytest.raises(ValueError, match="from 1 to"):
        apply_compute("default", threads=0)
    with pytest.raises(ValueError, match="compute mode must be one of"):
        apply_compute("fast")


def test_bench_per_thread_count_names_its_compute():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1)).eval()
    plan = make_plan(model, Ratio(2))
    before = torch.get_num_threads()
    reports = bench_threads(model, plan, (2, 3, 16, 16), [1], TimingConfig(rounds=2, max_rounds=2, warmup=1, repeats=1))
    assert torch.get_num_threads() == before  # restored
    assert reports[0].compute is not None and reports[0].compute["threads"] == 1
    assert reports[0].inference.threads == 1 and reports[0].machine["compute_mode"] in ("default", "shared")
    text = threads_table(reports)
    assert "wait policy" in text and text.splitlines()[-1].split()[0] == "1"


def test_the_searched_plan_records_its_thread_count(tmp_path):
    from lrdlab.measure.compute import compute_policy
    from lrdlab.measure.rank_search import optimize_plan
    from lrdlab.measure.search_config import SearchConfig

    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1)).eval()
    plan = make_plan(model, Ratio(2))
    with compute_policy(1):
        new, _ = optimize_plan(model, plan, (1, 3, 8, 8), SearchConfig(
            lower=0.9, cache_dir=tmp_path, method="paper", time_fn=lambda layer, shape: 1e-3, progress=False))
    assert new.settings["optimize"]["threads"] == 1
    assert new.settings["optimize"]["machine"]["compute_mode"] in ("default", "shared")


def test_live_conditions_name_the_wait_policy_and_mode(monkeypatch):
    from lrdlab.explore.compute import use_live_policy

    monkeypatch.delenv("LRDLAB_COMPUTE", raising=False)
    before = torch.get_num_threads()
    try:
        line = use_live_policy()
        assert line.startswith("1 torch thread · wait policy ") and "compute default" in line
    finally:
        torch.set_num_threads(before)
        monkeypatch.setattr(compute, "_CURRENT", None)


def test_the_cli_warns_when_shared_mode_cannot_set_the_wait_policy(monkeypatch, capsys):
    from lrdlab.cli import main

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    before = torch.get_num_threads()
    try:
        assert main(["--compute", "shared", "models"]) == 0  # torch is loaded in this process already
        err = capsys.readouterr().err.strip()
        assert err.startswith("lrdlab models: warning: OMP_WAIT_POLICY=PASSIVE cannot take effect") and "\n" not in err
        assert torch.get_num_threads() == before  # an in-process run leaves the caller's threads
    finally:
        monkeypatch.setattr(compute, "_CURRENT", None)


def test_bench_says_when_the_plan_was_searched_at_another_thread_count(tmp_path, capsys):
    from lrdlab.cli import main
    from lrdlab.zoo.models import get_model

    plan = make_plan(get_model("resnet20"), Ratio(2), model_name="resnet20")
    plan.settings["optimize"] = {"threads": 2}
    plan.save(tmp_path / "p.json")
    argv = ["bench", "resnet20", "--plan", str(tmp_path / "p.json"), "--threads", "1", "--rounds", "2",
            "--max-rounds", "2", "--batch", "1", "--image-size", "16", "--repeats", "1"]
    assert main(argv) == 0
    out = capsys.readouterr()
    assert "searched at 2 thread(s); timed here at 1" in out.err and "compute default" in out.out


def test_bench_takes_a_list_of_thread_counts(capsys):
    from lrdlab.cli import main
    from lrdlab.measure.compute import available_cores

    if available_cores() < 2:
        pytest.skip("needs 2 cores")
    before = torch.get_num_threads()
    argv = ["bench", "resnet20", "--threads", "1,2", "--rounds", "2", "--max-rounds", "2", "--batch", "1",
            "--image-size", "16", "--repeats", "1"]
    assert main([*argv, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["threads"] == [1, 2] and [r["compute"]["threads"] for r in report["reports"]] == [1, 2]
    assert [r["inference"]["threads"] for r in report["reports"]] == [1, 2]  # both models timed at each count
    assert torch.get_num_threads() == before
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    head = next(i for i, line in enumerate(lines) if "OpenMP wait policy" in line)
    assert [r.split()[0] for r in lines[head + 2:]] == ["1", "2"]


def test_the_machine_is_a_record_that_prints_one_line_and_writes_the_flat_recorded_form(monkeypatch):
    from lrdlab.measure.machine import machine_info

    monkeypatch.setattr(compute, "_CURRENT", compute.ComputeSettings("auto", "shared", 1, "PASSIVE", "a note"))
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # the policy in force is read from the environment
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        machine = machine_info("cpu")
    finally:
        torch.set_num_threads(before)
    recorded = machine.to_dict()
    # the keys every data/ file has stored under "machine", in that order (old files read the same)
    assert list(recorded) == ["device", "device_name", "cpu", "compute_mode", "compute_asked", "torch_threads",
                              "interop_threads", "omp_wait_policy", "compute_note", "load_average", "cpu_count",
                              "torch_version", "python"]
    assert recorded["compute_mode"] == "shared" and recorded["compute_asked"] == "auto"
    assert recorded["torch_threads"] == 1 and recorded["omp_wait_policy"] == "PASSIVE"
    assert machine.load_average == recorded["load_average"] and machine.cpu == recorded["cpu"]
    line = str(machine)
    assert "\n" not in line and machine.cpu in line and "compute shared" in line and "a note" in line
    assert f"<td style='text-align:left'>{machine.torch_version}</td>" in machine._repr_html_()
    monkeypatch.setattr(compute, "_CURRENT", None)  # the default mode: no asked or note keys
    assert "compute_asked" not in compute.compute_info().to_dict()
    assert "compute_note" not in compute.compute_info().to_dict()
