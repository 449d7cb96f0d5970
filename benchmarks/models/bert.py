"""A BERT-base encoder (12 layers, hidden 768, 12 heads, 110 M parameters) from transformers'
default ``BertConfig``, randomly initialised with a fixed seed: the suite measures the
architecture's speed, so no weights are downloaded."""

from __future__ import annotations

import torch
from torch import nn


class BertEncoder(nn.Module):
    """Positional inputs (input_ids, attention_mask) -> the last hidden state."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        torch.manual_seed(0)
        self.bert = BertModel(BertConfig(), add_pooling_layer=False).eval()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def bert_base() -> nn.Module:
    return BertEncoder().eval()
