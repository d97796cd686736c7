"""``Layers(force=...)``: a forced layer is decomposed only if its full-rank factors reproduce it on the probe input."""

import copy
import re

import pytest
import torch
from torch import nn

from lrdlab import Layers, decompose
from lrdlab.lowrank import force_check
from tests.lowrank.real_code_layers import ReadsWeight, StdConv, full_rank_plan


def test_a_forced_layer_that_plain_factors_cannot_reproduce_is_refused_with_the_measured_error():
    torch.manual_seed(0)
    model = nn.Sequential(StdConv(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3)).train()
    state = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    measured = (r"StdConv '0' decomposed at full rank changes its output .* by ([0-9.e-]+) "
                r"\(RMS; the output's RMS is ([0-9.e-]+)\)")
    with pytest.raises(ValueError, match=measured) as err:
        full_rank_plan(model, Layers(input_shape=(2, 3, 8, 8), force=["0"]))
    found = re.search(measured, str(err.value))
    assert found and float(found[1]) > 0.1 * float(found[2])  # a real difference, not round-off
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert model.training and type(model[0]) is StdConv and torch.equal(torch.get_rng_state(), rng)


def test_a_forced_layer_used_through_its_weight_passes_on_the_models_output_and_is_decomposed():
    torch.manual_seed(0)
    model = ReadsWeight()
    plan = full_rank_plan(model, Layers(input_shape=(2, 16), force=["qkv"]))
    assert plan["qkv"].decomposed and "forced" in plan["qkv"].reason
    x = torch.randn(2, 16)
    assert torch.allclose(decompose(model, plan)(x), model(x), atol=1e-5)
    assert type(model.qkv) is nn.Linear  # the swap for the check was undone


def test_force_needs_an_input_to_check_on():
    with pytest.raises(ValueError, match=r"Layers\(input_shape=...\)"):
        full_rank_plan(ReadsWeight(), Layers(force=["qkv"]))


def test_output_error_and_tolerance():
    a = {"x": torch.ones(4), "y": (torch.zeros(2), torch.tensor([1, 2]))}
    b = {"x": torch.ones(4) * 1.5, "y": (torch.zeros(2), torch.tensor([3, 4]))}
    error, scale = force_check.output_error(a, b)
    assert error == pytest.approx((4 * 0.25 / 6) ** 0.5) and scale == pytest.approx((4 / 6) ** 0.5)
    assert force_check.output_error(torch.ones(3), torch.ones(4))[0] == float("inf")
    assert force_check.tolerance(torch.float32) == force_check.RELATIVE_TOLERANCE
    assert force_check.tolerance(torch.bfloat16) > force_check.tolerance(torch.float16) > 1e-3
