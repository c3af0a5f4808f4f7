"""Masked language modelling (BERT / RoBERTa): choose ~15% of the tokens, replace 80% of those by
[MASK], 10% by a random token, keep 10%; the model predicts the original token at each of them.

Masks are drawn in the collator from the loop's ``torch.Generator``, so every time a sequence is
seen it gets a fresh mask (RoBERTa's dynamic masking) and a run is still reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np
import torch

from lmzoo.errors import UserError
from lmzoo.objectives.base import Objective, ObjectiveSetup
from lmzoo.objectives.packing import PackedDataset
from lmzoo.options import option

if TYPE_CHECKING:
    from lmzoo.data import TokenizedCorpus
    from lmzoo.tokenizer import Tokenizer

IGNORE_INDEX = -100


@dataclass(frozen=True, kw_only=True)
class MLMConfig:
    """``mask_prob``: share of (non-special) tokens, or of words with ``whole_word``, chosen for
    prediction. Of those, ``mask_token_prob`` become [MASK], ``random_token_prob`` a random
    non-special token, and the rest keep their token. The options of objectives mlm and mlm+nsp."""

    mask_prob: float = option(0.15, "share of tokens (of words with --whole-word) chosen for prediction")
    mask_token_prob: float = option(0.8, "share of chosen tokens set to the mask")
    random_token_prob: float = option(0.1, "share set to a random token")
    whole_word: bool = option(False, "mask whole words")

    def __post_init__(self) -> None:
        if not 0.0 < self.mask_prob < 1.0:
            raise UserError(f"mask_prob must be in (0, 1), got {self.mask_prob}")
        for name in ("mask_token_prob", "random_token_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise UserError(f"{name} must be in [0, 1], got {value}")
        if self.mask_token_prob + self.random_token_prob > 1.0 + 1e-9:
            raise UserError(f"mask_token_prob + random_token_prob must be <= 1, got "
                            f"{self.mask_token_prob} + {self.random_token_prob}")
        if not isinstance(self.whole_word, bool):
            raise UserError(f"whole_word must be true or false, got {self.whole_word!r}")


def mask_tokens(input_ids: torch.Tensor, *, special_mask: torch.Tensor, mask_id: int, vocab_size: int,
                config: MLMConfig, generator: torch.Generator, word_starts: torch.Tensor | None = None,
                random_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked input_ids, labels) for ``input_ids`` [batch, seq] (or [seq]).

    ``special_mask`` (bool, same shape) marks special tokens and padding: they are never chosen.
    Each unit (a token, or a word with ``config.whole_word``) is chosen independently with
    probability ``mask_prob``; labels hold the original id at chosen positions, -100 elsewhere.
    A row with at least one candidate always gets at least one chosen unit (its lowest draw), so
    a batch never has an empty loss; this barely moves the rate except for very short rows.

    Whole words: a word is a token with ``word_starts`` True plus the tokens after it with
    ``word_starts`` False; a special token ends a word and the token after it starts one. A word is
    chosen whole; the 80/10/10 decision is then made per token, as Google's ``create_masked_lm_predictions``
    and transformers' whole-word collator do (a chosen word may mix [MASK], random and kept pieces).

    ``random_ids``: 1-D tensor of the ids random replacement draws from, i.e. the non-special
    vocabulary. Default: every id below ``vocab_size`` except ``mask_id`` and the ids found under
    ``special_mask`` in this batch (pass it explicitly when you know the special ids).

    All randomness comes from ``generator``: three draws of ``input_ids.numel()`` numbers each.
    """
    squeeze = input_ids.dim() == 1
    ids = input_ids.unsqueeze(0) if squeeze else input_ids
    special = (special_mask.unsqueeze(0) if squeeze else special_mask).to(torch.bool)
    if ids.dim() != 2 or special.shape != ids.shape:
        raise ValueError(f"input_ids must be [batch, seq] with special_mask of the same shape, got "
                         f"{tuple(input_ids.shape)} and {tuple(special_mask.shape)}")
    device = ids.device
    n_rows, seq = ids.shape
    n = ids.numel()
    if random_ids is None:
        banned = torch.zeros(vocab_size, dtype=torch.bool)
        banned[ids[special].cpu().long().clamp(0, vocab_size - 1)] = True
        banned[mask_id] = True
        random_ids = torch.nonzero(~banned).flatten()
    random_ids = random_ids.to(device=device, dtype=torch.long).flatten()
    if random_ids.numel() == 0 and config.random_token_prob > 0:
        raise UserError("no non-special token id left for random replacement")

    if config.whole_word:
        if word_starts is None:
            raise UserError("whole-word masking needs word_starts")
        word_starts = (word_starts.unsqueeze(0) if squeeze else word_starts).to(device=device, dtype=torch.bool)
    unit = _unit_numbers(special, word_starts if config.whole_word else None)

    gen_device = generator.device
    unit_u = torch.rand(n, generator=generator, device=gen_device).to(device)      # chosen?
    token_v = torch.rand(n, generator=generator, device=gen_device).to(device)     # mask/random/keep
    rand_pick = torch.randint(max(random_ids.numel(), 1), (n,), generator=generator,
                              device=gen_device).to(device)
    u = unit_u[unit].view(n_rows, seq)
    v = token_v.view(n_rows, seq)
    unit = unit.view(n_rows, seq)

    candidate = ~special
    chosen = (u < config.mask_prob) & candidate
    # guarantee one chosen unit per row that has candidates
    empty = ~chosen.any(dim=1) & candidate.any(dim=1)
    if empty.any():
        lowest = torch.where(candidate, u, torch.full_like(u, 2.0)).argmin(dim=1)  # [batch]
        lowest_unit = unit.gather(1, lowest[:, None])
        chosen |= empty[:, None] & (unit == lowest_unit) & candidate

    labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE_INDEX))
    to_mask = chosen & (v < config.mask_token_prob)
    to_random = chosen & ~to_mask & (v < config.mask_token_prob + config.random_token_prob)
    out = torch.where(to_mask, torch.full_like(ids, mask_id), ids)
    if random_ids.numel():
        random_tokens = random_ids[rand_pick].view(n_rows, seq).to(ids.dtype)
        out = torch.where(to_random, random_tokens, out)
    if squeeze:
        return out[0], labels[0]
    return out, labels


def _unit_numbers(special: torch.Tensor, word_starts: torch.Tensor | None) -> torch.Tensor:
    """The unit number of every token, unique over the batch, flattened: [batch * seq]. Every token
    is a unit of its own, unless ``word_starts`` (whole words) says it continues the word before it."""
    if word_starts is None:
        starts = torch.ones_like(special)
    else:
        if word_starts.shape != special.shape:
            raise ValueError(f"word_starts has shape {tuple(word_starts.shape)}, expected {tuple(special.shape)}")
        # a special token starts a unit of its own (never chosen), so it also ends the word before
        # it, and tokens after it that continue a word form the next (candidate) unit
        starts = word_starts | special
        starts[:, 0] = True
    return torch.cumsum(starts.flatten().long(), 0) - 1


def _pad(rows: list[Any], value: int, length: int, dtype: torch.dtype) -> torch.Tensor:
    out = torch.full((len(rows), length), value, dtype=dtype)
    for r, row in enumerate(rows):
        row = torch.as_tensor(np.asarray(row), dtype=dtype)
        out[r, :row.numel()] = row
    return out


class MLMCollator:
    """Pads a list of examples (``input_ids``, optional ``token_type_ids``, ``word_starts``,
    ``nsp_label``) to the longest (right padding with ``pad_id``) and masks them.

    Returns int64 tensors ``input_ids``, ``attention_mask``, ``token_type_ids`` (zeros when the
    examples have none), ``labels`` (-100 off the chosen positions and on padding), and
    ``nsp_labels`` [batch] when the examples carry ``nsp_label`` (0 = B follows A, 1 = random B).
    Tokens whose id is in ``special_ids`` (and padding) are never chosen.
    """

    def __init__(self, *, pad_id: int, mask_id: int, vocab_size: int, special_ids: Iterable[int],
                 config: MLMConfig) -> None:
        self.pad_id, self.mask_id, self.vocab_size, self.config = pad_id, mask_id, vocab_size, config
        if mask_id is None or pad_id is None:
            raise UserError("masked language modelling needs a tokenizer with a mask and a pad token")
        if not 0 <= mask_id < vocab_size or not 0 <= pad_id < vocab_size:
            raise UserError(f"mask_id {mask_id} / pad_id {pad_id} outside the vocabulary of {vocab_size}")
        self.special_ids = torch.tensor(sorted({int(i) for i in special_ids} | {pad_id, mask_id}),
                                        dtype=torch.long)
        allowed = torch.ones(vocab_size, dtype=torch.bool)
        allowed[self.special_ids[self.special_ids < vocab_size]] = False
        self.random_ids = torch.nonzero(allowed).flatten()
        if self.random_ids.numel() == 0:
            raise UserError("the vocabulary has no non-special token to predict")

    def __call__(self, examples: list[dict], generator: torch.Generator) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("cannot collate an empty batch")
        lengths = [len(e["input_ids"]) for e in examples]
        length = max(lengths)
        input_ids = _pad([e["input_ids"] for e in examples], self.pad_id, length, torch.long)
        attention_mask = (torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]).long()
        if "token_type_ids" in examples[0]:
            token_type_ids = _pad([e["token_type_ids"] for e in examples], 0, length, torch.long)
        else:
            token_type_ids = torch.zeros_like(input_ids)
        word_starts = None
        if self.config.whole_word:
            if any("word_starts" not in e for e in examples):
                raise UserError("whole-word masking needs examples with word_starts")
            word_starts = _pad([e["word_starts"] for e in examples], 1, length, torch.bool)
        special = torch.isin(input_ids, self.special_ids) | (attention_mask == 0)
        masked, labels = mask_tokens(input_ids, special_mask=special, mask_id=self.mask_id,
                                     vocab_size=self.vocab_size, config=self.config, generator=generator,
                                     word_starts=word_starts, random_ids=self.random_ids)
        batch = {"input_ids": masked, "attention_mask": attention_mask,
                 "token_type_ids": token_type_ids, "labels": labels}
        if "nsp_label" in examples[0]:
            batch["nsp_labels"] = torch.tensor([int(e["nsp_label"]) for e in examples], dtype=torch.long)
        return batch


def mlm_metrics(batch: dict[str, torch.Tensor], output: Any) -> dict[str, float]:
    """``{"mlm_correct": c, "mlm_total": n}``: sums, so eval aggregates exactly over batches;
    accuracy = sum(c) / sum(n).

    ``output.logits`` is either [n_labelled, vocab] (rows at ``labels != -100`` in row-major order,
    what the models return when given labels) or the full [batch, seq, vocab].
    """
    labels = batch["labels"]
    keep = labels != IGNORE_INDEX
    logits = output.logits
    if logits.dim() == 3:
        logits = logits[keep.to(logits.device)]
    target = labels[keep].to(logits.device)
    if logits.shape[0] != target.shape[0]:
        raise ValueError(f"{logits.shape[0]} logit rows for {target.shape[0]} labelled positions")
    correct = (logits.argmax(-1) == target).sum().item()
    return {"mlm_correct": float(correct), "mlm_total": float(target.numel())}


def accuracy_metrics(name: str) -> Callable[[dict[str, torch.Tensor], Any], dict[str, float]]:
    """:func:`mlm_metrics` under another name, ``{name}_correct`` / ``{name}_total``: accuracy on
    the labelled tokens of any objective (the predicted tokens, a decoder's targets)."""

    def metrics(batch: dict[str, torch.Tensor], output: Any) -> dict[str, float]:
        sums = mlm_metrics(batch, output)
        return {f"{name}_correct": sums["mlm_correct"], f"{name}_total": sums["mlm_total"]}

    return metrics


def masked_lm_collator(tokenizer: "Tokenizer", config: MLMConfig) -> MLMCollator:
    return MLMCollator(pad_id=tokenizer.pad_id, mask_id=tokenizer.mask_id, vocab_size=tokenizer.vocab_size,
                       special_ids=tokenizer.special_ids, config=config)


def build_mlm(tokenizer: "Tokenizer", train_corpus: "TokenizedCorpus", eval_corpus: "TokenizedCorpus",
              options: MLMConfig, *, seq_len: int, seed: int) -> ObjectiveSetup:
    """RoBERTa recipe: full sentences packed across documents to seq_len, masks drawn afresh each time."""

    def packed(corpus: "TokenizedCorpus") -> PackedDataset:
        return PackedDataset(corpus, max_length=seq_len, bos_id=tokenizer.cls_id, eos_id=tokenizer.sep_id)

    return ObjectiveSetup(packed(train_corpus), packed(eval_corpus), masked_lm_collator(tokenizer, options),
                          mlm_metrics)


OBJECTIVE = Objective(name="mlm", title="masked LM", options=MLMConfig, build=build_mlm)
