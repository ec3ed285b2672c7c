"""``yoso extend``: longer models from shorter YOSO, RoBERTa and BERT checkpoints (positions repeated)."""

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file

import yoso_attention
from tests.models.conftest import tiny_config
from yoso_attention.cli import main
from yoso_attention.models.yoso.convert import extend_checkpoint, hashing_for_length

SIZES = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)


def _saved(model, path):
    model.save_pretrained(path)
    return path


def test_yoso_checkpoint_keeps_every_weight_and_repeats_positions(tmp_path):
    torch.manual_seed(0)
    model = yoso_attention.YosoForSequenceClassification(tiny_config(max_position_embeddings=16))
    src = _saved(model, tmp_path / "src")
    print(extend_checkpoint(src, tmp_path / "dst", 40))
    before, after = load_file(src / "model.safetensors"), load_file(tmp_path / "dst" / "model.safetensors")
    assert before.keys() == after.keys()
    key = "yoso.embeddings.position_embeddings.weight"
    for name in before:
        if name != key:
            assert torch.equal(before[name], after[name]), name
    old, new = before[key], after[key]
    assert new.shape == (42, 32) and torch.equal(new[:2], old[:2])
    for pos in range(40):  # position p of the new model is trained position p mod 16
        assert torch.equal(new[2 + pos], old[2 + pos % 16])
    loaded = yoso_attention.YosoForSequenceClassification.from_pretrained(tmp_path / "dst")
    assert loaded.config.max_position_embeddings == 40 and loaded.config.num_labels == 3
    loaded(torch.randint(3, 99, (1, 40)))


def test_the_length_rule_adds_a_bit_of_tau_per_doubling_and_keeps_misses_rare():
    assert hashing_for_length(8, 32, 128, 128) == hashing_for_length(8, 32, 128, 64) == (8, 32)
    assert hashing_for_length(8, 4, 128, 128) == (8, 4)  # not longer: not even m is raised
    assert [hashing_for_length(8, 32, 128, n)[0] for n in (256, 512, 1024, 4096, 8192)] == [9, 10, 11, 13, 14]
    tau, m = hashing_for_length(8, 4, 128, 4096)  # own collision 0.91^13 = 0.293 a hash: m = 4 would miss 25%
    assert (tau, m) == (13, 20) and (1 - 0.91**13) ** m < 1e-3 < (1 - 0.91**13) ** (m - 1)
    assert hashing_for_length(8, 32, 128, 4096, max_hash_code_len=10) == (10, 32)  # the fast hash's limit
    assert hashing_for_length(12, 32, 128, 4096, max_hash_code_len=8)[0] == 12  # never lowered


def test_extending_a_yoso_model_applies_the_length_rule_unless_told(tmp_path, capsys):
    for fast in (True, False):
        config = tiny_config(max_position_embeddings=16, hash_code_len=4, num_hash=2, use_fast_hash=fast)
        src = _saved(yoso_attention.YosoModel(config), tmp_path / f"src-{fast}")  # head dim 8
        assert main(["extend", str(src), str(tmp_path / f"rule-{fast}"), "--max-length", "1024"]) == 0
        assert "tau 4 -> " in capsys.readouterr().out
        rule = json.loads((tmp_path / f"rule-{fast}" / "config.json").read_text())
        # 16 -> 1024 tokens: tau 4 + 6, capped at the head dim (8) for the fast hash; m for misses < 1e-3
        assert (rule["hash_code_len"], rule["num_hash"]) == ((8, 11) if fast else (10, 15))
    assert main(["extend", str(src), str(tmp_path / "told"), "--max-length", "256", "--hash-code-len", "5",
                 "--num-hash", "3"]) == 0  # fmt: skip
    told = json.loads((tmp_path / "told" / "config.json").read_text())
    assert (told["hash_code_len"], told["num_hash"]) == (5, 3)
    assert main(["extend", str(src), str(tmp_path / "tau"), "--max-length", "256", "--hash-code-len", "5"]) == 0
    tau_only = json.loads((tmp_path / "tau" / "config.json").read_text())
    assert (tau_only["hash_code_len"], tau_only["num_hash"]) == (5, 8)  # m for misses < 1e-3 at the tau given
    assert (0.3760**8 < 1e-3 < 0.3760**7) and abs(1 - 0.91**5 - 0.3760) < 1e-4
    fast_src = tmp_path / "src-True"
    assert main(["extend", str(fast_src), str(tmp_path / "bad"), "--max-length", "32", "--hash-code-len", "9"]) == 2
    assert "--hash-code-len 9: this model hashes with the fast hash, which allows at most" in capsys.readouterr().err
    for flag in ("--hash-code-len", "--num-hash"):
        assert main(["extend", str(src), str(tmp_path / "bad"), "--max-length", "32", flag, "0"]) == 2
        assert f"{flag} must be a positive integer, got 0" in capsys.readouterr().err


def test_extending_a_softmax_baseline_leaves_its_unused_hashing_alone(tmp_path):
    from yoso_attention.training.softmax import use_softmax_attention

    model = yoso_attention.YosoModel(tiny_config(max_position_embeddings=16, hash_code_len=4, num_hash=2))
    use_softmax_attention(model)
    note = extend_checkpoint(_saved(model, tmp_path / "src"), tmp_path / "dst", 1024)
    config = json.loads((tmp_path / "dst" / "config.json").read_text())
    assert (config["hash_code_len"], config["num_hash"], config["attention_kind"]) == (4, 2, "softmax")
    assert "softmax attention" in note and "tau" not in note


@pytest.mark.parametrize("kind", ["roberta", "bert"])
def test_encoder_checkpoint_becomes_a_yoso_masked_lm_that_transformers_loads(tmp_path, kind):
    torch.manual_seed(0)
    if kind == "roberta":
        config = transformers.RobertaConfig(**SIZES, max_position_embeddings=18, pad_token_id=1, type_vocab_size=1)
        source = transformers.RobertaForMaskedLM(config)
        prefix, first = "roberta", 2
    else:
        config = transformers.BertConfig(**SIZES, max_position_embeddings=16, pad_token_id=0)
        source = transformers.BertForMaskedLM(config)
        prefix, first = "bert", 0
    src = _saved(source, tmp_path / "src")
    assert main(["extend", str(src), str(tmp_path / "dst"), "--max-length", "40"]) == 0
    yoso = transformers.YosoForMaskedLM.from_pretrained(tmp_path / "dst").eval()
    ours = yoso_attention.YosoForMaskedLM.from_pretrained(tmp_path / "dst").eval()
    src_state, dst_state = source.state_dict(), yoso.state_dict()
    for name, value in src_state.items():
        if name.startswith(prefix + ".encoder.") or (name.startswith(prefix + ".embeddings.") and "position" not in name):
            assert torch.equal(dst_state["yoso." + name[len(prefix) + 1 :]], value), name
    table = dst_state["yoso.embeddings.position_embeddings.weight"]
    trained = src_state[f"{prefix}.embeddings.position_embeddings.weight"][first : first + 16]
    assert table.shape == (42, 32) and torch.equal(table[2:18], trained) and torch.equal(table[18:34], trained)
    head = "lm_head.dense.weight" if kind == "roberta" else "cls.predictions.transform.dense.weight"
    assert torch.equal(dst_state["cls.predictions.transform.dense.weight"], src_state[head])
    ids = torch.randint(3, 99, (1, 40))
    assert torch.allclose(ours(ids).logits, yoso(ids).logits, atol=1e-5)
    written = json.loads((tmp_path / "dst" / "config.json").read_text())
    assert written["model_type"] == "yoso" and "hash_code_len" not in written  # YOSO's defaults: never trained
    assert main(["extend", str(src), str(tmp_path / "told"), "--max-length", "40", "--hash-code-len", "7"]) == 0
    assert json.loads((tmp_path / "told" / "config.json").read_text())["hash_code_len"] == 7


def test_bad_sources_and_existing_destination(tmp_path, capsys):
    assert main(["extend", str(tmp_path / "nope"), str(tmp_path / "dst"), "--max-length", "8"]) == 2
    assert "no config.json" in capsys.readouterr().err
    src = _saved(transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2)), tmp_path / "g")
    assert main(["extend", str(src), str(tmp_path / "dst"), "--max-length", "8"]) == 2
    assert "expected a yoso, roberta or bert checkpoint" in capsys.readouterr().err
    src = _saved(yoso_attention.YosoModel(tiny_config()), tmp_path / "y")
    (tmp_path / "taken").mkdir()
    assert main(["extend", str(src), str(tmp_path / "taken"), "--max-length", "8"]) == 2
    assert "exists" in capsys.readouterr().err
