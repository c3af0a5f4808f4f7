"""Packed rows' documents attended one by one: causal attention whose cost grows with each document's
length, not the row's.

A row packed with short documents (CLM's default, ``lmzoo.objectives.clm``) attends block-diagonally:
the dense mask (``lmzoo.nn.masks.document_mask``) computes all T x T scores of a row and throws most of
them away. ``DocumentSegments`` gathers every document's queries, keys and values into a batch of its
own, padded to a power-of-two bucket (at least ``MIN_BUCKET``, so a few calls cover all lengths), runs
plain causal SDPA on each bucket (the fast kernel: no mask tensor) and scatters the outputs back.
Equal to the dense path: a query sees exactly the earlier tokens of its own document, since the
bucket padding sits after each document's last token, where causality hides it.

Inside ``torch.compile`` the buckets' data-dependent sizes cannot be traced: there the documents are
a FlexAttention ``BlockMask`` (``torch.nn.attention.flex_attention``: the compiled kernel skips the
blocks no query of a document sees, so its cost also grows with the documents' lengths), where
FlexAttention can run: on CUDA, or on CPU without autograd (PyTorch has no CPU backward for it), and
without attention dropout (it has none). Otherwise the dense mask.

Stays out of the models' readable path: a model asks ``packed_attention_mask`` and passes what it
gets where it would pass the dense mask; ``Attention`` hands the projected heads to whichever it is.
"""

from __future__ import annotations

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from lmzoo.nn.compiling import eager_in_compile
from lmzoo.nn.dropout import attention
from lmzoo.nn.masks import document_mask, right_padded

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


# eager even inside a compiled model: inductor cannot lower create_block_mask traced into a CPU graph
# (NoValidChoicesError); the mask then enters the compiled attention as an input
@eager_in_compile
def document_block_mask(document_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> BlockMask:
    """FlexAttention's mask of packed rows, the dense ``document_mask``'s rule: query i sees key j <= i
    of its own document and no padding key (a padding query still sees itself)."""
    batch, length = document_ids.shape
    real = None if attention_mask is None else attention_mask.bool()

    def visible(b, h, q, k):
        seen = (document_ids[b, q] == document_ids[b, k]) & (q >= k)
        return seen if real is None else seen & (real[b, k] | (q == k))

    return create_block_mask(visible, batch, None, length, length, device=document_ids.device)


def packed_attention_mask(document_ids: torch.Tensor, attention_mask: torch.Tensor | None, dtype: torch.dtype,
                          dropout_p: float) -> "DocumentSegments | BlockMask | torch.Tensor":
    """What a causal model's attention takes for packed rows (see the module docstring): eager,
    ``DocumentSegments`` when padding only ends rows; compiled, a FlexAttention ``BlockMask`` where
    it can run; else the dense additive mask."""
    if torch.compiler.is_compiling():
        flex_runs = document_ids.device.type == "cuda" or not torch.is_grad_enabled()
        if flex_runs and dropout_p == 0.0:
            return document_block_mask(document_ids, attention_mask)
    elif right_padded(attention_mask):
        return DocumentSegments(document_ids)
    return document_mask(document_ids, dtype, attention_mask)


def flex_document_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: BlockMask,
                            scale: float | None) -> torch.Tensor:
    """q, k, v [B, H, T, Dh] attended under ``block_mask`` (compiled code only). Contiguous heads:
    inductor's CPU lowering of flex_attention fails on a 4-D view of a 2-D projection output."""
    return flex_attention(q.contiguous(), k.contiguous(), v.contiguous(), block_mask=block_mask, scale=scale)
