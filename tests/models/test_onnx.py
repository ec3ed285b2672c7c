"""ONNX export (torch.onnx.export(dynamo=True) with ``onnx_translations``): YOSO-E models export with a dynamic
length and onnxruntime gives eager's outputs on padded batches of other lengths; sampling models are refused."""

import pytest
import torch

import yoso_attention
from tests.models.conftest import HEADS, make_inputs, tiny_config
from yoso_attention.onnx_export import onnx_translations

ort = pytest.importorskip("onnxruntime")  # in the test extra; skipped only where it has no wheel


def padded_inputs(name, n, seed):
    inputs, _ = make_inputs(name, n=n, seed=seed)
    inputs["attention_mask"] = torch.ones(inputs["input_ids"].shape, dtype=torch.long)
    inputs["attention_mask"][..., 1, n // 2 :] = 0  # second sequence (choice) half padding
    return inputs


@pytest.mark.parametrize("name", HEADS)
def test_yoso_e_exports_to_onnx_with_a_dynamic_length(name, tmp_path):
    torch.manual_seed(0)
    model = getattr(yoso_attention, name)(tiny_config(use_expectation=True, conv_window=3)).eval()
    inputs = padded_inputs(name, 17, seed=0)
    n = torch.export.Dim("n", min=2, max=64)
    dims = {key: {inputs[key].dim() - 1: n} for key in inputs}
    program = torch.onnx.export(model, (), kwargs=inputs, dynamic_shapes=dims, dynamo=True,
                                custom_translation_table=onnx_translations(model), verbose=False)  # fmt: skip
    program.save(str(tmp_path / "model.onnx"))
    session = ort.InferenceSession(str(tmp_path / "model.onnx"))
    names = [i.name for i in session.get_inputs()]
    assert set(names) == set(inputs)
    for length in (17, 40):
        longer = padded_inputs(name, length, seed=1)
        got = session.run(None, {key: longer[key].numpy() for key in names})
        with torch.no_grad():
            want = model(**longer).to_tuple()
        assert len(got) == len(want)
        for g, w in zip(got, want):
            torch.testing.assert_close(torch.from_numpy(g), w, rtol=1e-4, atol=1e-5)


def test_sampling_models_are_refused_with_the_reason():
    model = yoso_attention.YosoModel(tiny_config(use_expectation=False))
    with pytest.raises(ValueError, match="use_expectation"):
        onnx_translations(model)
