"""YOSO models (Zeng et al., ICML 2021): YosoModel and five task heads, checkpoint-compatible with
transformers' classes of the same names (same parameter names and shapes, same losses).

Unlike transformers' implementation, padding is honoured, sampling mode runs on any device in linear
time, and ``output_attentions=True`` returns real attention weights (an O(n^2) map computed only then).
"""

from __future__ import annotations

import pickle

import torch
from safetensors import SafetensorError
from torch import nn
from torch.nn import BCEWithLogitsLoss, CrossEntropyLoss, MSELoss
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_outputs import (
    BaseModelOutputWithCrossAttentions,
    MaskedLMOutput,
    MultipleChoiceModelOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)

from .configuration_yoso import YosoConfig
from .inputs import check_model_inputs
from .layers_yoso import YosoEmbeddings, YosoEncoder


IGNORE_INDEX = -100  # CrossEntropyLoss's default: labels the loss skips


def ignore_padding(labels: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Token labels with padded positions set to the loss's ignore index: padding equals truncation."""
    if attention_mask is None:
        return labels
    return labels.masked_fill(attention_mask.reshape(labels.shape) == 0, IGNORE_INDEX)


def span_loss(start_logits, end_logits, start_positions, end_positions, attention_mask) -> torch.Tensor:
    """transformers' QA loss (positions clamped to [0, n], position n ignored), with padding treated as the end
    of each sequence: padded logits take no part in the softmax, positions on padding are ignored."""
    n = start_logits.size(1)
    losses = []
    for logits, positions in ((start_logits, start_positions), (end_logits, end_positions)):
        positions = positions.reshape(-1).clamp(0, n)
        if attention_mask is not None:
            real = attention_mask.bool()  # (batch, n)
            logits = logits.masked_fill(~real, torch.finfo(logits.dtype).min)
            on_padding = ~real.gather(1, positions.clamp(max=n - 1)[:, None])[:, 0]
            positions = positions.masked_fill(on_padding, n)
        losses.append(CrossEntropyLoss(ignore_index=n)(logits, positions))
    return (losses[0] + losses[1]) / 2


class YosoPreTrainedModel(PreTrainedModel):
    """Base of the YOSO classes: the config class, weight initialisation (transformers' scheme) and
    ``from_pretrained`` / ``save_pretrained`` in transformers' format."""

    config_class = YosoConfig
    config: YosoConfig
    base_model_prefix = "yoso"
    supports_gradient_checkpointing = True

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """transformers' loader (safetensors first, ``.bin`` with ``torch.load(weights_only=True)``; missing
        and unexpected keys are logged and returned with ``output_loading_info=True``), with a clear error
        for a truncated or corrupt weights file."""
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except (SafetensorError, pickle.UnpicklingError, EOFError) as exc:
            cause = str(exc).splitlines()[0] if str(exc) else ""
            raise OSError(
                f"could not read the weights in {pretrained_model_name_or_path}: the checkpoint file is truncated "
                f"or corrupt, or holds objects other than tensors (never unpickled). {type(exc).__name__}: {cause}"
            ) from exc

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        super()._init_weights(module)
        if isinstance(module, YosoLMPredictionHead):
            init.zeros_(module.bias)
        elif isinstance(module, YosoEmbeddings):
            init.copy_(module.position_ids, torch.arange(module.position_ids.shape[-1]).expand((1, -1)) + 2)
            init.zeros_(module.token_type_ids)

    def _base_forward(self, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                      output_attentions, output_hidden_states):  # fmt: skip
        return self.yoso(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )

    def _pack(self, return_dict, output_cls, loss, base, **fields):
        """A ModelOutput, or the transformers-style tuple (loss first when present) if return_dict is False."""
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        out = output_cls(loss=loss, hidden_states=base.hidden_states, attentions=base.attentions, **fields)
        return out if return_dict else out.to_tuple()


class YosoModel(YosoPreTrainedModel):
    """The bare YOSO encoder, returning hidden states."""

    def __init__(self, config: YosoConfig):
        config.check_model_values()
        super().__init__(config)
        self.embeddings = YosoEmbeddings(config)
        self.encoder = YosoEncoder(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> tuple | BaseModelOutputWithCrossAttentions:
        """input_ids (batch, n) or inputs_embeds (batch, n, hidden); attention_mask (batch, n) with 1 for
        real tokens and 0 for padding (outputs on real tokens equal those of the unpadded input).
        ``output_attentions`` returns (batch, heads, n, n) weights per layer: the masked collision
        probabilities (YOSO-E) or the sampled collision frequencies (sampling); O(n^2), computed only then, and
        each layer's output is then computed from them, so they carry gradients (in sampling mode those of the
        sampled backward, whatever ``lsh_backward`` says).
        """
        cfg = self.config
        output_attentions = output_attentions if output_attentions is not None else cfg.output_attentions
        output_hidden_states = output_hidden_states if output_hidden_states is not None else cfg.output_hidden_states
        return_dict = return_dict if return_dict is not None else cfg.return_dict
        mask = check_model_inputs(cfg, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds)
        embeddings = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds)
        last, hidden_states, attentions = self.encoder(embeddings, mask, output_attentions, output_hidden_states)
        out = BaseModelOutputWithCrossAttentions(
            last_hidden_state=last, hidden_states=hidden_states, attentions=attentions
        )
        return out if return_dict else out.to_tuple()


class YosoPredictionHeadTransform(nn.Module):
    def __init__(self, config: YosoConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.transform_act_fn = ACT2FN[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states):
        return self.LayerNorm(self.transform_act_fn(self.dense(hidden_states)))


class YosoLMPredictionHead(nn.Module):
    def __init__(self, config: YosoConfig):
        super().__init__()
        self.transform = YosoPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=True)  # weight tied to embeddings
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden_states):
        return self.decoder(self.transform(hidden_states))


class YosoOnlyMLMHead(nn.Module):
    def __init__(self, config: YosoConfig):
        super().__init__()
        self.predictions = YosoLMPredictionHead(config)

    def forward(self, sequence_output):
        return self.predictions(sequence_output)


class YosoForMaskedLM(YosoPreTrainedModel):
    """YosoModel with the masked-LM head (decoder tied to the word embeddings). ``labels`` (batch, n) give the
    cross-entropy over positions whose label is not -100 and whose attention mask is 1."""

    _tied_weights_keys = {
        "cls.predictions.decoder.bias": "cls.predictions.bias",
        "cls.predictions.decoder.weight": "yoso.embeddings.word_embeddings.weight",
    }

    def __init__(self, config: YosoConfig):
        super().__init__(config)
        self.yoso = YosoModel(config)
        self.cls = YosoOnlyMLMHead(config)
        self.post_init()

    def get_output_embeddings(self):
        return self.cls.predictions.decoder

    def set_output_embeddings(self, new_embeddings):
        self.cls.predictions.decoder = new_embeddings
        self.cls.predictions.bias = new_embeddings.bias

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, **kwargs) -> tuple | MaskedLMOutput:  # fmt: skip
        """labels (batch, n): token ids to predict; -100 and padded positions are ignored."""
        base = self._base_forward(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                                  output_attentions, output_hidden_states)  # fmt: skip
        logits = self.cls(base.last_hidden_state)  # (batch, n, vocab)
        loss = None
        if labels is not None:
            labels = ignore_padding(labels, attention_mask)
            loss = CrossEntropyLoss()(logits.view(-1, self.config.vocab_size), labels.view(-1))
        return self._pack(return_dict, MaskedLMOutput, loss, base, logits=logits)


class YosoClassificationHead(nn.Module):
    """Pooled features -> dropout -> dense -> activation -> dropout -> out_proj. Pooling per
    ``config.classifier_pooling``: token 0 ("cls") or the mean over real tokens ("mean")."""

    def __init__(self, config: YosoConfig):
        super().__init__()
        self.pooling = config.classifier_pooling
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.out_proj = nn.Linear(config.hidden_size, config.num_labels)
        self.act = ACT2FN[config.hidden_act]

    def forward(self, features, attention_mask=None):
        """features (batch, n, hidden); attention_mask (batch, n), 1 for real tokens, or None."""
        x = self.dropout(self._pool(features, attention_mask))  # (batch, hidden)
        x = self.dropout(self.act(self.dense(x)))
        return self.out_proj(x)

    def _pool(self, features, attention_mask):
        if self.pooling == "cls":
            return features[:, 0, :]
        if attention_mask is None:
            return features.mean(dim=1)
        weights = attention_mask.to(features.dtype).unsqueeze(-1)  # (batch, n, 1)
        return (features * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


def sequence_classification_loss(config, logits, labels):
    """MSE (regression), CE (single label) or BCE (multi label), inferred as transformers does."""
    num_labels = config.num_labels
    if config.problem_type is None:
        if num_labels == 1:
            config.problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    if config.problem_type == "regression":
        if num_labels == 1:
            return MSELoss()(logits.squeeze(), labels.squeeze().to(logits.dtype))
        return MSELoss()(logits, labels.to(logits.dtype))
    if config.problem_type == "single_label_classification":
        return CrossEntropyLoss()(logits.view(-1, num_labels), labels.view(-1))
    return BCEWithLogitsLoss()(logits, labels.to(logits.dtype))


class YosoForSequenceClassification(YosoPreTrainedModel):
    """YosoModel with a classification head over the first token (``classifier_pooling="cls"``) or the mean of
    the real tokens (``"mean"``). ``labels`` give MSE, cross-entropy or BCE, chosen as transformers does."""

    def __init__(self, config: YosoConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.yoso = YosoModel(config)
        self.classifier = YosoClassificationHead(config)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, **kwargs) -> tuple | SequenceClassifierOutput:  # fmt: skip
        """labels (batch,) class ids, (batch,) floats for regression, or (batch, num_labels) multi-hot."""
        base = self._base_forward(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                                  output_attentions, output_hidden_states)  # fmt: skip
        logits = self.classifier(base.last_hidden_state, attention_mask)  # (batch, num_labels)
        loss = None if labels is None else sequence_classification_loss(self.config, logits, labels)
        return self._pack(return_dict, SequenceClassifierOutput, loss, base, logits=logits)


class YosoForMultipleChoice(YosoPreTrainedModel):
    """Scores choices: inputs (batch, num_choices, n), one logit per choice from the first token; ``labels``
    (batch,) give the cross-entropy over the choices."""

    def __init__(self, config: YosoConfig):
        super().__init__(config)
        self.yoso = YosoModel(config)
        self.pre_classifier = nn.Linear(config.hidden_size, config.hidden_size)
        self.classifier = nn.Linear(config.hidden_size, 1)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, **kwargs) -> tuple | MultipleChoiceModelOutput:  # fmt: skip
        """Inputs (batch, num_choices, n) (inputs_embeds (batch, num_choices, n, hidden)); labels (batch,)."""
        for name, t, rank in (("input_ids", input_ids, 3), ("attention_mask", attention_mask, 3),
                              ("token_type_ids", token_type_ids, 3), ("position_ids", position_ids, 3),
                              ("inputs_embeds", inputs_embeds, 4)):  # fmt: skip
            if t is not None and t.dim() != rank:
                raise ValueError(
                    f"{name} must have {rank} dims (batch, num_choices, ...) for multiple choice, "
                    f"got shape {tuple(t.shape)}"
                )
        if input_ids is None and inputs_embeds is None:
            raise ValueError("You have to specify either input_ids or inputs_embeds")
        num_choices = (input_ids if input_ids is not None else inputs_embeds).shape[1]

        def flat(t):
            return None if t is None else t.reshape(-1, *t.shape[2:])

        base = self._base_forward(flat(input_ids), flat(attention_mask), flat(token_type_ids), flat(position_ids),
                                  flat(inputs_embeds), output_attentions, output_hidden_states)  # fmt: skip
        pooled = torch.relu(self.pre_classifier(base.last_hidden_state[:, 0]))  # (batch * choices, hidden)
        logits = self.classifier(pooled).view(-1, num_choices)  # (batch, choices)
        loss = None if labels is None else CrossEntropyLoss()(logits, labels)
        return self._pack(return_dict, MultipleChoiceModelOutput, loss, base, logits=logits)


class YosoForTokenClassification(YosoPreTrainedModel):
    """YosoModel with a linear classifier per token; ``labels`` (batch, n) give the cross-entropy over labelled
    (not -100), unpadded positions."""

    def __init__(self, config: YosoConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.yoso = YosoModel(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, **kwargs) -> tuple | TokenClassifierOutput:  # fmt: skip
        """labels (batch, n) class ids; -100 and padded positions are ignored."""
        base = self._base_forward(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                                  output_attentions, output_hidden_states)  # fmt: skip
        logits = self.classifier(self.dropout(base.last_hidden_state))  # (batch, n, num_labels)
        loss = None
        if labels is not None:
            labels = ignore_padding(labels, attention_mask)
            loss = CrossEntropyLoss()(logits.view(-1, self.num_labels), labels.view(-1))
        return self._pack(return_dict, TokenClassifierOutput, loss, base, logits=logits)


class YosoForQuestionAnswering(YosoPreTrainedModel):
    """Extractive QA: start and end logits per token; ``start_positions`` / ``end_positions`` (batch,) give
    transformers' span loss, with padding masked out of the softmax and positions on padding ignored."""

    def __init__(self, config: YosoConfig):
        super().__init__(config)
        config.num_labels = 2
        self.num_labels = 2
        self.yoso = YosoModel(config)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, start_positions=None, end_positions=None, output_attentions=None,
                output_hidden_states=None, return_dict=None, **kwargs) -> tuple | QuestionAnsweringModelOutput:  # fmt: skip
        """start_positions / end_positions (batch,): clamped to [0, n]; position n, and positions on padding, are
        ignored in the loss, whose softmax leaves padded positions out (padding equals truncation)."""
        base = self._base_forward(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                                  output_attentions, output_hidden_states)  # fmt: skip
        start_logits, end_logits = self.qa_outputs(base.last_hidden_state).unbind(-1)  # (batch, n) each
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = span_loss(start_logits, end_logits, start_positions, end_positions, attention_mask)
        return self._pack(return_dict, QuestionAnsweringModelOutput, loss, base,
                          start_logits=start_logits.contiguous(), end_logits=end_logits.contiguous())  # fmt: skip


__all__ = [
    "YosoForMaskedLM",
    "YosoForMultipleChoice",
    "YosoForQuestionAnswering",
    "YosoForSequenceClassification",
    "YosoForTokenClassification",
    "YosoModel",
    "YosoPreTrainedModel",
]
