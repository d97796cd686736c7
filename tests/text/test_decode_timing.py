"""Prefill/decode timing pieces on a tiny Llama: the decode step is real greedy decoding, bytes are counted right."""

from __future__ import annotations

import pytest
import torch

from lrdlab import Ratio, decompose, make_plan

pytest.importorskip("transformers")
from lrdlab.measure.decode import bytes_per_token, compare_phase, decode_step  # noqa: E402


def test_decode_step_is_greedy_generation_and_restarts_from_the_prompt(tiny_llama):
    model = tiny_llama()
    step = decode_step(model, batch=2, context=8, tokens=5, vocab=256, seed=3)
    ids = torch.randint(0, 256, (2, 8), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        seq = ids
        for _ in range(6):  # greedy without a cache: the prompt's next token, then 5 decode steps
            seq = torch.cat([seq, model(seq).logits[:, -1:].argmax(-1)], 1)
    first, again = step(), step()
    assert torch.equal(first, again)
    assert torch.equal(first[:, 0], seq[:, -1])


def test_bytes_per_token_skips_the_embedding_table_and_compare_runs(tiny_llama):
    model = tiny_llama()
    emb = model.get_input_embeddings().weight
    total = sum(p.numel() for p in model.parameters())
    assert bytes_per_token(model) == 4 * (total - emb.numel())
    low = decompose(model, make_plan(model, Ratio(2)))
    result = compare_phase(model, low, "decode", 1, 2, context=4, rounds=2)
    assert result.rounds == 2 and result.ci_low <= result.speedup <= result.ci_high
    assert 1.5 < result.bytes_ideal < 2.5


def test_a_model_in_gemv_layout_decodes_the_same_saves_and_reloads(tiny_llama, tmp_path):
    from lrdlab.lowrank.gemv_layout import gemv_layout, output_major
    from lrdlab.lowrank.hf_save import load_hf, save_hf

    model = tiny_llama()
    plan = make_plan(model, Ratio(2))
    low = decompose(model, plan)
    ids = torch.randint(0, 256, (1, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = low(ids).logits
    first = decode_step(low, batch=1, context=8, tokens=3, vocab=256)()  # row-major, as decompose built it
    assert gemv_layout(low) and any(output_major(m) for m in low.modules() if isinstance(m, torch.nn.Linear))
    back = load_hf(save_hf(low, plan, tmp_path / "low"))  # safetensors stores the laid-out weights row-major
    with torch.no_grad():
        torch.testing.assert_close(low(ids).logits, reference)
        torch.testing.assert_close(back(ids).logits, reference)
    assert torch.equal(decode_step(back, batch=1, context=8, tokens=3, vocab=256)(), first)  # stored row-major
