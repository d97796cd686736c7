"""Shipped reference models (lrdlab.pretrained)."""

import pytest
import torch

import lrdlab
from lrdlab.measure.records import read_record
from lrdlab.zoo.models import MODELS
from lrdlab.zoo.pretrained import (
    WEIGHTS_DIR,
    available,
    dequantize_int8,
    pack_state_dict,
    pretrained,
    pretrained_info,
    quantize_int8,
    unpack_state_dict,
)

SHIPPED = [name for name in ("resnet20_mnist5k", "vit_tiny_mnist5k") if name in available()]


def test_both_references_are_shipped():
    assert {"resnet20_mnist5k", "vit_tiny_mnist5k"} <= set(available())


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_weights_are_small_and_documented(name):
    info = pretrained_info(name)
    assert (WEIGHTS_DIR / f"{name}.pt").stat().st_size <= 2_000_000
    assert info.command.startswith(("lrdlab train", "OMP_NUM_THREADS=1 lrdlab train"))
    assert info.test_accuracy is not None and info.test_accuracy >= 95 and info.recipe["epochs"] >= 1
    assert "cpu" in info.machine and info.model in MODELS
    assert info.to_dict() == read_record(WEIGHTS_DIR / f"{name}.json")  # the file's form, every field kept
    assert f"test accuracy {info.test_accuracy:.1f}%" in str(info) and info.model in str(info)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_weights_score_at_least_95_percent_on_the_mnist5k_test_split(name):
    model = pretrained(name)
    assert not model.training
    loaders = lrdlab.get_loaders("mnist5k", 250, lrdlab.Images(channels=3))
    result = lrdlab.evaluate(model, loaders.test)
    assert result["images"] == 1000
    assert result["accuracy"] >= 95.0
    assert abs(result["accuracy"] - pretrained_info(name).test_accuracy) < 0.05  # the recorded number


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(ValueError, match="resnet20_mnist5k"):
        pretrained("nope")


def test_pack_roundtrip_fp16_and_int8():
    torch.manual_seed(0)
    state = {"w": torch.randn(64, 128), "b": torch.randn(64), "n": torch.tensor(3)}
    fp16 = unpack_state_dict(pack_state_dict(state, "fp16"))
    assert fp16["w"].dtype == torch.float32 and torch.equal(fp16["n"], state["n"])
    torch.testing.assert_close(fp16["w"], state["w"], atol=2e-3, rtol=1e-3)
    int8 = unpack_state_dict(pack_state_dict(state, "int8"))
    step = state["w"].abs().amax(1, keepdim=True) / 127
    assert ((int8["w"] - state["w"]).abs() <= step / 2 + 1e-6).all()
    assert pack_state_dict(state, "int8")["tensors"]["w"]["q"].dtype == torch.int8
    torch.testing.assert_close(dequantize_int8(quantize_int8(torch.zeros(3, 4))), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="storage"):
        pack_state_dict(state, "int4")
    with pytest.raises(ValueError, match="packed"):
        unpack_state_dict(state)
