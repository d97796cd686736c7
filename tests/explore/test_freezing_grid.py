"""The freezing explorer over a grid: instant redraws, true status, background runs that finish or cancel."""

import json
import statistics

import pytest
import torch

from lrdlab.explore.freezing_runs import PERIODS, SCHEDULES, FreezingGrid, schedule_name
from lrdlab.explore.freezing_widget import FreezingExplorer
from lrdlab.lowrank.decompose import decompose
from lrdlab.lowrank.plan import Layers, Ratio, make_plan
from lrdlab.zoo.data import Images, get_loaders
from lrdlab.zoo.models import get_model


def _grid(tmp_path, ratios=(2.0, 3.0)):
    runs = []
    for ratio in ratios:
        for i, (mode, period, unit) in enumerate(SCHEDULES):
            for epoch in range(3):
                runs.append({"key": f"{ratio:g}|{mode}|{period}|{unit}", "ratio": ratio, "mode": mode,
                             "period": period, "unit": unit, "epoch": epoch, "accuracy": 50 + 10 * epoch + i - ratio,
                             "loss": 1.0, "wall_s": 10.0 * epoch * (1 + i / 10), "train_img_s": 100.0 + 5 * i,
                             "trainable_params": 1000})
    path = tmp_path / "grid.json"
    path.write_text(json.dumps({"settings": {"subset": 64}, "machine": {"cpu": "Test CPU"}, "runs": runs}))
    return path


def _tiny():
    def start(ratio):
        torch.manual_seed(0)
        net = get_model("resnet20", num_classes=10)
        return decompose(net, make_plan(net, Ratio(ratio), Layers(exclude=["conv1"])))

    def loaders():
        d = get_loaders("digits", 32, Images(size=8, channels=3), subset=64)
        return d.train, d.test

    return start, loaders


def test_every_control_redraws_from_the_grid_fast(tmp_path, tmp_cache):
    grid = FreezingGrid(_grid(tmp_path), cache_dir=tmp_cache)
    ex = FreezingExplorer(grid, mode="none", start_model=_tiny()[0], loaders=_tiny()[1])
    ex.prerender.join(120)  # every selection drawn in the background after opening
    seen = {ex.image.value}
    texts = {ex.summary.value}
    ex.mode.value = "sequential"
    for label, _, _ in PERIODS:
        ex.period.value = label
        assert schedule_name(*ex.schedule) in ex.summary.value
        seen.add(ex.image.value)
        texts.add(ex.summary.value)
    ex.ratio.value = 3.0
    seen.add(ex.image.value)
    texts.add(ex.summary.value)
    assert len(seen) == len(PERIODS) + 2 and len(texts) == len(PERIODS) + 2
    assert "recorded" in ex.summary.value and "Test CPU" in ex.summary.value and "×3" in ex.summary.value
    assert statistics.median(ex.render_seconds) < 0.2  # every move over the cached grid
    ex.render_seconds.clear()
    for mode in ("none", "regular", "sequential"):
        ex.mode.value = mode
        for label, _, _ in PERIODS:
            ex.period.value = label
    print(f"freezing explorer redraws: median {1000 * statistics.median(ex.render_seconds):.0f} ms, "
          f"max {1000 * max(ex.render_seconds):.0f} ms")
    assert max(ex.render_seconds) < 0.2


@pytest.mark.slow
def test_background_run_joins_the_grid_and_cancel_is_reported(tmp_path, tmp_cache):
    grid = FreezingGrid(_grid(tmp_path, ratios=(2.0,)), cache_dir=tmp_cache)
    start, loaders = _tiny()
    ex = FreezingExplorer(grid, mode="sequential", period="2 epochs", start_model=start, loaders=loaders)
    assert ex.runner.state == "idle" and ex.cancel_button.disabled
    ex.run_button.click()
    assert ex.runner.running or ex.runner.state == "done"  # click returns at once: the kernel is free
    ex.runner.wait(120)
    assert ex.runner.state == "done", ex.status.value
    assert "joined the grid" in ex.status.value and ex.bar.value == 1.0
    here = grid.at_ratio(2.0)
    assert (here["source"] == "here").sum() == 2  # epochs 0 and 1
    assert "run here" in ex.summary.value
    saved = json.loads((tmp_cache / "freezing_grid_here.json").read_text())
    assert {r["mode"] for r in saved["runs"]} == {"sequential"}
    assert len(FreezingGrid(_grid(tmp_path, ratios=(2.0,)), cache_dir=tmp_cache).runs) == len(grid.runs)

    ex.run_epochs = 50
    ex.run_button.click()
    ex.cancel_button.click()
    ex.runner.wait(120)
    assert ex.runner.state == "cancelled" and "cancelled" in ex.status.value and "nothing was added" in ex.status.value
    assert not ex.run_button.disabled and ex.cancel_button.disabled
    assert (grid.at_ratio(2.0)["source"] == "here").sum() == 2


def test_runs_made_here_are_drawn_beside_the_grid_not_into_it(tmp_path, tmp_cache):
    from lrdlab.explore.figures import freezing_grid_figure

    grid = FreezingGrid(_grid(tmp_path, ratios=(2.0,)), cache_dir=tmp_cache)
    assert len(freezing_grid_figure(grid.at_ratio(2.0), "none", 2.0, "Test CPU").axes) == 3
    here = grid.select(2.0, "none", 1, "epoch").drop(columns=["source", "name"]).assign(key="2|none|1|epoch|here")
    grid.add(here)
    fig = freezing_grid_figure(grid.at_ratio(2.0), "none", 2.0, "Test CPU")
    recorded_axes, here_axis = fig.axes[:2], fig.axes[3]
    assert all("(here)" not in line.get_label() for ax in recorded_axes for line in ax.lines)
    assert [line.get_label() for line in here_axis.lines] == ["none (here)"]
    assert "this machine" in here_axis.get_xlabel() and "Test CPU" in fig.axes[1].get_xlabel()


def _shipped_grid():
    from tools.record.freezing_grid import load_grid

    return load_grid()


def test_shipped_grid_fine_tuning_never_loses_accuracy():
    """No recorded curve falls more than 2 points below its calibrated start at any epoch, and none ends below it
    by more than the test split's noise (a 95% binomial half-width at ~97% on 1,000 images is ~1 point)."""
    runs = _shipped_grid()["runs"]
    for key, d in runs.groupby("key"):
        start = float(d[d["epoch"] == 0]["accuracy"].iloc[0])
        assert d["accuracy"].min() >= start - 2.0, f"{key}: {d['accuracy'].round(1).tolist()}"
        assert d["accuracy"].iloc[-1] >= start - 1.0, f"{key}: fine-tuning lost accuracy beyond noise"


def test_shipped_grid_starts_from_the_default_calibrated_model():
    """Epoch 0 is the README's data-aware + BN accuracy at that ratio (data/accuracy_f11_mnist5k.json)."""
    from pathlib import Path

    f11 = json.loads((Path(__file__).resolve().parents[2] / "data" / "accuracy_f11_mnist5k.json").read_text())
    readme = {r["ratio"]: r["accuracy"] for r in f11["rows"]
              if r["model"] == "resnet20" and r["variant"] == "data+bn" and r["granularity"] == 1}
    grid = _shipped_grid()
    runs = grid["runs"]
    for ratio, d in runs[runs["epoch"] == 0].groupby("ratio"):
        assert d["accuracy"].nunique() == 1  # every schedule starts from the same model
        assert abs(float(d["accuracy"].iloc[0]) - readme[float(ratio)]) <= 0.5, ratio
    assert grid["settings"]["calibration_images"] == f11["settings"]["calibration_images"]


def test_the_default_grid_config_is_the_shipped_grids_recipe_so_a_rerun_has_nothing_to_do(tmp_path):
    """The shipped grid's settings with today's recipe note (the note grew after the recording): every run is
    there, so recording by the default config resumes, runs nothing and leaves the file alone."""
    from lrdlab.explore.freezing_runs import REFERENCE_GRID, FreezingGridConfig
    from tools.record.freezing_grid import RECIPE_NOTE, record_freezing_grid

    shipped = json.loads(REFERENCE_GRID.read_text())
    shipped["settings"]["recipe_note"] = RECIPE_NOTE
    copy = tmp_path / "grid.json"
    copy.write_text(json.dumps(shipped))

    def no_run(message):
        raise AssertionError(f"re-ran a recorded run: {message}")

    assert record_freezing_grid(copy, FreezingGridConfig(), progress=no_run) == copy
    assert json.loads(copy.read_text()) == shipped


@pytest.mark.parametrize("kw, words", [
    ({"ratios": (2.0, 1.0)}, "ratios must be compression ratios > 1"), ({"lr": -0.1}, "lr must be a number > 0"),
    ({"epochs": 0}, "epochs must be an int >= 1"), ({"schedules": (("sequential", 0, "epoch"),)}, "schedules are"),
    ({"schedules": (("frozen", 1, "epoch"),)}, "schedules are"),
])
def test_grid_config_names_the_bad_field(kw, words):
    from lrdlab.explore.freezing_runs import FreezingGridConfig

    with pytest.raises(ValueError, match=f"^FreezingGridConfig: {words}.*e\\.g\\. FreezingGridConfig\\("):
        FreezingGridConfig(**kw)
