"""Key/value caches for incremental decoding (``lmzoo.generate``), shared by every family.

- ``StaticKVCache``: one self-attention layer's keys/values in a buffer preallocated once,
  [batch, heads, capacity, d_head], plus a write position. ``update(k, v)`` writes the new
  keys/values at the write position and returns views of everything written so far, so a decode
  step never allocates or concatenates.
- ``CrossKVCache``: one cross-attention layer (encoder-decoder). The first ``update`` stores the
  encoder's projected keys/values; ``Attention`` then finds them in ``.kv`` and skips its k/v
  projections at every later step.
- ``DecoderState``: the generation state of a decoder-only model (the caches, which key positions
  are real tokens, each row's next position id).

Every class has ``reorder(index)`` for beam search: row ``i`` becomes old row ``index[i]``.
``index`` may be longer than the batch (expanding each prompt to its beams / samples).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmzoo.errors import UserError


class StaticKVCache:
    """Preallocated keys/values of one self-attention layer: [batch, heads, capacity, d_head]."""

    def __init__(self, batch: int, heads: int, capacity: int, d_head: int, *,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> None:
        self.k = torch.zeros(batch, heads, capacity, d_head, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.length = 0  # write position: keys [0, length) are filled

    @property
    def capacity(self) -> int:
        return self.k.shape[2]

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + k.shape[2]
        if end > self.capacity:
            raise UserError(f"decoding past the cache capacity of {self.capacity} tokens")
        self.k[:, :, self.length:end] = k
        self.v[:, :, self.length:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def reorder(self, index: torch.Tensor) -> None:
        n = self.length
        if index.shape[0] == self.k.shape[0]:  # beam step: permute rows in place, buffers stay put
            self.k[:, :, :n] = self.k[:, :, :n].index_select(0, index)
            self.v[:, :, :n] = self.v[:, :, :n].index_select(0, index)
        else:  # expansion (prompt → its beams): new buffers of the new batch size
            self.k = self.k.index_select(0, index)
            self.v = self.v.index_select(0, index)


class CrossKVCache:
    """Cross-attention keys/values: projected from the encoder states at the first step, then only read."""

    def __init__(self) -> None:
        self.kv: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kv is None:
            self.kv = (k, v)
        return self.kv

    def reorder(self, index: torch.Tensor) -> None:
        if self.kv is not None:
            self.kv = (self.kv[0].index_select(0, index), self.kv[1].index_select(0, index))


def static_caches(n_layers: int, batch: int, heads: int, capacity: int, d_head: int, *,
                  device: torch.device | str | None, dtype: torch.dtype) -> list[StaticKVCache]:
    return [StaticKVCache(batch, heads, capacity, d_head, device=device, dtype=dtype) for _ in range(n_layers)]


@dataclass
class DecoderState:
    """Generation state of a decoder-only model.

    ``key_mask`` [B, capacity] is 1 where a cache slot holds a real token (0 for left padding);
    ``next_position`` [B] is each row's next position id (positions count real tokens only, so a
    left-padded prompt starts at 0 as HF's ``cumsum(attention_mask) - 1``).
    """

    caches: list[StaticKVCache]
    key_mask: torch.Tensor  # (B, capacity) int64
    next_position: torch.Tensor  # (B,) int64
    padded: bool  # whether key_mask has any 0 (else no mask is needed for single-token steps)
    length: int = 0  # tokens fed so far (all rows alike)

    @classmethod
    def allocate(cls, n_layers: int, heads: int, d_head: int, attention_mask: torch.Tensor, capacity: int, *,
                 dtype: torch.dtype) -> "DecoderState":
        batch, prompt = attention_mask.shape
        device = attention_mask.device
        key_mask = torch.ones(batch, capacity, dtype=torch.long, device=device)
        key_mask[:, :prompt] = attention_mask
        return cls(caches=static_caches(n_layers, batch, heads, capacity, d_head, device=device, dtype=dtype),
                   key_mask=key_mask, next_position=torch.zeros(batch, dtype=torch.long, device=device),
                   padded=not bool(attention_mask.all()))

    def advance(self, t: int) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """For ``t`` new tokens: (position_ids [B, t], the key mask [B, past + t] when some keys are
        padding else None, past = tokens already cached); advances the state."""
        start, end = self.length, self.length + t
        if end > self.key_mask.shape[1]:
            raise UserError(f"generation past the {self.key_mask.shape[1]} tokens the cache was allocated for")
        real = self.key_mask[:, start:end]  # (B, t)
        # a padding slot takes position 0, real tokens count up from each row's next position
        positions = (self.next_position[:, None] + real.cumsum(1) - 1).clamp(min=0) * real
        self.next_position = self.next_position + real.sum(1)
        self.length = end
        return positions, self.key_mask[:, :end] if self.padded else None, start

    def reorder(self, index: torch.Tensor) -> None:
        for cache in self.caches:
            cache.reorder(index)
        self.key_mask = self.key_mask.index_select(0, index)
        self.next_position = self.next_position.index_select(0, index)
