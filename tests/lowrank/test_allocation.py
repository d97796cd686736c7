"""Loss-aware rank allocation: the pure maths (budget, optimality, exact losses) and the LossAware policy."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from lrdlab.lowrank import allocation
from lrdlab.lowrank.allocation import LayerSpectrum, allocate, uniform_budget, whitened_spectrum
from lrdlab.lowrank.calibration import calibrated_decompose
from lrdlab.lowrank.data_aware import add_ridge, output_error, reduced_rank_regression
from lrdlab.lowrank.loss_spectra import LossSpectra, loss_spectra
from lrdlab.lowrank.plan import Ratio, make_plan
from lrdlab.lowrank.plan_config import LossAware


def _spectrum(gen: torch.Generator, out: int, inp: int, decay: float) -> LayerSpectrum:
    values = torch.rand(min(out, inp), generator=gen, dtype=torch.float64) * torch.exp(
        -decay * torch.arange(min(out, inp), dtype=torch.float64))
    return LayerSpectrum(values.sort(descending=True).values, out, inp)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("step", [1, 4])
def test_allocation_never_exceeds_the_budget_and_leaves_no_chunk_that_fits(seed, step):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(48, 32), (32, 32), (64, 16), (24, 40)]
    layers = {f"l{i}": _spectrum(gen, o, d, 0.05 * (i + 1)) for i, (o, d) in enumerate(shapes)}
    budget = uniform_budget(layers, 1.7, step)
    ranks = allocate(layers, budget, step=step)
    assert allocation.params(layers, ranks) <= budget
    for name, spec in layers.items():
        assert ranks[name] % step == 0 and ranks[name] <= spec.max_saving_rank
        fits_budget = allocation.params(layers, ranks) + step * spec.cost_per_rank <= budget
        assert not (fits_budget and ranks[name] + step <= spec.max_saving_rank), name


@pytest.mark.parametrize("seed", range(4))
def test_greedy_is_optimal_on_a_small_separable_case(seed):
    # equal cost per rank in every layer: the greedy allocation reaches the brute-force minimum of the summed loss
    gen = torch.Generator().manual_seed(seed)
    layers = {f"l{i}": _spectrum(gen, 12, 12, 0.3 * i) for i in range(3)}
    budget = 10 * 24
    ranks = allocate(layers, budget, min_rank=0)
    best = min(
        sum(allocation.truncation_loss(layers[f"l{i}"].singular_values, r) for i, r in enumerate(combo))
        for combo in itertools.product(range(6), repeat=3) if sum(combo) * 24 <= budget)
    assert allocation.total_loss(layers, ranks) == pytest.approx(best, rel=1e-12)


def test_a_layer_with_a_flat_spectrum_gets_more_rank_than_a_decaying_one():
    flat = LayerSpectrum(torch.ones(16, dtype=torch.float64), 16, 16)
    steep = LayerSpectrum(torch.logspace(0, -6, 16, dtype=torch.float64), 16, 16)
    ranks = allocate({"flat": flat, "steep": steep}, uniform_budget({"flat": flat, "steep": steep}, 2))
    assert ranks["flat"] > ranks["steep"]


def test_relative_normalisation_ignores_a_layer_s_scale():
    gen = torch.Generator().manual_seed(0)
    a, b = _spectrum(gen, 20, 20, 0.2), _spectrum(gen, 20, 20, 0.2)
    big = LayerSpectrum(a.singular_values * 100, 20, 20)
    layers, scaled = {"a": a, "b": b}, {"a": big, "b": b}
    budget = uniform_budget(layers, 2)
    assert allocate(layers, budget, normalise="relative") == allocate(scaled, budget, normalise="relative")
    assert allocate(scaled, budget, normalise="output")["a"] > allocate(scaled, budget, normalise="relative")["a"]


def test_too_small_a_budget_is_a_value_error():
    spec = LayerSpectrum(torch.ones(8, dtype=torch.float64), 8, 8)
    with pytest.raises(ValueError, match="cannot hold every layer"):
        allocate({"a": spec}, 10, step=1)
    with pytest.raises(ValueError, match="normalise"):
        allocate({"a": spec}, 100, normalise="energy")


def test_the_whitened_tail_is_the_output_error_of_the_data_aware_fit():
    gen = torch.Generator().manual_seed(1)
    W = torch.randn(20, 12, generator=gen, dtype=torch.float64)
    X = torch.randn(200, 12, generator=gen, dtype=torch.float64) @ torch.randn(12, 12, generator=gen,
                                                                               dtype=torch.float64)
    cov = add_ridge(X.T @ X / 200)
    s = whitened_spectrum(W, cov)
    for rank in (1, 5, 11):
        first, last = reduced_rank_regression(W, cov, rank)
        assert allocation.truncation_loss(s, rank) == pytest.approx(output_error(W, last @ first, cov), rel=1e-8)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 48))


def test_loss_aware_plan_holds_at_most_the_uniform_budget_and_decomposes():
    model = _mlp()
    batches = [torch.randn(64, 32) for _ in range(3)]
    spectra = loss_spectra(model, batches, progress=False)
    assert set(spectra.layers) == {"0", "2", "4"}
    for ratio in (1.5, 2.0, 3.0):
        uniform = make_plan(model, Ratio(ratio, min_rank=1))
        aware = make_plan(model, LossAware(ratio, spectra))
        used = sum(r.params_after for r in aware.layers)
        assert used <= sum(r.params_after for r in uniform.layers)
        assert {r.name for r in aware.decomposed_layers} == {"0", "2", "4"}
    low = calibrated_decompose(model, make_plan(model, LossAware(2, spectra)), batches, mode="one-shot")
    assert low(batches[0]).shape == (64, 48)


def test_loss_aware_checks_its_fields():
    spectra = LossSpectra({})
    with pytest.raises(ValueError, match="ratio must be > 1"):
        LossAware(1.0, spectra)
    with pytest.raises(ValueError, match="measure it first"):
        LossAware(2.0, {"a": 1})
    with pytest.raises(ValueError, match="normalise"):
        LossAware(2.0, spectra, normalise="energy")
    assert repr(LossAware(2, spectra)).startswith("LossAware(2.0, LossSpectra(0 layers")


def test_floors_keep_every_layer_near_its_uniform_rank():
    gen = torch.Generator().manual_seed(3)
    layers = {"a": LayerSpectrum(torch.logspace(0, -9, 32, dtype=torch.float64), 32, 32),
              "b": _spectrum(gen, 32, 32, 0.0)}
    budget = uniform_budget(layers, 2)
    free = allocate(layers, budget)
    floored = allocate(layers, budget, min_rank=allocation.floors(layers, 2, 0.5))
    assert free["a"] < 4 <= floored["a"]  # uniform rank 8: at least half of it
    assert allocation.params(layers, floored) <= budget
    assert allocation.total_loss(layers, floored) >= allocation.total_loss(layers, free)
