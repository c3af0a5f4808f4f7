"""Named-entity recognition (token classification): word-level BIO tags in, aligned to subwords for
training (first subword labelled, the rest ignored), predictions mapped back to words, and entities
scored with seqeval."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from lmzoo.errors import UserError
from lmzoo.tasks.data import PaddingCollator, TaggedSentence, align_tags
from lmzoo.tasks.metrics import ner_metrics

OUTSIDE = "O"
BIO_TAG = re.compile(r"O|[BI]-.+")  # entities() and seqeval read these; a bare "PER" would be type "ER"


def is_bio(tag: str) -> bool:
    return BIO_TAG.fullmatch(tag) is not None


def check_bio(sentences: Sequence[TaggedSentence], path: str | Path) -> None:
    """A UserError naming the first tag that is not BIO (B-X, I-X or O)."""
    bad = next((t for s in sentences for t in s.tags if not is_bio(t)), None)
    if bad is not None:
        raise UserError(f"{path}: tag {bad!r}: tags must be BIO (B-X, I-X or O)")


class TaggedDataset:
    """Map-style dataset of sentences: ``{"input_ids", "labels"}`` per sentence (labels -100 except at
    each word's first subword). ``first_tokens[i]`` maps sentence i's words to token positions."""

    def __init__(self, sentences: Sequence[TaggedSentence], tokenizer: Any, label2id: dict[str, int] | None,
                 max_length: int) -> None:
        self.items: list[dict[str, Any]] = []
        self.first_tokens: list[list[int]] = []
        for s in sentences:
            tag_ids = [label2id[t] for t in s.tags] if label2id is not None and s.tags else None
            input_ids, labels, first = align_tags(tokenizer, s.words, tag_ids, max_length)
            item: dict[str, Any] = {"input_ids": np.asarray(input_ids, np.int64)}
            if tag_ids is not None:
                item["labels"] = labels
            self.items.append(item)
            self.first_tokens.append(first)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.items[i]


def ner_collator(pad_id: int, token_types: bool) -> PaddingCollator:
    return PaddingCollator(pad_id, token_types=token_types, token_labels=True)


@torch.no_grad()
def predict_tags(model: Any, tokenizer: Any, sentences: Sequence[TaggedSentence], *, max_length: int = 128,
                 batch_size: int = 32) -> list[dict[str, Any]]:
    """Word-level predictions: for each sentence ``{"tags": [...], "scores": [...]}``, each word taking
    the tag predicted at its first subword (a word with no token, e.g. truncated away, gets "O")."""
    data = TaggedDataset([TaggedSentence(s.words) for s in sentences], tokenizer, None, max_length)
    collate = ner_collator(pad_id(tokenizer, model), model.config.type_vocab_size > 0)
    id2label = model.config.id2label or {}
    outside = next((i for i, name in id2label.items() if name == OUTSIDE), 0)
    was_training = model.training
    model.eval()
    results = []
    for start in range(0, len(data), batch_size):
        batch = collate([data[i] for i in range(start, min(len(data), start + batch_size))])
        probs = model(**{k: v.to(model.device) for k, v in batch.items()}).logits.float().softmax(-1).cpu()
        best_p, best = probs.max(-1)  # (B, T)
        for row in range(best.shape[0]):
            first = data.first_tokens[start + row]
            tags = [id2label.get(int(best[row, t]) if t >= 0 else outside, OUTSIDE) for t in first]
            scores = [round(float(best_p[row, t]), 4) if t >= 0 else None for t in first]
            results.append({"tags": tags, "scores": scores})
    model.train(was_training)
    return results


def entities(words: Sequence[str], tags: Sequence[str]) -> list[dict[str, Any]]:
    """Entity spans of BIO tags (CoNLL rules, as seqeval's default: an I- after O or another type
    opens an entity): ``{"type", "start", "end" (exclusive word index), "text"}``."""
    spans: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for i, tag in enumerate(list(tags) + [OUTSIDE]):
        prefix, _, kind = tag.partition("-") if "-" in tag else (tag, "", "")
        continues = current is not None and prefix == "I" and kind == current["type"]
        if current is not None and not continues:
            current["end"] = i
            current["text"] = " ".join(words[current["start"]:i])
            spans.append(current)
            current = None
        if prefix in ("B", "I") and not continues:
            current = {"type": kind, "start": i}
    return spans


def score_tags(sentences: Sequence[TaggedSentence], predictions: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return ner_metrics([s.tags for s in sentences], [p["tags"] for p in predictions])


def pad_id(tokenizer: Any, model: Any) -> int:
    """The id rows are padded with: the tokenizer's pad token, else the model's, else end-of-text
    (GPT-2 has no pad token; attention masks hide the padding, so any real id is safe)."""
    return next((i for i in (tokenizer.pad_id, model.config.pad_token_id, tokenizer.eos_id) if i is not None), 0)
