"""The LM distillation recipe on a tiny random Llama: the loss falls, the teacher is untouched, the student's
requires_grad is restored, the trainable set is respected, bad recipes are refused naming the field."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from lrdlab.finetune.fit_config import FitConfig
from lrdlab.finetune.lm_distill import LMDistillation, distill_language_model, teacher_windows, trainable_parameters
from lrdlab.finetune.loop import make_scheduler
from lrdlab.lowrank.decompose import decompose
from lrdlab.lowrank.plan import Ratio, make_plan

transformers = pytest.importorskip("transformers")


def _llama(seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(config).eval()


def _windows(n: int, seed: int, t: int = 24) -> torch.Tensor:
    # a learnable structure (each token a function of the one before, with noise) rather than uniform noise
    g = torch.Generator().manual_seed(seed)
    ids = torch.empty(n, t, dtype=torch.long)
    ids[:, 0] = torch.randint(0, 96, (n,), generator=g)
    for i in range(1, t):
        ids[:, i] = (ids[:, i - 1] * 7 + 3 + torch.randint(0, 3, (n,), generator=g)) % 96
    return ids


def _kl(student, teacher, windows) -> float:
    with torch.no_grad():
        s = F.log_softmax(student(windows).logits, -1).flatten(0, 1)
        p = F.log_softmax(teacher(windows).logits, -1).flatten(0, 1)
    return float(F.kl_div(s, p, log_target=True, reduction="batchmean"))


def _student(teacher):
    return decompose(teacher, make_plan(teacher, Ratio(3, min_rank=1)), progress=False)


@pytest.mark.parametrize("trainable", ["factors", "factors_norms", "all_but_embeddings", "all"])
def test_distillation_lowers_the_loss_and_leaves_the_teacher_alone(trainable):
    teacher = _llama()
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = _student(teacher)
    student.model.layers[0].input_layernorm.weight.requires_grad_(False)  # the user's choice, to be restored
    flags = {n: p.requires_grad for n, p in student.named_parameters()}
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    held_out = _windows(4, seed=1)
    kl_before = _kl(student, teacher, held_out)
    recipe = LMDistillation(steps=24, batch=4, eval_every=8, lr=3e-3, warmup=0.1, schedule="cosine",
                            trainable=trainable, progress=False)
    history = distill_language_model(student, teacher, _windows(64, seed=0), held_out, recipe)

    assert list(history["epoch"]) == [0, 1, 2, 3]
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[1]
    assert _kl(student, teacher, held_out) < kl_before
    assert history["perplexity"].iloc[-1] < history["perplexity"].iloc[0]
    assert all(torch.equal(v, teacher_state[k]) for k, v in teacher.state_dict().items())
    assert all(p.grad is None for p in teacher.parameters())
    assert {n: p.requires_grad for n, p in student.named_parameters()} == flags
    changed = {n for n, p in student.named_parameters() if not torch.equal(p.detach(), before[n])}
    factor_names = {n for n in changed if ".self_attn." in n or ".mlp." in n}
    assert factor_names  # the factors always train
    assert ("model.embed_tokens.weight" in changed) == (trainable == "all")
    assert ("model.norm.weight" in changed) == (trainable != "factors")
    assert ("model.layers.0.post_attention_layernorm.weight" in changed) == (trainable != "factors")


def test_the_trainable_sets():
    teacher = _llama()
    student = _student(teacher)
    factors = {id(p) for p in trainable_parameters(student, "factors")}
    with_norms = {id(p) for p in trainable_parameters(student, "factors_norms")}
    assert factors < with_norms < {id(p) for p in student.parameters()}
    assert id(student.model.norm.weight) in with_norms - factors
    but_embeddings = {id(p) for p in trainable_parameters(student, "all_but_embeddings")}
    table = id(student.model.embed_tokens.weight)
    assert with_norms <= but_embeddings == {id(p) for p in student.parameters()} - {table}
    tied = _llama()
    tied.config.tie_word_embeddings = True
    tied.tie_weights()
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    assert id(tied.lm_head.weight) not in {id(p) for p in trainable_parameters(tied, "all_but_embeddings")}
    with pytest.raises(ValueError, match="no decomposed layer"):
        trainable_parameters(teacher, "factors")
    with pytest.raises(ValueError, match="the student is the teacher"):
        distill_language_model(teacher, teacher, _windows(4, 0), _windows(2, 1), LMDistillation(progress=False))


@pytest.mark.parametrize("field, value", [
    ("steps", 0), ("batch", 0), ("eval_every", 0), ("lr", 0.0), ("warmup", 1.0), ("schedule", "onecycle"),
    ("temperature", 0.0), ("lm_weight", 1.5), ("trainable", "embeddings"), ("clip_grad_norm", -1.0), ("seed", -1),
    ("label", 3), ("progress", "yes")])
def test_a_bad_recipe_names_its_field(field, value):
    with pytest.raises(ValueError, match=field):
        LMDistillation(**{field: value})


def test_the_recipe_maps_onto_fit():
    config = LMDistillation(steps=40, eval_every=10, lr=5e-4, warmup=0.1, schedule="cosine", lm_weight=0.25,
                            temperature=2.0).fit_config()
    assert (config.epochs, config.lr, config.warmup, config.schedule) == (4, 5e-4, 0.1, "cosine")
    assert (config.distill_alpha, config.distill_temperature, config.optimizer) == (0.75, 2.0, "adamw")


def test_warmup_then_cosine_or_constant():
    with pytest.raises(ValueError, match="warmup"):
        FitConfig(schedule="onecycle", warmup=0.1)
    with pytest.raises(ValueError, match="warmup"):
        FitConfig(schedule="cosine", warmup=1.0)
    for name in ("cosine", "constant"):
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.AdamW([p], lr=1.0)
        sched = make_scheduler(opt, name, 1.0, 20, warmup=0.2)
        lrs = []
        for _ in range(20):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        assert lrs[:4] == sorted(lrs[:4]) and lrs[0] < 0.3 and lrs[4] == pytest.approx(1.0)
        if name == "cosine":
            assert lrs[5:] == sorted(lrs[5:], reverse=True) and lrs[-1] < 0.05
        else:
            assert lrs[4:] == pytest.approx([1.0] * 16)


def _mean_logprob(model, windows) -> float:
    with torch.no_grad():
        logp = F.log_softmax(model(windows).logits[:, :-1], -1)
    return float(logp.gather(-1, windows[:, 1:, None]).mean())


def test_teacher_windows_are_seeded_samples_of_the_teacher_and_leave_it_alone():
    teacher = _llama()
    with torch.no_grad():
        teacher.lm_head.weight.mul_(30)  # a peaked next-token distribution: its samples are far from uniform
    teacher.train()
    state = {k: v.clone() for k, v in teacher.state_dict().items()}
    rng = torch.random.get_rng_state()
    windows = teacher_windows(teacher, 5, 12, batch=2, seed=3, progress=False)

    assert windows.shape == (5, 12) and windows.dtype == torch.long
    assert int(windows.min()) >= 0 and int(windows.max()) < 96
    assert torch.equal(torch.random.get_rng_state(), rng)  # the caller's random stream is untouched
    assert teacher.training and all(torch.equal(v, state[k]) for k, v in teacher.state_dict().items())
    assert torch.equal(teacher_windows(teacher, 5, 12, batch=2, seed=3, progress=False), windows)
    assert not torch.equal(teacher_windows(teacher, 5, 12, batch=2, seed=4, progress=False), windows)
    uniform = torch.randint(0, 96, (5, 12), generator=torch.Generator().manual_seed(0))
    teacher.eval()
    assert _mean_logprob(teacher, windows) > _mean_logprob(teacher, uniform) + 1.0


def test_teacher_windows_need_a_generating_model():
    with pytest.raises(ValueError, match="has no generate"):
        teacher_windows(torch.nn.Linear(4, 4), 2, 8, progress=False)
