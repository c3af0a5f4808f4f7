"""Permutation language modelling (XLNet, Yang et al., 2019), as a collator.

For each sequence: pick about 1/K of the tokens to predict, as spans of 1..max_span tokens
(one span per chunk of span_length * K tokens, at a random offset, never touching the next
chunk's span); draw a random factorization order. Then, as in the original XLNet:

- unpredicted tokens (the context) see each other and no predicted token;
- a predicted token sees the context and the predicted tokens before it in the order, never
  itself (``perm_mask[b, i, i] = 1``): in the query stream it knows its position, not its content.

Works for any sequence length. Output (``model(**batch)`` of ``XLNetLMHeadModel``):
``input_ids`` (B, T), ``attention_mask`` (B, T), ``perm_mask`` (B, T, T) float, 1 = may not see;
``target_mapping`` (B, P, T) float one-hot rows, predicted positions in ascending order, all-zero
rows as padding; ``labels`` (B, P), -100 on padding rows. The model runs its query stream only on
these P rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from lmzoo.errors import UserError
from lmzoo.objectives.base import Objective, ObjectiveSetup
from lmzoo.objectives.mlm import accuracy_metrics
from lmzoo.objectives.packing import PackedDataset
from lmzoo.options import option

if TYPE_CHECKING:
    from lmzoo.data import TokenizedCorpus
    from lmzoo.tokenizer import Tokenizer


def sample_spans(length: int, K: float, max_span: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(length,) bool: spans of 1..max_span tokens, one per chunk of span * K tokens, so that about
    1/K of the tokens are chosen; a chosen span never ends its chunk, so spans never merge. A row
    shorter than its first chunk still gets one chosen token (else it would teach nothing)."""
    chosen = torch.zeros(length, dtype=torch.bool)
    cur = 0
    while cur < length:
        span = int(torch.randint(1, max_span + 1, (1,), generator=generator))
        chunk = max(span + 1, round(span * K))
        start = cur + int(torch.randint(0, chunk - span, (1,), generator=generator))
        chosen[start : start + span] = True  # clipped at the end of the sequence
        cur += chunk
    if length and not chosen.any():  # a row shorter than its first chunk: predict one token anyway
        chosen[int(torch.randint(0, length, (1,), generator=generator))] = True
    return chosen


def permutation_mask(predicted: torch.Tensor, rank: torch.Tensor) -> torch.Tensor:
    """(B, T, T) bool, True = token i may not see token j: j is predicted and i is context, or
    j comes at or after i in the factorization order ``rank`` (B, T)."""
    later = rank[:, None, :] >= rank[:, :, None]  # [b, i, j]: rank_j >= rank_i
    return predicted[:, None, :] & (~predicted[:, :, None] | later)


@dataclass(frozen=True, kw_only=True)
class PLMConfig:
    """The options of objective plm (XLNet: K = 6, spans up to 5)."""

    k: float = option(6.0, "predict about 1/K of the tokens, K > 1", flag="--plm-k")
    max_span: int = option(5, "predicted spans of 1..N tokens")

    def __post_init__(self) -> None:
        if not (self.k > 1 and math.isfinite(self.k)):
            raise UserError(f"--plm-k must be a number > 1 (about 1/K of the tokens are predicted), got {self.k}")
        if self.max_span < 1:
            raise UserError(f"--max-span must be >= 1, got {self.max_span}")


@dataclass(frozen=True, kw_only=True)
class PLMCollator:
    """Collate ``{"input_ids": ...}`` examples into a permutation-LM batch (see module doc).

    ``K``: about 1/K of the tokens are predicted (XLNet: 6). ``max_span``: longest predicted span.
    ``num_predict``: fixed number of prediction rows P (extra predicted tokens, the last by
    position, become context; missing rows are padding); None = the batch's largest count.
    ``bi_data``: append every sequence reversed (second half of the batch), for models with
    ``config.bi_data``. ``special_ids``: token ids never predicted (padding never is).
    """

    pad_id: int
    K: float = 6.0
    max_span: int = 5
    num_predict: int | None = None
    bi_data: bool = False
    special_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.K > 1:
            raise UserError(f"PLM K must be > 1 (about 1/K of the tokens are predicted), got {self.K}")
        if self.max_span < 1:
            raise UserError(f"PLM max_span must be >= 1, got {self.max_span}")
        if self.num_predict is not None and self.num_predict < 1:
            raise UserError(f"PLM num_predict must be >= 1, got {self.num_predict}")

    def __call__(self, examples: list[dict[str, Any]], generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        seqs = [torch.as_tensor(e["input_ids"], dtype=torch.long) for e in examples]
        if self.bi_data:
            seqs = seqs + [s.flip(0) for s in seqs]
        batch, length = len(seqs), max(len(s) for s in seqs)
        input_ids = torch.full((batch, length), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros(batch, length, dtype=torch.long)
        predicted = torch.zeros(batch, length, dtype=torch.bool)
        for b, s in enumerate(seqs):
            input_ids[b, : len(s)] = s
            attention_mask[b, : len(s)] = 1
            predicted[b, : len(s)] = sample_spans(len(s), self.K, self.max_span, generator)
        for special in self.special_ids:
            predicted &= input_ids != special
        if self.num_predict is not None:  # keep the first num_predict predicted tokens of each row
            predicted &= predicted.cumsum(1) <= self.num_predict
        n_rows = self.num_predict or max(1, int(predicted.sum(1).max()))
        rank = torch.rand(batch, length, generator=generator).argsort(1).argsort(1)  # a random order per row
        perm_mask = permutation_mask(predicted, rank)
        # Prediction rows: predicted positions in ascending order, then padding rows.
        slot = predicted.cumsum(1) - 1  # row index of each predicted position
        b_idx, t_idx = predicted.nonzero(as_tuple=True)
        target_mapping = torch.zeros(batch, n_rows, length)
        target_mapping[b_idx, slot[b_idx, t_idx], t_idx] = 1.0
        labels = torch.full((batch, n_rows), -100, dtype=torch.long)
        labels[b_idx, slot[b_idx, t_idx]] = input_ids[b_idx, t_idx]
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "perm_mask": perm_mask.float(),
            "target_mapping": target_mapping,
            "labels": labels,
        }


def build_plm(tokenizer: "Tokenizer", train_corpus: "TokenizedCorpus", eval_corpus: "TokenizedCorpus",
              options: PLMConfig, *, seq_len: int, seed: int) -> ObjectiveSetup:
    """XLNet recipe: packed rows, a random factorization order per row, ~1/K of the tokens
    predicted as spans; a fixed number of prediction rows keeps shapes static."""
    if tokenizer.pad_id is None:
        raise UserError("permutation LM needs a tokenizer with a pad token")

    def packed(corpus: "TokenizedCorpus") -> PackedDataset:
        return PackedDataset(corpus, max_length=seq_len, bos_id=None, eos_id=tokenizer.eos_id,
                             sep_between_docs=tokenizer.eos_id is not None)

    if options.max_span > seq_len:
        # (up to --seq-len the predicted share stays near 1/K: 0.14 at a span as long as the row)
        raise UserError(f"--max-span {options.max_span} is longer than a row (--seq-len {seq_len})")
    # about 1/K of the tokens are predicted, plus up to one span from the last chunk; any excess becomes context
    num_predict = math.ceil(seq_len / options.k) + options.max_span
    collate = PLMCollator(pad_id=tokenizer.pad_id, K=options.k, max_span=options.max_span, num_predict=num_predict,
                          special_ids=tuple(tokenizer.special_ids))
    return ObjectiveSetup(packed(train_corpus), packed(eval_corpus), collate, accuracy_metrics("plm"))


OBJECTIVE = Objective(name="plm", title="permutation LM", options=PLMConfig, build=build_plm)
