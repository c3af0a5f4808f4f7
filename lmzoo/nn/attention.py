"""Multi-head attention over ``scaled_dot_product_attention`` (``lmzoo.nn.dropout.attention``: the
same math with a cheaper dropout when training on CPU). Its masks are built in ``lmzoo.nn.masks``.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from lmzoo.config import ModelConfig
from lmzoo.nn.dropout import attention
from lmzoo.nn.linear import Linear
from lmzoo.nn.segments import BlockMask, DocumentSegments, flex_document_attention


class LayerKVCache(Protocol):
    """One layer's key/value cache: stores the new keys/values, returns all of them so far."""

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


def projections(x: torch.Tensor, *layers: nn.Linear) -> list[torch.Tensor]:
    """``[layer(x) for layer in layers]``. With autograd on (training) it is one GEMM over the stacked
    weights: one pass over ``x`` and one cast of it under autocast instead of three. Without autograd
    (decoding) each layer runs alone: no weight copies per step, and ``Linear``'s small-row path."""
    plain = all(type(layer) in (nn.Linear, Linear) for layer in layers)  # not e.g. int8 replacements
    if len(layers) == 1 or not torch.is_grad_enabled() or not plain:
        return [layer(x) for layer in layers]
    weight = torch.cat([layer.weight for layer in layers])
    bias = None if layers[0].bias is None else torch.cat([layer.bias for layer in layers])
    return list(F.linear(x, weight, bias).split([layer.out_features for layer in layers], dim=-1))


class Attention(nn.Module):
    """Self- or cross-attention with separate q/k/v/o projections (HF key maps stay trivial)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.d_head = config.head_dim
        inner = self.n_heads * self.d_head
        self.q = Linear(config.d_model, inner, bias=config.bias)
        self.k = Linear(config.d_model, inner, bias=config.bias)
        self.v = Linear(config.d_model, inner, bias=config.bias)
        self.o = Linear(inner, config.d_model, bias=config.bias)
        self.scale = None if config.attention_scale else 1.0  # None = SDPA's 1/sqrt(d_head)
        self.attention_dropout = config.attention_dropout

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.n_heads, self.d_head).transpose(1, 2)  # (B, H, T, Dh)

    def forward(
        self,
        x: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        kv_input: torch.Tensor | None = None,
        cache: LayerKVCache | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        """``kv_input``: encoder states for cross-attention (None = self-attention). ``mask``: additive
        (see ``lmzoo.nn.masks``), or the ``DocumentSegments`` / FlexAttention ``BlockMask`` of packed rows.

        ``is_causal`` uses SDPA's built-in causal mask and is only valid with ``mask=None``
        and no cache offset; otherwise put the causal part into ``mask``.
        """
        batch, length, _ = x.shape
        if cache is not None and kv_input is not None and getattr(cache, "kv", None) is not None:
            q = self.q(x)
            k, v = cache.kv  # cross-attention while decoding: encoder keys/values projected once
        else:
            if kv_input is None:
                q, k, v = projections(x, self.q, self.k, self.v)
            else:
                q, (k, v) = self.q(x), projections(kv_input, self.k, self.v)
            k, v = self.split_heads(k), self.split_heads(v)
            if cache is not None:
                k, v = cache.update(k, v)
        q = self.split_heads(q)
        dropout_p = self.attention_dropout if self.training else 0.0
        if isinstance(mask, DocumentSegments):  # packed documents, each attended alone (see lmzoo.nn.segments)
            y = mask.attend(q, k, v, dropout_p=dropout_p, scale=self.scale)
            return self.o(y.transpose(1, 2).reshape(batch, length, self.n_heads * self.d_head))
        if isinstance(mask, BlockMask):  # packed documents inside torch.compile (see lmzoo.nn.segments)
            y = flex_document_attention(q, k, v, mask, self.scale)
            return self.o(y.transpose(1, 2).reshape(batch, length, self.n_heads * self.d_head))
        # cross-attention of beams / samples sharing one input's encoder keys/values (their rows are
        # consecutive, ``group`` per input): the queries of a group attend together
        group = batch // k.shape[0] if kv_input is not None else 1
        if group > 1:
            q = q.unflatten(0, (k.shape[0], group)).transpose(1, 2).flatten(2, 3)  # (Bk, H, group*T, Dh)
        y = attention(
            q,
            k,
            v,
            attn_mask=None if mask is None else mask.to(q.dtype),
            dropout_p=dropout_p,
            is_causal=is_causal and mask is None,
            scale=self.scale,
        )
        if group > 1:
            y = y.unflatten(2, (group, length)).transpose(1, 2).flatten(0, 1)  # (B, H, T, Dh)
        y = y.transpose(1, 2).reshape(batch, length, self.n_heads * self.d_head)  # (B, T, H*Dh)
        return self.o(y)
