"""Validation of the model inputs: each error names the argument, what it got and what it expected.

Checks of shapes and dtypes run everywhere; checks that read tensor values (id ranges, mask values) run in eager
mode only, so that torch.compile and torch.export see no data-dependent branch."""

from __future__ import annotations

import torch

from .configuration_yoso import YosoConfig


def _check_ids(name: str, ids: torch.Tensor, shape: tuple[int, int], upper: int) -> None:
    if ids.dtype not in (torch.long, torch.int, torch.int16, torch.uint8):
        raise TypeError(f"{name} must be an integer tensor, got {ids.dtype}")
    try:
        torch.broadcast_shapes(ids.shape, shape)
        ok = ids.dim() == 2
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(f"{name} has shape {tuple(ids.shape)}, expected {shape}")
    if not torch.compiler.is_compiling() and ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= upper):
        raise ValueError(f"{name} has values in [{int(ids.min())}, {int(ids.max())}], expected [0, {upper})")


def check_model_inputs(
    config: YosoConfig, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds
) -> torch.Tensor | None:
    """Validate the forward arguments of YosoModel; return the padding mask as bool (batch, n), or None
    when there is no padding."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("Specify exactly one of input_ids and inputs_embeds, got " + (
            "both" if input_ids is not None else "neither"))  # fmt: skip
    if input_ids is not None:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, n), got {tuple(input_ids.shape)}")
        _check_ids("input_ids", input_ids, tuple(input_ids.shape), config.vocab_size)
        shape = tuple(input_ids.shape)
    else:
        if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != config.hidden_size:
            raise ValueError(
                f"inputs_embeds must have shape (batch, n, {config.hidden_size}), got {tuple(inputs_embeds.shape)}"
            )
        shape = tuple(inputs_embeds.shape[:2])
    if shape[1] < 1:
        raise ValueError(f"the sequence length must be >= 1, got {shape[1]}")
    if shape[1] > config.max_position_embeddings:
        raise ValueError(
            f"sequence length {shape[1]} exceeds max_position_embeddings={config.max_position_embeddings}; "
            "truncate the input or use a model with more positions"
        )
    if token_type_ids is not None:
        _check_ids("token_type_ids", token_type_ids, shape, config.type_vocab_size)
    if position_ids is not None:
        _check_ids("position_ids", position_ids, shape, config.max_position_embeddings + 2)
    if attention_mask is None:
        return None
    if tuple(attention_mask.shape) != shape:
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected {shape}")
    mask = attention_mask.bool()
    if torch.compiler.is_compiling():  # no checks or branches on tensor values in a compiled or exported graph
        return mask
    if attention_mask.dtype != torch.bool and bool(((attention_mask != 0) & (attention_mask != 1)).any()):
        raise ValueError("attention_mask must hold only 0 (padding) and 1 (real token)")
    return None if bool(mask.all()) else mask
