"""Error paths of the command line and the loaders: each bad input gets an error that says what was wrong."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import yoso_attention
from tests.cli.test_cli import write
from tests.cli.test_mlm import mlm_args
from tests.models.conftest import tiny_config
from yoso_attention.cli import main
from yoso_attention.ops import yoso_expectation, yoso_lsh


@pytest.mark.parametrize("op", [yoso_expectation, yoso_lsh], ids=["expectation", "lsh"])
def test_a_mask_needs_queries_and_keys_of_one_length(op):
    q, k, v = torch.randn(1, 5, 8), torch.randn(1, 7, 8), torch.randn(1, 7, 8)
    with pytest.raises(ValueError, match="mask needs q and k of one length \\(self-attention\\); got L=5 and S=7"):
        op(q, k, v, torch.ones(1, 5, dtype=torch.bool))
    assert op(q, k, v, hash_code_len=5).shape == (1, 5, 8)  # without a mask, cross lengths are fine


def test_an_unknown_class_name_is_named(tmp_path, capsys):
    data = write(tmp_path / "train.csv", "text,label\ngood,pos\nbad,neg\n")
    held = write(tmp_path / "eval.csv", "text,label\nso so,meh\n")
    args = ["train", "--task", "text", "--train-file", str(data), "--eval-file", str(held), "--output-dir",
            str(tmp_path / "r")]  # fmt: skip
    assert main(args) == 2
    assert "eval.csv:2: label 'meh' is not one of the class names ['neg', 'pos']" in capsys.readouterr().err


def test_a_tokenizer_larger_than_the_models_vocabulary(tmp_path, capsys):
    model_dir = tmp_path / "small"
    yoso_attention.YosoForMaskedLM(tiny_config(max_position_embeddings=64)).save_pretrained(model_dir)  # 99 ids
    assert main(mlm_args(tmp_path, extra=["--init-from", str(model_dir)])) == 2
    assert f"the tokenizer has 260 ids but the model in {model_dir} only 99" in capsys.readouterr().err


def test_predict_on_a_masked_lm_needs_a_mask(tmp_path, capsys, monkeypatch):
    assert main(mlm_args(tmp_path, steps=1)) == 0
    capsys.readouterr()
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("the cat sat\n"))
    assert main(["predict", str(tmp_path / "run" / "last")]) == 2
    assert "no <mask> in 'the cat sat'; a masked LM fills <mask> tokens" in capsys.readouterr().err


def test_extend_needs_a_position_table(tmp_path, capsys):
    src = tmp_path / "src"
    yoso_attention.YosoModel(tiny_config()).save_pretrained(src)
    weights = load_file(src / "model.safetensors")
    save_file({k: v for k, v in weights.items() if "position_embeddings" not in k}, src / "model.safetensors")
    assert main(["extend", str(src), str(tmp_path / "dst"), "--max-length", "128"]) == 2
    assert "no position table (embeddings.position_embeddings.weight) among the weights" in capsys.readouterr().err
    assert not (tmp_path / "dst").exists()


def test_plot_needs_one_label_per_run(tmp_path, capsys):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        write(tmp_path / name / "metrics.jsonl", json.dumps({"step": 1, "split": "train", "loss": 1.0}) + "\n")
    assert main(["plot", str(tmp_path / "a"), str(tmp_path / "b"), "--labels", "only-one"]) == 2
    assert "--labels has 1 labels for 2 runs; expected one per run" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without CUDA")
def test_device_cuda_without_a_gpu_is_named(tmp_path, capsys):
    assert main(["train", "--device", "cuda", "--max-steps", "1", "--output-dir", str(tmp_path / "r")]) == 2
    assert "--device cuda: torch sees no CUDA device" in capsys.readouterr().err


def test_device_auto_trains_on_the_cpu_here(tmp_path):
    from yoso_attention.training.distributed import training_device

    assert training_device("cpu") == torch.device("cpu")
    assert training_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu", 0 if
                                                   torch.cuda.is_available() else None)  # fmt: skip
