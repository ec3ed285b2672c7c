"""The models under torch.compile(fullgraph=True) and torch.export: the ops are torch.library operators with
fake implementations and registered autograd, so the whole model is one graph, in both attention modes, and it
gives the eager results (the hash functions are drawn from the global RNG inside the graph)."""

import pytest
import torch

import yoso_attention
from tests.conftest import rel_err
from tests.models.conftest import HEADS, make_inputs, tiny_config

MODES = pytest.mark.parametrize("use_expectation", [True, False], ids=["expectation", "sampling"])


def first_tensor(output):
    return next(output[key] for key in ("loss", "last_hidden_state", "logits", "start_logits") if output.get(key) is not None)


def run(model, inputs, seed=3):
    torch.manual_seed(seed)
    return first_tensor(model(**inputs))


@MODES
@pytest.mark.parametrize("name", HEADS)
def test_fullgraph_compile_gives_eager_outputs_and_gradients(name, use_expectation):
    torch.manual_seed(0)
    model = getattr(yoso_attention, name)(tiny_config(use_expectation=use_expectation, conv_window=3)).train()
    assert_compiled_gradients_are_eager(model, name)


def test_fullgraph_compile_with_recomputed_codes_gives_eager_gradients():
    """Eager mode keeps the generator's state to draw the hash functions again in backward; a graph cannot read it
    and keeps the draw: the same gradients either way."""
    torch.manual_seed(0)
    config = tiny_config(use_expectation=False, recompute_hash_codes=True)
    assert_compiled_gradients_are_eager(yoso_attention.YosoModel(config).train(), "YosoModel", length=60)  # codes > 5 KB


def assert_compiled_gradients_are_eager(model, name, length=None):
    inputs, labels = make_inputs(name) if length is None else make_inputs(name, n=length)
    inputs = {**inputs, **labels, "attention_mask": torch.ones(inputs["input_ids"].shape, dtype=torch.long)}
    inputs["attention_mask"][..., -4:] = 0
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")  # AOT autograd: fakes and autograd formulas
    grads = []
    for fn in (model, compiled):
        model.zero_grad()
        out = run(fn, inputs)
        (out if out.dim() == 0 else out.pow(2).mean()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        grads[-1]["out"] = out.detach()
    eager, traced = grads
    assert eager.keys() == traced.keys() and len(eager) > 10
    for key in eager:
        assert rel_err(traced[key], eager[key]) < 1e-5, key


@MODES
def test_inductor_compiles_the_model_and_matches_eager(use_expectation):
    import torch._inductor.config as inductor_config

    torch.manual_seed(0)
    model = yoso_attention.YosoForSequenceClassification(tiny_config(use_expectation=use_expectation)).eval()
    inputs, _ = make_inputs("YosoForSequenceClassification")
    with inductor_config.patch(fallback_random=True):  # eager's RNG, so that sampling draws the same hashes
        compiled = torch.compile(model, fullgraph=True)
        assert rel_err(run(compiled, inputs), run(model, inputs)) < 1e-5


@MODES
@pytest.mark.parametrize("name", HEADS)
def test_export_with_a_dynamic_length_gives_eager_outputs(name, use_expectation):
    torch.manual_seed(0)
    model = getattr(yoso_attention, name)(tiny_config(use_expectation=use_expectation)).eval()
    inputs, _ = make_inputs(name, n=17)
    inputs["attention_mask"] = torch.ones(inputs["input_ids"].shape, dtype=torch.long)
    n = torch.export.Dim("n", min=2, max=64)
    dims = {key: {inputs[key].dim() - 1: n} for key in inputs}
    program = torch.export.export(model, (), kwargs=inputs, dynamic_shapes=dims)
    for length in (17, 30):
        longer, _ = make_inputs(name, n=length, seed=1)
        longer["attention_mask"] = torch.ones(longer["input_ids"].shape, dtype=torch.long)
        longer["attention_mask"][..., -3:] = 0
        assert rel_err(run(program.module(), longer), run(model, longer)) < 1e-5
