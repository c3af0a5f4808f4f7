"""Token + (learned) position + token-type embeddings, optional scale, norm and dropout."""

from __future__ import annotations

import math

import torch
from torch import nn

from lmzoo.config import ModelConfig
from lmzoo.nn.dropout import Dropout
from lmzoo.nn.norm import make_norm


class Embeddings(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.offset = config.position_offset
        self.tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.positions = (
            nn.Embedding(config.max_positions + config.position_offset, config.d_model)
            if config.positions == "learned"
            else None
        )
        self.token_types = nn.Embedding(config.type_vocab_size, config.d_model) if config.type_vocab_size else None
        self.norm = make_norm(config) if config.embedding_norm else None
        self.scale = math.sqrt(config.d_model) if config.embedding_scale else 1.0
        self.dropout = Dropout(config.dropout)

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``position_ids`` are 0-based positions; the table offset (RoBERTa/BART) is added here."""
        x = self.tokens(input_ids) * self.scale
        if self.positions is not None:
            if position_ids is None:
                position_ids = torch.arange(input_ids.shape[1], device=input_ids.device)
            x = x + self.positions(position_ids + self.offset)
        if self.token_types is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            x = x + self.token_types(token_type_ids)
        if self.norm is not None:
            x = self.norm(x)
        return self.dropout(x)
