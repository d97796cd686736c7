"""Model families from real hands: torchvision classification families and HuggingFace families from tiny configs,
at full rank (exact) and at 2x (FLOPs fall, every decomposed layer is called, nothing claims a reduction the
forward does not get), plus calibrated decomposition on a couple of batches.

The smallest variant of each family, 10 classes, batch 1, float64, small inputs; the big ones are marked slow.
"""

from collections.abc import Callable

import pytest
import torch
import torchvision.models as tv
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lrdlab import FixedRank, Layers, Ratio, decompose, make_plan
from lrdlab.lowrank.layers import LowRankLayer

slow = pytest.mark.slow


def _tiny_vit() -> nn.Module:
    return tv.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                                num_classes=10)


def _tiny_swin() -> nn.Module:
    return tv.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=[4, 4],
                              num_classes=10)


TORCHVISION: dict[str, tuple[Callable[[], nn.Module], int]] = {  # builder, input size
    "resnet18": (lambda: tv.resnet18(num_classes=10), 64),
    "mobilenet_v2": (lambda: tv.mobilenet_v2(num_classes=10), 64),
    "mobilenet_v3_small": (lambda: tv.mobilenet_v3_small(num_classes=10), 64),
    "efficientnet_b0": (lambda: tv.efficientnet_b0(num_classes=10), 64),
    "regnet_x_400mf": (lambda: tv.regnet_x_400mf(num_classes=10), 64),
    "vit (tiny VisionTransformer)": (_tiny_vit, 32),
    "swin (tiny SwinTransformer)": (_tiny_swin, 32),
    "googlenet": (lambda: tv.googlenet(num_classes=10, aux_logits=False, init_weights=True), 64),
    "squeezenet1_1": (lambda: tv.squeezenet1_1(num_classes=10), 64),
    "shufflenet_v2_x0_5": (lambda: tv.shufflenet_v2_x0_5(num_classes=10), 64),
    "mnasnet0_5": (lambda: tv.mnasnet0_5(num_classes=10), 64),
}
SLOW_TORCHVISION: dict[str, tuple[Callable[[], nn.Module], int]] = {
    "resnext50_32x4d": (lambda: tv.resnext50_32x4d(num_classes=10), 64),
    "wide_resnet50_2": (lambda: tv.wide_resnet50_2(num_classes=10), 64),
    "convnext_tiny": (lambda: tv.convnext_tiny(num_classes=10), 64),
    "densenet121": (lambda: tv.densenet121(num_classes=10), 64),
    "swin_t": (lambda: tv.swin_t(num_classes=10), 64),
    "maxvit_t": (lambda: tv.maxvit_t(num_classes=10), 224),
    "alexnet": (lambda: tv.alexnet(num_classes=10), 64),
    "vgg11": (lambda: tv.vgg11(num_classes=10), 32),
}


def _hf(name: str) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    transformers = pytest.importorskip("transformers")
    small = dict(vocab_size=64)
    decoder = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, **small)
    configs = {
        "llama": lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(**decoder)),
        "qwen2": lambda: transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**decoder)),
        "gpt2": lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4,
                                                                             n_positions=32, **small)),
        "bert": lambda: transformers.BertModel(transformers.BertConfig(hidden_size=32, num_hidden_layers=2,
                                                                       num_attention_heads=4, intermediate_size=64,
                                                                       **small)),
        "distilbert": lambda: transformers.DistilBertModel(transformers.DistilBertConfig(dim=32, n_layers=2, n_heads=4,
                                                                                         hidden_dim=64, **small)),
        "t5": lambda: transformers.T5ForConditionalGeneration(transformers.T5Config(d_model=32, d_ff=64, d_kv=8,
                                                                                    num_layers=2, num_heads=4,
                                                                                    **small)),
    }
    torch.manual_seed(0)
    model = configs[name]().double().eval()
    ids = torch.randint(0, 64, (1, 8), generator=torch.Generator().manual_seed(1))
    inputs = {"input_ids": ids}
    if name == "t5":
        inputs["decoder_input_ids"] = ids
    return model, inputs


def _run(model: nn.Module, inputs) -> torch.Tensor:
    with torch.no_grad():
        out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
    return out if isinstance(out, torch.Tensor) else out[0]


def _flops(model: nn.Module, inputs) -> int:
    with FlopCounterMode(display=False) as counter:
        _run(model, inputs)
    return counter.get_total_flops()


def _calls(model: nn.Module, inputs) -> dict[str, int]:
    """How often each LowRankLayer of ``model`` is called in one forward."""
    counts = {name: 0 for name, m in model.named_modules() if isinstance(m, LowRankLayer)}
    handles = [m.register_forward_pre_hook(lambda mod, args, name=name: counts.__setitem__(name, counts[name] + 1))
               for name, m in model.named_modules() if isinstance(m, LowRankLayer)]
    _run(model, inputs)
    for h in handles:
        h.remove()
    return counts


def check_family(model: nn.Module, inputs, exclude: list[str] | None = None) -> None:
    """Full rank exact; at 2x FLOPs fall and every decomposed layer is called."""
    layers = Layers(example_input=inputs, exclude=exclude)
    full = decompose(model, make_plan(model, FixedRank("full", allow_larger=True), layers), progress=False)
    torch.testing.assert_close(_run(full, inputs), _run(model, inputs), rtol=1e-8, atol=1e-10)
    plan = make_plan(model, Ratio(2), layers)
    small = decompose(model, plan, progress=False)
    assert plan.decomposed_layers, plan
    before, after = _flops(model, inputs), _flops(small, inputs)
    assert after < before, f"FLOPs {before:,} → {after:,} at 2x"
    calls = _calls(small, inputs)
    assert set(calls) == {r.name for r in plan.decomposed_layers}
    assert all(calls.values()), f"decomposed but never called: {[n for n, c in calls.items() if not c]}"


def _tv(builder: Callable[[], nn.Module], size: int) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return builder().double().eval(), torch.randn(1, 3, size, size, dtype=torch.float64)


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_family(name):
    check_family(*_tv(*TORCHVISION[name]))


# The 4096-wide classifier Linears (VGG 25088→4096→4096, AlexNet 9216→4096→4096) cost minutes of float64 SVD at
# full rank and check nothing the last, smaller Linear does not: the convs and that Linear carry the family
BIG_CLASSIFIER = {"vgg11": ["classifier.0", "classifier.3"], "alexnet": ["classifier.1", "classifier.4"]}


@slow
@pytest.mark.parametrize("name", SLOW_TORCHVISION)
def test_torchvision_big_family(name):
    check_family(*_tv(*SLOW_TORCHVISION[name]), exclude=BIG_CLASSIFIER.get(name))


@pytest.mark.parametrize("name", ["llama", "qwen2", "gpt2", "bert", "distilbert", "t5"])
def test_huggingface_family(name):
    check_family(*_hf(name))


def test_t5_feed_forward_output_kept_because_its_weight_dtype_is_read():
    model, inputs = _hf("t5")
    plan = make_plan(model, Ratio(2), Layers(example_input=inputs))
    wo = [r for r in plan.layers if r.name.endswith("DenseReluDense.wo")]
    assert wo and all(not r.decomposed and "outside its forward" in r.reason for r in wo)


@pytest.mark.parametrize("builder", [_tiny_swin, lambda: tv.swin_t(num_classes=10)], ids=["tiny", "swin_t"])
def test_swin_qkv_and_proj_kept_and_flops_not_higher(builder):
    model, x = _tv(builder, 32)
    plan = make_plan(model, Ratio(2), Layers(example_input=x))
    attn = [r for r in plan.layers if ".attn." in r.name]
    assert attn and all(not r.decomposed and "never called" in r.reason for r in attn)
    assert _flops(decompose(model, plan, progress=False), x) <= _flops(model, x)


@pytest.mark.parametrize("name", ["mobilenet_v2", "squeezenet1_1", "vit (tiny VisionTransformer)"])
def test_calibration_runs(name):
    model, x = _tv(*TORCHVISION[name])
    batches = [torch.randn(2, *x.shape[1:], dtype=torch.float64) for _ in range(2)]
    plan = make_plan(model, Ratio(2), Layers(example_input=x))
    out = decompose(model, plan, calibration=batches, progress=False)
    assert torch.isfinite(_run(out, x)).all()
    assert all(_calls(out, x).values())


@pytest.mark.parametrize("name", ["llama", "qwen2", "gpt2"])
def test_huggingface_lm_calibrates_on_token_batches(name):
    """Causal LMs take token-id batches: exact at full rank, and at 2x every layer is fitted and called."""
    model, inputs = _hf(name)
    batches = [torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(s)) for s in (2, 3)]
    layers = Layers(example_input=inputs)
    full = decompose(model, make_plan(model, FixedRank("full", allow_larger=True), layers), calibration=batches,
                     progress=False)
    torch.testing.assert_close(_run(full, inputs), _run(model, inputs), rtol=1e-6, atol=1e-8)
    plan = make_plan(model, Ratio(2), layers)
    out = decompose(model, plan, calibration=batches, progress=False)
    assert torch.isfinite(_run(out, inputs)).all()
    assert set(_calls(out, inputs)) == {r.name for r in plan.decomposed_layers} and all(_calls(out, inputs).values())
