import pytest
import torch

import yoso_attention
from tests.models.conftest import tiny_config


@pytest.fixture(scope="module")
def model():
    return yoso_attention.YosoModel(tiny_config()).eval()


@pytest.mark.parametrize("kwargs,match", [
    ({}, "exactly one of input_ids and inputs_embeds, got neither"),
    ({"input_ids": torch.ones(1, 4, dtype=torch.long), "inputs_embeds": torch.zeros(1, 4, 32)}, "got both"),
    ({"input_ids": torch.ones(1, 65, dtype=torch.long)}, "sequence length 65 exceeds max_position_embeddings=64"),
    ({"input_ids": torch.ones(1, 4, 2, dtype=torch.long)}, r"input_ids must have shape \(batch, n\)"),
    ({"input_ids": torch.full((1, 4), 99)}, r"input_ids has values in \[99, 99\], expected \[0, 99\)"),
    ({"input_ids": torch.ones(2, 4, dtype=torch.long), "attention_mask": torch.ones(2, 5)},
     r"attention_mask has shape \(2, 5\), expected \(2, 4\)"),
    ({"input_ids": torch.ones(2, 4, dtype=torch.long), "attention_mask": torch.full((2, 4), 2)}, "only 0"),
    ({"input_ids": torch.ones(2, 4, dtype=torch.long), "token_type_ids": torch.zeros(2, 3, dtype=torch.long)},
     r"token_type_ids has shape \(2, 3\), expected \(2, 4\)"),
    ({"input_ids": torch.ones(2, 4, dtype=torch.long), "token_type_ids": torch.full((2, 4), 5)}, "token_type_ids has values"),
    ({"inputs_embeds": torch.zeros(2, 4, 31)}, r"inputs_embeds must have shape \(batch, n, 32\)"),
])  # fmt: skip
def test_bad_inputs_get_clear_errors(model, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        model(**kwargs)


def test_multiple_choice_checks_rank():
    mc = yoso_attention.YosoForMultipleChoice(tiny_config())
    with pytest.raises(ValueError, match=r"input_ids must have 3 dims \(batch, num_choices, ...\)"):
        mc(input_ids=torch.ones(2, 4, dtype=torch.long))


@pytest.mark.parametrize("overrides,match", [
    ({"hidden_size": 30}, "multiple of num_attention_heads"),
    ({"hash_code_len": 0}, "hash_code_len"),
    ({"hash_code_len": 21}, "hash_code_len"),
    ({"num_hash": 0}, "num_hash"),
    ({"conv_window": 4}, "conv_window must be a positive odd integer"),
    ({"hidden_dropout_prob": 1.5}, "hidden_dropout_prob"),
    ({"add_cross_attention": True}, "encoder-only"),
    ({"chunk_size_feed_forward": -1}, "chunk_size_feed_forward must be >= 0"),
])  # fmt: skip
def test_invalid_config_values_are_rejected(overrides, match):
    with pytest.raises(Exception, match=match):
        tiny_config(**overrides)


def test_config_defaults_are_those_of_the_public_checkpoint():
    cfg = yoso_attention.YosoConfig()
    assert (cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (50265, 768, 12, 12)
    assert (cfg.intermediate_size, cfg.hidden_act, cfg.max_position_embeddings) == (3072, "gelu", 4096)
    assert (cfg.hidden_dropout_prob, cfg.attention_probs_dropout_prob, cfg.type_vocab_size) == (0.1, 0.1, 1)
    assert (cfg.initializer_range, cfg.layer_norm_eps, cfg.use_expectation) == (0.02, 1e-12, True)
    assert (cfg.hash_code_len, cfg.num_hash, cfg.conv_window, cfg.use_fast_hash) == (9, 64, None, True)
    assert (cfg.lsh_backward, cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id) == (True, 1, 0, 2)
