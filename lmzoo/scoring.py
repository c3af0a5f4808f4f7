"""Intrinsic scores of a pretrained model on local text (``lmzoo eval``): how well it predicts
held-out documents, by the model's own kind of prediction.

- causal LM (an LM head and the generation protocol, no encoder): lm-eval-harness's
  ``loglikelihood_rolling``: each document alone, every token predicted once, the first from the
  end-of-text token; a document longer than the context in windows whose predicted spans are
  disjoint (``causal_windows``). ``loss``, ``perplexity``, ``word_perplexity``,
  ``byte_perplexity``, ``bits_per_byte``.
- masked LM (an ``mlm_head``): pseudo-log-likelihood (Salazar et al., 2020): every token of a
  document masked alone (one row per token, batched), log P(token | the rest) summed; a token of a
  long document sees the ``context`` tokens around it. ``pseudo_log_likelihood``,
  ``pseudo_perplexity``, ``bits_per_byte``, and ``masked_accuracy`` of the MLM objective's own
  masking (its collator) at a fixed seed.
- permutation LM (a forward taking ``perm_mask`` / ``target_mapping``): the same PLL through the
  query stream (each token predicted with every other one visible, its own content hidden), so it
  compares with a masked LM's; ``plm_loss`` of the PLM objective's collator at a fixed seed; and the
  normalized likelihood of the left-to-right factorization order (one of the orders the PLM objective
  defines), in the causal LM's windows: ``left_to_right_loss``, ``left_to_right_perplexity``,
  ``left_to_right_bits_per_byte``.
- encoder-decoder LM: the family's own pretraining objective (its ``FamilySpec`` default, built
  by the objective unit) at a fixed seed: ``loss`` and ``token_accuracy`` of the reconstruction.

Every score also reports ``tokens``, ``words`` (whitespace-split) and ``bytes`` (UTF-8) of the
documents. Documents are tokenized as pretraining's token cache does it (sentence by sentence,
special-token strings as text: ``encode_document``). The field names are a contract (``FIELDS``).
"""

from __future__ import annotations

import inspect
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from lmzoo.errors import UserError

IGNORE_INDEX = -100
DEFAULT_BATCH_SIZE = 16
MIN_SEQ2SEQ_TOKENS = 2  # shortest example an encoder-decoder objective is scored on

# The kinds of prediction a model can be scored by, and the JSON fields of each, in table order.
FIELDS: dict[str, tuple[str, ...]] = {
    "causal": ("tokens", "words", "bytes", "loss", "perplexity", "word_perplexity", "byte_perplexity",
               "bits_per_byte"),
    "masked": ("tokens", "words", "bytes", "pseudo_log_likelihood", "pseudo_perplexity", "bits_per_byte",
               "masked_accuracy"),
    "permutation": ("tokens", "words", "bytes", "pseudo_log_likelihood", "pseudo_perplexity", "bits_per_byte",
                    "plm_loss", "left_to_right_loss", "left_to_right_perplexity", "left_to_right_bits_per_byte"),
    "seq2seq": ("tokens", "words", "bytes", "loss", "token_accuracy"),
}


# ---------------------------------------------------------------- documents


@dataclass(frozen=True)
class EncodedDocument:
    """One document's token ids (no special tokens), as the pretraining token cache holds them."""

    ids: np.ndarray  # int64 [n]
    word_starts: np.ndarray  # bool [n]
    sentence_lengths: np.ndarray  # int64: tokens of each sentence, empty sentences left out
    words: int  # whitespace-split words of the text
    bytes: int  # UTF-8 bytes of the text


def encode_document(tokenizer: Any, text: str) -> EncodedDocument:
    """``text`` encoded as ``lmzoo.data.TokenizedCorpus`` encodes a document: split with
    ``sentence_pieces`` (the token cache's own), special-token strings as text."""
    from lmzoo.data import sentence_pieces

    pieces = sentence_pieces(text)
    encoded = [e for e in tokenizer.encode_with_word_starts(pieces, split_special_tokens=True) if e[0]] if pieces else []
    ids = np.fromiter((i for e, _ in encoded for i in e), dtype=np.int64)
    starts = np.fromiter((w for _, ws in encoded for w in ws), dtype=np.bool_)
    return EncodedDocument(ids, starts, np.array([len(e) for e, _ in encoded], dtype=np.int64),
                           len(text.split()), len(text.encode("utf-8")))


@dataclass
class _Sums:
    """Totals over the documents; ``nll``: negative log-likelihood (nats) of the scored tokens;
    ``objective_*``: the objective's batches (masked_accuracy, plm_loss, seq2seq loss)."""

    tokens: int = 0
    words: int = 0
    bytes: int = 0
    nll: float = 0.0
    objective_nll: float = 0.0
    objective_correct: int = 0
    objective_total: int = 0

    def add_document(self, doc: EncodedDocument) -> None:
        self.tokens += len(doc.ids)
        self.words += doc.words
        self.bytes += doc.bytes

    def add_objective(self, nll: float, correct: int, total: int) -> None:
        self.objective_nll += nll
        self.objective_correct += correct
        self.objective_total += total

    def counts(self) -> dict[str, int]:
        if not self.tokens:
            raise UserError("no text to score: the documents encode to no tokens")
        return {"tokens": self.tokens, "words": self.words, "bytes": self.bytes}


def _encoded(tokenizer: Any, documents: Iterable[str], sums: _Sums, *, progress: bool, total: int | None
             ) -> Iterator[EncodedDocument]:
    """The documents with at least one token, encoded and counted into ``sums``, behind a progress bar
    (``progress``: shown on a terminal only)."""
    from tqdm.auto import tqdm

    if total is None and hasattr(documents, "__len__"):
        total = len(documents)  # type: ignore[arg-type]
    with tqdm(documents, total=total, desc="eval", unit="doc", disable=None if progress else True,
              file=sys.stderr, dynamic_ncols=True) as bar:
        for text in bar:
            doc = encode_document(tokenizer, text)
            if len(doc.ids):
                sums.add_document(doc)
                yield doc


def _exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


# ---------------------------------------------------------------- batching


def _pad_cat(tensors: list[torch.Tensor], value: int) -> torch.Tensor:
    """Tensors [r_i, ...] of one rank, every dimension after the first padded (at the end) with
    ``value`` to the largest, concatenated along the first."""
    shape = [max(t.shape[d] for t in tensors) for d in range(1, tensors[0].dim())]
    padded = []
    for t in tensors:
        widths = [w for d in reversed(range(1, t.dim())) for w in (0, shape[d - 1] - t.shape[d])]
        padded.append(F.pad(t, widths, value=value) if any(widths) else t)
    return torch.cat(padded)


class _Batcher:
    """Rows (tensors [r, ...] under the same names, added a group at a time) into batches of
    ``batch_size`` rows; ``run(batch)`` gets each batch, padded with ``pads[name]`` (default 0).

    Rows wait in buckets by their width (``input_ids.shape[1]``): a batch holds rows of one width,
    so it has no padding and the model takes its unmasked attention path (rows of a short document
    would otherwise be padded to a long one's width). What is left is run at ``finish``."""

    def __init__(self, batch_size: int, pads: dict[str, int], run: Callable[[dict[str, torch.Tensor]], None]) -> None:
        self.batch_size, self.pads, self.run = batch_size, pads, run
        self.pending: dict[int, list[dict[str, torch.Tensor]]] = {}
        self.count: dict[int, int] = {}

    def add(self, **group: torch.Tensor) -> None:
        width = group["input_ids"].shape[1]
        self.pending.setdefault(width, []).append(group)
        self.count[width] = self.count.get(width, 0) + len(group["input_ids"])
        while self.count[width] >= self.batch_size:
            self._flush(width, self.batch_size)

    def finish(self) -> None:
        for width in sorted(self.pending):
            if self.count[width]:
                self._flush(width, self.count[width])

    def _flush(self, width: int, n: int) -> None:
        pending, taken, need = self.pending[width], [], n
        while need:
            group = pending.pop(0)
            rows = len(group["input_ids"])
            if rows > need:  # split the group: the rest waits for the next batch
                pending.insert(0, {k: v[need:] for k, v in group.items()})
                group, rows = {k: v[:need] for k, v in group.items()}, need
            taken.append(group)
            need -= rows
        self.count[width] -= n
        self.run({k: _pad_cat([g[k] for g in taken], self.pads.get(k, 0)) for k in taken[0]})


def _token_sums(logits: torch.Tensor, targets: torch.Tensor) -> tuple[float, int, int]:
    """(summed NLL, correct argmax, count) of ``logits`` [..., V] against ``targets`` [...] != -100."""
    keep = targets != IGNORE_INDEX
    rows, target = logits[keep].float(), targets[keep]
    log_p = rows.gather(1, target[:, None]).squeeze(1) - rows.logsumexp(-1)
    return -float(log_p.double().sum()), int((rows.argmax(-1) == target).sum()), int(target.numel())


def _labelled_sums(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, int, int]:
    """:func:`_token_sums` of a model output: ``logits`` [B, T, V] for ``labels`` [B, T], or only the
    labelled rows [n_labelled, V] (masked / permutation LM heads given labels)."""
    labels = labels.to(logits.device)
    if logits.dim() == labels.dim() + 1:
        return _token_sums(logits, labels)
    return _token_sums(logits, labels[labels != IGNORE_INDEX])


def _on(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def _example_generator(seed: int, index: int) -> torch.Generator:
    """The generator of example ``index``: its masks and noise depend on (seed, index) alone, not on
    the batch it lands in."""
    return torch.Generator().manual_seed((seed * 1_000_003 + index) % 2**63)


def _collated(collate: Callable, examples: Iterable[dict[str, Any]], seed: int, first: int = 0
              ) -> Iterator[dict[str, torch.Tensor]]:
    """Each example through an objective's collator on its own (its own generator)."""
    for k, example in enumerate(examples, first):
        yield collate([example], _example_generator(seed, k))


# ---------------------------------------------------------------- model capabilities


def model_kind(model: Any) -> str:
    """How ``model`` predicts text (a key of ``FIELDS``), from what it can do, never its family."""
    parameters = inspect.signature(model.forward).parameters
    generates = hasattr(model, "prepare_generation")
    if model.config.is_encoder_decoder and generates:
        return "seq2seq"
    if "perm_mask" in parameters and "target_mapping" in parameters and hasattr(model, "lm_head"):
        return "permutation"
    if getattr(model, "mlm_head", None) is not None:
        return "masked"
    if generates:
        return "causal"
    raise UserError(f"{model.hf_architecture} has no language-model head to score text with: eval needs e.g. a "
                    "*ForMaskedLM, *LMHeadModel, BertForPreTraining or *ForConditionalGeneration folder")


def _context(model: Any, context: int | None, minimum: int = 1) -> int:
    limit = model.config.max_positions
    context = limit if context is None else context
    if not minimum <= context <= limit:
        raise UserError(f"--context must be in {minimum}..{limit} (the model's positions), got {context}")
    return context


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")


# ---------------------------------------------------------------- causal LM


def causal_windows(n: int, context: int) -> Iterator[tuple[int, int, int]]:
    """lm-eval-harness's rolling windows (``get_rolling_token_windows`` with ``context_len=1``, then
    ``make_disjoint_window``) over a document of ``n`` tokens preceded by the end-of-text token:
    ``(start, end, n_predicted)`` in that extended sequence. The model reads ``[start, end)`` (at
    most ``context`` tokens), each position predicting the next token, and only the last
    ``n_predicted`` predictions count. The first window predicts tokens 0..context-1 from
    end-of-text + tokens 0..context-2; each later one the next ``context`` tokens (fewer at the
    end), reading the ``context`` tokens before its last target."""
    predicted = 0
    while predicted < n:
        end = min(predicted + context, n)
        yield max(0, end - context), end, end - predicted
        predicted = end


def _prefix_token(model: Any, tokenizer: Any) -> int:
    token = tokenizer.eos_id if tokenizer.eos_id is not None else model.config.eos_token_id
    if token is None:
        raise UserError("scoring a causal LM needs an end-of-text token (the first token is predicted from it); "
                        "the tokenizer and the model config have none")
    return token


def score_causal(model: Any, tokenizer: Any, documents: Iterable[str], *, context: int | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = False, total: int | None = None
                 ) -> dict[str, float | int]:
    """Causal-LM scores of ``documents`` (texts): lm-eval-harness's ``loglikelihood_rolling`` over
    windows of ``context`` tokens (default: the model's positions), ``batch_size`` windows per
    forward. Deterministic (no sampling)."""
    context = _context(model, context)
    _check_batch_size(batch_size)
    prefix = _prefix_token(model, tokenizer)
    sums = _Sums()

    @torch.no_grad()
    def run(batch: dict[str, torch.Tensor]) -> None:
        batch = _on(batch, model.device)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        sums.nll += _token_sums(logits, batch["targets"])[0]  # targets are already the next tokens

    rows = _Batcher(batch_size, {"input_ids": prefix, "targets": IGNORE_INDEX}, run)
    for doc in _encoded(tokenizer, documents, sums, progress=progress, total=total):
        extended = torch.from_numpy(np.concatenate([[prefix], doc.ids]))
        for start, end, n_predicted in causal_windows(len(doc.ids), context):
            targets = extended[start + 1:end + 1].clone()
            targets[: end - start - n_predicted] = IGNORE_INDEX
            rows.add(input_ids=extended[None, start:end], attention_mask=torch.ones(1, end - start, dtype=torch.long),
                     targets=targets[None])
    rows.finish()
    counts = sums.counts()
    return {**counts, "loss": sums.nll / sums.tokens, "perplexity": _exp(sums.nll / sums.tokens),
            "word_perplexity": _exp(sums.nll / max(sums.words, 1)), "byte_perplexity": _exp(sums.nll / sums.bytes),
            "bits_per_byte": sums.nll / (sums.bytes * math.log(2))}


# ---------------------------------------------------------------- pseudo-log-likelihood


def _template_parts(tokenizer: Any) -> tuple[np.ndarray, np.ndarray]:
    """The special-token ids the tokenizer's template puts before and after a single text."""
    from lmzoo.tokenizer import TEMPLATES

    template = TEMPLATES[tokenizer.template]
    ids = lambda roles: np.array([getattr(tokenizer, f"{r}_id") for r in roles], dtype=np.int64)  # noqa: E731
    return ids(template.before_a), ids(template.after_a)


def pll_rows(ids: np.ndarray, width: int, prefix: np.ndarray, suffix: np.ndarray, chunk: int
             ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The pseudo-log-likelihood rows of one document, ``chunk`` at a time: ``(rows [r, T], position
    of the predicted token in each row [r], its id [r])``, one row per token. Token i's row holds the
    ``width`` tokens around it (all of a document that fits; else i sits in the middle, as far as
    the document's ends allow), wrapped in the template's special tokens."""
    n = len(ids)
    w = min(n, width)
    offsets = np.arange(w)
    for lo in range(0, n, chunk):
        at = np.arange(lo, min(lo + chunk, n))
        starts = np.clip(at - w // 2, 0, n - w)
        rows = ids[starts[:, None] + offsets]  # [r, w]
        r = len(at)
        rows = np.concatenate([np.tile(prefix, (r, 1)), rows, np.tile(suffix, (r, 1))], axis=1)
        yield rows, at - starts + len(prefix), ids[at]


def _masked_forward(mask_id: int) -> Callable[[Any, dict[str, torch.Tensor]], torch.Tensor]:
    """A masked LM's logits [B, V] for each row's one predicted token, replaced by the mask token."""

    def forward(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        rows = torch.arange(len(batch["position"]), device=batch["position"].device)
        inputs = batch["input_ids"].clone()
        inputs[rows, batch["position"]] = mask_id
        labels = torch.full_like(inputs, IGNORE_INDEX)
        labels[rows, batch["position"]] = batch["target"]
        return model(input_ids=inputs, attention_mask=batch["attention_mask"], labels=labels).logits

    return forward


def _permutation_forward(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """A permutation LM's query-stream logits [B, V]: each row's predicted token seen by no position
    (its content hidden, ``perm_mask``), predicted at its position (``target_mapping``) from all others."""
    input_ids, position = batch["input_ids"], batch["position"]
    b, t = input_ids.shape
    rows = torch.arange(b, device=input_ids.device)
    perm_mask = torch.zeros(b, t, t, device=input_ids.device)
    perm_mask[rows, :, position] = 1.0
    target_mapping = torch.zeros(b, 1, t, device=input_ids.device)
    target_mapping[rows, 0, position] = 1.0
    return model(input_ids=input_ids, attention_mask=batch["attention_mask"], perm_mask=perm_mask,
                 target_mapping=target_mapping, labels=batch["target"][:, None]).logits


def _score_pll(model: Any, tokenizer: Any, documents: Iterable[str], *, forward: Callable, collate: Callable,
               context: int | None, batch_size: int, seed: int, progress: bool, total: int | None,
               per_document: Callable[[EncodedDocument], None] | None = None) -> _Sums:
    """Pseudo-log-likelihood of every token (``forward``: the logits of each row's predicted token)
    and the objective's loss / accuracy (``collate``) over each document cut into disjoint windows;
    ``per_document(doc)``: a further score's rows of each document."""
    if tokenizer.pad_id is None:
        raise UserError("pseudo-log-likelihood scoring needs a tokenizer with a pad token")
    prefix, suffix = _template_parts(tokenizer)
    context = _context(model, context, minimum=len(prefix) + len(suffix) + 1)
    _check_batch_size(batch_size)
    width = context - len(prefix) - len(suffix)
    sums = _Sums()

    @torch.no_grad()
    def run_pll(batch: dict[str, torch.Tensor]) -> None:
        batch = _on(batch, model.device)
        sums.nll += _token_sums(forward(model, batch), batch["target"])[0]

    @torch.no_grad()
    def run_objective(batch: dict[str, torch.Tensor]) -> None:
        batch = _on(batch, model.device)
        sums.add_objective(*_labelled_sums(model(**batch).logits, batch["labels"]))

    pads = {"input_ids": tokenizer.pad_id, "labels": IGNORE_INDEX}
    pll, objective = _Batcher(batch_size, pads, run_pll), _Batcher(batch_size, pads, run_objective)
    n_examples = 0
    for doc in _encoded(tokenizer, documents, sums, progress=progress, total=total):
        for rows, position, target in pll_rows(doc.ids, width, prefix, suffix, batch_size):
            pll.add(input_ids=torch.from_numpy(rows), attention_mask=torch.ones(rows.shape, dtype=torch.long),
                    position=torch.from_numpy(position), target=torch.from_numpy(target))
        windows = [{"input_ids": np.concatenate([prefix, doc.ids[lo:lo + width], suffix])}
                   for lo in range(0, len(doc.ids), width)]
        for batch in _collated(collate, windows, seed, n_examples):
            objective.add(**batch)
        n_examples += len(windows)
        if per_document is not None:
            per_document(doc)
    pll.finish()
    objective.finish()
    return sums


def _pll_fields(sums: _Sums) -> dict[str, float | int]:
    counts = sums.counts()
    return {**counts, "pseudo_log_likelihood": -sums.nll, "pseudo_perplexity": _exp(sums.nll / sums.tokens),
            "bits_per_byte": sums.nll / (sums.bytes * math.log(2))}


def score_masked(model: Any, tokenizer: Any, documents: Iterable[str], *, context: int | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE, seed: int = 0, progress: bool = False,
                 total: int | None = None) -> dict[str, float | int]:
    """Masked-LM scores of ``documents`` (texts): pseudo-log-likelihood (one row per token, rows of at
    most ``context`` positions, ``batch_size`` rows per forward) and ``masked_accuracy`` of the MLM
    objective's collator (15 % of the tokens, 80/10/10) at ``seed``."""
    from lmzoo.objectives.mlm import MLMConfig, masked_lm_collator

    if tokenizer.mask_id is None:
        raise UserError("pseudo-log-likelihood scoring of a masked LM needs a tokenizer with a mask token")
    sums = _score_pll(model, tokenizer, documents, forward=_masked_forward(tokenizer.mask_id),
                      collate=masked_lm_collator(tokenizer, MLMConfig()), context=context, batch_size=batch_size,
                      seed=seed, progress=progress, total=total)
    return {**_pll_fields(sums), "masked_accuracy": sums.objective_correct / max(sums.objective_total, 1)}


def score_permutation(model: Any, tokenizer: Any, documents: Iterable[str], *, context: int | None = None,
                      batch_size: int = DEFAULT_BATCH_SIZE, seed: int = 0, progress: bool = False,
                      total: int | None = None) -> dict[str, float | int]:
    """Permutation-LM scores of ``documents`` (texts): pseudo-log-likelihood through the query stream
    (as :func:`score_masked`'s) and ``plm_loss`` of the PLM objective's collator (1/K of the tokens
    in spans, a random factorization order) at ``seed``."""
    from lmzoo.objectives.plm import PLMCollator, PLMConfig

    options = PLMConfig()
    collate = PLMCollator(pad_id=tokenizer.pad_id if tokenizer.pad_id is not None else 0, K=options.k,
                          max_span=options.max_span, special_ids=tuple(tokenizer.special_ids))
    prefix, suffix = _template_parts(tokenizer)
    if not len(prefix) + len(suffix):  # a window's first query would see no key (attention over none
        suffix = np.array([_a_special_token(tokenizer)], dtype=np.int64)  # falls back to all keys)
    width = _context(model, context, minimum=len(prefix) + len(suffix) + 1) - len(prefix) - len(suffix)
    left_to_right = _Sums()

    @torch.no_grad()
    def run(batch: dict[str, torch.Tensor]) -> None:
        inputs = left_to_right_inputs(_on(batch, model.device))
        left_to_right.nll += _labelled_sums(model(**inputs).logits, inputs["labels"])[0]

    rows = _Batcher(batch_size, {"input_ids": tokenizer.pad_id, "labels": IGNORE_INDEX, "order": -1}, run)

    def add_rows(doc: EncodedDocument) -> None:
        for window in left_to_right_rows(doc.ids, width, prefix, suffix):
            rows.add(**{k: torch.from_numpy(v)[None] for k, v in window.items()})

    sums = _score_pll(model, tokenizer, documents, forward=_permutation_forward, collate=collate, context=context,
                      batch_size=batch_size, seed=seed, progress=progress, total=total, per_document=add_rows)
    rows.finish()
    nll = left_to_right.nll
    return {**_pll_fields(sums), "plm_loss": sums.objective_nll / max(sums.objective_total, 1),
            "left_to_right_loss": nll / sums.tokens, "left_to_right_perplexity": _exp(nll / sums.tokens),
            "left_to_right_bits_per_byte": nll / (sums.bytes * math.log(2))}


def _a_special_token(tokenizer: Any) -> int:
    """A special token for rows whose template adds none (left-to-right scoring needs one visible key)."""
    for token in (tokenizer.eos_id, tokenizer.sep_id, tokenizer.cls_id):
        if token is not None:
            return token
    raise UserError("left-to-right scoring of a permutation LM needs a special token (end-of-text, separator "
                    "or CLS); the tokenizer has none")


def left_to_right_rows(ids: np.ndarray, width: int, prefix: np.ndarray, suffix: np.ndarray
                       ) -> Iterator[dict[str, np.ndarray]]:
    """The left-to-right factorization order of one document for a permutation LM, a window at a time
    (:func:`causal_windows` read in the document's own tokens: every token predicted once, from the
    tokens before it in its window; the first of each window from none), each wrapped in the
    template's special tokens. Per window ``input_ids``, ``attention_mask``, ``order`` (each token's
    place in the factorization order; -1: a special token, first) and ``labels`` (-100 but at the
    predicted tokens), all [T]; :func:`left_to_right_inputs` makes a batch of them the model's inputs."""
    for start, end, n_predicted in causal_windows(len(ids), width):
        row = np.concatenate([prefix, ids[start:end], suffix]).astype(np.int64)
        order = np.full(len(row), -1, dtype=np.int64)
        order[len(prefix):len(prefix) + end - start] = np.arange(end - start)
        labels = np.full(len(row), IGNORE_INDEX, dtype=np.int64)
        predicted = slice(len(prefix) + end - start - n_predicted, len(prefix) + end - start)
        labels[predicted] = row[predicted]
        yield {"input_ids": row, "attention_mask": np.ones(len(row), dtype=np.int64), "order": order, "labels": labels}


def left_to_right_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A permutation LM's inputs of :func:`left_to_right_rows` ([B, T] each): ``perm_mask`` lets a
    content token see the ones before it and the special tokens, and the special tokens see no
    content token (as the PLM collator's non-predicted tokens), so no prediction sees its own token
    or a later one: the predictions multiply to a probability of the document (over all documents of
    its length they sum to one), a likelihood comparable with a causal LM's. ``target_mapping``
    [B, P, T] asks the query stream for the P labelled positions, ``labels`` [B, P] (built here, not
    stored per row: a [T, T] mask per waiting row would take gigabytes at long contexts)."""
    input_ids, order, labels = batch["input_ids"], batch["order"], batch["labels"]
    length = input_ids.shape[1]
    perm_mask = (order[:, None, :] >= 0) & (order[:, None, :] >= order[:, :, None])  # 1: i may not see j
    picked = labels != IGNORE_INDEX
    positions = torch.arange(length, device=labels.device).expand_as(labels)
    width = max(int(picked.sum(1).max()), 1)
    where = torch.where(picked, positions, length).sort(1).values[:, :width]  # labelled positions first
    valid = where < length
    where = where.clamp(max=length - 1)
    target_mapping = F.one_hot(where, length).float() * valid[..., None]
    return {"input_ids": input_ids, "attention_mask": batch["attention_mask"], "perm_mask": perm_mask.float(),
            "target_mapping": target_mapping, "labels": labels.gather(1, where).masked_fill(~valid, IGNORE_INDEX)}


# ---------------------------------------------------------------- encoder-decoder


def _memory_corpus(docs: list[EncodedDocument]) -> Any:
    """An in-memory ``TokenizedCorpus`` of encoded documents (what the objective units build from)."""
    from lmzoo.data import TokenizedCorpus

    lengths = np.concatenate([d.sentence_lengths for d in docs])
    return TokenizedCorpus(
        tokens=np.concatenate([d.ids for d in docs]), word_starts=np.concatenate([d.word_starts for d in docs]),
        sentence_offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        document_offsets=np.concatenate([[0], np.cumsum([len(d.sentence_lengths) for d in docs])]).astype(np.int64),
        doc_ids=np.arange(len(docs), dtype=np.int64))


def score_seq2seq(model: Any, tokenizer: Any, documents: Iterable[str], *, context: int | None = None,
                  batch_size: int = DEFAULT_BATCH_SIZE, seed: int = 0, progress: bool = False,
                  total: int | None = None) -> dict[str, float | int]:
    """An encoder-decoder's own pretraining objective (its family spec's default: span corruption,
    denoising ...) on ``documents`` (texts), built by the objective unit with inputs of ``context``
    tokens, each example corrupted by its own generator from ``seed``: ``loss`` (mean NLL per target
    token) and ``token_accuracy`` of the targets."""
    from tqdm.auto import tqdm

    from lmzoo.models import family_spec
    from lmzoo.objectives import get_objective

    context = _context(model, context)
    _check_batch_size(batch_size)
    sums = _Sums()
    docs = list(_encoded(tokenizer, documents, sums, progress=False, total=total))
    sums.counts()
    unit = get_objective(family_spec(model.config.family).default_objective)
    corpus = _memory_corpus(docs)
    setup = unit.build(tokenizer, corpus, corpus, unit.options(), seq_len=context, seed=seed)

    @torch.no_grad()
    def run(batch: dict[str, torch.Tensor]) -> None:
        batch = _on(batch, model.device)
        sums.add_objective(*_labelled_sums(model(**batch).logits, batch["labels"]))

    examples = _Batcher(batch_size, {"input_ids": tokenizer.pad_id or 0, "labels": IGNORE_INDEX}, run)
    data = setup.eval_data
    bar = tqdm(range(len(data)), desc="eval", unit="example", disable=None if progress else True, file=sys.stderr)
    # a last packed row of one token has nothing to corrupt around (span corruption refuses it): left out
    rows = (data[i] for i in bar if len(data[i]["input_ids"]) >= MIN_SEQ2SEQ_TOKENS)
    for batch in _collated(setup.collate, rows, seed):
        examples.add(**batch)
    examples.finish()
    return {**sums.counts(), "loss": sums.objective_nll / max(sums.objective_total, 1),
            "token_accuracy": sums.objective_correct / max(sums.objective_total, 1)}


SCORERS: dict[str, Callable[..., dict[str, float | int]]] = {
    "causal": score_causal, "masked": score_masked, "permutation": score_permutation, "seq2seq": score_seq2seq}


# ---------------------------------------------------------------- a model folder on local text


def _describe(data: Any) -> str:
    return data if isinstance(data, str) else " ".join(map(str, data))


def load_for_scoring(folder: str | Path, device: str | torch.device | None = None) -> tuple[Any, Any]:
    """(model in eval mode on ``device``, tokenizer) of a model folder; the tokenizer is read first, so
    a folder without one fails before its weights are loaded."""
    from lmzoo.hf import load_pretrained
    from lmzoo.tokenizer import Tokenizer

    if not Path(folder).is_dir():
        raise UserError(f"model folder {folder} not found")
    tokenizer = Tokenizer.load(folder)
    from lmzoo.pipelines import check_vocab_fits

    model = load_pretrained(folder)
    check_vocab_fits(tokenizer, model, folder)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), tokenizer


def trained_length(folder: str | Path, limit: int) -> int | None:
    """The sequence length a ``pretrain`` run trained the folder's model at (its ``run_config.json``),
    capped at ``limit``; None for other folders. Positions a model never trained on score badly, so
    this, not the model's ``max_positions``, is the default context."""
    import json

    try:
        seq_len = json.loads((Path(folder) / "run_config.json").read_text())["data"]["seq_len"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return min(int(seq_len), limit) if isinstance(seq_len, int) and seq_len > 0 else None


def evaluate_model(folder: str | Path, data: Any, *, context: int | None = None,
                   batch_size: int = DEFAULT_BATCH_SIZE, seed: int = 0, document_split: str = "blank_line",
                   progress: bool = False, device: str | torch.device | None = None) -> dict[str, float | int]:
    """The intrinsic scores of the model in ``folder`` (with its tokenizer) on ``data`` (files,
    folders, globs, read and split into documents as ``pretrain`` reads them): the fields
    ``FIELDS[model_kind(model)]``, picked by what the model can predict. ``context``: tokens per
    window or row (default: the length a ``pretrain`` run trained at, else the model's positions);
    ``seed``: masks and noise of the objective scores; ``device``: default CUDA when there is one."""
    from lmzoo.data import iter_documents

    model, tokenizer = load_for_scoring(folder, device)
    if context is None:
        context = trained_length(folder, model.config.max_positions)
    kind = model_kind(model)
    total = sum(1 for _ in iter_documents(data, document_split=document_split))
    if not total:
        raise UserError(f"no text in {_describe(data)}: nothing to score")
    scorer = SCORERS[kind]
    options: dict[str, Any] = dict(context=context, batch_size=batch_size, progress=progress, total=total)
    if "seed" in inspect.signature(scorer).parameters:
        options["seed"] = seed
    scores = scorer(model, tokenizer, iter_documents(data, document_split=document_split), **options)
    return {name: scores[name] for name in FIELDS[kind]}


def format_table(scores: dict[str, float | int]) -> str:
    """The scores as a two-column text table (integers as they are, other numbers with 4 decimals)."""
    width = max(len("metric"), *map(len, scores))
    lines = [f"{'metric':<{width}}  value"]
    for name, value in scores.items():
        lines.append(f"{name:<{width}}  {value if isinstance(value, int) else f'{value:.4f}'}")
    return "\n".join(lines)
