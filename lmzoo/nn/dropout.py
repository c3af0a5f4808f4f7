"""Dropout that is cheap on CPU, and attention that uses it.

ATen's CPU dropout draws one 32-bit random number per element (``bernoulli_``), a visible share of a
small model's bf16 training step. ``dropout`` draws one 64-bit number per 4 elements and compares
16-bit slices of it with a threshold, a quarter of the random draws for the same mask statistics:
each element is dropped independently with probability ``round(p * 65536) / 65536`` (within 8e-6 of
``p``) and the kept ones are scaled by the inverse of the keep probability, so the expectation is
unchanged. It draws from the default CPU generator, so ``torch.manual_seed`` and checkpointed RNG
states replay it. Inside ``torch.compile`` the mask is the custom op ``lmzoo::keep_mask`` (dynamo
cannot trace an int64 ``random_``; an opaque op keeps the graph whole, and inductor's own per-element
CPU RNG would cost more than the dropout saves), so compiled and eager training draw the same masks.
On other devices it is ``F.dropout``.

``attention`` is ``scaled_dot_product_attention``. On CPU it computes SDPA's unfused math itself in two
cases: with dropout, where SDPA falls back to that math anyway (with ``bernoulli_``), so that it uses this
dropout; and in bf16 / fp16 training, where the math is faster than SDPA's flash kernel there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_LEVELS = 1 << 16  # 16-bit slices of the random words


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """Bool mask of ``shape``: each element False with probability ``round(p * 65536) / 65536``."""
    numel = 1
    for size in shape:
        numel *= size
    words = torch.empty((numel + 3) // 4, dtype=torch.int64, device=device).random_(-(1 << 63), None)
    slices = words.view(torch.int16)[:numel].view(shape)  # uniform over [-32768, 32767]
    return slices >= round(p * _LEVELS) - (_LEVELS >> 1)


# nondeterministic_seeded: the compiler must neither merge two calls nor drop one, and where it
# recomputes the op in backward (activation checkpointing) it replays the forward's RNG state
@torch.library.custom_op("lmzoo::keep_mask", mutates_args=(), device_types="cpu",
                         tags=(torch.Tag.nondeterministic_seeded,))
def _compiled_keep_mask(like: torch.Tensor, p: float) -> torch.Tensor:
    """``keep_mask`` of ``like``'s shape, as an op the compiler keeps opaque (backward reuses the
    forward's mask, or replays its RNG state where it recomputes it)."""
    return keep_mask(like.shape, p, like.device)


@_compiled_keep_mask.register_fake
def _(like: torch.Tensor, p: float) -> torch.Tensor:
    return torch.empty(like.shape, dtype=torch.bool, device=like.device)


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout(x, p, training)``, with a faster mask on CPU (see the module docstring)."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or not 0.0 < p < 1.0:
        return F.dropout(x, p, training)
    dropped = round(p * _LEVELS)
    if dropped == 0:
        return x
    keep = _compiled_keep_mask(x, p) if torch.compiler.is_compiling() else keep_mask(x.shape, p, x.device)
    # where() saves only the bool mask for backward, as native dropout does
    return torch.where(keep, x * (_LEVELS / (_LEVELS - dropped)), 0.0)


class Dropout(nn.Dropout):
    """``nn.Dropout`` through ``dropout`` (same constructor, same state: none)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


MATH_MAX_SCORES = 1 << 27  # bf16/fp16 training: above this many scores per call, SDPA's flash kernel saves memory


def _math_is_faster(q: torch.Tensor, k: torch.Tensor) -> bool:
    """bf16/fp16 training on CPU: the math path's forward + backward beats the CPU flash kernel at the
    short sequences lmzoo trains (benchmarks/seq2seq_throughput.py); it stores the [..., T, S]
    probabilities, hence the size limit."""
    if q.dtype not in (torch.bfloat16, torch.float16) or not torch.is_grad_enabled():
        return False
    return q.shape[:-1].numel() * k.shape[-2] <= MATH_MAX_SCORES


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` (q, k, v: [..., T, Dh]; additive or bool ``attn_mask``)."""
    if q.device.type != "cpu" or not (dropout_p > 0.0 or _math_is_faster(q, k)):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p,
                                              is_causal=is_causal, scale=scale)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q * scale) @ k.transpose(-1, -2)
    blocked = torch.finfo(scores.dtype).min  # finite, as lmzoo's additive masks
    if is_causal:  # SDPA's convention: query i sees keys 0..i
        q_len, k_len = scores.shape[-2:]
        scores = scores.masked_fill(torch.ones(q_len, k_len, dtype=torch.bool, device=q.device).triu(1), blocked)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, blocked) if attn_mask.dtype == torch.bool else scores + attn_mask
    probs = torch.softmax(scores, -1, dtype=scores.dtype)
    return dropout(probs, dropout_p) @ v
