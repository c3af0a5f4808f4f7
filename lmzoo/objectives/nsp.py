"""BERT next-sentence prediction, after Google's ``create_pretraining_data.py``.

Each document's sentences are grouped greedily into chunks of about ``max_length - 3`` tokens
(once, at construction, from ``seed``). Every time a chunk is read it is split afresh, from a
numpy Generator seeded by (seed, epoch, index), into ``[CLS] A [SEP] B [SEP]`` where B is the
rest of the chunk (label 0, IsNext: HF's convention) or, half the time, sentences from another
document (label 1, NotNext). Masking is the collator's job (:class:`lmzoo.objectives.mlm.MLMCollator`
turns ``nsp_label`` into ``nsp_labels``).

Deviation from Google: chunks are fixed, so a NotNext example does not hand its unused sentences
back to the next chunk (they are simply not in that example this time).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lmzoo.errors import UserError
from lmzoo.objectives.base import Objective, ObjectiveSetup
from lmzoo.objectives.mlm import MLMConfig, masked_lm_collator, mlm_metrics

if TYPE_CHECKING:
    from lmzoo.data import TokenizedCorpus
    from lmzoo.tokenizer import Tokenizer

IS_NEXT, NOT_NEXT = 0, 1


class NSPDataset:
    """Sentence-pair examples ``{"input_ids", "token_type_ids", "word_starts", "nsp_label"}``,
    at most ``max_length`` tokens each; token types are 0 for ``[CLS] A [SEP]`` and 1 for ``B [SEP]``.

    With probability ``short_seq_prob`` a chunk's target length is drawn uniformly from
    [2, max_length - 3] instead of max_length - 3 (Google: fewer pretrain/fine-tune mismatches).
    A chunk of one sentence always gets a random B (label 1), as in Google's code.
    """

    def __init__(self, corpus: "TokenizedCorpus", *, max_length: int, cls_id: int, sep_id: int,
                 seed: int, short_seq_prob: float = 0.1) -> None:
        if max_length < 5:
            raise UserError(f"max_length must be >= 5 for [CLS] A [SEP] B [SEP], got {max_length}")
        if not 0.0 <= short_seq_prob <= 1.0:
            raise UserError(f"short_seq_prob must be in [0, 1], got {short_seq_prob}")
        if cls_id is None or sep_id is None:
            raise UserError("next-sentence prediction needs a tokenizer with [CLS] and [SEP] tokens")
        self.corpus = corpus
        self.max_length, self.cls_id, self.sep_id, self.seed = int(max_length), cls_id, sep_id, int(seed)
        self.short_seq_prob = float(short_seq_prob)
        self.epoch = 0
        self.max_tokens = self.max_length - 3
        self.sent_off = np.asarray(corpus.sentence_offsets)
        doc_off = np.asarray(corpus.document_offsets)
        docs = np.asarray(corpus.doc_ids, dtype=np.int64)
        self.doc_first, self.doc_end = doc_off[docs].astype(np.int64), doc_off[docs + 1].astype(np.int64)
        nonempty = self.doc_end > self.doc_first
        self.doc_first, self.doc_end = self.doc_first[nonempty], self.doc_end[nonempty]
        if len(self.doc_first) < 2:
            raise UserError(f"next-sentence prediction needs at least 2 documents, the corpus has "
                            f"{len(self.doc_first)}")
        self._build_chunks()
        if len(self.chunk_first) == 0:
            raise UserError("the corpus gives no next-sentence example")

    def _build_chunks(self) -> None:
        rng = np.random.default_rng([self.seed, 0x4E5350])
        sent_len = np.diff(self.sent_off)
        doc_of, first, end, target = [], [], [], []
        for d, (s0, s1) in enumerate(zip(self.doc_first.tolist(), self.doc_end.tolist())):
            tgt, length, start = self._target(rng), 0, s0
            for s in range(s0, s1):
                length += int(sent_len[s])
                if s == s1 - 1 or length >= tgt:
                    doc_of.append(d), first.append(start), end.append(s + 1), target.append(tgt)
                    tgt, length, start = self._target(rng), 0, s + 1
        self.chunk_doc = np.array(doc_of, dtype=np.int64)     # index into doc_first/doc_end
        self.chunk_first = np.array(first, dtype=np.int64)    # global sentence numbers
        self.chunk_end = np.array(end, dtype=np.int64)
        self.chunk_target = np.array(target, dtype=np.int64)  # target length of A + B

    def _target(self, rng: np.random.Generator) -> int:
        if rng.random() < self.short_seq_prob:
            return int(rng.integers(2, self.max_tokens + 1))
        return self.max_tokens

    def set_epoch(self, epoch: int) -> None:
        """Pairs and truncations are drawn anew each epoch (chunks stay the same)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.chunk_first)

    def _span(self, first_sentence: int, end_sentence: int) -> tuple[int, int]:
        return int(self.sent_off[first_sentence]), int(self.sent_off[end_sentence])

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"example {i} out of range for {len(self)} examples")
        i %= len(self)
        rng = np.random.default_rng([self.seed, self.epoch, i])
        first, end = int(self.chunk_first[i]), int(self.chunk_end[i])
        n_sent = end - first
        a_end = first + (int(rng.integers(1, n_sent)) if n_sent >= 2 else 1)
        a = self._span(first, a_end)
        if n_sent == 1 or rng.random() < 0.5:
            label = NOT_NEXT
            target_b = int(self.chunk_target[i]) - (a[1] - a[0])
            other = int(rng.integers(len(self.doc_first) - 1))
            other += other >= self.chunk_doc[i]  # any document but this one
            d0, d1 = int(self.doc_first[other]), int(self.doc_end[other])
            b_first = int(rng.integers(d0, d1))
            # from b_first, whole sentences until B reaches its target length (at least one)
            need = self.sent_off[b_first] + max(target_b, 1)
            b_end = min(int(np.searchsorted(self.sent_off[b_first + 1:d1 + 1], need)) + b_first + 1, d1)
            b = self._span(b_first, b_end)
        else:
            label = IS_NEXT
            b = self._span(a_end, end)
        a, b = _truncate_pair(a, b, self.max_tokens, rng)
        tokens, word_starts = self.corpus.tokens, self.corpus.word_starts
        la, lb = a[1] - a[0], b[1] - b[0]
        input_ids = np.empty(la + lb + 3, dtype=np.int64)
        input_ids[0], input_ids[la + 1], input_ids[-1] = self.cls_id, self.sep_id, self.sep_id
        input_ids[1:la + 1] = tokens[a[0]:a[1]]
        input_ids[la + 2:-1] = tokens[b[0]:b[1]]
        ws = np.ones(la + lb + 3, dtype=np.bool_)
        ws[2:la + 1] = word_starts[a[0] + 1:a[1]]      # a segment's first token always starts a word
        ws[la + 3:-1] = word_starts[b[0] + 1:b[1]]
        token_type_ids = np.zeros(la + lb + 3, dtype=np.int64)
        token_type_ids[la + 2:] = 1
        return {"input_ids": input_ids, "token_type_ids": token_type_ids, "word_starts": ws,
                "nsp_label": label}


def _truncate_pair(a: tuple[int, int], b: tuple[int, int], max_tokens: int,
                   rng: np.random.Generator) -> tuple[tuple[int, int], tuple[int, int]]:
    """Google's truncate_seq_pair in closed form: trim the longer span one token at a time (B on
    ties) until A + B fits, each token from the front or the back with probability 1/2."""
    la, lb = a[1] - a[0], b[1] - b[0]
    excess = la + lb - max_tokens
    if excess <= 0:
        return a, b
    if la > lb and la - excess >= lb:
        new_a, new_b = la - excess, lb
    elif lb >= la and lb - excess >= la:
        new_a, new_b = la, lb - excess
    else:  # both shrink until they meet, then alternate: A keeps the odd token
        new_a, new_b = -(-max_tokens // 2), max_tokens // 2
    cut_a, cut_b = la - new_a, lb - new_b
    front_a, front_b = int(rng.binomial(cut_a, 0.5)), int(rng.binomial(cut_b, 0.5))
    return (a[0] + front_a, a[1] - (cut_a - front_a)), (b[0] + front_b, b[1] - (cut_b - front_b))


def nsp_metrics(batch: dict[str, torch.Tensor], output: Any) -> dict[str, float]:
    """``{"nsp_correct": c, "nsp_total": n}`` from ``output.nsp_logits`` [batch, 2]; sums, so
    eval aggregates exactly (accuracy = sum(c) / sum(n))."""
    labels = batch["nsp_labels"].to(output.nsp_logits.device)
    correct = (output.nsp_logits.argmax(-1) == labels).sum().item()
    return {"nsp_correct": float(correct), "nsp_total": float(labels.numel())}


def mlm_nsp_metrics(batch: dict[str, torch.Tensor], output: Any) -> dict[str, float]:
    """:func:`~lmzoo.objectives.mlm.mlm_metrics` and :func:`nsp_metrics` together (BERT pretraining)."""
    return {**mlm_metrics(batch, output), **nsp_metrics(batch, output)}


def build_mlm_nsp(tokenizer: "Tokenizer", train_corpus: "TokenizedCorpus", eval_corpus: "TokenizedCorpus",
                  options: MLMConfig, *, seq_len: int, seed: int) -> ObjectiveSetup:
    """BERT recipe: sentence pairs (50% true next, 50% from another document) with MLM on both;
    the held-out pairs are drawn with ``seed + 1``."""
    if tokenizer.cls_id is None or tokenizer.sep_id is None:
        raise UserError("next-sentence prediction needs a tokenizer with [CLS] and [SEP] tokens")
    for name, corpus in (("training", train_corpus), ("held-out", eval_corpus)):
        if len(corpus) < 2:
            raise UserError(f"corpus too small for next-sentence prediction: the {name} split has {len(corpus)} "
                            "document(s), NSP needs at least 2 (add text or change --eval-fraction)")

    def pairs(corpus: "TokenizedCorpus", seed: int) -> NSPDataset:
        return NSPDataset(corpus, max_length=seq_len, cls_id=tokenizer.cls_id, sep_id=tokenizer.sep_id, seed=seed)

    return ObjectiveSetup(pairs(train_corpus, seed), pairs(eval_corpus, seed + 1),
                          masked_lm_collator(tokenizer, options), mlm_nsp_metrics)


OBJECTIVE = Objective(name="mlm+nsp", title="masked LM + next-sentence prediction", options=MLMConfig,
                      build=build_mlm_nsp, segment_types=2)
