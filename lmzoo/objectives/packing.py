"""Packing (RoBERTa FULL-SENTENCES, GPT): the documents of a corpus view back to back, a
separator between documents, cut into rows of exactly ``max_length`` tokens.

The token stream is never materialised: a row is assembled from the memmapped corpus using the
per-document start positions in the stream (one int64 per document).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from lmzoo.errors import UserError

if TYPE_CHECKING:
    from lmzoo.data import TokenizedCorpus


class PackedDataset:
    """Map-style dataset of packed rows: ``bos + window + eos``, each window a contiguous piece of
    the stream "doc_1 sep doc_2 sep ... doc_n" (the view's documents in order, ``sep`` =
    ``sep_id``, default ``eos_id``, only when ``sep_between_docs``).

    Every row has exactly ``max_length`` tokens except possibly the last, which ends with the
    corpus (a last row of fewer than ``min_last_row`` content tokens is left out). ``bos_id`` /
    ``eos_id`` may be None to leave that token out (GPT rows are the plain stream). Items:
    ``{"input_ids": int64 [L], "word_starts": bool [L]}``; special tokens count as word starts. No
    randomness: dynamic masking happens in the collator.
    """

    def __init__(self, corpus: "TokenizedCorpus", *, max_length: int, bos_id: int | None,
                 eos_id: int | None, sep_between_docs: bool = True, sep_id: int | None = None,
                 min_last_row: int = 1) -> None:
        self.corpus = corpus
        self.max_length = int(max_length)
        self.bos_id, self.eos_id = bos_id, eos_id
        self.sep_id = (eos_id if sep_id is None else sep_id) if sep_between_docs else None
        if sep_between_docs and self.sep_id is None:
            raise UserError("sep_between_docs needs a separator id (sep_id or eos_id)")
        n_special = (bos_id is not None) + (eos_id is not None)
        self.content_length = self.max_length - n_special
        if self.content_length < 1:
            raise UserError(f"max_length={max_length} leaves no room for tokens after the special tokens")

        docs = np.asarray(corpus.doc_ids, dtype=np.int64)
        sent_off = np.asarray(corpus.sentence_offsets)
        doc_off = np.asarray(corpus.document_offsets)
        starts = sent_off[doc_off[docs]].astype(np.int64)
        ends = sent_off[doc_off[docs + 1]].astype(np.int64)
        nonempty = ends > starts
        self.doc_token_start = starts[nonempty]           # corpus position of each document
        self.doc_length = ends[nonempty] - starts[nonempty]
        if len(self.doc_length) == 0:
            raise UserError("cannot pack an empty corpus (no document with tokens)")
        gap = 1 if self.sep_id is not None else 0
        # stream position of each document's first token; the separator follows its last one
        self.doc_stream_start = np.concatenate([[0], np.cumsum(self.doc_length + gap)[:-1]]).astype(np.int64)
        self.stream_length = int(self.doc_stream_start[-1] + self.doc_length[-1])
        self.n_rows = -(-self.stream_length // self.content_length)
        last = self.stream_length - (self.n_rows - 1) * self.content_length
        if self.n_rows > 1 and last < min_last_row:  # a last row too short for the objective is left out
            self.n_rows -= 1

    def __len__(self) -> int:
        return self.n_rows

    def window(self, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        """(tokens, word_starts) of stream positions [start, end)."""
        gap = 1 if self.sep_id is not None else 0
        first = int(np.searchsorted(self.doc_stream_start, start, side="right")) - 1
        ids, ws = [], []
        d = first
        while d < len(self.doc_length) and self.doc_stream_start[d] < end:
            s0 = int(self.doc_stream_start[d])
            a, b = max(start, s0), min(end, s0 + int(self.doc_length[d]))
            if a < b:
                t0 = int(self.doc_token_start[d]) - s0
                ids.append(np.asarray(self.corpus.tokens[t0 + a:t0 + b], dtype=np.int64))
                ws.append(np.asarray(self.corpus.word_starts[t0 + a:t0 + b], dtype=np.bool_))
            sep_pos = s0 + int(self.doc_length[d])
            if gap and start <= sep_pos < end:
                ids.append(np.array([self.sep_id], dtype=np.int64))
                ws.append(np.ones(1, dtype=np.bool_))
            d += 1
        if not ids:
            return np.zeros(0, np.int64), np.zeros(0, np.bool_)
        return np.concatenate(ids), np.concatenate(ws)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        if not -self.n_rows <= i < self.n_rows:
            raise IndexError(f"row {i} out of range for {self.n_rows} rows")
        i %= self.n_rows
        start = i * self.content_length
        ids, ws = self.window(start, min(start + self.content_length, self.stream_length))
        head = [] if self.bos_id is None else [self.bos_id]
        tail = [] if self.eos_id is None else [self.eos_id]
        input_ids = np.concatenate([np.array(head, np.int64), ids, np.array(tail, np.int64)])
        word_starts = np.concatenate([np.ones(len(head), np.bool_), ws, np.ones(len(tail), np.bool_)])
        return {"input_ids": input_ids, "word_starts": word_starts}
