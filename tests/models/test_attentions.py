"""``output_attentions=True`` returns the weights that produced the output: per head, the layer's output is the
row-normalised product of the returned map with the layer's values."""

import pytest
import torch
import torch.nn.functional as F

import yoso_attention
from tests.conftest import rel_err
from tests.models.conftest import tiny_config


@pytest.mark.parametrize("use_expectation", [True, False], ids=["expectation", "sampling"])
def test_maps_times_values_give_each_layers_output(use_expectation):
    model = yoso_attention.YosoModel(tiny_config(use_expectation=use_expectation, hidden_dropout_prob=0.0)).eval()
    ids, mask = torch.randint(3, 99, (2, 10)), torch.ones(2, 10, dtype=torch.long)
    mask[1, 7:] = 0
    seen = []
    for layer in model.encoder.layer:
        layer.attention.self.register_forward_hook(lambda mod, args, out: seen.append((mod, args[0], out[0])))
    torch.manual_seed(3)
    maps = model(ids, attention_mask=mask, output_attentions=True).attentions
    assert len(maps) == len(seen) == 2
    for att, (attention, hidden, context) in zip(maps, seen, strict=True):
        v = attention._split_heads(attention.value(hidden))  # (batch, heads, n, head_dim)
        want = F.normalize(att @ v, dim=-1).transpose(1, 2).flatten(2)  # (batch, n, hidden)
        assert rel_err(context, want) < 1e-5
        assert not torch.equal(att, att.transpose(-1, -2))  # a transposed map would not pass the check above


@pytest.mark.parametrize("use_expectation", [True, False], ids=["expectation", "sampling"])
def test_returned_maps_carry_gradients(use_expectation):
    model = yoso_attention.YosoModel(tiny_config(use_expectation=use_expectation))
    out = model(torch.randint(3, 99, (2, 10)), output_attentions=True)
    for att in out.attentions:
        att.retain_grad()
    out.last_hidden_state.pow(2).sum().backward()
    assert all(att.grad is not None and att.grad.abs().sum() > 0 for att in out.attentions)
    assert model.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0  # through the maps to q
