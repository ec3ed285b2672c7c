from .configuration_yoso import YosoConfig
from .modeling_yoso import (
    YosoForMaskedLM,
    YosoForMultipleChoice,
    YosoForQuestionAnswering,
    YosoForSequenceClassification,
    YosoForTokenClassification,
    YosoModel,
    YosoPreTrainedModel,
)

__all__ = [
    "YosoConfig",
    "YosoForMaskedLM",
    "YosoForMultipleChoice",
    "YosoForQuestionAnswering",
    "YosoForSequenceClassification",
    "YosoForTokenClassification",
    "YosoModel",
    "YosoPreTrainedModel",
]
