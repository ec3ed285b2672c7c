"""classifier_pooling: "cls" (transformers' head) and "mean" over real tokens (the paper's LRA models)."""

import pytest
import torch
import transformers

import yoso_attention
from tests.conftest import rel_err
from tests.models.conftest import padded_run, tiny_config


def _classifier(pooling, **overrides):
    torch.manual_seed(0)
    return yoso_attention.YosoForSequenceClassification(tiny_config(classifier_pooling=pooling, **overrides)).eval()


@pytest.mark.parametrize("use_expectation", [True, False], ids=["expectation", "sampling"])
def test_mean_pooling_of_a_padded_batch_equals_the_unpadded_run(use_expectation):
    model = _classifier("mean", use_expectation=use_expectation)
    out, short = padded_run(lambda ids, mask: model(ids, attention_mask=mask).logits)
    assert rel_err(out, short) < 1e-5


def test_mean_pooling_averages_the_real_tokens_only():
    model = _classifier("mean")
    features = torch.randn(2, 6, 32)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    pooled = model.classifier._pool(features, mask)
    assert torch.allclose(pooled[0], features[0, :3].mean(0)) and torch.allclose(pooled[1], features[1].mean(0))


def test_cls_pooling_is_unchanged_and_matches_transformers(tmp_path):
    torch.manual_seed(0)
    ref = transformers.YosoForSequenceClassification(tiny_config(transformers.YosoConfig)).eval()
    ref.save_pretrained(tmp_path)
    ours = yoso_attention.YosoForSequenceClassification.from_pretrained(tmp_path).eval()
    assert ours.config.classifier_pooling == "cls"
    ids = torch.randint(3, 99, (2, 17))
    assert rel_err(ours(ids).logits, ref(ids).logits) < 1e-5


def test_pooling_saves_and_loads_with_the_checkpoint(tmp_path):
    model = _classifier("mean")
    model.save_pretrained(tmp_path)
    loaded = yoso_attention.YosoForSequenceClassification.from_pretrained(tmp_path).eval()
    ids = torch.randint(3, 99, (2, 17))
    assert loaded.config.classifier_pooling == "mean"
    assert torch.equal(loaded(ids).logits, model(ids).logits)

