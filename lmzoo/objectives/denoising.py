"""BART denoising (Lewis et al., 2020, §2.2): corrupt a document, the decoder rebuilds the original.

Five noise functions, each a pure function of (tokens, rate, rng):
- ``token_masking``: each token becomes <mask> with probability ``rate``;
- ``token_deletion``: round(rate * n) tokens are deleted (the model must find where);
- ``text_infilling``: spans with Poisson(λ) lengths cover round(rate * n) tokens; each span becomes ONE
  <mask> (a length-0 span inserts a <mask>), so the model also predicts how many tokens are missing;
- ``sentence_permutation``: the document's sentences in a random order;
- ``document_rotation``: the document rotated to start at a random token.
The paper's final recipe (the default) is text infilling over 30% of tokens with λ = 3 plus sentence
permutation. Order as fairseq: permute sentences, mask/delete/infill, rotate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lmzoo.errors import UserError
from lmzoo.objectives.base import Objective, ObjectiveSetup
from lmzoo.objectives.mlm import accuracy_metrics
from lmzoo.options import option

if TYPE_CHECKING:
    from lmzoo.data import TokenizedCorpus
    from lmzoo.tokenizer import Tokenizer

IGNORE_INDEX = -100
MIN_LAMBDA, MAX_LAMBDA = 0.1, 1e4  # the accepted mean infilled span lengths (BART: 3)


@dataclass(frozen=True, kw_only=True)
class DenoisingConfig:
    """Rates of each noise (0 = off). Defaults: the paper's final recipe. The options of objective denoise."""

    infill_rate: float = option(0.3, "share of tokens infilled (Poisson spans)")
    poisson_lambda: float = option(3.0, "mean infilled span length")
    mask_rate: float = option(0.0, "token masking rate")
    delete_rate: float = option(0.0, "token deletion rate")
    permute_sentences: bool = option(True, "shuffle each window's sentences (on by default, as BART)")
    rotate: bool = option(False, "document rotation")

    def __post_init__(self) -> None:
        for name in ("mask_rate", "delete_rate", "infill_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise UserError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        # below the range nearly every span is an empty insertion (and covering the budget takes about
        # budget / lambda draws); above it, one span covers any budget, as at the top of the range
        if not MIN_LAMBDA <= self.poisson_lambda <= MAX_LAMBDA:
            raise UserError(f"poisson_lambda must be in [{MIN_LAMBDA}, {MAX_LAMBDA:g}], got {self.poisson_lambda}")
        if not (self.infill_rate or self.mask_rate or self.delete_rate or self.permute_sentences or self.rotate):
            raise UserError("every noise is off (infill, mask and delete rates 0, no sentence permutation, no "
                            "rotation): the model would learn to copy its input")


def token_masking(tokens: np.ndarray, rate: float, mask_id: int, rng: np.random.Generator) -> np.ndarray:
    """Each token independently replaced by ``mask_id`` with probability ``rate``."""
    return np.where(rng.random(len(tokens)) < rate, mask_id, tokens)


def token_deletion(tokens: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Delete exactly round(rate * n) tokens chosen uniformly; the others keep their order."""
    n_delete = int(round(rate * len(tokens)))
    keep = np.ones(len(tokens), dtype=bool)
    keep[rng.choice(len(tokens), size=n_delete, replace=False)] = False
    return tokens[keep]


def text_infilling(tokens: np.ndarray, rate: float, lam: float, mask_id: int, rng: np.random.Generator,
                   max_length: int | None = None) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Replace spans covering round(rate * n) tokens, lengths ~ Poisson(lam), each by one ``mask_id``.

    Span lengths are drawn until they cover the budget (the last one is cut to fit); length-0 spans
    are insertions. Spans do not overlap; they sit at uniformly random places among the clean tokens.
    ``max_length``: the output's room; insertions that would overflow it are dropped (the others
    cannot lengthen the input), so no clean token is ever cut away from the model's input.
    Returns (noised tokens, [(start in the original, length), ...] in order)."""
    n = len(tokens)
    budget = int(round(rate * n))
    lengths = np.zeros(0, dtype=np.int64)
    while budget and lengths.sum() < budget:  # drawn in blocks, as fairseq: one draw at a time is slow at small lam
        lengths = np.concatenate([lengths, rng.poisson(lam, size=budget)])
    if budget:
        covered = np.cumsum(lengths)
        k = int(np.searchsorted(covered, budget)) + 1  # the first k spans cover the budget
        lengths = lengths[:k]
        lengths[-1] -= covered[k - 1] - budget
    if max_length is not None and n - budget + len(lengths) > max_length:
        insertions = np.flatnonzero(lengths == 0)
        surplus = min(n - budget + len(lengths) - max_length, len(insertions))
        lengths = np.delete(lengths, insertions[len(insertions) - surplus:])
    lengths = [int(x) for x in lengths]
    k = len(lengths)
    # k spans and n - budget clean tokens: the spans sit in k of the n - budget + k slots of the merged order
    slots = np.sort(rng.choice(n - budget + k, size=k, replace=False))
    out: list[int] = []
    spans: list[tuple[int, int]] = []
    pos = 0  # index into the original tokens
    span_i = 0
    for slot in range(n - budget + k):
        if span_i < k and slots[span_i] == slot:
            spans.append((pos, lengths[span_i]))
            out.append(mask_id)
            pos += lengths[span_i]
            span_i += 1
        else:
            out.append(int(tokens[pos]))
            pos += 1
    return np.asarray(out, dtype=np.int64), spans


def sentence_permutation(tokens: np.ndarray, sentence_ids: np.ndarray,
                         rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The sentences (runs of equal ``sentence_ids``) in a uniformly random order; returns (tokens, order)."""
    bounds = np.flatnonzero(np.diff(sentence_ids)) + 1
    sentences = np.split(tokens, bounds)
    order = rng.permutation(len(sentences))
    return np.concatenate([sentences[i] for i in order]), order


def document_rotation(tokens: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Rotate so the document starts at a uniformly chosen token; returns (tokens, offset)."""
    offset = int(rng.integers(len(tokens))) if len(tokens) else 0
    return np.roll(tokens, -offset), offset


def add_noise(tokens: np.ndarray, config: DenoisingConfig, *, mask_id: int, rng: np.random.Generator,
              sentence_ids: np.ndarray | None = None, trace: list[dict[str, Any]] | None = None,
              max_length: int | None = None) -> np.ndarray:
    """All enabled noise functions, in fairseq's order, over the content tokens (no bos/eos).
    ``max_length``: the room of the noised tokens (see :func:`text_infilling`, the one noise that
    lengthens its input).

    ``trace`` (``lmzoo explain``): each applied noise appends ``{"noise", "tokens"}`` (the tokens
    after it) plus what it drew: ``order`` of the sentences, infilled ``spans`` as (start, length)
    in its input, the rotation ``offset``."""

    def step(noise: str, result: np.ndarray, **drawn: Any) -> np.ndarray:
        if trace is not None:
            trace.append({"noise": noise, "tokens": result.tolist(), **drawn})
        return result

    if config.permute_sentences and sentence_ids is not None and len(tokens):
        tokens, order = sentence_permutation(tokens, sentence_ids, rng)
        tokens = step("sentence_permutation", tokens, order=order.tolist())
    if config.mask_rate:
        tokens = step("token_masking", token_masking(tokens, config.mask_rate, mask_id, rng))
    if config.delete_rate:
        tokens = step("token_deletion", token_deletion(tokens, config.delete_rate, rng))
    if config.infill_rate:
        tokens, spans = text_infilling(tokens, config.infill_rate, config.poisson_lambda, mask_id, rng, max_length)
        tokens = step("text_infilling", tokens, spans=[list(s) for s in spans])
    if config.rotate:
        tokens, offset = document_rotation(tokens, rng)
        tokens = step("document_rotation", tokens, offset=offset)
    return tokens


class DenoisingCollator:
    """Collator: examples ``{"input_ids": content tokens, "sentence_ids": optional per-token sentence
    index}`` → ``input_ids`` = ``bos + noised + eos`` (padded), ``attention_mask``, ``labels`` =
    ``bos + original + eos`` (padded with -100). The model shifts labels right itself."""

    def __init__(self, *, mask_id: int, pad_id: int, bos_id: int | None, eos_id: int,
                 config: DenoisingConfig = DenoisingConfig(), max_length: int | None = None) -> None:
        if mask_id is None:
            raise UserError("denoising needs a tokenizer with a <mask> token")
        self.mask_id, self.pad_id, self.bos_id, self.eos_id = mask_id, pad_id, bos_id, eos_id
        self.config, self.max_length = config, max_length

    def wrap(self, tokens: np.ndarray) -> np.ndarray:
        head = [] if self.bos_id is None else [self.bos_id]
        return np.concatenate([np.array(head, np.int64), tokens.astype(np.int64), np.array([self.eos_id], np.int64)])

    def __call__(self, examples: list[dict[str, Any]], generator: torch.Generator | None = None, *,
                 trace: list[dict[str, Any]] | None = None) -> dict[str, torch.Tensor]:
        """``trace``: see :func:`add_noise` (the steps of every example, in order)."""
        seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
        rng = np.random.default_rng(seed)
        sources, targets = [], []
        room = None if self.max_length is None else self.max_length - 1 - (self.bos_id is not None)
        for ex in examples:
            # the content is cut, not the wrapped row, so a row always ends with eos; the noise keeps
            # within the room (infilling drops insertions that would overflow it), so source and
            # target hold the same text
            tokens = np.asarray(ex["input_ids"], dtype=np.int64)[:room]
            sentence_ids = ex.get("sentence_ids")
            sentence_ids = None if sentence_ids is None else np.asarray(sentence_ids)[:room]
            noised = add_noise(tokens, self.config, mask_id=self.mask_id, rng=rng, trace=trace,
                               sentence_ids=sentence_ids, max_length=room)
            sources.append(self.wrap(noised))
            targets.append(self.wrap(tokens))
        n_in = max(len(s) for s in sources)
        n_out = max(len(t) for t in targets)
        input_ids = torch.full((len(sources), n_in), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        labels = torch.full((len(sources), n_out), IGNORE_INDEX, dtype=torch.long)
        for row, (s, t) in enumerate(zip(sources, targets)):
            input_ids[row, :len(s)] = torch.from_numpy(s)
            attention_mask[row, :len(s)] = 1
            labels[row, :len(t)] = torch.from_numpy(t)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class SentenceWindows:
    """Map-style dataset for denoising: each item is a window of whole consecutive sentences of one
    document, at most ``max_tokens`` tokens (a longer sentence is cut), with ``sentence_ids`` so
    sentence permutation knows the boundaries. Windows are fixed at construction (no randomness)."""

    def __init__(self, corpus: Any, *, max_tokens: int) -> None:
        if max_tokens < 2:
            raise UserError(f"denoising windows need at least 2 tokens, got {max_tokens}")
        self.corpus, self.max_tokens = corpus, max_tokens
        offsets = np.asarray(corpus.sentence_offsets)
        windows: list[tuple[int, int]] = []  # (first sentence, end sentence)
        for doc in np.asarray(corpus.doc_ids):
            first, end = corpus.sentence_range(int(doc))
            start, size = first, 0
            for sentence in range(first, end):
                length = int(offsets[sentence + 1] - offsets[sentence])
                if size and size + length > max_tokens:
                    windows.append((start, sentence))
                    start, size = sentence, 0
                size += length
            if end > start:
                windows.append((start, end))
        if not windows:
            raise UserError("cannot build denoising windows from an empty corpus")
        self.windows = np.asarray(windows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        first, end = (int(x) for x in self.windows[i])
        offsets = np.asarray(self.corpus.sentence_offsets)
        tokens = np.asarray(self.corpus.tokens[offsets[first]:offsets[end]], dtype=np.int64)
        lengths = np.diff(offsets[first:end + 1])
        sentence_ids = np.repeat(np.arange(end - first), lengths)
        return {"input_ids": tokens[: self.max_tokens], "sentence_ids": sentence_ids[: self.max_tokens]}


def build_denoising(tokenizer: "Tokenizer", train_corpus: "TokenizedCorpus", eval_corpus: "TokenizedCorpus",
                    options: DenoisingConfig, *, seq_len: int, seed: int) -> ObjectiveSetup:
    """BART recipe: windows of whole sentences of one document; text infilling (30%, Poisson λ=3)
    plus sentence permutation by default; the decoder reconstructs the original."""
    collate = DenoisingCollator(mask_id=tokenizer.mask_id, pad_id=tokenizer.pad_id, bos_id=tokenizer.bos_id,
                                eos_id=tokenizer.eos_id, config=options, max_length=seq_len)
    # the collator adds bos and eos around each window
    return ObjectiveSetup(SentenceWindows(train_corpus, max_tokens=seq_len - 2),
                          SentenceWindows(eval_corpus, max_tokens=seq_len - 2), collate, accuracy_metrics("token"))


OBJECTIVE = Objective(name="denoise", title="denoising", options=DenoisingConfig, build=build_denoising)
