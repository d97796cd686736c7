"""The training loop, checkpoints and resume, the CIFAR-size models, and ``lrdlab train``."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from torch import nn

from lrdlab import cli
from lrdlab.finetune.fit_config import FitConfig
from lrdlab.finetune.freezing import Freezer
from lrdlab.finetune.loop import evaluate, fit
from lrdlab.lowrank.layers import LowRankLayer, decompose_layer
from lrdlab.paper.freezing_study import FreezingStudyConfig, load_study, save_study
from lrdlab.zoo.data import get_loaders
from lrdlab.zoo.models import MODELS, get_model, input_size, load_weights


@pytest.fixture(scope="module")
def digits():
    return get_loaders("digits", 64)


def mlp(seed: int = 0, decomposed: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    if decomposed:
        model[1] = decompose_layer(model[1], "svd", (8,))
    return model


HISTORY_COLUMNS = {"epoch", "loss", "accuracy", "top5", "train_loss", "train_accuracy", "epoch_s", "wall_s",
                   "train_img_s", "eval_img_s", "lr", "trainable_params", "phase", "world_size"}


def test_fit_learns_digits_well_above_chance(digits):
    model = mlp()
    history = fit(model, digits.train, digits.test, FitConfig(epochs=3, lr=0.1, progress=False))
    assert isinstance(history, pd.DataFrame) and HISTORY_COLUMNS <= set(history.columns)
    assert history["epoch"].tolist() == [1, 2, 3]
    assert history["accuracy"].iloc[-1] > 80  # chance is 10 %
    assert (history["top5"] >= history["accuracy"]).all()
    assert history["wall_s"].is_monotonic_increasing and (history["train_img_s"] > 0).all()
    assert history["wall_s"].iloc[-1] == pytest.approx(history["epoch_s"].sum())
    final = evaluate(model, digits.test)
    assert final["accuracy"] == pytest.approx(history["accuracy"].iloc[-1])
    assert final["images"] == len(digits.test.dataset)


def test_fit_with_sequential_freezing_records_phases(digits):
    model = mlp(decomposed=True)
    freezer = Freezer(model, "sequential", period=1, unit="epoch")
    history = fit(model, digits.train, digits.test, FitConfig(epochs=3, lr=0.1, evaluate_start=True, progress=False),
                  freezer)
    assert history["epoch"].tolist() == [0, 1, 2, 3]
    assert history["phase"].tolist() == [0, 0, 1, 2]
    # phase 0 and 2 train `last` (8×32 + 32 bias), phase 1 trains `first` (64×8); the head is always trainable
    head = 32 * 10 + 10
    assert history["trainable_params"].tolist()[1:] == [head + 8 * 32 + 32, head + 64 * 8, head + 8 * 32 + 32]
    assert history["accuracy"].iloc[-1] > history["accuracy"].iloc[0]


def test_fit_rejects_bad_epochs(digits):
    with pytest.raises(ValueError, match="epochs"):
        fit(mlp(), digits.train, digits.test, FitConfig(epochs=0))
    with pytest.raises(ValueError, match="optimizer"):
        fit(mlp(), digits.train, digits.test, FitConfig(optimizer="lion", progress=False))
    with pytest.raises(ValueError, match="a FitConfig, got int 1"):
        fit(mlp(), digits.train, digits.test, 1)


class Interrupt(Exception):
    pass


def stop_at(epoch):
    def callback(row):
        if row["epoch"] == epoch:
            raise Interrupt

    return callback


@pytest.mark.parametrize("freeze,period,unit", [("none", 1, "epoch"), ("regular", 1, "epoch"),
                                                 ("sequential", 1, "epoch"), ("sequential", 2, "epoch"),
                                                 ("sequential", 5, "iteration"), ("sequential", 22, "iteration")])
def test_resume_at_every_epoch_reproduces_the_uninterrupted_run(digits, tmp_path, freeze, period, unit):
    """Stopped after each epoch and resumed: the same history and exactly the same weights. With sequential
    freezing at a per-epoch period every stop is a phase boundary, where the factor that trains again must
    start from fresh optimizer state, as it did in the uninterrupted run (22 iterations are one epoch)."""
    assert len(digits.train) == 22

    def run(**kw):
        model = mlp(decomposed=True)
        freezer = Freezer(model, freeze, period=period, unit=unit)
        return model, fit(model, digits.train, digits.test, FitConfig(epochs=4, lr=0.1, progress=False, seed=1),
                          freezer, **kw)

    straight_model, straight = run()
    cols = ["loss", "accuracy", "train_loss", "lr", "phase", "trainable_params"]
    for stop in (1, 2, 3):
        ckpt = tmp_path / f"ck{stop}.pt"
        with pytest.raises(Interrupt):
            run(checkpoint=ckpt, callbacks=[stop_at(stop)])
        resumed_model, resumed = run(checkpoint=ckpt, resume=True)
        assert resumed["epoch"].tolist() == [1, 2, 3, 4]
        pd.testing.assert_frame_equal(resumed[cols], straight[cols], rtol=0, atol=0)
        for a, b in zip(straight_model.state_dict().values(), resumed_model.state_dict().values()):
            assert torch.equal(a, b), f"resumed after epoch {stop}: weights differ"
    with pytest.raises(ValueError, match="same --epochs"):
        fit(mlp(decomposed=True), digits.train, digits.test, FitConfig(epochs=5, progress=False),
            checkpoint=tmp_path / "ck1.pt", resume=True)


@pytest.mark.parametrize("name,params", [("resnet20", 0.27e6), ("resnet32", 0.46e6), ("resnet56", 0.85e6),
                                         ("vit_tiny", 1.8e6)])
def test_cifar_models(name, params):
    model = get_model(name).eval()
    assert input_size(name) == (3, 32, 32) and MODELS[name].num_classes == 10
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(params, rel=0.02)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_resnet20_layout_and_depth_check():
    model = get_model("resnet20")
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 19 and convs[0] == "conv1" and "layer3.2.conv2" in convs
    from lrdlab.zoo.cifar_models import CifarResNet

    with pytest.raises(ValueError, match="6n \\+ 2"):
        CifarResNet(21)


def test_weights_from_a_local_file(tmp_path):
    src = get_model("resnet20")
    torch.save(src.state_dict(), tmp_path / "w.pt")
    same = get_model("resnet20", weights=str(tmp_path / "w.pt"))
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), same.state_dict().values()))
    torch.save({"model": src.state_dict()}, tmp_path / "ck.pt")  # a checkpoint wrapper works too
    other = get_model("resnet20", num_classes=7, weights=str(tmp_path / "ck.pt"))
    assert torch.equal(other.conv1.weight, src.conv1.weight) and other.fc.out_features == 7
    assert sorted(load_weights(get_model("resnet20", num_classes=7), tmp_path / "w.pt")) == ["fc.bias", "fc.weight"]
    with pytest.raises(ValueError, match="not found"):
        get_model("resnet20", weights=str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="does not fit"):
        get_model("resnet32", weights=str(tmp_path / "w.pt"))
    with pytest.raises(ValueError, match="no published weights"):
        get_model("resnet20", weights="IMAGENET1K_V1")


def test_cli_train_decomposed_with_freezing_then_resume(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "resnet20", "--data", "digits", "--subset", "256", "--epochs", "1", "--batch", "64",
            "--ratio", "2", "--exclude", "conv1", "--freeze", "regular", "--out", str(out)]
    assert cli.main(args) == 0
    for name in ("history.csv", "history.json", "checkpoint.pt", "plan.json", "state_dict.pt"):
        assert (out / name).is_file(), name
    history = pd.read_csv(out / "history.csv")
    assert history["epoch"].tolist() == [0, 1] and (history["label"] == "resnet20").all()
    assert len(json.loads((out / "history.json").read_text())) == 2
    from lrdlab import load_decomposed

    model = load_decomposed(out, get_model("resnet20"))
    assert sum(isinstance(m, LowRankLayer) for m in model.modules()) == 18  # 18 convs; fc kept (min_rank)
    assert cli.main(args + ["--resume"]) == 0  # already finished: history kept, nothing retrained
    pd.testing.assert_frame_equal(pd.read_csv(out / "history.csv"), history)
    assert "test top-1" in capsys.readouterr().out


def test_cli_train_bad_data(capsys):
    assert cli.main(["train", "resnet20", "--data", "svhn", "--out", "/tmp/unused"]) == 2
    assert "unknown data" in capsys.readouterr().err


def test_study_roundtrip(tmp_path):
    result = {"history": pd.DataFrame({"mode": ["none"], "epoch": [1], "accuracy": [90.0]}),
              "throughput": pd.DataFrame({"technique": ["lrd"], "train_img_s": [10.0]}), "settings": {"epochs": 1}}
    back = load_study(save_study(result, tmp_path / "s.json"))
    pd.testing.assert_frame_equal(back.history, result["history"])
    assert back.settings == {"epochs": 1} and back.command == "" and back.final_accuracy() == {"none": 90.0}
    again = load_study(save_study(back, tmp_path / "t.json"))
    pd.testing.assert_frame_equal(again.throughput, back.throughput)
    assert "FreezingStudy(" in repr(again) and "none 90.0%" in repr(again)
    with pytest.raises(KeyError):
        again["nothing"]


def test_fit_rejects_a_freezer_of_another_model(digits):
    with pytest.raises(ValueError, match="another model"):
        fit(mlp(), digits.train, digits.test, FitConfig(progress=False), Freezer(mlp(decomposed=True), "regular"))


def test_freezing_study_small(tmp_path):
    from lrdlab.paper.freezing_study import run_freezing_study

    config = FreezingStudyConfig(data="digits", epochs=1, finetune_epochs=2, subset=128, batch_size=64, bench_rounds=1)
    r = run_freezing_study(config, progress=False, out=tmp_path / "study.json")
    h, t = r["history"], r["throughput"]
    assert set(h["mode"]) == {"original", "none", "regular", "sequential"}
    assert h[h["mode"] == "sequential"]["phase"].tolist() == [0, 0, 1]
    assert h[h["mode"] == "regular"]["trainable_params"].iloc[-1] < h[h["mode"] == "none"]["trainable_params"].iloc[-1]
    assert {"original", "lrd", "lrd+regular", "lrd+sequential"} <= set(t["technique"])
    assert (t["train_img_s"] > 0).all() and r["settings"]["exclude_applied"] == ["conv1"]
    assert r["machine"]["torch_version"] == torch.__version__
    assert load_study(tmp_path / "study.json")["history"].shape == h.shape
    settings = r["settings"]  # the keys the recorded studies and the freezing explorer read
    assert {k: settings[k] for k in ("model", "data", "epochs", "finetune_epochs", "modes", "exclude", "device")} == {
        "model": "resnet20", "data": "digits", "epochs": 1, "finetune_epochs": 2,
        "modes": ["none", "regular", "sequential"], "exclude": ["conv1", "*.downsample.*"], "device": "cpu"}
    assert {"ratio", "period", "unit", "batch_size", "lr", "finetune_lr", "subset", "seed", "bench_rounds",
            "calibration_images", "decomposed_layers", "params"} <= set(settings)


@pytest.mark.parametrize("kw, words", [
    ({"modes": ("none", "sideways")}, "modes must be some of"),
    ({"finetune_lr": 0}, "finetune_lr must be a number > 0"),
    ({"ratio": 1.0}, "ratio must be a compression ratio > 1"),
    ({"unit": "step"}, "unit must be one of"),
    ({"subset": 0}, "subset must be an int >= 1"),
    ({"calibration_images": -1}, "calibration_images must be an int >= 0"),
])
def test_freezing_study_config_names_the_bad_field(kw, words):
    with pytest.raises(ValueError, match=f"^FreezingStudyConfig: {words}.*e\\.g\\. FreezingStudyConfig\\("):
        FreezingStudyConfig(**kw)
    loose = FreezingStudyConfig(exclude=None, modes=["sequential"])  # None and lists are welcome: kept as tuples
    assert loose == FreezingStudyConfig(exclude=(), modes=("sequential",))
