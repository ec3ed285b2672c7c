import os

import pytest
import torch

import yoso_attention
from tests.models.conftest import tiny_config


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    yoso_attention.YosoModel(tiny_config()).save_pretrained(tmp_path)
    return tmp_path


def test_truncated_safetensors_gives_a_clear_error(saved):
    path = saved / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(OSError, match="truncated or corrupt"):
        yoso_attention.YosoModel.from_pretrained(saved)


def test_corrupt_bin_gives_a_clear_error(saved):
    os.remove(saved / "model.safetensors")
    (saved / "pytorch_model.bin").write_bytes(b"not a checkpoint" * 8)
    with pytest.raises(OSError, match="truncated or corrupt"):
        yoso_attention.YosoModel.from_pretrained(saved)


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch yoso-pwned",))


def test_loading_never_executes_code_from_a_pickle(saved, monkeypatch):
    monkeypatch.chdir(saved)
    os.remove(saved / "model.safetensors")
    torch.save({"embeddings.word_embeddings.weight": _Payload()}, saved / "pytorch_model.bin")
    with pytest.raises(OSError):
        yoso_attention.YosoModel.from_pretrained(saved)
    assert not (saved / "yoso-pwned").exists()


def test_missing_and_unexpected_keys_are_reported(saved):
    from safetensors.torch import load_file, save_file

    weights = load_file(saved / "model.safetensors")
    weights.pop("encoder.layer.0.attention.self.query.weight")
    weights["encoder.layer.0.extra"] = torch.zeros(2)
    save_file(weights, saved / "model.safetensors", metadata={"format": "pt"})
    _, info = yoso_attention.YosoModel.from_pretrained(saved, output_loading_info=True)
    assert "encoder.layer.0.attention.self.query.weight" in info["missing_keys"]
    assert "encoder.layer.0.extra" in info["unexpected_keys"]
