"""``yoso train --task mlm``: packing, masking, metrics, resume and bad input; ``yoso predict`` fills <mask>."""

import json
import math
import random

import pytest
import torch

from tests.cli.test_cli import yoso
from yoso_attention.cli import main
from yoso_attention.data.mlm import MlmVocab, mask_tokens, pack_blocks, read_documents

WORDS = "the cat sat on a mat while dogs ran in the park and birds sang over green trees".split()


def corpus(path, docs=60, seed=0):
    rng = random.Random(seed)
    text = "\n\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 30))) for _ in range(docs))
    path.write_text(text + "\n")
    return path


def mlm_args(tmp_path, out="run", steps=6, extra=()):
    return ["train", "--task", "mlm", "--train-file", str(corpus(tmp_path / "corpus.txt")), "--max-length", "48",
            "--hidden-size", "32", "--num-layers", "1", "--num-heads", "2", "--intermediate-size", "32",
            "--batch-size", "4", "--num-hash", "4", "--max-steps", str(steps), "--warmup-steps", "1",
            "--eval-every", "3", "--save-every", "3", "--output-dir", str(tmp_path / out), *extra]  # fmt: skip


def test_txt_and_jsonl_documents(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_text("first doc\nsecond line\n\n\n\nsecond doc\n")
    assert read_documents(txt) == ["first doc\nsecond line", "second doc"]
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text('{"text": "one"}\n\n{"text": "two"}\n')
    assert read_documents(jsonl) == ["one", "two"]


def test_blocks_are_packed_and_framed():
    vocab = MlmVocab(size=20, pad_id=0, mask_id=19, cls_id=1, sep_id=2)
    blocks = pack_blocks(["ab", "cde"], lambda t: [ord(c) - 90 for c in t], vocab, 4, "x")
    assert blocks == [[1, 7, 8, 2], [1, 2, 9, 2], [1, 10, 11, 2]]  # docs joined by [sep], each block [cls] .. [sep]


def test_masking_follows_the_bert_recipe():
    vocab = MlmVocab(size=1000, pad_id=0, mask_id=999, cls_id=1, sep_id=2)
    ids = torch.randint(3, 999, (64, 512))
    ids[:, 0], ids[:, -1] = 1, 2
    masked, labels = mask_tokens(ids, vocab, torch.Generator().manual_seed(0))
    chosen = labels != -100
    assert abs(chosen.float().mean() - 0.15) < 0.005 and not chosen[:, [0, -1]].any()
    assert torch.equal(labels[chosen], ids[chosen]) and torch.equal(masked[~chosen], ids[~chosen])
    as_mask = (masked[chosen] == 999).float().mean()
    unchanged = (masked[chosen] == ids[chosen]).float().mean()
    assert abs(as_mask - 0.8) < 0.02 and abs(unchanged - 0.1) < 0.02  # (random ids rarely equal the original)


def test_train_mlm_writes_metrics_and_predict_fills_masks(tmp_path):
    assert main(mlm_args(tmp_path)) == 0
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["task"] == "mlm" and summary["steps"] == 6
    assert summary["test_perplexity"] == pytest.approx(math.exp(summary["test_loss"]))
    assert summary["test_accuracy"] > 0.05  # 6 steps learn the most frequent bytes (space, e, a ...)
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"eval"' in line]
    assert [e["step"] for e in evals] == [3, 6] and all("perplexity" in e for e in evals)
    out = yoso("predict", str(run / "last"), cwd=tmp_path, input="the cat <mask>at on a mat\n")
    prediction = json.loads(out.stdout)["predictions"]
    assert len(prediction) == 3 and all(len(p["token"]) >= 1 for p in prediction)


@pytest.mark.parametrize("content,message", [
    ("\n\n   \n", "empty corpus"),
    ("just a few words\n", "fewer than one block of --max-length 48"),
])  # fmt: skip
def test_bad_corpus_is_reported(tmp_path, capsys, content, message):
    args = mlm_args(tmp_path)
    (tmp_path / "bad.txt").write_text(content)
    args[args.index("--train-file") + 1] = str(tmp_path / "bad.txt")
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_tokenizer_without_mask_token_is_rejected(tmp_path, capsys):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([" ".join(WORDS)] * 5, trainers.BpeTrainer(vocab_size=60, special_tokens=["<unk>", "<pad>"]))
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>").save_pretrained(tmp_path / "tok")
    assert main([*mlm_args(tmp_path), "--tokenizer", str(tmp_path / "tok")]) == 2
    assert "has no mask token" in capsys.readouterr().err


def test_max_length_beyond_the_model_needs_repeat_positions_or_extend(tmp_path, capsys):
    assert main(mlm_args(tmp_path, out="short", steps=1)) == 0
    longer = [*mlm_args(tmp_path, out="long", steps=1), "--max-length", "96", "--init-from",
              str(tmp_path / "short" / "last")]  # fmt: skip
    assert main(longer) == 2
    err = capsys.readouterr().err
    assert "exceeds the 48 positions" in err and "--repeat-positions" in err and "yoso extend" in err
    assert main([*longer, "--repeat-positions"]) == 0
    assert "48 -> 96 positions" in capsys.readouterr().err
    assert json.loads((tmp_path / "long" / "last" / "config.json").read_text())["max_position_embeddings"] == 96


def test_hub_id_fails_at_once_offline(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main([*mlm_args(tmp_path), "--init-from", "nobody/not-a-model-xyz"]) == 2
    err = capsys.readouterr().err
    assert "--init-from 'nobody/not-a-model-xyz'" in err and "pass its directory" in err


def test_continued_pretraining_of_an_extended_model_beats_scratch(tmp_path):
    from yoso_attention.models.yoso.convert import extend_checkpoint

    assert main(mlm_args(tmp_path, out="short", steps=60, extra=["--max-length", "24", "--lr", "3e-3"])) == 0
    extend_checkpoint(tmp_path / "short" / "last", tmp_path / "extended", 48)
    budget = ["--lr", "3e-3", "--eval-every", "10", "--save-every", "10"]
    assert main(mlm_args(tmp_path, out="continued", steps=10, extra=[*budget, "--init-from",
                                                                      str(tmp_path / "extended")])) == 0  # fmt: skip
    assert main(mlm_args(tmp_path, out="scratch", steps=10, extra=budget)) == 0
    loss = {run: json.loads((tmp_path / run / "summary.json").read_text())["test_loss"] for run in ("continued", "scratch")}
    assert loss["continued"] < loss["scratch"] - 0.1, loss
