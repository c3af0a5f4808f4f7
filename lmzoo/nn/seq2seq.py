"""Encoder-decoder plumbing shared by T5 and BART: teacher forcing, the LM head and its loss, the
encoder mask, the generation state (encoder output computed once, self- and cross-attention
caches) and the generation protocol (``EncoderDecoderLM``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lmzoo.config import ModelConfig
from lmzoo.errors import UserError
from lmzoo.nn.cache import CrossKVCache, StaticKVCache
from lmzoo.nn.heads import decode_logits
from lmzoo.nn.loss import lm_loss
from lmzoo.nn.masks import has_padding, padding_mask
from lmzoo.outputs import ModelOutput


def shift_right(labels: torch.Tensor, start_id: int, pad_id: int) -> torch.Tensor:
    """Teacher forcing: decoder inputs = [start] + labels[:-1], with ignored labels (-100) as padding."""
    shifted = labels.new_full(labels.shape, pad_id)
    shifted[:, 1:] = labels[:, :-1]
    shifted[:, 0] = start_id
    return shifted.masked_fill(shifted == -100, pad_id)


def decoder_start_id(config: ModelConfig) -> int:
    start = config.decoder_start_token_id
    if start is None:
        raise UserError("the model config has no decoder_start_token_id")
    return start


def encoder_mask(attention_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """Additive key mask for encoder self-attention and cross-attention; None when nothing is padded."""
    if not has_padding(attention_mask):
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


def new_generation_state(config: ModelConfig, encoder_states: torch.Tensor, attention_mask: torch.Tensor | None,
                         max_new_tokens: int) -> EncoderDecoderState:
    decoder = config.decoder_config()
    batch = encoder_states.shape[0]
    make = lambda: StaticKVCache(batch, decoder.n_heads, max_new_tokens + 1, decoder.head_dim,  # noqa: E731
                                 device=encoder_states.device, dtype=encoder_states.dtype)
    return EncoderDecoderState(
        encoder_states=encoder_states,
        encoder_mask=encoder_mask(attention_mask, encoder_states.dtype),
        self_caches=[make() for _ in range(config.n_decoder_layers)],
        cross_caches=[CrossKVCache() for _ in range(config.n_decoder_layers)],
    )


class EncoderDecoderLM(nn.Module):
    """An encoder-decoder with an LM head (T5, BART): teacher forcing and the loss in ``forward``,
    and the generation protocol of ``lmzoo.generate`` (``prepare_generation`` / ``generation_step``).

    A family provides ``encode(input_ids, attention_mask)``, ``decode(decoder_input_ids,
    decoder_attention_mask, encoder_states, encoder_mask, state=None)`` (the decoder's last hidden
    states; ``state`` while generating) and ``lm_head_parts()`` (head module or None, weight, bias);
    ``head_input`` (what the head sees) and ``decoder_inputs`` (teacher forcing) have defaults.
    """

    config: ModelConfig

    def head_input(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden

    def decoder_inputs(self, input_ids: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """Teacher forcing: the labels shifted right behind the decoder start token."""
        if labels is None:
            raise UserError(f"{type(self).__name__} needs decoder_input_ids or labels")
        return shift_right(labels, decoder_start_id(self.config), self.config.pad_token_id or 0)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        encoder_last_hidden_state: torch.Tensor | None = None,
        label_smoothing: float = 0.0,
    ) -> ModelOutput:
        """Logits [B, T, V] and, with ``labels``, the mean token CE (label-smoothed as asked); while
        training with autograd the head is fused with the loss and logits is None."""
        if decoder_input_ids is None:
            decoder_input_ids = self.decoder_inputs(input_ids, labels)
        enc = encoder_last_hidden_state if encoder_last_hidden_state is not None \
            else self.encode(input_ids, attention_mask)
        hidden = self.decode(decoder_input_ids, decoder_attention_mask, enc, encoder_mask(attention_mask, enc.dtype))
        head, weight, bias = self.lm_head_parts()
        logits, loss = lm_loss(self.head_input(hidden), labels, weight=weight, bias=bias, head=head,
                               fused=self.training and torch.is_grad_enabled(), label_smoothing=label_smoothing)
        return ModelOutput(loss=loss, logits=logits, last_hidden_state=hidden, encoder_last_hidden_state=enc)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """LM-head logits of decoding rows [N, D]."""
        head, weight, bias = self.lm_head_parts()
        return decode_logits(self.head_input(hidden), head if head is not None else weight, bias)

    @torch.no_grad()
    def prepare_generation(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                           max_new_tokens: int) -> EncoderDecoderState:
        """Run the encoder once and allocate the decoder caches."""
        return new_generation_state(self.config, self.encode(input_ids, attention_mask), attention_mask,
                                    max_new_tokens)

    @torch.no_grad()
    def generation_step(self, tokens: torch.Tensor, state: EncoderDecoderState) -> torch.Tensor:
        """Feed new decoder tokens (B, t); returns the logits of the last one (B, vocab)."""
        hidden = self.decode(tokens, None, state.encoder_states, state.encoder_mask, state=state)
        state.length += tokens.shape[1]
        return self.logits(hidden[:, -1])
