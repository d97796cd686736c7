"""Issue 34 item 6, the smaller things: count_flops on HF DeBERTa-v2, a deeply nested plan file at the command line,
a pickle in state_dict.pt, ragged and padded calibration batches, an edited params_after, each one line."""

import json
import warnings

import pytest
import torch
from torch import nn

from lrdlab import Ratio, count_flops, decompose, make_plan
from lrdlab.cli import main
from lrdlab.lowrank.decompose import load_decomposed, save_decomposed

T = pytest.importorskip("transformers")
DEEP = "[" * 100_000 + "]" * 100_000  # deeper than Python's recursion limit


def _one_line(err: Exception) -> str:
    text = str(err)
    assert "\n" not in text
    return text


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 8)).eval()


def _saved(tmp_path):
    model = _net()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = make_plan(model, Ratio(2, min_rank=1))
    save_decomposed(decompose(model, plan), plan, tmp_path)
    return tmp_path


def test_count_flops_on_deberta_v2_with_trainable_parameters():
    model = T.DebertaV2Model(T.DebertaV2Config(vocab_size=50, hidden_size=32, num_hidden_layers=2,
                                               num_attention_heads=2, intermediate_size=64,
                                               max_position_embeddings=32, relative_attention=True,
                                               pos_att_type=["p2c", "c2p"])).train()
    flops = count_flops(model, {"input_ids": torch.randint(0, 50, (1, 8))})
    assert flops > 2 * 8 * 2 * (4 * 32 * 32 + 2 * 32 * 64)  # at least the Linear layers of both blocks
    assert model.training and all(p.requires_grad for p in model.parameters())  # restored


def test_a_deeply_nested_plan_file_is_one_line_at_the_command_line(tmp_path, capsys):
    deep = tmp_path / "plan.json"
    deep.write_text(DEEP)
    assert main(["stats", "resnet20", "--plan", str(deep)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err and "nested too deeply" in err


def test_a_pickle_in_state_dict_pt_is_one_line(tmp_path):
    directory = _saved(tmp_path)
    state = torch.load(directory / "state_dict.pt", weights_only=True)
    state["extra"] = {"an": object()}  # not a tensor: loading it would run pickle code
    torch.save(state, directory / "state_dict.pt")
    with pytest.raises(ValueError) as err:
        load_decomposed(directory, _net())
    assert "holds more than tensors" in _one_line(err.value)


def test_an_edited_params_after_is_refused_on_load(tmp_path):
    directory = _saved(tmp_path)
    data = json.loads((directory / "plan.json").read_text())
    row = next(r for r in data["layers"] if r["method"])
    row["params_after"] -= 100
    (directory / "plan.json").write_text(json.dumps(data))
    with pytest.raises(ValueError) as err:
        load_decomposed(directory, _net())
    assert "the plan file was edited" in _one_line(err.value)


def _llama():
    torch.manual_seed(0)
    return T.LlamaForCausalLM(T.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                            num_attention_heads=2, num_key_value_heads=2,
                                            max_position_embeddings=32)).eval()


def test_ragged_and_padded_calibration_batches_name_the_same_fix():
    model = _llama()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = make_plan(model, Ratio(2, min_rank=1))
    messages = []
    padded = {"input_ids": torch.ones(2, 4, dtype=torch.long), "attention_mask": torch.tensor([[1] * 4, [1, 1, 0, 0]])}
    for batch in ([[1, 2, 3], [4, 5]], padded):
        with pytest.raises(ValueError) as err:
            decompose(model, plan, calibration=[batch])
        messages.append(_one_line(err.value))
    assert "ragged" in messages[0] and "padded" in messages[1]
    for text in messages:
        assert "one length without padding" in text and "cut or pack" in text and "attention_mask (0" not in text


def test_a_deeply_nested_hf_config_is_one_line(tmp_path):
    from lrdlab.lowrank.hf_save import WEIGHTS, load_hf

    (tmp_path / "config.json").write_text(DEEP)
    (tmp_path / WEIGHTS).write_bytes(b"")
    with pytest.raises(ValueError) as err:
        load_hf(tmp_path)
    assert "is not a JSON config" in _one_line(err.value)
