"""Model families outside the rest of the suite (issue 34): a plan made without an input probes or says loudly that
it did not, never raises the FLOPs, and the default calibration runs on each family's own batches."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lrdlab
from lrdlab import Layers, Ratio, count_flops, decompose, make_plan
from lrdlab.lowrank.layers import LowRankLayer
from lrdlab.lowrank.probe_inputs import inferred_input
from lrdlab.lowrank.token_batches import ModelCall

timm = pytest.importorskip("timm")
T = pytest.importorskip("transformers")
torchvision = pytest.importorskip("torchvision")


def _plan(model):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = make_plan(model.eval(), Ratio(2, min_rank=1))
    return plan, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def _probed_or_loud(plan, caught):
    if plan.settings["probe"].startswith("not probed"):
        assert "NOT PROBED" in plan.summary() and any("not probed" in m for m in caught)
    else:
        assert "NOT PROBED" not in plan.summary()


def _never_more_flops(model, plan):
    found = inferred_input(model)
    assert found is not None, "every family here has an input the model's metadata gives"
    call = ModelCall(found.args, found.kwargs)
    small = decompose(model, plan)
    assert count_flops(small, call) <= count_flops(model, call)


# --- families from tiny configs ---------------------------------------------------------------------------------

def _wav2vec2():
    return T.Wav2Vec2Model(T.Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(16, 16),
        conv_stride=(5, 4), conv_kernel=(10, 4), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
        vocab_size=12))


def _clip():
    return T.CLIPModel(T.CLIPConfig(
        text_config=dict(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=0, eos_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8), projection_dim=16))


def _whisper():
    return T.WhisperForConditionalGeneration(T.WhisperConfig(
        vocab_size=60, num_mel_bins=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=2, d_model=32, encoder_ffn_dim=64, decoder_ffn_dim=64, max_source_positions=32,
        max_target_positions=16, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1))


def _mixtral():
    return T.MixtralForCausalLM(T.MixtralConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=32))


def _mamba():
    return T.MambaForCausalLM(T.MambaConfig(vocab_size=64, hidden_size=32, state_size=4, num_hidden_layers=2,
                                            expand=2, conv_kernel=4))


def _frcnn():
    return torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(
        weights=None, weights_backbone=None, num_classes=3, min_size=64, max_size=96, rpn_pre_nms_top_n_test=50,
        rpn_post_nms_top_n_test=20, box_detections_per_img=10)


FAMILIES = {
    "timm eva02": lambda: timm.create_model("eva02_tiny_patch14_224", pretrained=False, depth=2),
    "timm vit": lambda: timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2),
    "timm convnext": lambda: timm.create_model("convnext_atto", pretrained=False),
    "timm resnet": lambda: timm.create_model("resnet10t", pretrained=False),
    "wav2vec2": _wav2vec2,
    "clip": _clip,
    "mixtral": _mixtral,
    "mamba": _mamba,
}
SLOW_FAMILIES = {  # the same test, marked slow
    "torchvision swin_t": lambda: torchvision.models.swin_t(),
    "torchvision r3d_18": lambda: torchvision.models.video.r3d_18(),
    "faster r-cnn": _frcnn,
    "whisper": _whisper,
}


@pytest.mark.parametrize("family", [*FAMILIES, *(pytest.param(f, marks=pytest.mark.slow) for f in SLOW_FAMILIES)])
def test_a_plan_without_input_probes_or_says_so_and_never_adds_flops(family):
    torch.manual_seed(0)
    model = {**FAMILIES, **SLOW_FAMILIES}[family]().eval()
    plan, caught = _plan(model)
    _probed_or_loud(plan, caught)
    assert plan.settings["probe"].startswith("probed")  # each of these has metadata that gives an input
    _never_more_flops(model, plan)


def test_swin_layers_read_through_their_weight_are_kept_by_the_inferred_probe():
    model = torchvision.models.swin_t().eval()
    plan, _ = _plan(model)
    assert "weight directly" in plan["features.1.0.attn.qkv"].reason and not plan["features.1.0.attn.qkv"].decomposed


def test_mixtral_expert_tensors_have_rows_and_the_rest_is_counted_in_the_summary():
    model = _mixtral().eval()
    plan, _ = _plan(model)
    rest = plan.settings["uncovered"]
    assert rest["params"] + sum(r.params_before for r in plan.layers) == sum(p.numel() for p in model.parameters())
    assert plan["model.layers.1.mlp.experts.down_proj.3"].decomposed  # per-expert SVD (tests/lowrank/test_experts.py)
    assert "embed" in rest["largest"]
    assert f"{rest['params']:,} params" in plan.summary()


# --- no silent plan on a model lrdlab cannot probe --------------------------------------------------------------

class ReadsWeight(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv, self.mlp = nn.Linear(64, 64), nn.Linear(64, 64)

    def forward(self, x):
        return self.mlp(F.linear(x, self.qkv.weight))


def test_an_unprobed_plan_warns_says_so_in_its_summary_and_keeps_a_layer_read_through_its_weight():
    with pytest.warns(UserWarning, match="not probed"):
        plan = make_plan(ReadsWeight(), Ratio(2, min_rank=1))
    assert "NOT PROBED" in plan.summary()
    assert not plan["qkv"].decomposed and "reads its .weight directly" in plan["qkv"].reason
    assert plan["mlp"].decomposed
    given = make_plan(ReadsWeight(), Ratio(2, min_rank=1), Layers(input_shape=(1, 64)))
    assert "NOT PROBED" not in given.summary() and not given["qkv"].decomposed


def test_the_readme_exclude_list_warns_for_the_pattern_that_matches_nothing():
    model = lrdlab.get_model("resnet20")
    with pytest.warns(UserWarning, match=r"\['\*\.downsample\.\*'\] match no"):
        plan = make_plan(model, Ratio(2, granularity=8), Layers(exclude=["conv1", "*.downsample.*"]))
    assert plan["conv1"].reason == "excluded by 'conv1'" and plan.settings["unmatched_patterns"]
    with pytest.raises(ValueError, match="matches no Linear/Conv layer"):
        make_plan(model, Ratio(2), Layers(exclude=["*.downsample.*"]))


# --- calibration on the model's own batches ---------------------------------------------------------------------

class Selects(nn.Module):
    """A layer after a data-dependent selection: its row count differs between the original and decomposed nets."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(16, 16), nn.Linear(16, 8)

    def forward(self, x):
        h = self.a(x)
        return self.b(h[h[:, 0] > 0])


def test_a_layer_with_data_dependent_rows_falls_back_and_says_so():
    torch.manual_seed(0)
    model = Selects().eval()
    plan = make_plan(model, Ratio(4, min_rank=1), Layers(input_shape=(64, 16)))
    xs = [torch.randn(64, 16) for _ in range(4)]
    with pytest.warns(UserWarning, match="data-dependent number of rows"):
        small = decompose(model, plan, calibration=xs)
    assert "sequential fit" in plan["b"].reason
    assert isinstance(small(xs[0]), torch.Tensor)


class TopK(nn.Module):
    """A top-1 mixture of Linear experts routed by the sign of feature 0 and 1; expert 3 is never chosen."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(8, 8)
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8)) for _ in range(4))

    def forward(self, x):
        h = self.inp(x)
        route = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()  # 0, 1 or 2: never 3
        out = torch.zeros_like(h)
        for i, expert in enumerate(self.experts):
            chosen = route == i
            if chosen.any():
                out[chosen] = expert(h[chosen])
        return out


def test_moe_experts_are_fitted_over_all_batches_and_an_unrouted_one_is_kept():
    torch.manual_seed(0)
    model = TopK().eval()
    # the probe input reaches experts 0-2 only; force plans expert 3 too, as a plan made on other data would
    plan = make_plan(model, Ratio(2, min_rank=1), Layers(input_shape=(64, 8), force=["experts.*"]))
    first = -torch.rand(32, 8)  # batch 0 reaches expert 0 only
    xs = [first, torch.randn(64, 8), torch.randn(64, 8)]
    with pytest.warns(UserWarning, match="never ran on any calibration batch"):
        small = decompose(model, plan, calibration=xs)
    assert not plan["experts.3.0"].decomposed and "never ran on any calibration batch" in plan["experts.3.0"].reason
    assert plan["experts.2.0"].decomposed and plan["experts.1.2"].decomposed
    assert type(small.experts[3][0]) is nn.Linear and type(small.experts[2][0]) is not nn.Linear


def test_wav2vec2_and_clip_calibrate_on_dict_batches_in_the_default_mode():
    torch.manual_seed(0)
    for model, batches in ((_wav2vec2().eval(), [{"input_values": torch.randn(2, 4000)} for _ in range(2)]),
                           (_clip().eval(), [{"input_ids": torch.randint(0, 50, (4, 8)),
                                              "pixel_values": torch.randn(4, 3, 32, 32)} for _ in range(2)])):
        plan, _ = _plan(model)
        small = decompose(model, plan, calibration=batches)
        assert plan.decomposed_layers
        assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
        with torch.no_grad():
            assert small(**batches[0]) is not None


@pytest.mark.slow
def test_whisper_and_faster_rcnn_calibrate_on_their_own_batches():
    torch.manual_seed(0)
    whisper = _whisper().eval()
    batches = [{"input_features": torch.randn(2, 16, 64), "decoder_input_ids": torch.randint(0, 60, (2, 4))}
               for _ in range(2)]
    decompose(whisper, _plan(whisper)[0], calibration=batches)
    frcnn = _frcnn().eval()
    images = [[torch.rand(3, 64, 80), torch.rand(3, 72, 64)] for _ in range(2)]
    # the box head's 12544→1024 fc6 (a float64 12544² input Gram: three quarters of the test's time) is kept; fc7
    # carries the box head's Linears, the backbone, FPN and RPN convs the rest
    plan = make_plan(frcnn, Ratio(2, min_rank=1), Layers(exclude=["roi_heads.box_head.fc6"]))
    small = decompose(frcnn, plan, calibration=images)
    assert isinstance(small.roi_heads.box_head.fc7, LowRankLayer)
    with torch.no_grad():
        assert isinstance(small(images[0]), list)
