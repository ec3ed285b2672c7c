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
    ({"input_ids": torch.ones(2, 4, dtype=torch.long), "attention_mask": torch.full((2, 4), 2)},
     r"attention_mask must hold only 0 \(padding\) and 1"),
    ({"input_ids": torch.ones(2, 4, dtype=torch.long), "token_type_ids": torch.zeros(2, 3, dtype=torch.long)},
     r"token_type_ids has shape \(2, 3\), expected \(2, 4\)"),
    ({"input_ids": torch.ones(2, 4, dtype=torch.long), "token_type_ids": torch.full((2, 4), 5)},
     r"token_type_ids has values in \[5, 5\], expected \[0, 2\)"),
    ({"input_ids": torch.ones(2, 4, dtype=torch.long), "position_ids": torch.full((2, 4), 66)},
     r"position_ids has values in \[66, 66\], expected \[0, 66\)"),
    ({"input_ids": torch.ones(2, 4, dtype=torch.long), "position_ids": torch.full((2, 4), -1)},
     r"position_ids has values in \[-1, -1\], expected \[0, 66\)"),
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
    ({"hidden_size": 30}, r"hidden_size \(30\) must be a multiple of num_attention_heads \(4\)"),
    ({"hash_code_len": 0}, r"hash_code_len must be in \[1, 20\], got 0"),
    ({"hash_code_len": 21}, r"hash_code_len must be in \[1, 20\], got 21"),
    ({"num_hash": 0}, "num_hash must be >= 1, got 0"),
    ({"conv_window": 4}, "conv_window must be a positive odd integer or None, got 4"),
    ({"hidden_dropout_prob": 1.5}, r"hidden_dropout_prob must be in \[0, 1\], got 1.5"),
    ({"add_cross_attention": True}, "add_cross_attention=True is not supported: YOSO is an encoder-only model"),
    ({"chunk_size_feed_forward": -1}, "chunk_size_feed_forward must be >= 0"),
    ({"classifier_pooling": "max"}, r"classifier_pooling must be one of \('cls', 'mean'\), got 'max'"),
])  # fmt: skip
def test_invalid_config_values_are_rejected_when_a_model_is_built(overrides, match):
    config = tiny_config(**overrides)  # accepted, as transformers accepts it
    for cls in (yoso_attention.YosoModel, yoso_attention.YosoForSequenceClassification):
        with pytest.raises(ValueError, match=match):
            cls(config)


def test_a_config_that_transformers_saves_loads_here(tmp_path):
    import transformers

    transformers.YosoConfig(hidden_size=32).save_pretrained(tmp_path)  # its 12 heads do not divide 32
    config = yoso_attention.YosoConfig.from_pretrained(tmp_path)
    assert (config.hidden_size, config.num_attention_heads) == (32, 12)
    with pytest.raises(ValueError, match=r"hidden_size \(32\) must be a multiple of num_attention_heads \(12\)"):
        yoso_attention.YosoModel(config)


def test_config_defaults_are_those_of_the_public_checkpoint():
    cfg = yoso_attention.YosoConfig()
    assert (cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (50265, 768, 12, 12)
    assert (cfg.intermediate_size, cfg.hidden_act, cfg.max_position_embeddings) == (3072, "gelu", 4096)
    assert (cfg.hidden_dropout_prob, cfg.attention_probs_dropout_prob, cfg.type_vocab_size) == (0.1, 0.1, 1)
    assert (cfg.initializer_range, cfg.layer_norm_eps, cfg.use_expectation) == (0.02, 1e-12, True)
    assert (cfg.hash_code_len, cfg.num_hash, cfg.conv_window, cfg.use_fast_hash) == (9, 64, None, True)
    assert (cfg.lsh_backward, cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id) == (True, 1, 0, 2)
