"""Packed rows' documents attended one by one: causal attention whose cost grows with each document's
length, not the row's.

A row packed with short documents (CLM's default, ``lmzoo.objectives.clm``) attends block-diagonally:
the dense mask (``lmzoo.nn.masks.document_mask``) computes all T x T scores of a row and throws most of
them away. ``DocumentSegments`` gathers every document's queries, keys and values into a batch of its
own, padded to a power-of-two bucket (at least ``MIN_BUCKET``, so a few calls cover all lengths), runs
plain causal SDPA on each bucket (the fast kernel: no mask tensor) and scatters the outputs back.
Equal to the dense path: a query sees exactly the earlier tokens of its own document, since the
bucket padding sits after each document's last token, where causality hides it.

Stays out of the models' readable path: a model passes a ``DocumentSegments`` where it would pass the
dense mask, and ``Attention`` hands it the projected heads.
"""

from __future__ import annotations

import torch

from lmzoo.nn.dropout import attention

MIN_BUCKET = 16


class DocumentSegments:
    """The documents of ``document_ids`` [B, T] (equal ids contiguous within a row), bucketed by length.

    ``slots``: for every bucket slot (bucket by bucket, document by document) the flat position it
    reads (a padding slot repeats its document's first token); ``positions``: for every flat position
    the slot holding it. One gather in, one gather out, whatever the number of buckets.
    """

    def __init__(self, document_ids: torch.Tensor) -> None:
        batch, length = document_ids.shape
        self.shape = (batch, length)
        starts = torch.ones_like(document_ids, dtype=torch.bool)
        starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
        first = starts.flatten().nonzero().flatten()  # flat position of each document's first token
        ends = torch.cat([first[1:], first.new_tensor([batch * length])])
        lengths = ends - first  # a document never crosses a row: every row starts one
        bucket = (lengths.float().log2().ceil().exp2().long().clamp(min=MIN_BUCKET)).clamp(max=length)
        self.buckets: list[tuple[int, int]] = []  # (documents, slots per document)
        slots, holders = [], []
        for size in bucket.unique().tolist():
            chosen = bucket == size
            offsets = torch.arange(size, device=document_ids.device)
            valid = offsets[None, :] < lengths[chosen][:, None]  # (n, size)
            index = torch.where(valid, first[chosen][:, None] + offsets[None, :], first[chosen][:, None])
            self.buckets.append((int(chosen.sum()), size))
            slots.append(index.flatten())
            holders.append(valid.flatten())
        self.slots = torch.cat(slots)
        held = torch.cat(holders).nonzero().flatten()  # the slots that hold a real position
        self.positions = held[self.slots[held].argsort()]

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, dropout_p: float = 0.0,
               scale: float | None = None) -> torch.Tensor:
        """Causal attention within each document: q, k, v [B, H, T, Dh] → [B, H, T, Dh]."""
        batch, length = self.shape
        heads, d_head = q.shape[1], q.shape[-1]
        qkv = torch.stack([q, k, v], 2).permute(0, 3, 2, 1, 4).reshape(batch * length, 3, heads, d_head)
        gathered = qkv[self.slots]  # (slots, 3, H, Dh)
        outputs, start = [], 0
        for n, size in self.buckets:
            part = gathered[start:start + n * size].view(n, size, 3, heads, d_head).permute(2, 0, 3, 1, 4)
            y = attention(part[0], part[1], part[2], dropout_p=dropout_p, is_causal=True, scale=scale)
            outputs.append(y.transpose(1, 2).reshape(n * size, heads, d_head))
            start += n * size
        out = torch.cat(outputs)[self.positions]  # (B*T, H, Dh), back in row order
        return out.view(batch, length, heads, d_head).transpose(1, 2)
