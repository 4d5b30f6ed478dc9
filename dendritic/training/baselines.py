"""The hackathon's "DSN" baseline (deep summing network): BERT's embeddings, mean pooling over the real tokens,
and a linear classifier — zero encoder layers.  It is what the original write-up's "DSN mode" ran, so the
PAI-style figure shows it beside dense BERT and DendriticBERT on the same tasks."""

from __future__ import annotations

import torch
from torch import nn
from transformers import BertConfig, BertPreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.models.bert.modeling_bert import BertEmbeddings


class DSNForSequenceClassification(BertPreTrainedModel):
    config_class = BertConfig
    base_model_prefix = "bert"

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.embeddings = BertEmbeddings(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @classmethod
    def from_bert_checkpoint(cls, path: str, num_labels: int) -> "DSNForSequenceClassification":
        """Embeddings copied from a (Dendritic)BERT checkpoint folder; a fresh classifier."""
        from transformers import AutoModel

        bert = AutoModel.from_pretrained(path)
        config = BertConfig(**{k: v for k, v in bert.config.to_dict().items() if k in BertConfig().to_dict()})
        config.num_labels = num_labels
        model = cls(config)
        model.embeddings.load_state_dict(bert.embeddings.state_dict())
        return model

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs):
        x = self.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)  # (B, n, d)
        real = (attention_mask if attention_mask is not None else torch.ones_like(input_ids))[..., None].to(x.dtype)
        pooled = (x * real).sum(1) / real.sum(1).clamp_min(1.0)  # (B, d): mean over real tokens
        logits = self.classifier(self.dropout(pooled))
        loss = None
        if labels is not None:
            if self.num_labels == 1:
                loss = nn.functional.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
            else:
                loss = nn.functional.cross_entropy(logits, labels.long())
        return SequenceClassifierOutput(loss=loss, logits=logits)
