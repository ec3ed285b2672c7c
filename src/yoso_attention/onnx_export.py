"""ONNX export: translations of the ``yoso::`` operators into standard ONNX ops.

``torch.onnx.export(..., dynamo=True)`` sees each registered operator as one opaque node; these functions
tell it how to write the node in ONNX (opset 18). YOSO-E (``use_expectation=True``) exports completely: it is
the n x n collision-probability product written as MatMul, Acos and Pow, quadratic like the eager op.

Sampling mode does not export. Its hash functions are drawn from torch's RNG at every call and its
cumulation is a scatter-add into 2^tau buckets per hash function; an ONNX model would need either a
``yoso`` custom-op domain implemented for each runtime (e.g. an onnxruntime custom-op library wrapping the
kernels) or RandomNormal + ScatterElements(reduction="add") translations whose draws no longer follow
torch's generator. Neither exists yet: ``onnx_translations`` refuses a sampling model with that reason.

    from yoso_attention.onnx_export import onnx_translations
    program = torch.onnx.export(model, (input_ids, attention_mask), dynamo=True,
                                custom_translation_table=onnx_translations(model))
"""

from __future__ import annotations

import math

import torch

from .ops.normalize import NORM_EPS


def _unit_rows(op, x):
    """(x / max(|x|, eps), max(|x|, eps)) over the last axis, as ``yoso::normalize_rows``."""
    norm = op.Max(op.ReduceL2(x, op.Constant(value_ints=[-1]), keepdims=1), op.Constant(value_float=NORM_EPS))
    return op.Div(x, norm), norm


def _translations() -> dict:
    from onnxscript import opset18 as op  # the exporter's own dependency: imported only when exporting

    def normalize_rows(x):
        return _unit_rows(op, x)

    def expectation(q, k, v, q_mask, k_mask, tau: int, exact_grad: bool):
        # q (B, L, d), k (B, S, d), v (B, S, dv) float32; q_mask (B, L), k_mask (B, S) bool -> (B, L, dv)
        qn, _ = _unit_rows(op, q)
        kn, _ = _unit_rows(op, k)
        cos = op.MatMul(qn, op.Transpose(kn, perm=[0, 2, 1]))  # (B, L, S)
        cos = op.Clip(cos, op.Constant(value_float=-1.0), op.Constant(value_float=1.0))
        base = op.Sub(op.Constant(value_float=1.0), op.Div(op.Acos(cos), op.Constant(value_float=math.pi)))
        prob = op.Pow(base, op.Constant(value_float=float(tau)))  # (B, L, S)
        zero = op.Constant(value_float=0.0)
        prob = op.Where(op.Unsqueeze(k_mask, op.Constant(value_ints=[1])), prob, zero)  # masked keys
        out = op.MatMul(prob, v)  # (B, L, dv)
        return op.Where(op.Unsqueeze(q_mask, op.Constant(value_ints=[-1])), out, zero)  # masked queries: 0

    return {torch.ops.yoso.normalize_rows.default: normalize_rows, torch.ops.yoso.expectation.default: expectation}


def onnx_translations(model: torch.nn.Module | None = None) -> dict:
    """The ``custom_translation_table`` for ``torch.onnx.export(..., dynamo=True)`` of a YOSO model.

    Args:
        model: checked when given: every ``config`` in it must use YOSO-E (``use_expectation=True``) or
            softmax attention; a sampling model raises ValueError (see the module docstring for why).
    """
    config = getattr(model, "config", None)
    if config is not None and not config.use_expectation and getattr(config, "attention_kind", "yoso") != "softmax":
        raise ValueError(
            "model: sampling attention (use_expectation=False) has no ONNX export; export the YOSO-E model "
            "(config.use_expectation=True, the same weights) or use torch.export"
        )
    return _translations()
