"""Encoder-decoder plumbing shared by T5 and BART: teacher forcing, the loss, the encoder mask,
and the generation state (encoder output computed once, self- and cross-attention caches)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmzoo.config import ModelConfig
from lmzoo.errors import UserError
from lmzoo.nn.masks import padding_mask
from lmzoo.nn.cache import CrossKVCache, StaticKVCache
from lmzoo.nn.loss import linear_cross_entropy



def shift_right(labels: torch.Tensor, start_id: int, pad_id: int) -> torch.Tensor:
    """Teacher forcing: decoder inputs = [start] + labels[:-1], with ignored labels (-100) as padding."""
    shifted = labels.new_full(labels.shape, pad_id)
    shifted[:, 1:] = labels[:, :-1]
    shifted[:, 0] = start_id
    return shifted.masked_fill(shifted == -100, pad_id)


def seq2seq_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Token-level cross-entropy over labels != -100 (computed in float32)."""
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100,
                           label_smoothing=label_smoothing)


def head_and_loss(model: nn.Module, hidden: torch.Tensor, labels: torch.Tensor | None, head: nn.Module | None,
                  weight: torch.Tensor, bias: torch.Tensor | None = None, label_smoothing: float = 0.0
                  ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(logits, loss) of the LM head ``hidden @ weight.T + bias`` (``head(hidden)`` when a head module is
    given, e.g. a quantized one). Training with gradients: the head is fused with the loss
    (``lmzoo.nn.loss``) and logits is None, the [B, T, V] logits are never stored."""
    smoothing = label_smoothing
    if labels is not None and model.training and torch.is_grad_enabled():
        return None, linear_cross_entropy(hidden, weight, labels, bias, label_smoothing=smoothing)
    logits = head(hidden) if head is not None else F.linear(hidden, weight, bias)
    return logits, (seq2seq_loss(logits, labels, smoothing) if labels is not None else None)


def decoder_start_id(config: ModelConfig) -> int:
    start = config.decoder_start_token_id
    if start is None:
        raise UserError("the model config has no decoder_start_token_id")
    return start


def encoder_mask(attention_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """Additive key mask for encoder self-attention and cross-attention; None when nothing is padded."""
    if attention_mask is None or bool(attention_mask.all()):
        return None
    return padding_mask(attention_mask, dtype)


@dataclass
class EncoderDecoderState:
    """What ``generation_step`` needs between steps: encoder output, its mask, and the caches."""

    encoder_states: torch.Tensor  # (B, S, D), or one row per input while encoder_per_input
    encoder_mask: torch.Tensor | None  # additive (B, 1, 1, S) or None, rows as encoder_states
    self_caches: list[StaticKVCache]
    cross_caches: list[CrossKVCache]
    length: int = 0  # decoder tokens seen so far
    source_row: torch.Tensor | None = None  # (B,) the input row each row's encoder side comes from
    encoder_per_input: bool = True  # the encoder side holds one row per input, in input order

    def reorder(self, index: torch.Tensor) -> None:
        """Keep / duplicate batch rows (beam search): row i becomes old row index[i].

        The encoder side (states, mask, cross-attention keys/values) is not copied per beam: while
        each input's rows are consecutive and every input has as many (each prompt → its beams or
        samples), it keeps one row per input and ``Attention`` runs each group's queries together."""
        held = self.encoder_states.shape[0]
        if self.source_row is None:
            self.source_row = torch.arange(held, device=index.device)
        new_source = self.source_row.index_select(0, index)
        for cache in self.self_caches:
            cache.reorder(index)
        if torch.equal(new_source, self.source_row):
            return  # a beam step: every row takes a beam of its own input, whose encoder side it already has
        self.source_row = new_source
        if self.encoder_per_input:
            group = len(new_source) // held
            if torch.equal(new_source, torch.arange(held, device=index.device).repeat_interleave(group)):
                return  # each input → its group of rows: the encoder side stays shared
            rows = new_source  # any other order: each row gets its input's encoder side
        else:
            rows = index
        self.encoder_per_input = False
        self.encoder_states = self.encoder_states.index_select(0, rows)
        if self.encoder_mask is not None:
            self.encoder_mask = self.encoder_mask.index_select(0, rows)
        for cache in self.cross_caches:
            cache.reorder(rows)


def new_generation_state(model: nn.Module, encoder_states: torch.Tensor, attention_mask: torch.Tensor | None,
                         max_new_tokens: int) -> EncoderDecoderState:
    config = model.config
    batch = encoder_states.shape[0]
    make = lambda: StaticKVCache(batch, config.n_heads, max_new_tokens + 1, config.head_dim,  # noqa: E731
                           device=encoder_states.device, dtype=encoder_states.dtype)
    return EncoderDecoderState(
        encoder_states=encoder_states,
        encoder_mask=encoder_mask(attention_mask, encoder_states.dtype),
        self_caches=[make() for _ in range(config.n_decoder_layers)],
        cross_caches=[CrossKVCache() for _ in range(config.n_decoder_layers)],
    )
