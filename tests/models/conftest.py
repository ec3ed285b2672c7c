import pytest
import torch
import transformers

import yoso_attention

HEADS = [
    "YosoModel",
    "YosoForMaskedLM",
    "YosoForSequenceClassification",
    "YosoForMultipleChoice",
    "YosoForTokenClassification",
    "YosoForQuestionAnswering",
]


def tiny_config(cls=yoso_attention.YosoConfig, **overrides):
    kw = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
              max_position_embeddings=64, type_vocab_size=2, num_labels=3, hash_code_len=4, num_hash=8)  # fmt: skip
    kw.update(overrides)
    return cls(**kw)


def padded_run(forward, n=20, pad=7, seed=5):
    """(output on n real tokens followed by pad padding tokens, output on the n tokens alone), with the same
    global seed before each call so that sampling mode draws the same hash functions."""
    ids = torch.randint(3, 99, (1, n))
    padded = torch.cat([ids, torch.ones(1, pad, dtype=torch.long)], 1)
    mask = torch.cat([torch.ones(1, n), torch.zeros(1, pad)], 1)
    torch.manual_seed(seed)
    out = forward(padded, mask)
    torch.manual_seed(seed)
    return out, forward(ids, None)


def make_inputs(name, batch=2, n=17, vocab=99, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (batch, 3, n) if name == "YosoForMultipleChoice" else (batch, n)
    inputs = {
        "input_ids": torch.randint(3, vocab, shape, generator=g),
        "token_type_ids": torch.randint(0, 2, shape, generator=g),
    }
    labels = {
        "YosoForMaskedLM": {"labels": torch.randint(0, vocab, shape, generator=g).masked_fill(
            torch.rand(shape, generator=g) < 0.5, -100)},  # fmt: skip
        "YosoForSequenceClassification": {"labels": torch.randint(0, 3, (batch,), generator=g)},
        "YosoForMultipleChoice": {"labels": torch.randint(0, 3, (batch,), generator=g)},
        "YosoForTokenClassification": {"labels": torch.randint(0, 3, shape, generator=g)},
        "YosoForQuestionAnswering": {
            "start_positions": torch.tensor([1, n + 5]),
            "end_positions": torch.tensor([4, 2]),
        },
    }.get(name, {})
    return inputs, labels


@pytest.fixture
def hf_and_ours(tmp_path):
    """Build transformers' model, save it, load ours from the directory."""

    def build(name, **overrides):
        torch.manual_seed(0)
        ref = getattr(transformers, name)(tiny_config(transformers.YosoConfig, **overrides))
        ref.save_pretrained(tmp_path / "hf")
        ours = getattr(yoso_attention, name).from_pretrained(tmp_path / "hf")
        return ref, ours

    return build
