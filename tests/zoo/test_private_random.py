"""`lrdlab.zoo.models.private_random`: models built in a background thread get seeded weights from a private
generator and leave the global random stream, which the user's thread draws from, alone."""

from __future__ import annotations

import threading

import pytest
import torch
import torchvision

from lrdlab.explore import lab_models
from lrdlab.zoo import models
from lrdlab.zoo.models import private_random


def _tiny_llama():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, vocab_size=50)
    return transformers.LlamaForCausalLM(config)


def _timm_vit():
    timm = pytest.importorskip("timm")
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10)


BUILDERS = {
    "resnet18": torchvision.models.resnet18,  # kaiming_normal_, constant_, Linear's kaiming_uniform_
    "swin_t": torchvision.models.swin_t,  # trunc_normal_, relative-position tables
    "mobilenet_v3_small": torchvision.models.mobilenet_v3_small,
    "llama": _tiny_llama,  # transformers' _init_weights (normal_)
    "timm_vit": _timm_vit,  # timm's own trunc_normal_ (Tensor.uniform_ + erfinv_)
}


@pytest.mark.parametrize("name", BUILDERS)
def test_a_model_built_privately_has_the_seeded_weights_and_moves_no_global_stream(name):
    build = BUILDERS[name]
    torch.manual_seed(3)
    reference = build().state_dict()
    torch.manual_seed(11)
    before = torch.random.get_rng_state()
    with private_random(3):
        model = build()
    assert torch.equal(torch.random.get_rng_state(), before)  # not read, not moved
    state = model.state_dict()
    assert state.keys() == reference.keys()
    different = [k for k in state if not torch.equal(state[k], reference[k])]
    assert not different, f"{name}: not drawn from the private generator: {different[:5]}"


def test_another_threads_draws_are_neither_rewound_nor_reseeded():
    """The user's thread draws while a model is built in the background: it gets the numbers it would get alone
    (``fork_rng`` + ``manual_seed`` there would reseed them meanwhile and rewind them at the end)."""
    torch.manual_seed(5)
    alone = torch.rand(6)
    inside, leave = threading.Event(), threading.Event()

    def background():
        with private_random(0):
            torch.nn.init.normal_(torch.empty(100))
            inside.set()
            leave.wait(30)
            torch.nn.init.normal_(torch.empty(100))

    torch.manual_seed(5)
    thread = threading.Thread(target=background)
    thread.start()
    assert inside.wait(30)
    during = torch.rand(3)
    leave.set()
    thread.join()
    after = torch.rand(3)
    assert torch.equal(torch.cat([during, after]), alone)


@pytest.mark.parametrize("key", ["resnet20", "vit_tiny"])
def test_the_explorers_random_models_are_seed_0s_and_leave_the_stream(key, monkeypatch):
    assert key in lab_models.UNTRAINED
    monkeypatch.setattr(lab_models, "_models", type(lab_models._models)())
    torch.manual_seed(0)
    reference = models.get_model(key).state_dict()
    torch.manual_seed(9)
    expected = torch.rand(2)
    torch.manual_seed(9)
    built = lab_models.load(key).state_dict()
    assert torch.equal(torch.rand(2), expected)
    assert all(torch.equal(built[k], reference[k]) for k in reference)
