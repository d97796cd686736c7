"""The real pretrained language model in the rank explorer: SmolLM2-135M-Instruct, loaded only when chosen."""

import pytest

from lrdlab.explore import lab_models, rank_lab

pytestmark = pytest.mark.skipif(not lab_models.lm_available(), reason="lrdlab[lm] (SmolLM2) not installed")

Q0 = "model.layers.0.self_attn.q_proj"


def test_the_lm_is_listed_without_being_loaded():
    lab_models._models.clear()
    assert lab_models.LM_KEY in lab_models.default_keys()
    spec = lab_models.lab_model(lab_models.LM_KEY)
    assert spec.kind == "lm" and spec.trained and not spec.scored and spec.input_size == (lab_models.LM_TOKENS,)
    assert not lab_models.is_loaded(lab_models.LM_KEY)  # listing it read no weights


@pytest.mark.slow
def test_explorer_loads_the_lm_in_the_background_and_shows_its_real_spectra(tmp_cache):
    from lrdlab.explore.widgets import RankExplorer

    lab_models._models.clear()
    lab = rank_lab.RankLab(cache=rank_lab.TimeCache(path=tmp_cache / "t.json", reference=None), batch=2)
    ex = RankExplorer(model="resnet18", layer="fc", lab=lab, auto_measure=False)
    ex.model.value = lab_models.LM_KEY  # a first load: in a thread, the explorer keeps answering meanwhile
    if not lab_models.is_loaded(lab_models.LM_KEY):
        assert "loading SmolLM2" in ex.status.value
        ex.ratio.value = 3.0
        assert ex.state["model"] == "resnet18" and ex.state["ratio"] == 3.0
    ex.wait()
    names = list(ex.layer.options)
    for part in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                 "mlp.up_proj", "mlp.down_proj"):
        assert f"model.layers.0.{part}" in names and f"model.layers.29.{part}" in names
    assert ex.state["model"] == lab_models.LM_KEY and ex.state["layer"] == ex.layer.value
    assert ex.state["method"] == "svd" and ex.state["input_shape"] == (2, lab_models.LM_TOKENS, ex.state["C"])
    assert "SmolLM2" in ex.net_readout.value and "perplexity" in ex.net_readout.value
    assert "token sequence" in ex.net_readout.value and "untrained" not in ex.net_readout.value
    ex.layer.value = Q0
    assert ex.state["layer"] == Q0 and ex.state["ranks"] and ex.image.value[:4] == b"\x89PNG"
    pretrained = lab.layer(lab_models.LM_KEY, Q0).spectra[0]
    random = lab.layer("resnet18", "layer3.0.conv2").spectra[0]
    tenth = [float(s[len(s) // 10] / s[0]) for s in (pretrained, random)]
    assert tenth[0] < 0.5 * tenth[1]  # a trained spectrum decays; a random matrix's is flat
