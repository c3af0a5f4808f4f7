"""Every attention mask lmzoo builds, in one place.

Masks are additive float tensors broadcastable to [batch, heads, query, key]: 0 where attention is
allowed, the dtype's minimum where it is not (a large finite value, so a fully masked row of padding
gives finite garbage instead of NaN). Relative-position biases ride in the same tensor. ``None``
means "no mask": SDPA then takes its fastest kernel, with its own causal mask when ``is_causal``.
"""

from __future__ import annotations

import torch


def additive(blocked: torch.Tensor, dtype: torch.dtype, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Bool ``blocked`` (True = may not attend) → additive mask, on top of ``bias`` when given."""
    base = torch.zeros(blocked.shape, dtype=dtype, device=blocked.device) if bias is None else \
        bias.to(dtype).expand(torch.broadcast_shapes(bias.shape, blocked.shape))
    return base.masked_fill(blocked, torch.finfo(dtype).min)


def causal_blocked(q_len: int, k_len: int, device: torch.device) -> torch.Tensor:
    """[q_len, k_len] bool: query i (at absolute position k_len - q_len + i) may not see later keys."""
    q_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]
    return torch.arange(k_len, device=device)[None, :] > q_pos


def causal_mask(q_len: int, k_len: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Additive [1, 1, q_len, k_len] causal mask (queries are the last q_len of k_len positions)."""
    return additive(causal_blocked(q_len, k_len, device), dtype)[None, None]


def padding_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[batch, key] 1/0 mask → additive [batch, 1, 1, key]."""
    return additive(attention_mask[:, None, None, :] == 0, dtype)


def has_padding(attention_mask: torch.Tensor | None) -> bool:
    """Whether a 1/0 key mask blocks any key. Inside ``torch.compile`` it answers True without reading
    the values (a data-dependent branch would break the graph): the mask is then always built, which
    gives the same attention."""
    if attention_mask is None:
        return False
    return torch.compiler.is_compiling() or not bool(attention_mask.all())


def attention_mask_for(
    attention_mask: torch.Tensor | None,
    *,
    q_len: int,
    k_len: int,
    causal: bool,
    dtype: torch.dtype,
    device: torch.device,
    bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor | None, bool]:
    """(additive mask or None, is_causal) for self-attention of ``q_len`` new queries over ``k_len`` keys.

    ``attention_mask`` [batch, k_len] 1/0 marks real keys (None or all ones: nothing padded);
    ``causal`` blocks later keys; ``bias`` [1|batch, heads, q_len, k_len] is added (T5's buckets).
    Without padding or bias a causal mask over fresh queries is SDPA's own (``is_causal=True``).
    """
    padded = has_padding(attention_mask)
    causal = causal and q_len > 1  # one query at the end sees every key
    if not padded:
        if bias is not None and not causal:
            return bias.to(dtype), False
        if bias is None and not causal:
            return None, False
        if bias is None and q_len == k_len:
            return None, True
        if bias is None:
            return causal_mask(q_len, k_len, dtype, device), False
    # as small as the mask can be: [B, 1, 1, K] for padding alone, [B, 1, Q, K] with causality
    blocked = causal_blocked(q_len, k_len, device)[None, None] if causal else None
    if padded:
        padding = attention_mask[:, None, None, :] == 0
        blocked = padding if blocked is None else blocked | padding
    return additive(blocked, dtype, bias), False


def document_positions(document_ids: torch.Tensor) -> torch.Tensor:
    """[B, T] document ids (equal ids contiguous) → positions restarting at 0 in each document."""
    batch, length = document_ids.shape
    index = torch.arange(length, device=document_ids.device).expand(batch, length)
    starts = torch.ones_like(document_ids, dtype=torch.bool)
    starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    # index of each token's document start: running max of the start indices
    start_index = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=1).values
    return index - start_index


def document_mask(document_ids: torch.Tensor, dtype: torch.dtype,
                  attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Additive [B, 1, T, T] for packed rows: query i sees key j <= i of its own document (and no
    padding key; a padding query still sees itself, so its row is never fully blocked)."""
    length = document_ids.shape[1]
    allowed = document_ids[:, :, None] == document_ids[:, None, :]  # (B, T, T)
    allowed &= ~causal_blocked(length, length, document_ids.device)
    if attention_mask is not None:
        allowed &= attention_mask[:, None, :].bool() | torch.eye(length, dtype=torch.bool, device=document_ids.device)
    return additive(~allowed, dtype)[:, None]


def right_padded(attention_mask: torch.Tensor | None) -> bool:
    """Whether padding (0s of ``attention_mask`` [B, T]) only ends rows: causal attention then never
    lets a real token see it, whatever the document ids say."""
    return attention_mask is None or bool((attention_mask[:, 1:] <= attention_mask[:, :-1]).all())
