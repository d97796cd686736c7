"""The rank explorer on a shipped trained ViT (a stand-in, see conftest): registry, plan rows, widget."""

import pytest
import torch

from lrdlab.explore import lab_models, rank_lab
from lrdlab.explore.network_lab import network_plan
from lrdlab.lowrank.plan import Ratio, make_plan
from lrdlab.zoo import pretrained

PREFIX = "encoder.layers.encoder_layer_0."
ATTENTION = [PREFIX + f"self_attention.{p}" for p in ("q_proj", "k_proj", "v_proj", "out_proj")]
MLP = [PREFIX + "mlp.0", PREFIX + "mlp.3"]


@pytest.fixture
def lab(tmp_cache):
    return rank_lab.RankLab(cache=rank_lab.TimeCache(path=tmp_cache / "t.json", reference=None), batch=2)


def test_the_registry_lists_a_trained_vit_only_when_its_weights_ship(weights_dirs, monkeypatch):
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", weights_dirs["resnet"])
    keys = lab_models.default_keys()
    assert keys[0] == lab_models.DEFAULT_MODEL and not any("vit_tiny · trained" in k for k in keys)
    with pytest.raises(ValueError, match="no explorer model 'vit_tiny · trained"):
        lab_models.lab_model("vit_tiny · trained (MNIST-5k)")
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", weights_dirs["vit"])
    keys = lab_models.default_keys()
    vit = lab_models.lab_model("vit_tiny · trained (MNIST-5k)")
    assert vit.key in keys and (vit.arch, vit.pretrained) == ("vit_tiny", "vit_tiny_mnist5k")
    assert vit.stem == ["conv_proj", "heads.head"]
    assert lab_models.lab_model(lab_models.DEFAULT_MODEL).stem == ["conv1"]
    assert lab_models.model_label(vit.key) == vit.key and "untrained" not in vit.label
    assert lab_models.model_label("vit_tiny") == "vit_tiny · untrained (random init)"
    assert all("untrained" in lab_models.model_label(k) for k in keys if not lab_models.is_trained(k))


def test_an_unshipped_model_is_refused_by_the_explorer(weights_dirs, monkeypatch, lab):
    from lrdlab.explore.widgets import RankExplorer

    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", weights_dirs["resnet"])
    with pytest.raises(ValueError, match="weights ship with lrdlab"):
        RankExplorer(model="vit_tiny · trained (MNIST-5k)", lab=lab, auto_measure=False)


def test_the_whole_network_plan_keeps_each_architectures_stem(shipped_vit):
    vit, resnet = lab_models.load(shipped_vit), lab_models.load(lab_models.DEFAULT_MODEL)
    for model, key, stem in ((vit, shipped_vit, "conv_proj"), (resnet, lab_models.DEFAULT_MODEL, "conv1")):
        for exclude in (lab_models.lab_model(key).stem, None):  # None: every known stem
            plan = network_plan(model, 2.0, 1, exclude=exclude)
            assert not plan[stem].decomposed and len(plan.decomposed_layers) > 10


def test_vit_layers_are_the_plans_attention_and_mlp_rows(shipped_vit, lab):
    names = lab.layer_names(shipped_vit)
    assert names[1:7] == ATTENTION + MLP and names[0] == "conv_proj" and names[-1] == "heads.head"
    model = lab_models.load(shipped_vit)
    plan = make_plan(model, Ratio(2.0, granularity=8))
    attn = model.encoder.layers[0].self_attention
    for name, weight in zip(ATTENTION, (*attn.in_proj_weight.detach().chunk(3), attn.out_proj.weight.detach())):
        s = lab.state(shipped_vit, name, 2.0, 8)
        assert s["ranks"] == tuple(plan[name].ranks) and s["params_after"] == plan[name].params_after
        assert s["flops_before"] == 2 * 192 * 192 * 65 > s["flops_after"]  # 64 patches + the class token
        sigma = torch.linalg.svdvals(weight.double())
        assert lab.layer(shipped_vit, name).spectra[0] == pytest.approx(sigma.numpy(), rel=1e-6)
        r = s["ranks"][0]
        assert s["rel_error"] == pytest.approx((sigma[r:].norm() / sigma.norm()).item(), rel=1e-6)
    s = lab.ensure_times(lab.state(shipped_vit, ATTENTION[1], 2.0, 8))  # a projection is timed like a Linear
    assert s["input_shape"] == (2, 65, 192) and s["time_ms"] > 0 and s["time_source"] == "here"
    assert lab.figure(s) is not None
    with pytest.raises(ValueError, match="has no layer"):
        lab.layer(shipped_vit, PREFIX + "self_attention")


def test_rank_explorer_on_the_trained_vit(shipped_vit, lab):
    from lrdlab.explore.widgets import RankExplorer

    ex = RankExplorer(model=shipped_vit, layer=ATTENTION[0], lab=lab, auto_measure=False)
    ex.wait()  # the stand-in's weights are not the shipped grid's: scored here in the background
    assert set(ATTENTION + MLP) <= set(ex.layer.options) and ex.net_lab.accuracy.name == "vit_tiny_mnist5k"
    assert ex.model.value == shipped_vit and ex.image.value[:4] == b"\x89PNG"  # the spectra rendered
    rounded = next(k for k in ex.network["accuracy"] if k.startswith("rounded"))
    before = dict(ex.state), ex.net_readout.value, ex.network["counts"][rounded]["params_after"]
    accuracy = ex.network["accuracy"][rounded]["accuracy"]
    assert accuracy > 20 and ex.network["accuracy"][rounded]["original"] > 40  # above chance (10%): trained
    assert "test accuracy" in ex.net_readout.value and "untrained" not in ex.net_readout.value
    ex.ratio.value = 4.0
    ex.wait()
    print(f"ViT accuracy update (two new plans): {ex.render_seconds[-1]:.2f} s")
    after = ex.network["accuracy"][rounded]["accuracy"]
    assert ex.state["ranks"][0] < before[0]["ranks"][0] and ex.state["params_after"] < before[0]["params_after"]
    assert ex.network["counts"][rounded]["params_after"] < before[2]
    assert after != accuracy and f"{after:.1f}%" in ex.net_readout.value and ex.net_readout.value != before[1]
    ex.layer.value = MLP[0]
    assert ex.state["layer"] == MLP[0] and ex.state["method"] == "svd" and "α=4" in ex.readout.value
    ex.ratio.value = 2.0  # back to a setting seen before: accuracy and figure come from the caches
    ex.wait()  # the network readout follows the move in a worker thread
    assert ex.network["accuracy"][rounded]["accuracy"] == accuracy and ex.network["accuracy"][rounded]["seconds"] < 0.05
    print(f"ViT update from the caches: {ex.render_seconds[-1]:.2f} s")
    ex.model.value = lab_models.DEFAULT_MODEL  # the ResNet's own accuracy lab, layers and stem
    ex.wait()
    assert ex.net_lab.accuracy.name == "resnet20_mnist5k" and ex.state["layer"] == "layer3.2.conv2"
