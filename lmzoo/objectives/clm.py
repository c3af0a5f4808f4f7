"""Causal LM (GPT): documents packed into fixed-length rows, each followed by an end-of-text token.

Rows are cut from the stream ``doc_1 eos doc_2 eos ... doc_n`` (``PackedDataset``), so no token
is wasted on padding except in the last row. The end-of-text token is a learned target at every
real position: labels are masked (-100) by the row's length, never by token value, so it is
learned even when the pad id equals the eos id (GPT-2 has no pad token).

Default (``cross_document_attention=False``): every token belongs to a document (an eos to the
document it ends); the model gets ``document_ids`` and attends block-diagonally (no token sees
an earlier document), with ``position_ids`` restarting at 0 in each document. The first token of
a document after the first in a row has no label: it would be predicted from the previous
document's eos, which cannot see anything of the new one.
Optional plain concatenation (``cross_document_attention=True``): ordinary causal attention over
the whole row, positions 0..L-1, every next token a target (GPT-2's original recipe).

Batches (``ClmCollator``): ``input_ids``, ``attention_mask``, ``labels`` (= input_ids, -100 on
padding; the model shifts them), and in document mode ``document_ids`` and ``position_ids``;
``GPT2LMHeadModel(**batch)`` takes them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

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
class CLMConfig:
    """The options of objective clm."""

    cross_document_attention: bool = option(
        False, "plain concatenation: tokens may attend across end-of-text (default: block-diagonal)")

    def __post_init__(self) -> None:
        if not isinstance(self.cross_document_attention, bool):
            raise UserError(f"cross_document_attention must be true or false, got {self.cross_document_attention!r}")


class ClmDataset:
    """Map-style packed rows of ``max_length`` tokens (the last row may be shorter).

    Items: ``{"input_ids": int64 [L]}`` plus, in document mode, ``"document_ids"`` (the number of
    eos tokens before each position) and ``"position_ids"`` (restarting after each eos).
    """

    def __init__(self, corpus: "TokenizedCorpus", max_length: int, eos_id: int, *,
                 cross_document_attention: bool = False) -> None:
        if eos_id is None:
            raise UserError("causal LM packing needs an end-of-text token (the tokenizer has no eos)")
        if max_length < 2:
            raise UserError(f"causal LM rows need at least 2 tokens, got max_length={max_length}")
        self.packed = PackedDataset(corpus, max_length=max_length, bos_id=None, eos_id=None,
                                    sep_between_docs=True, sep_id=eos_id)
        self.eos_id = eos_id
        self.cross_document_attention = cross_document_attention

    def __len__(self) -> int:
        return len(self.packed)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        ids = self.packed[i]["input_ids"]
        if self.cross_document_attention:
            return {"input_ids": ids}
        is_eos = ids == self.eos_id
        documents = np.concatenate([[0], np.cumsum(is_eos)[:-1]]).astype(np.int64)  # an eos ends its document
        return {"input_ids": ids, "document_ids": documents, "position_ids": document_positions_np(documents)}


def document_positions_np(documents: np.ndarray) -> np.ndarray:
    """Positions restarting at 0 wherever the document id changes."""
    index = np.arange(len(documents))
    starts = np.ones(len(documents), dtype=bool)
    starts[1:] = documents[1:] != documents[:-1]
    return (index - np.maximum.accumulate(np.where(starts, index, 0))).astype(np.int64)


def clm_dataset(corpus: "TokenizedCorpus", max_length: int, eos_id: int,
                cross_document_attention: bool = False) -> ClmDataset:
    """Packed causal-LM rows of ``corpus`` (see the module docstring)."""
    return ClmDataset(corpus, max_length, eos_id, cross_document_attention=cross_document_attention)


class ClmCollator:
    """Right-pads examples to the longest and builds labels; ``collate(examples, generator)``
    (no randomness: the generator is unused). ``pad_id`` defaults to ``eos_id``."""

    def __init__(self, eos_id: int, pad_id: int | None = None) -> None:
        self.eos_id = eos_id
        self.pad_id = eos_id if pad_id is None else pad_id

    def __call__(self, examples: list[dict], generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("cannot collate an empty batch")
        lengths = torch.tensor([len(e["input_ids"]) for e in examples])
        width = int(lengths.max())
        real = torch.arange(width)[None, :] < lengths[:, None]  # (B, L): by length, never by token value
        input_ids = torch.full((len(examples), width), self.pad_id, dtype=torch.long)
        for row, e in enumerate(examples):
            input_ids[row, :len(e["input_ids"])] = torch.as_tensor(e["input_ids"], dtype=torch.long)
        labels = input_ids.masked_fill(~real, IGNORE_INDEX)
        batch = {"input_ids": input_ids, "attention_mask": real.long(), "labels": labels}
        if "document_ids" in examples[0]:
            documents = torch.zeros_like(input_ids)
            positions = torch.zeros_like(input_ids)
            for row, e in enumerate(examples):
                n = len(e["input_ids"])
                documents[row, :n] = torch.as_tensor(e["document_ids"], dtype=torch.long)
                documents[row, n:] = documents[row, n - 1] + 1  # padding: a document of its own
                positions[row, :n] = torch.as_tensor(e["position_ids"], dtype=torch.long)
            first_of_later_doc = torch.zeros_like(real)
            first_of_later_doc[:, 1:] = documents[:, 1:] != documents[:, :-1]
            batch["labels"] = labels.masked_fill(first_of_later_doc, IGNORE_INDEX)
            batch["document_ids"] = documents
            batch["position_ids"] = positions
        return batch


def clm_metrics(eos_id: int | None = None):
    """A ``metrics_fn(batch, output)`` for the training loop: next-token accuracy sums
    ``{"clm_correct", "clm_total"}`` and, with ``eos_id``, the same on end-of-text targets only
    (``eos_correct`` / ``eos_total``: does the model end documents?)."""

    def metrics(batch: dict[str, torch.Tensor], output: Any) -> dict[str, float]:
        logits = output.logits[:, :-1]
        target = batch["labels"][:, 1:].to(logits.device)
        keep = target != IGNORE_INDEX
        hit = (logits.argmax(-1) == target) & keep
        sums = {"clm_correct": float(hit.sum()), "clm_total": float(keep.sum())}
        if eos_id is not None:
            eos = keep & (target == eos_id)
            sums.update(eos_correct=float((hit & eos).sum()), eos_total=float(eos.sum()))
        return sums

    return metrics


# --- dialogue: speaker turns, as the plays write them ---------------------------------------------

TURN_END = "\n\n"


def chat_turn(speaker: str, text: str) -> str:
    """One turn of the chat format: the speaker's name in capitals on its own line, the speech,
    then a blank line (``lmzoo chat`` prompts with ``"<BOT>\\n"`` and stops at the blank line)."""
    return f"{speaker.strip().upper()}\n{' '.join(text.split())}{TURN_END}"


def dialogue_corpus(spec: Any, out_path: str, *, min_turns: int = 2) -> int:
    """Write the scenes of markdown plays (``**NAME**`` speeches) as a .jsonl dialogue corpus, one
    scene per document, every speech a ``chat_turn``; stage directions and headings are dropped.
    Returns the number of scenes written. Train with ``--data out_path --objective clm``."""
    import json
    import re

    from lmzoo.data import resolve_paths
    from lmzoo.io import atomic_write_text

    speaker_line = re.compile(r"^\*\*([A-Z][A-Z .'\-]*)\*\*\s*$")
    scenes: list[str] = []

    def flush(turns: list[str]) -> None:
        if len(turns) >= min_turns:
            scenes.append("".join(turns).rstrip("\n"))
        turns.clear()

    for path in resolve_paths(spec):
        turns: list[str] = []
        speaker, speech = None, []
        for raw in path.read_text(encoding="utf-8").splitlines() + ["### END"]:
            line = raw.strip()
            match = speaker_line.match(line)
            if match or line.startswith("#") or (line.startswith("_") and line.endswith("_")) or not line:
                if speaker and speech and (match or line.startswith("#") or not line):
                    turns.append(chat_turn(speaker, " ".join(speech)))
                    speaker, speech = None, []
                if line.startswith("#"):
                    flush(turns)
                if match:
                    speaker, speech = match.group(1).title(), []
                continue
            if speaker:
                speech.append(line.replace("\\", ""))
        flush(turns)
    if not scenes:
        raise UserError(f"no dialogue found in {spec} (expected markdown plays with **NAME** speeches)")
    atomic_write_text(out_path, "".join(json.dumps({"text": s}) + "\n" for s in scenes))
    return len(scenes)


def build_clm(tokenizer: "Tokenizer", train_corpus: "TokenizedCorpus", eval_corpus: "TokenizedCorpus",
              options: CLMConfig, *, seq_len: int, seed: int) -> ObjectiveSetup:
    """GPT recipe: documents packed into full rows, an end-of-text token after each (a learned
    target); by default no token attends across a document boundary and positions restart."""
    if tokenizer.eos_id is None:
        raise UserError("causal LM needs a tokenizer with an end-of-text token")

    def rows(corpus: "TokenizedCorpus") -> ClmDataset:
        return clm_dataset(corpus, seq_len, tokenizer.eos_id, cross_document_attention=options.cross_document_attention)

    return ObjectiveSetup(rows(train_corpus), rows(eval_corpus), ClmCollator(tokenizer.eos_id, tokenizer.pad_id),
                          clm_metrics(tokenizer.eos_id))


OBJECTIVE = Objective(name="clm", title="causal LM", options=CLMConfig, build=build_clm)
