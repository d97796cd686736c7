"""Block-wise calibration of a stack of decoder layers (lrdlab.lowrank.calibration_blocks): the passes do not grow
with depth, full rank reproduces the model, and the corrected fit is never worse than one-shot on its own objective;
and the public config ``lrdlab.Calibration``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lrdlab
from lrdlab import Calibration, FixedRank, Ratio, decompose, make_plan
from lrdlab.lowrank.calibration import calibrated_decompose
from lrdlab.lowrank.calibration_blocks import capture_stack, find_stack
from lrdlab.lowrank.layers import LowRankLayer
from tests.lowrank.tiny_llama import tiny_llama

transformers = pytest.importorskip("transformers")
VOCAB = 64


def _llama(layers: int, seed: int = 0) -> nn.Module:
    return tiny_llama(layers, VOCAB, seed)


def _decoder(name: str) -> nn.Module:
    torch.manual_seed(0)
    small = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                 num_key_value_heads=2)
    build = {"llama": lambda: _llama(3),
             "qwen2": lambda: transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**small)),
             "gpt2": lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config(
                 vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_positions=32))}
    return build[name]().double().eval()


def _batches(n: int = 3, rows: int = 2, length: int = 32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, VOCAB, (rows, length), generator=g) for _ in range(n)]


def _count_calls(model: nn.Module) -> tuple[list[int], list[int]]:
    """Counters of the embedding's calls and of each decoder layer's (pre-hooks: a pass stopped early counts;
    deep copies share the hook functions, so calls of copies count too)."""
    embedding, layers = [0], [0] * len(model.model.layers)
    model.model.embed_tokens.register_forward_pre_hook(lambda m, a: embedding.__setitem__(0, embedding[0] + 1))
    for i, layer in enumerate(model.model.layers):
        layer.register_forward_pre_hook(lambda m, a, i=i: layers.__setitem__(i, layers[i] + 1))
    return embedding, layers


@pytest.mark.parametrize("mode", ["corrected", "one-shot", "sequential", "loss-weighted"])
def test_the_passes_do_not_grow_with_depth(mode):
    xs = _batches()
    seen = {}
    for depth in (2, 4, 8):
        model = _llama(depth)
        plan = make_plan(model, Ratio(2))
        assert len(plan.decomposed_layers) >= 4 * depth  # q, o, gate, up, down (k, v are too small at 2x)
        embedding, layers = _count_calls(model)
        decompose(model, plan, calibration=Calibration(xs, mode=mode))
        seen[depth] = (embedding[0], max(layers), min(layers))
    # the whole network (its embedding) runs a fixed number of times, and so does every decoder layer: the same
    # at depth 2, 4 and 8 (a walk that reran the network for each layer would call layer 0 ~5 × depth times)
    assert seen[2] == seen[4] == seen[8], seen
    # a trial and a probe pass, one capture pass per batch, and the untied lm_head, a planned layer outside the
    # stack, fitted from whole-model passes (of the decomposed and the original network); each block reruns a
    # few times per group of layers that share an input (q/k/v, o, gate/up, down)
    embedding_calls, most, _ = seen[8]
    assert embedding_calls <= 2 + 3 * len(xs) and most <= 2 + 16 * len(xs), seen


@pytest.mark.parametrize("mode", ["corrected", "one-shot", "sequential", "loss-weighted"])
def test_full_rank_reproduces_the_model(mode):
    model = _llama(4)
    xs = _batches()
    plan = make_plan(model, FixedRank("full", allow_larger=True))
    out = decompose(model, plan, calibration=Calibration(xs, mode=mode))
    assert {n for n, m in out.named_modules() if isinstance(m, LowRankLayer)} == {r.name for r in
                                                                                 plan.decomposed_layers}
    with torch.no_grad():
        torch.testing.assert_close(out(xs[0]).logits, model(xs[0]).logits, rtol=1e-7, atol=1e-9)
    assert not any(isinstance(m, LowRankLayer) for m in model.modules())  # the user's model is left as it was


@pytest.mark.parametrize("name", ["llama", "qwen2", "gpt2"])
def test_decoder_families_calibrate_block_by_block(name):
    model = _decoder(name)
    xs = _batches(n=2)
    plan = make_plan(model, FixedRank("full", allow_larger=True))
    stack = find_stack(model, [r.name for r in plan.decomposed_layers])
    assert stack is not None and len(stack.blocks) == 3
    captured = capture_stack(model, stack, xs)
    assert captured is not None and all(len(c.calls) == 3 for c in captured)
    out = decompose(model, plan, calibration=Calibration(xs, mode="corrected"))
    with torch.no_grad():
        torch.testing.assert_close(out(xs[0]).logits, model(xs[0]).logits, rtol=1e-7, atol=1e-9)


def _layer_io(model: nn.Module, names: list[str], xs: list[torch.Tensor]) -> dict[str, list[tuple]]:
    """Each named layer's (input, output) for every batch when ``model`` runs on ``xs``."""
    got: dict[str, list[tuple]] = {n: [] for n in names}
    handles = [model.get_submodule(n).register_forward_hook(
        lambda m, a, out, n=n: got[n].append((a[0].detach(), out.detach()))) for n in names]
    with torch.no_grad():
        for x in xs:
            model(x)
    for h in handles:
        h.remove()
    return got


def test_corrected_is_never_worse_than_one_shot_on_its_own_objective():
    """Each corrected layer W' minimises ‖W X − W' X̂‖² (X: its inputs in the original model, X̂ in the corrected
    one) over its rank; the one-shot layer, fitted to X alone, does no better on the same X̂."""
    model = _llama(4)
    xs = _batches(n=3, rows=2, length=32)  # 192 tokens: more than any layer's input dimension (64)
    plan = make_plan(model, Ratio(2))
    names = [r.name for r in plan.decomposed_layers]
    corrected = decompose(model, plan, calibration=Calibration(xs, mode="corrected", ridge=0.0))
    one_shot = decompose(model, plan, calibration=Calibration(xs, mode="one-shot", ridge=0.0))
    original, fitted = _layer_io(model, names, xs), _layer_io(corrected, names, xs)
    better = 0
    for name in names:
        other = one_shot.get_submodule(name)
        with torch.no_grad():
            mine = sum(float((y - y_hat).pow(2).sum()) for (_, y), (_, y_hat) in zip(original[name], fitted[name]))
            theirs = sum(float((y - other(x_hat)).pow(2).sum())
                         for (_, y), (x_hat, _) in zip(original[name], fitted[name]))
        assert mine <= theirs * (1 + 1e-9) + 1e-12, (name, mine, theirs)
        better += mine < 0.99 * theirs
    assert better >= 3, better  # beyond the first layers, the correction does work


def test_calibration_is_a_public_checked_config():
    model = _llama(2)
    xs = _batches(n=2)
    plan = make_plan(model, Ratio(2))
    assert lrdlab.Calibration is Calibration and "Calibration" in lrdlab.__all__
    for bad in (dict(mode="greedy"), dict(bn="sometimes"), dict(ridge=-1.0), dict(ridge=float("nan"))):
        with pytest.raises(ValueError, match="Calibration"):
            Calibration(xs, **bad)
    with pytest.raises(ValueError, match="iterable of batches"):  # checked with the model, naming its input
        decompose(model, plan, calibration=Calibration(xs[0]))
    config = Calibration(xs, mode="one-shot", bn=False, ridge=1e-2)
    with pytest.raises(AttributeError):
        config.mode = "corrected"  # type: ignore[misc]
    assert "one-shot" in repr(config) and "tensor" not in repr(config)
    via_config = decompose(model, plan, calibration=config)
    direct = calibrated_decompose(model, plan, xs, mode="one-shot", bn=False, ridge=1e-2)
    plain = decompose(model, plan, calibration=xs)  # a plain iterable: the default mode
    default = decompose(model, plan, calibration=Calibration(xs))
    with torch.no_grad():
        torch.testing.assert_close(via_config(xs[0]).logits, direct(xs[0]).logits)
        torch.testing.assert_close(plain(xs[0]).logits, default(xs[0]).logits)
        assert not torch.allclose(plain(xs[0]).logits, direct(xs[0]).logits)
