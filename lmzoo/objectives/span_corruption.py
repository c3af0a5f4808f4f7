"""T5 span corruption (Raffel et al., 2020, §3.1.4): drop ~15% of the tokens in spans of mean length 3,
replace each span by one sentinel (<extra_id_0>, <extra_id_1>, ... in order) and ask the decoder for
the sentinels followed by the spans they hide.

    original  The cat sat on the mat today
    inputs    The <X> on the <Y> today </s>       (X = <extra_id_0>, Y = <extra_id_1>)
    targets   <X> cat sat <Y> mat </s>

``raw_length_for`` picks how many raw tokens to read so the corrupted input is *exactly* the requested
length (no padding, no truncation), as T5's ``random_spans_helper`` does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from lmzoo.errors import UserError
from lmzoo.objectives.base import Objective, ObjectiveSetup
from lmzoo.objectives.mlm import accuracy_metrics
from lmzoo.objectives.packing import PackedDataset
from lmzoo.options import option

if TYPE_CHECKING:
    from lmzoo.data import TokenizedCorpus
    from lmzoo.tokenizer import Tokenizer

IGNORE_INDEX = -100


@dataclass(frozen=True, kw_only=True)
class SpanCorruptionConfig:
    """The options of objective span (T5's defaults)."""

    noise_density: float = option(0.15, "share of tokens in corrupted spans")
    mean_span_length: float = option(3.0, "mean corrupted span length")

    def __post_init__(self) -> None:
        if not 0.0 < self.noise_density < 1.0:
            raise UserError(f"noise_density must be in (0, 1), got {self.noise_density}")
        if not (self.mean_span_length >= 1.0 and math.isfinite(self.mean_span_length)):
            raise UserError(f"mean_span_length must be a number >= 1, got {self.mean_span_length}")


def span_counts(length: int, config: SpanCorruptionConfig) -> tuple[int, int]:
    """(noise tokens, noise spans) for ``length`` raw tokens; at least one of each, one clean token kept."""
    n_noise = min(max(int(round(length * config.noise_density)), 1), length - 1)
    n_spans = max(int(round(n_noise / config.mean_span_length)), 1)
    return n_noise, min(n_spans, length - n_noise)


def corrupted_lengths(length: int, config: SpanCorruptionConfig) -> tuple[int, int]:
    """(input length, target length) after corrupting ``length`` raw tokens, eos included in both."""
    n_noise, n_spans = span_counts(length, config)
    return length - n_noise + n_spans + 1, n_noise + n_spans + 1


def raw_length_for(input_length: int, config: SpanCorruptionConfig) -> tuple[int, int]:
    """(raw tokens to read, target length): the most raw tokens whose corrupted input has at most
    ``input_length`` tokens (T5's ``random_spans_helper``, nanoT5's ``compute_input_and_target_lengths``).
    The input usually fills ``input_length`` exactly; where the span count is capped at one per
    clean token (noise density above about mean / (mean + 1)) the input grows by 2 per clean
    token and can end one short."""
    if input_length < 3:
        raise UserError(f"span corruption needs inputs of at least 3 tokens, got {input_length}")
    raw = input_length
    while corrupted_lengths(raw + 1, config)[0] <= input_length:
        raw += 1
    while raw > 2 and corrupted_lengths(raw, config)[0] > input_length:
        raw -= 1
    return raw, corrupted_lengths(raw, config)[1]


def random_segmentation(n_items: int, n_segments: int, rng: np.random.Generator) -> np.ndarray:
    """Lengths (each >= 1, summing to ``n_items``) of a uniformly random split into ``n_segments``."""
    cuts = np.sort(rng.choice(np.arange(1, n_items), size=n_segments - 1, replace=False))
    return np.diff(np.concatenate([[0], cuts, [n_items]]))


def noise_mask(length: int, config: SpanCorruptionConfig, rng: np.random.Generator) -> np.ndarray:
    """Bool [length]: True on noise tokens; spans alternate clean / noise, starting clean (as T5)."""
    n_noise, n_spans = span_counts(length, config)
    noise = random_segmentation(n_noise, n_spans, rng)
    clean = random_segmentation(length - n_noise, n_spans, rng)
    lengths = np.stack([clean, noise], 1).reshape(-1)  # clean_0 noise_0 clean_1 noise_1 ...
    flags = np.tile([False, True], n_spans)
    return np.repeat(flags, lengths)


def corrupt(tokens: np.ndarray, mask: np.ndarray, sentinel_ids: Sequence[int], eos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets): each run of masked tokens → the next sentinel in the inputs; the targets are
    each sentinel followed by the run it replaced. Both end with ``eos_id``."""
    starts = mask & ~np.concatenate([[False], mask[:-1]])  # first token of each noise span
    n_spans = int(starts.sum())
    if n_spans > len(sentinel_ids):
        raise UserError(f"{n_spans} noise spans but the tokenizer has only {len(sentinel_ids)} sentinels "
                        "(train it with more --extra-ids or use shorter inputs)")
    span_index = np.cumsum(starts) - 1  # which span each token belongs to
    sentinels = np.asarray(sentinel_ids, dtype=np.int64)
    inputs = np.where(starts, sentinels[span_index.clip(0)], tokens)[~mask | starts]
    target_sentinel = np.where(starts, sentinels[span_index.clip(0)], -1)
    targets = np.stack([target_sentinel, np.where(mask, tokens, -1)], 1).reshape(-1)
    targets = targets[targets >= 0]
    eos = np.array([eos_id], dtype=np.int64)
    return np.concatenate([inputs.astype(np.int64), eos]), np.concatenate([targets.astype(np.int64), eos])


def reassemble(inputs: Sequence[int], targets: Sequence[int], sentinel_ids: Sequence[int], eos_id: int) -> list[int]:
    """Inverse of :func:`corrupt`: put each sentinel's span back into the inputs (drops the eos)."""
    sentinel_set = set(int(s) for s in sentinel_ids)
    spans: dict[int, list[int]] = {}
    current = None
    for t in targets:
        t = int(t)
        if t == eos_id:
            break
        if t in sentinel_set:
            current = spans.setdefault(t, [])
        elif current is not None:
            current.append(t)
    out: list[int] = []
    for t in inputs:
        t = int(t)
        if t == eos_id:
            break
        out.extend(spans.get(t, [])) if t in sentinel_set else out.append(t)
    return out


def sentinel_ids_of(tokenizer: Any) -> list[int]:
    """Ids of <extra_id_0>, <extra_id_1>, ... in the tokenizer, in order."""
    ids = []
    while True:
        backend = getattr(tokenizer, "backend", tokenizer)
        i = backend.token_to_id(f"<extra_id_{len(ids)}>")
        if i is None:
            break
        ids.append(i)
    if not ids:
        raise UserError("the tokenizer has no <extra_id_N> sentinels (train it with --extra-ids 100)")
    return ids


class SpanCorruptionCollator:
    """Collator: rows of raw tokens (``{"input_ids": [raw_length]}``, e.g. from ``PackedDataset`` without
    bos/eos and ``max_length = raw_length_for(...)[0]``) → ``input_ids``, ``attention_mask``, ``labels``.
    Full rows give inputs and labels of exactly the lengths ``raw_length_for`` promised; a shorter last
    row is padded (pad in inputs, -100 in labels)."""

    def __init__(self, *, sentinel_ids: Sequence[int], eos_id: int, pad_id: int,
                 config: SpanCorruptionConfig = SpanCorruptionConfig()) -> None:
        self.sentinel_ids = list(sentinel_ids)
        self.eos_id, self.pad_id, self.config = eos_id, pad_id, config

    def __call__(self, examples: list[dict[str, Any]], generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
        rng = np.random.default_rng(seed)
        pairs = []
        for ex in examples:
            tokens = np.asarray(ex["input_ids"], dtype=np.int64)
            if len(tokens) < 2:
                raise UserError("span corruption needs rows of at least 2 tokens")
            pairs.append(corrupt(tokens, noise_mask(len(tokens), self.config, rng), self.sentinel_ids, self.eos_id))
        n_in = max(len(i) for i, _ in pairs)
        n_out = max(len(t) for _, t in pairs)
        input_ids = torch.full((len(pairs), n_in), self.pad_id, dtype=torch.long)
        labels = torch.full((len(pairs), n_out), IGNORE_INDEX, dtype=torch.long)
        for row, (i, t) in enumerate(pairs):
            input_ids[row, :len(i)] = torch.from_numpy(i)
            labels[row, :len(t)] = torch.from_numpy(t)
        attention_mask = torch.zeros_like(input_ids)
        for row, (i, _) in enumerate(pairs):
            attention_mask[row, :len(i)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def build_span_corruption(tokenizer: "Tokenizer", train_corpus: "TokenizedCorpus", eval_corpus: "TokenizedCorpus",
                          options: SpanCorruptionConfig, *, seq_len: int, seed: int) -> ObjectiveSetup:
    """T5 recipe: packed raw rows sized so the corrupted inputs fill seq_len (see raw_length_for), spans →
    sentinels <extra_id_N>, targets = sentinels followed by their spans."""
    raw_length, _ = raw_length_for(seq_len, options)
    sentinels = sentinel_ids_of(tokenizer)
    if (n_spans := span_counts(raw_length, options)[1]) > len(sentinels):  # said before training starts
        raise UserError(f"{n_spans} noise spans per row of {seq_len} tokens but the tokenizer has only "
                        f"{len(sentinels)} sentinels (train it with more --extra-ids, or use a shorter --seq-len "
                        "or a longer --mean-span-length)")

    def packed(corpus: "TokenizedCorpus") -> PackedDataset:
        return PackedDataset(corpus, max_length=raw_length, bos_id=None, eos_id=None, sep_id=tokenizer.eos_id,
                             sep_between_docs=tokenizer.eos_id is not None, min_last_row=2)  # spans need 2

    collate = SpanCorruptionCollator(sentinel_ids=sentinels, eos_id=tokenizer.eos_id,
                                     pad_id=tokenizer.pad_id, config=options)
    return ObjectiveSetup(packed(train_corpus), packed(eval_corpus), collate, accuracy_metrics("token"))


OBJECTIVE = Objective(name="span", title="span corruption", options=SpanCorruptionConfig,
                      build=build_span_corruption, extra_ids=100)
