"""yoso-attention: linear-cost YOSO self-attention (Zeng et al., ICML 2021) and the YOSO model family."""

from .models.yoso import (
    YosoConfig,
    YosoForMaskedLM,
    YosoForMultipleChoice,
    YosoForQuestionAnswering,
    YosoForSequenceClassification,
    YosoForTokenClassification,
    YosoModel,
    YosoPreTrainedModel,
)
from .ops import hash_codes, lsh_cumulation, yoso_expectation, yoso_lsh

__version__ = "0.2.0"

__all__ = [
    "YosoConfig",
    "YosoForMaskedLM",
    "YosoForMultipleChoice",
    "YosoForQuestionAnswering",
    "YosoForSequenceClassification",
    "YosoForTokenClassification",
    "YosoModel",
    "YosoPreTrainedModel",
    "hash_codes",
    "lsh_cumulation",
    "yoso_expectation",
    "yoso_lsh",
    "__version__",
]
