"""One Transformer layer: self-attention, optional cross-attention, feed-forward.

``config.pre_norm`` picks the residual wiring: post-LN (BERT, RoBERTa, BART, XLNet) computes
``norm(x + sublayer(x))``; pre-LN (GPT-2, T5) computes ``x + sublayer(norm(x))``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from lmzoo.config import ModelConfig
from lmzoo.nn.attention import Attention, LayerKVCache
from lmzoo.nn.dropout import Dropout
from lmzoo.nn.ffn import FeedForward
from lmzoo.nn.norm import make_norm


class Block(nn.Module):
    def __init__(self, config: ModelConfig, *, cross_attention: bool = False) -> None:
        super().__init__()
        self.pre_norm = config.pre_norm
        self.attn = Attention(config)
        self.attn_norm = make_norm(config)
        self.cross_attn = Attention(config) if cross_attention else None
        self.cross_norm = make_norm(config) if cross_attention else None
        self.ffn = FeedForward(config)
        self.ffn_norm = make_norm(config)
        self.dropout = Dropout(config.dropout)

    def residual(self, x: torch.Tensor, norm: nn.Module, sublayer: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        if self.pre_norm:
            return x + self.dropout(sublayer(norm(x)))
        return norm(x + self.dropout(sublayer(x)))

    def forward(
        self,
        x: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
        cache: LayerKVCache | None = None,
        encoder_states: torch.Tensor | None = None,
        encoder_mask: torch.Tensor | None = None,
        cross_cache: LayerKVCache | None = None,
    ) -> torch.Tensor:
        x = self.residual(x, self.attn_norm, lambda h: self.attn(h, mask=mask, is_causal=is_causal, cache=cache))
        if self.cross_attn is not None and encoder_states is not None:
            x = self.residual(
                x,
                self.cross_norm,
                lambda h: self.cross_attn(h, mask=encoder_mask, kv_input=encoder_states, cache=cross_cache),
            )
        return self.residual(x, self.ffn_norm, self.ffn)
