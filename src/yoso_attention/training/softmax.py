"""Exact softmax attention in the YOSO architecture: the baseline that ``--attention softmax`` trains.

Same parameters (so checkpoints keep their format), softmax(q k^T / sqrt(d)) v through torch's SDPA in
place of the YOSO cumulation; a conv_window adds the same convolution over the values as in YOSO-C. The
choice is recorded in the config as ``attention_kind``.
"""

from __future__ import annotations

import torch.nn.functional as F

from ..models.yoso.layers_yoso import YosoSelfAttention


class SoftmaxSelfAttention(YosoSelfAttention):
    def forward(self, hidden_states, mask=None, output_attentions=False):
        q, k, v = (self._split_heads(f(hidden_states)) for f in (self.query, self.key, self.value))
        attn_mask = None if mask is None else mask[:, None, None, :]  # (batch, 1, 1, n): keys to attend
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (batch, heads, n, head_dim)
        return self._merge_heads(context.transpose(1, 2), v, mask), None


def use_softmax_attention(model) -> None:
    for module in model.modules():
        if type(module) is YosoSelfAttention:
            module.__class__ = SoftmaxSelfAttention
    model.config.attention_kind = "softmax"


def apply_recorded_attention(model) -> None:
    """Give a loaded or built model the attention its config records (``attention_kind``; YOSO unless softmax)."""
    if getattr(model.config, "attention_kind", None) == "softmax":
        use_softmax_attention(model)
