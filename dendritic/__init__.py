"""DendriticBERT: a BERT that scores query–key blocks per input, skips the unimportant ones, and says how many.

Read in data-flow order: config → scoring → gating → perforation → budget → masks → kernels → attention →
modeling → training.
"""

from .config import PRESETS, DendriticConfig
from .kernels import block_sparse_attention
from .modeling import (
    DendriticBertForMaskedLM,
    DendriticBertForSequenceClassification,
    DendriticBertModel,
    from_bert,
)

__version__ = "0.1.0"
__all__ = [
    "PRESETS",
    "DendriticBertForMaskedLM",
    "DendriticBertForSequenceClassification",
    "DendriticBertModel",
    "DendriticConfig",
    "block_sparse_attention",
    "from_bert",
]
