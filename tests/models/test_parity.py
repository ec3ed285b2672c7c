"""Parity with transformers' YOSO classes in expectation mode on unpadded inputs: outputs, losses,
hidden states and all parameter gradients, checkpoints loaded both ways."""

import pytest
import torch
import transformers

import yoso_attention
from tests.models.conftest import HEADS, make_inputs, tiny_config


def first_tensor(output):
    """last_hidden_state, logits or start_logits: the main output of any YOSO class."""
    for key in ("last_hidden_state", "logits", "start_logits"):
        if output.get(key) is not None:
            return output[key]
    raise KeyError(list(output.keys()))


@pytest.mark.parametrize("conv_window", [None, 3], ids=["noconv", "conv3"])
@pytest.mark.parametrize("name", HEADS)
def test_outputs_losses_and_gradients_match_transformers(name, conv_window, hf_and_ours):
    ref, ours = hf_and_ours(name, conv_window=conv_window)
    assert dict((k, v.shape) for k, v in ours.state_dict().items()) == {
        k: v.shape for k, v in ref.state_dict().items()
    }
    ref.train(False), ours.train(False)
    inputs, labels = make_inputs(name)
    out_ref = ref(**inputs, **labels, output_hidden_states=True)
    out = ours(**inputs, **labels, output_hidden_states=True)
    assert list(out.keys()) == list(out_ref.keys())
    for key in out_ref.keys():
        got, want = out[key], out_ref[key]
        pairs = zip(got, want, strict=True) if isinstance(want, tuple) else [(got, want)]
        for g, w in pairs:
            assert g.shape == w.shape, key
            assert (g - w).abs().max() <= 1e-5, key
    target = out_ref.loss if out_ref.get("loss") is not None else first_tensor(out_ref).pow(2).mean()
    mine = out.loss if out.get("loss") is not None else first_tensor(out).pow(2).mean()
    target.backward()
    mine.backward()
    grads_ref = dict(ref.named_parameters())
    for pname, p in ours.named_parameters():
        g_ref = grads_ref[pname].grad
        if g_ref is None:
            assert p.grad is None or p.grad.abs().max() == 0, pname
            continue
        assert (p.grad - g_ref).abs().max() <= 1e-5 * max(1.0, g_ref.abs().max().item()), pname


def test_position_ids_and_inputs_embeds_match(hf_and_ours):
    ref, ours = hf_and_ours("YosoModel")
    ref.eval(), ours.eval()
    ids = torch.randint(3, 99, (2, 9))
    pos = torch.randint(0, 66, (2, 9))
    assert (ours(ids, position_ids=pos).last_hidden_state - ref(ids, position_ids=pos).last_hidden_state).abs().max() < 1e-5
    emb = torch.randn(2, 9, 32)
    assert (ours(inputs_embeds=emb).last_hidden_state - ref(inputs_embeds=emb).last_hidden_state).abs().max() < 1e-5


def test_chunk_size_feed_forward_matches_transformers(hf_and_ours):
    ref, ours = hf_and_ours("YosoModel", chunk_size_feed_forward=5)
    ref.eval(), ours.eval()
    ids = torch.randint(3, 99, (2, 15))  # transformers needs a multiple of the chunk size; ours does not
    assert (ours(ids).last_hidden_state - ref(ids).last_hidden_state).abs().max() < 1e-5


@pytest.mark.parametrize("name", HEADS)
def test_our_checkpoint_loads_into_transformers(name, tmp_path):
    torch.manual_seed(0)
    ours = getattr(yoso_attention, name)(tiny_config(conv_window=5)).eval()
    ours.save_pretrained(tmp_path)
    ref = getattr(transformers, name).from_pretrained(tmp_path).eval()
    inputs, _ = make_inputs(name)
    assert (first_tensor(ours(**inputs)) - first_tensor(ref(**inputs))).abs().max() <= 1e-5


def test_pytorch_bin_checkpoint_loads(tmp_path):
    torch.manual_seed(0)
    ref = transformers.YosoForSequenceClassification(tiny_config(transformers.YosoConfig)).eval()
    ref.config.save_pretrained(tmp_path)
    torch.save(ref.state_dict(), tmp_path / "pytorch_model.bin")
    ours = yoso_attention.YosoForSequenceClassification.from_pretrained(tmp_path).eval()
    ids = torch.randint(3, 99, (2, 9))
    assert (ours(ids).logits - ref(ids).logits).abs().max() <= 1e-5


def test_config_json_like_the_public_checkpoint_loads(tmp_path):
    config = transformers.YosoConfig()  # uw-madison/yoso-4096 defaults
    config.save_pretrained(tmp_path)
    ours = yoso_attention.YosoConfig.from_pretrained(tmp_path)
    assert ours.model_type == "yoso"
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "max_position_embeddings", "hash_code_len",
                "num_hash", "use_fast_hash", "lsh_backward", "use_expectation", "conv_window", "pad_token_id"):  # fmt: skip
        assert getattr(ours, key) == getattr(config, key), key


@pytest.mark.parametrize("problem", ["regression", "multi_label_classification"])
def test_sequence_classification_problem_types_match(problem, hf_and_ours):
    num_labels = 1 if problem == "regression" else 3
    ref, ours = hf_and_ours("YosoForSequenceClassification", num_labels=num_labels, problem_type=problem)
    ref.eval(), ours.eval()
    ids = torch.randint(3, 99, (4, 11))
    labels = torch.randn(4) if problem == "regression" else (torch.rand(4, 3) > 0.5).float()
    assert abs(ours(ids, labels=labels).loss.item() - ref(ids, labels=labels).loss.item()) < 1e-6
