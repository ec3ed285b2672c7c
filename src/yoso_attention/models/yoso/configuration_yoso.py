"""YosoConfig: the configuration of the YOSO models, field for field that of transformers' YosoConfig."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from ...ops.checks import MAX_HASH_CODE_LEN

CLASSIFIER_POOLINGS = ("cls", "mean")


@strict
class YosoConfig(PreTrainedConfig):
    r"""Configuration of a YOSO model (Zeng et al., ICML 2021); the defaults give uw-madison/yoso-4096.

    Attributes:
        vocab_size (`int`, defaults to 50265): number of token ids.
        hidden_size (`int`, defaults to 768): width of the hidden states.
        num_hidden_layers (`int`, defaults to 12): number of encoder layers.
        num_attention_heads (`int`, defaults to 12): attention heads per layer; must divide hidden_size.
        intermediate_size (`int`, defaults to 3072): width of the feed-forward layer.
        hidden_act (`str`, defaults to `"gelu"`): activation of the feed-forward layer and the heads.
        hidden_dropout_prob (`float`, defaults to 0.1): dropout of embeddings, layer outputs and heads.
        attention_probs_dropout_prob (`float`, defaults to 0.1): kept for checkpoint compatibility. YOSO
            never forms attention probabilities (its cost is linear because it does not), so there is
            nothing to drop out; the value is validated but unused, as in the original code.
        max_position_embeddings (`int`, defaults to 4096): longest sequence; the position table has two
            more rows because positions start at 2 (RoBERTa convention).
        type_vocab_size (`int`, defaults to 1): number of token type ids.
        initializer_range (`float`, defaults to 0.02): std of the normal initialisation of weights.
        layer_norm_eps (`float`, defaults to 1e-12): LayerNorm epsilon.
        use_expectation (`bool`, defaults to `True`): exact YOSO-E attention (quadratic time, blocked
            memory) instead of LSH sampling (linear); overrides num_hash, use_fast_hash, lsh_backward.
        hash_code_len (`int`, defaults to 9): bits per hash code tau, in [1, 20].
        num_hash (`int`, defaults to 64): hash functions per attention call in sampling mode, >= 1.
        conv_window (`int`, *optional*): kernel size of the depthwise convolution over values added to
            each head's output; a positive odd integer, or None for no convolution.
        use_fast_hash (`bool`, defaults to `True`): Hadamard hash instead of Gaussian projections (needs
            head dim >= hash_code_len after padding to a power of two).
        lsh_backward (`bool`, defaults to `True`): linear-time sampled gradients in sampling mode, else
            the dense YOSO-E gradients.
        recompute_hash_codes (`bool`, defaults to `False`): with the sampled backward, keep the random
            generator's state each attention call drew its hash functions from (under torch.compile the draw)
            instead of its codes, and draw and hash q and k again in backward (same gradients): 2 bytes less per
            token, head and hash function, for one more hashing per layer and step. Not a transformers field.
        pad_token_id (`int`, defaults to 1): id of the padding token.
        bos_token_id (`int`, defaults to 0): id of the first token.
        eos_token_id (`int`, defaults to 2): id of the separator / end token.
        add_cross_attention (`bool`, defaults to `False`): must stay False; YOSO is an encoder.
        chunk_size_feed_forward (`int`, defaults to 0, inherited): tokens per chunk of the feed-forward
            block, as in transformers; 0 picks chunks of at most 16 MB of activation (same results).
        tie_word_embeddings (`bool`, defaults to `True`): tie the masked-LM decoder to the embeddings.
        classifier_pooling (`str`, defaults to `"cls"`): what YosoForSequenceClassification classifies:
            `"cls"`, the first token (transformers' YOSO), or `"mean"`, the mean over real tokens (the
            paper's LRA models). Not a transformers field: transformers loads such a config and ignores it.
    """

    model_type = "yoso"

    vocab_size: int = 50265
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float | int = 0.1
    attention_probs_dropout_prob: float | int = 0.1
    max_position_embeddings: int = 4096
    type_vocab_size: int = 1
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    use_expectation: bool = True
    hash_code_len: int = 9
    num_hash: int = 64
    conv_window: int | None = None
    use_fast_hash: bool = True
    lsh_backward: bool = True
    recompute_hash_codes: bool = False
    pad_token_id: int | None = 1
    bos_token_id: int | None = 0
    eos_token_id: int | list[int] | None = 2
    add_cross_attention: bool = False
    tie_word_embeddings: bool = True
    classifier_pooling: str = "cls"

    def check_model_values(self):
        """Sizes, hashing, convolution and head parameters that a model needs. Called when a model is built, as
        transformers checks them: a config that transformers builds and saves (e.g. a small hidden size with the
        default 12 heads, as its common tests do) loads here too, and fails only if a model is built from it."""
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                     "max_position_embeddings", "type_vocab_size", "num_hash"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads "
                f"({self.num_attention_heads})"
            )
        if not 1 <= self.hash_code_len <= MAX_HASH_CODE_LEN:
            raise ValueError(f"hash_code_len must be in [1, {MAX_HASH_CODE_LEN}], got {self.hash_code_len}")
        if self.conv_window is not None and (self.conv_window < 1 or self.conv_window % 2 == 0):
            raise ValueError(f"conv_window must be a positive odd integer or None, got {self.conv_window}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.chunk_size_feed_forward < 0:
            raise ValueError(f"chunk_size_feed_forward must be >= 0 (0: automatic), got {self.chunk_size_feed_forward}")
        if self.classifier_pooling not in CLASSIFIER_POOLINGS:
            raise ValueError(f"classifier_pooling must be one of {CLASSIFIER_POOLINGS}, got {self.classifier_pooling!r}")
        if self.add_cross_attention:
            raise ValueError("add_cross_attention=True is not supported: YOSO is an encoder-only model")


__all__ = ["YosoConfig"]
