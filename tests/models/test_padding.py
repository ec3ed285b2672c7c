"""Padding equals truncation for every model class, outputs and losses, with batches of mixed lengths.

Each sequence of a padded batch is compared with the same sequence alone, truncated to its length. In sampling
mode the truncated run repeats that sequence over the whole batch: the hash functions of a (batch, head) row
depend on its index and the global seed, not on the length, so every row of the truncated run draws exactly the
hash functions that the padded batch used for the same row.
"""

import pytest
import torch
import torch.nn.functional as F

import yoso_attention
from tests.conftest import rel_err
from tests.models.conftest import tiny_config

WIDTH = 20
LENGTHS = torch.tensor([[11, 20, 6], [3, 17, 9]])  # (batch, choices): multiple choice uses all, others row 0
SEED = 7


def run(model, seed=SEED, **inputs):
    torch.manual_seed(seed)
    return model(**inputs)


def padded_ids(shape, lengths):
    ids = torch.randint(3, 99, shape)
    mask = (torch.arange(shape[-1]) < lengths[..., None]).long()  # (..., WIDTH)
    return ids.masked_fill(mask == 0, 1), mask


def alone(model, ids, length, batch_shape, **kw):
    """The model on ``ids[:length]`` alone, repeated over ``batch_shape`` (see the module docstring)."""
    return run(model, input_ids=ids[:length].expand(*batch_shape, int(length)).contiguous(), **kw)


def model_for(name, use_expectation, **overrides):
    torch.manual_seed(0)
    config = tiny_config(use_expectation=use_expectation, conv_window=3, **overrides)
    return getattr(yoso_attention, name)(config).eval()


MODES = pytest.mark.parametrize("use_expectation", [True, False], ids=["expectation", "sampling"])


@MODES
@pytest.mark.parametrize("name, key", [("YosoModel", "last_hidden_state"), ("YosoForMaskedLM", "logits"),
                                       ("YosoForTokenClassification", "logits")])  # fmt: skip
def test_token_outputs_and_losses(name, key, use_expectation):
    model = model_for(name, use_expectation)
    lengths = LENGTHS[0]
    ids, mask = padded_ids((3, WIDTH), lengths)
    labels = torch.randint(0, 3, (3, WIDTH))  # labels on padding too: they must be ignored
    labels[0, 2] = -100
    kw = {} if name == "YosoModel" else {"labels": labels}
    out = run(model, input_ids=ids, attention_mask=mask, **kw)
    wanted_logits, wanted_labels = [], []
    for r, n in enumerate(lengths.tolist()):
        short = alone(model, ids[r], n, (3,))[key][r]  # (n, ...)
        assert rel_err(out[key][r, :n], short) < 1e-5, r
        wanted_logits.append(short)
        wanted_labels.append(labels[r, :n])
    if name != "YosoModel":
        want = F.cross_entropy(torch.cat(wanted_logits), torch.cat(wanted_labels))
        assert abs(out.loss.item() - want.item()) < 1e-5


@MODES
@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_sequence_classification_logits_and_loss(pooling, use_expectation):
    model = model_for("YosoForSequenceClassification", use_expectation, classifier_pooling=pooling)
    lengths = LENGTHS[0]
    ids, mask = padded_ids((3, WIDTH), lengths)
    labels = torch.tensor([0, 2, 1])
    out = run(model, input_ids=ids, attention_mask=mask, labels=labels)
    short = torch.stack([alone(model, ids[r], n, (3,)).logits[r] for r, n in enumerate(lengths.tolist())])
    assert rel_err(out.logits, short) < 1e-5
    assert abs(out.loss.item() - F.cross_entropy(short, labels).item()) < 1e-5


@MODES
def test_multiple_choice_logits_and_loss(use_expectation):
    model = model_for("YosoForMultipleChoice", use_expectation)
    ids, mask = padded_ids((2, 3, WIDTH), LENGTHS)
    labels = torch.tensor([2, 0])
    out = run(model, input_ids=ids, attention_mask=mask, labels=labels)
    short = torch.tensor([[alone(model, ids[b, c], LENGTHS[b, c], (2, 3)).logits[b, c].item() for c in range(3)]
                          for b in range(2)])  # fmt: skip
    assert rel_err(out.logits, short) < 1e-5
    assert abs(out.loss.item() - F.cross_entropy(short, labels).item()) < 1e-5


@MODES
def test_question_answering_logits_and_loss(use_expectation):
    model = model_for("YosoForQuestionAnswering", use_expectation)
    lengths = LENGTHS[0]
    ids, mask = padded_ids((3, WIDTH), lengths)
    # Row 0: in range; row 1: end beyond the width (clamped, ignored); row 2: start on padding (ignored).
    starts, ends = torch.tensor([2, 4, 8]), torch.tensor([5, 40, 3])
    out = run(model, input_ids=ids, attention_mask=mask, start_positions=starts, end_positions=ends)
    losses = []
    for logits_key, positions in (("start_logits", starts), ("end_logits", ends)):
        terms = []
        for r, n in enumerate(lengths.tolist()):
            short = alone(model, ids[r], n, (3,))[logits_key][r]  # (n,)
            assert rel_err(out[logits_key][r, :n], short) < 1e-5
            if positions[r] < n:  # truncated: a position at or beyond the end is ignored
                terms.append(F.cross_entropy(short[None], positions[r : r + 1]))
        losses.append(torch.stack(terms).mean())
    assert abs(out.loss.item() - (losses[0] + losses[1]).item() / 2) < 1e-5
