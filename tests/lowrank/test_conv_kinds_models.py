"""Issue 34 item 5 on real architectures (random weights, small inputs): BiT-ResNet-50 (timm StdConv2d), r3d_18
(Conv3d), the Whisper encoder (Conv1d front end) and tf_efficientnet (Conv2dSame). The recorded numbers at full
input sizes are in data/conv_kinds_targets_cpu.json."""

import pytest
import torch

from lrdlab import FixedRank, Layers, Ratio, count_flops, decompose, make_plan
from lrdlab.lowrank.layers import LowRankLayer

timm = pytest.importorskip("timm")


def _bit():
    return timm.create_model("resnetv2_50x1_bit", pretrained=False), torch.randn(1, 3, 64, 64)


def _r3d():
    from torchvision.models.video import r3d_18

    return r3d_18(weights=None), torch.randn(1, 3, 4, 56, 56)


def _whisper():
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    config = WhisperConfig(num_mel_bins=80, d_model=384, encoder_layers=2, encoder_attention_heads=6,
                           encoder_ffn_dim=1536, max_source_positions=100)  # Whisper-tiny widths, 200 frames
    return WhisperEncoder(config), {"input_features": torch.randn(1, 80, 200)}


def _efficientnet():
    return timm.create_model("tf_efficientnet_b0", pretrained=False), torch.randn(1, 3, 64, 64)


def _run(model, x):
    with torch.no_grad():
        out = model(**x) if isinstance(x, dict) else model(x)
    return out[0] if isinstance(out, tuple) else getattr(out, "last_hidden_state", out)


def _called(model, x):
    seen = set()
    low = {n: m for n, m in model.named_modules() if isinstance(m, LowRankLayer)}
    handles = [m.register_forward_hook(lambda *_, n=n: seen.add(n)) for n, m in low.items()]
    _run(model, x)
    for h in handles:
        h.remove()
    return seen == set(low) and len(low) > 0


@pytest.mark.slow
@pytest.mark.parametrize(("build", "kinds", "min_cut"), [
    (_bit, {"StdConv2d"}, 0.40), (_r3d, {"Conv3d", "Conv3DSimple"}, 0.40), (_whisper, {"Conv1d"}, 0.0),
    (_efficientnet, {"Conv2dSame"}, 0.0)])
def test_layer_kinds_are_decomposed_exact_at_full_rank_called_and_cut_flops(build, kinds, min_cut):
    torch.manual_seed(0)
    model, x = build()
    model.eval()
    layers = Layers(example_input=x)
    full = make_plan(model, FixedRank("full", allow_larger=True), layers)
    rows = [r for r in full.layers if r.type in kinds]
    assert rows and all(r.decomposed or "depthwise" in r.reason for r in rows), [r.reason for r in rows]
    assert any(r.decomposed for r in rows)
    expected = _run(model, x)
    assert ((_run(decompose(model, full), x) - expected).norm() / expected.norm()) < 1e-4
    plan = make_plan(model, Ratio(2), layers)
    low = decompose(model, plan)
    assert _called(low, x)
    tensor = x["input_features"] if isinstance(x, dict) else x
    before, after = count_flops(model, tensor), count_flops(low, tensor)
    assert after < before * (1 - min_cut) and after < before
