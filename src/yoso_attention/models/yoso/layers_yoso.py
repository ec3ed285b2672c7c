"""The YOSO encoder: embeddings, YOSO self-attention and post-LayerNorm transformer layers.

Module and parameter names are those of transformers' modeling_yoso, so checkpoints load both ways.
Attention goes through ``yoso_attention.ops``: padding masks are honoured (outputs on real tokens equal
the unpadded run), and sampling mode runs anywhere in linear time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer

from ...ops import hash_codes, yoso_expectation, yoso_lsh
from ...ops.normalize import normalize_rows
from ...ops.reference import expectation_matrix, sampled_collision_weights
from .configuration_yoso import YosoConfig

FFN_CHUNK_FLOATS = 2**22  # 16 MB of fp32 feed-forward activation per chunk


def value_convolution(v: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """YOSO-C's depthwise convolution over positions: v (batch, heads, n, head_dim), weight (heads, 1, window, 1)
    as in nn.Conv2d(heads, heads, (window, 1), padding=(window // 2, 0), groups=heads, bias=False).

    Run as a depthwise conv2d over the hidden_size channels, each head's taps repeated over its dims, in the
    channels-last layout that the (batch, n, hidden) projection output already has: on CPU, mkldnn's kernel with
    `heads` channels took 6-30x as long, forward and backward (20-30% of a 1024-token MQAR training step), and
    its weight gradient was 1.5% off in fp32 at 4096 tokens (this one: 3e-6).
    """
    batch, heads, n, head_dim = v.shape
    window = weight.shape[2]
    channels = v.transpose(1, 2).reshape(batch, n, 1, heads * head_dim).permute(0, 3, 1, 2)  # (batch, hidden, n, 1)
    taps = weight.to(v.dtype).repeat_interleave(head_dim, dim=0)  # (hidden, 1, window, 1); v's dtype, as autocast
    out = F.conv2d(channels, taps, padding=(window // 2, 0), groups=heads * head_dim)  # (batch, hidden, n, 1)
    return out.permute(0, 2, 3, 1).reshape(batch, n, heads, head_dim).transpose(1, 2)  # (batch, heads, n, head_dim)


class YosoEmbeddings(nn.Module):
    """word + position (rows 2 .. n+1, RoBERTa style) + token type, then LayerNorm and dropout."""

    def __init__(self, config: YosoConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings + 2, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.register_buffer(
            "position_ids", torch.arange(config.max_position_embeddings).expand((1, -1)) + 2, persistent=False
        )
        self.register_buffer("token_type_ids", torch.zeros_like(self.position_ids), persistent=False)

    def forward(self, input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None):
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)  # (batch, n, hidden)
        batch, n = inputs_embeds.shape[:2]
        if position_ids is None:
            position_ids = self.position_ids[:, :n]
        if token_type_ids is None:
            token_type_ids = self.token_type_ids[:, :n].expand(batch, n)
        embeddings = inputs_embeds + self.token_type_embeddings(token_type_ids)
        embeddings = embeddings + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(embeddings))


class YosoSelfAttention(nn.Module):
    """q, k, v projections; YOSO-E or LSH-sampled cumulation; per-head output normalisation; optional conv."""

    def __init__(self, config: YosoConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.config = config
        if config.conv_window is not None:
            self.conv = nn.Conv2d(
                config.num_attention_heads,
                config.num_attention_heads,
                kernel_size=(config.conv_window, 1),
                padding=(config.conv_window // 2, 0),
                bias=False,
                groups=config.num_attention_heads,
            )

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, n, _ = x.shape
        return x.view(batch, n, self.num_heads, self.head_dim).transpose(1, 2)  # (batch, heads, n, head_dim)

    def forward(self, hidden_states, mask=None, output_attentions=False):
        """hidden_states (batch, n, hidden); mask (batch, n) bool or None (no padding)."""
        q = self._split_heads(self.query(hidden_states))
        k = self._split_heads(self.key(hidden_states))
        v = self._split_heads(self.value(hidden_states))
        head_mask = None if mask is None else mask[:, None, :]  # (batch, 1, n)
        cfg = self.config
        weights = None
        if output_attentions:  # the output from the returned map, so that gradients reach it (attribution)
            weights = self._attention_maps(q, k, head_mask)  # (batch, heads, n, n)
            context = (weights @ v.float()).to(v.dtype)
        elif cfg.use_expectation:
            context = yoso_expectation(q, k, v, head_mask, hash_code_len=cfg.hash_code_len)
        else:
            # Hash functions from the global RNG: torch.manual_seed reproduces a run, gradient checkpointing (which
            # restores the RNG state) recomputes with the same ones, and torch.compile traces the draw.
            context = yoso_lsh(q, k, v, head_mask, lsh_backward=cfg.lsh_backward,
                               recompute_codes=cfg.recompute_hash_codes, **self._hashing())  # fmt: skip
        # F.normalize per head, in the output's (batch, n, heads, head_dim) layout so that the output dense layer
        # keeps the very tensor the normalisation keeps. yoso_lsh returns its output in q's head-interleaved
        # layout (as SDPA does), so this transpose is a view, and so are the gradients' on the way back.
        context = normalize_rows(context.transpose(1, 2).contiguous())  # (batch, n, heads, head_dim)
        return self._merge_heads(context, v, mask), weights

    def _hashing(self) -> dict:
        cfg = self.config
        return dict(num_hash=cfg.num_hash, hash_code_len=cfg.hash_code_len, fast_hash=cfg.use_fast_hash)

    def _attention_maps(self, q, k, head_mask):
        """(batch, heads, n, n) weights whose product with v is the attention's output: masked collision
        probabilities (YOSO-E) or sampled collision frequencies, with the gradients of the op's backward."""
        tau = self.config.hash_code_len
        if self.config.use_expectation:
            return expectation_matrix(q, k, head_mask, hash_code_len=tau)
        q_codes, k_codes = hash_codes(q, k, **self._hashing())
        return sampled_collision_weights(q, k, q_codes, k_codes, head_mask, hash_code_len=tau)

    def _merge_heads(self, context, v, mask):
        """context (batch, n, heads, head_dim) plus YOSO-C's convolution over the unmasked values
        (conv_window set), as (batch, n, hidden)."""
        if self.config.conv_window is not None:
            masked_v = v if mask is None else v * mask[:, None, :, None]
            context = context + value_convolution(masked_v, self.conv.weight).transpose(1, 2)
        return context.flatten(2)


class YosoResidualOutput(nn.Module):
    """dense -> dropout -> LayerNorm(x + residual): both the attention output and the FFN output."""

    def __init__(self, config: YosoConfig, in_features: int):
        super().__init__()
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states, residual):
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + residual)


class YosoAttention(nn.Module):
    def __init__(self, config: YosoConfig):
        super().__init__()
        self.self = YosoSelfAttention(config)
        self.output = YosoResidualOutput(config, config.hidden_size)

    def forward(self, hidden_states, mask=None, output_attentions=False):
        context, weights = self.self(hidden_states, mask, output_attentions)
        return self.output(context, hidden_states), weights


class YosoIntermediate(nn.Module):
    def __init__(self, config: YosoConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states):
        return self.intermediate_act_fn(self.dense(hidden_states))


class YosoLayer(GradientCheckpointingLayer):
    """Attention, then the feed-forward block (intermediate + output), each with a post-LayerNorm residual.

    The feed-forward block runs over chunks of the sequence (each token's result is the same):
    ``config.chunk_size_feed_forward`` tokens per chunk as in transformers or, when that is 0, as few equal
    chunks as keep the (batch, tokens, intermediate_size) activation within FFN_CHUNK_FLOATS. Besides the
    smaller peak, a chunk stays below glibc's mmap threshold, so long sequences do not page-fault a fresh
    activation buffer in every layer (base size, n = 4096, 2 cores: 254 -> 224 ms per feed-forward block).
    """

    def __init__(self, config: YosoConfig):
        super().__init__()
        self.chunk_size_feed_forward = config.chunk_size_feed_forward
        self.attention = YosoAttention(config)
        self.intermediate = YosoIntermediate(config)
        self.output = YosoResidualOutput(config, config.intermediate_size)

    def forward(self, hidden_states, mask=None, output_attentions=False):
        attention_output, weights = self.attention(hidden_states, mask, output_attentions)
        return self._feed_forward(attention_output), weights

    def _feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (batch, n, hidden) -> (batch, n, hidden)."""
        if self.chunk_size_feed_forward:
            chunks = x.split(self.chunk_size_feed_forward, dim=1)
        else:
            floats = x.shape[0] * x.shape[1] * self.intermediate.dense.out_features
            chunks = x.tensor_split(min(x.shape[1], -(-floats // FFN_CHUNK_FLOATS)), dim=1)
        outputs = [self.output(self.intermediate(chunk), chunk) for chunk in chunks]
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)


class YosoEncoder(nn.Module):
    def __init__(self, config: YosoConfig):
        super().__init__()
        self.layer = nn.ModuleList([YosoLayer(config) for _ in range(config.num_hidden_layers)])
        self.gradient_checkpointing = False

    def forward(self, hidden_states, mask=None, output_attentions=False, output_hidden_states=False):
        """Returns (last hidden state, hidden states tuple or None, attentions tuple or None)."""
        all_hidden = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer in self.layer:
            hidden_states, weights = layer(hidden_states, mask, output_attentions)
            if output_hidden_states:
                all_hidden += (hidden_states,)
            if output_attentions:
                all_attentions += (weights,)
        return hidden_states, all_hidden, all_attentions
