"""Labelled data for fine-tuning: CSV / TSV / JSONL tables with column mapping, CoNLL-style
token<TAB>tag files, label maps, and word-level NER tags aligned to subword tokens.

Every bad input is a one-line :class:`UserError` naming the file (and line, where there is one).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from lmzoo.errors import UserError

IGNORE_INDEX = -100
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")


@dataclass
class TextExample:
    """One row of a classification file: a text, an optional second text, and its label(s):
    a label name, a list of names (multi-label), a float (regression), or None (prediction)."""

    text: str
    text_pair: str | None = None
    label: Any = None


@dataclass
class TaggedSentence:
    """One NER sentence: words and their tags (``tags`` empty for prediction)."""

    words: list[str]
    tags: list[str] = field(default_factory=list)


def table_rows(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    """(line number, row) of a .csv / .tsv (header row) or .jsonl file."""
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise UserError(f"{path}: expected a .csv, .tsv or .jsonl file, not {suffix or 'no extension'}")
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            if suffix in (".jsonl", ".json"):
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        raise UserError(f"{path}:{n}: not valid JSON") from None
                    if not isinstance(row, dict):
                        raise UserError(f"{path}:{n}: not a JSON object")
                    yield n, row
            else:
                # TSV has no quoting convention: a quote in a cell is text (with csv's quoting, a cell
                # starting with " would swallow the rows up to the next quote)
                tsv = dict(delimiter="\t", quoting=csv.QUOTE_NONE) if suffix == ".tsv" else {}
                reader = csv.DictReader(f, **tsv)
                for row in reader:
                    if None in row:  # more fields than the header names
                        raise UserError(f"{path}:{reader.line_num}: {len(row) - 1 + len(row[None])} fields but the "
                                        f"header names {len(row) - 1}")
                    yield reader.line_num, row
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise UserError(f"{path}: malformed {suffix[1:].upper()}: {e}") from None


def existing_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data file {path} not found")
    return path


def table_cell(path: Path, n: int, row: dict[str, Any], column: str) -> Any:
    if column not in row:
        raise UserError(f"{path}:{n}: no column {column!r} (columns: {', '.join(map(str, row))})")
    return row[column]


def read_text_examples(path: str | Path, *, text_column: str = "text", text_pair_column: str | None = None,
                       label_column: str | None = "label", label_separator: str | None = None,
                       regression: bool = False) -> list[TextExample]:
    """Classification examples of a CSV / TSV / JSONL file.

    Labels: a name per row; a JSON list, or names joined by ``label_separator`` in CSV/TSV, for
    multi-label; a number with ``regression``. ``label_column=None`` reads texts only.
    """
    path = existing_file(path)
    examples = []
    for n, row in table_rows(path):
        text = table_cell(path, n, row, text_column)
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"{path}:{n}: empty or non-text {text_column!r}")
        pair = None
        if text_pair_column is not None:
            pair = table_cell(path, n, row, text_pair_column)
            if not isinstance(pair, str) or not pair.strip():
                raise UserError(f"{path}:{n}: empty or non-text {text_pair_column!r}")
        label = None
        if label_column is not None:
            label = _parse_label(path, n, table_cell(path, n, row, label_column), label_separator, regression)
        examples.append(TextExample(text, pair, label))
    if not examples:
        raise UserError(f"{path} holds no examples")
    return examples


def _parse_label(path: Path, n: int, value: Any, separator: str | None, regression: bool) -> Any:
    if regression:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise UserError(f"{path}:{n}: label {value!r} is not a number (regression)") from None
    if isinstance(value, list):
        return sorted({str(v) for v in value})
    if value is None or (isinstance(value, str) and not value.strip()):
        raise UserError(f"{path}:{n}: empty label")
    if separator:
        return sorted({v.strip() for v in str(value).split(separator) if v.strip()})
    return str(value).strip()


def read_tagged_sentences(path: str | Path, *, tokens_column: str = "tokens", tags_column: str | None = "tags",
                          ) -> list[TaggedSentence]:
    """NER sentences: a CoNLL-style file (one ``token<TAB>tag`` / ``token ... tag`` per line, blank or
    whitespace-only lines between sentences, ``-DOCSTART-`` skipped), JSONL with a list of tokens
    and a list of tags per line, or a .csv (a .tsv whose first line names ``tokens_column``) with a
    header, one sentence per row: tokens and tags each space-separated or a JSON list.
    ``tags_column=None`` reads tokens only (one-column CoNLL allowed)."""
    path = existing_file(path)
    table = path.suffix.lower() in (".jsonl", ".json", ".csv") or (
        path.suffix.lower() == ".tsv" and tokens_column in _first_line(path).split("\t"))
    sentences = (_read_table_tagged(path, tokens_column, tags_column) if table
                 else _read_conll(path, with_tags=tags_column is not None))
    if not sentences:
        raise UserError(f"{path} holds no sentences")
    return sentences


def _read_conll(path: Path, *, with_tags: bool) -> list[TaggedSentence]:
    sentences: list[TaggedSentence] = []
    words: list[str] = []
    tags: list[str] = []
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    for n, line in enumerate(lines + [""], 1):
        if not line.strip():
            if words:
                sentences.append(TaggedSentence(words, tags))
            words, tags = [], []
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        fields = [f for f in (x.strip() for x in fields)]
        if fields[0] == "-DOCSTART-":
            continue
        if with_tags:
            if len(fields) < 2 or not fields[0] or not fields[-1]:
                raise UserError(f"{path}:{n}: expected 'token<TAB>tag', got {line.strip()!r}")
            tags.append(fields[-1])
        elif not fields[0]:
            raise UserError(f"{path}:{n}: empty token")
        words.append(fields[0])
    return sentences


def _first_line(path: Path) -> str:
    with path.open(encoding="utf-8-sig", errors="replace") as f:
        return f.readline().strip()


def _cell_list(value: Any) -> Any:
    """A CSV / TSV cell holding a list: a JSON list (``["New", "York"]``) or space-separated items."""
    if not isinstance(value, str):
        return value
    if value.lstrip().startswith("["):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value  # refused by the caller's check, which names the column
    return value.split()


def _read_table_tagged(path: Path, tokens_column: str, tags_column: str | None) -> list[TaggedSentence]:
    sentences = []
    for n, row in table_rows(path):
        words = _cell_list(table_cell(path, n, row, tokens_column))
        if not isinstance(words, list) or not words or not all(isinstance(w, str) and w.strip() for w in words):
            raise UserError(f"{path}:{n}: {tokens_column!r} must be a non-empty list of non-empty strings")
        tags: list[str] = []
        if tags_column is not None:
            tags = _cell_list(table_cell(path, n, row, tags_column))
            if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
                raise UserError(f"{path}:{n}: {tags_column!r} must be a list of tag names")
            if len(tags) != len(words):
                raise UserError(f"{path}:{n}: {len(words)} tokens but {len(tags)} tags")
        sentences.append(TaggedSentence(list(words), list(tags)))
    return sentences


# --- label maps ---------------------------------------------------------------------------------


def build_label_map(labels: Iterable[Any], *, outside: str | None = None) -> dict[int, str]:
    """id → label name over every label seen, sorted (``outside``, e.g. "O" for NER, first)."""
    names: set[str] = set()
    for label in labels:
        names.update(label if isinstance(label, list) else [label])
    ordered = sorted(names - {outside}) if outside else sorted(names)
    if outside is not None and outside in names:
        ordered = [outside, *ordered]
    return dict(enumerate(ordered))


def check_labels(labels: Iterable[Any], label2id: dict[str, int], path: str | Path) -> None:
    """Every label of ``path`` must be known to the model (seen in training)."""
    for label in labels:
        for name in label if isinstance(label, list) else [label]:
            if name not in label2id:
                known = ", ".join(list(label2id)[:10]) + (", ..." if len(label2id) > 10 else "")
                raise UserError(f"{path}: label {name!r} was not seen in the training data (known: {known})")


# --- subword alignment --------------------------------------------------------------------------


def word_token_spans(tokenizer: Any, words: Sequence[str]) -> tuple[list[int], list[int]]:
    """Token ids of the words joined by spaces (as the model saw text in pretraining) and, for each
    token, the index of the word it belongs to. Works for WordPiece, byte-level BPE and Unigram:
    the tokenizer's character offsets are mapped back onto the words' character spans."""
    text = " ".join(words)
    char_word = []
    for w, word in enumerate(words):
        char_word += [w] * len(word) + [-1]  # the joining space belongs to no word
    encoding = tokenizer.backend.encode(text, add_special_tokens=False)
    token_words = []
    for start, end in encoding.offsets:
        owners = [char_word[c] for c in range(start, max(end, start + 1)) if c < len(text) and char_word[c] >= 0]
        token_words.append(owners[0] if owners else -1)
    return list(encoding.ids), token_words


def special_prefix_length(tokenizer: Any) -> int:
    """Tokens the family puts before the text ([CLS] / <s>: 1; T5, GPT-2: 0)."""
    return tokenizer.build_inputs([-7])[0].index(-7)


def align_tags(tokenizer: Any, words: Sequence[str], tag_ids: Sequence[int] | None, max_length: int,
               ) -> tuple[list[int], list[int], list[int]]:
    """Model inputs for one sentence: (input_ids with special tokens, labels, first_token).

    ``labels`` holds the word's tag at the first subword of each word and -100 at later subwords,
    special tokens and padding (HF's convention). ``first_token[w]`` is the position of word w's
    first token in ``input_ids``, or -1 when the word produced no token or was truncated away.
    """
    ids, token_words = word_token_spans(tokenizer, words)
    budget = max_length - tokenizer.num_special_tokens_to_add(False)
    if budget < 1:
        raise UserError(f"--max-length {max_length} leaves no room for text after the special tokens")
    ids, token_words = ids[:budget], token_words[:budget]
    shift = special_prefix_length(tokenizer)
    input_ids = tokenizer.build_inputs(ids)[0]
    labels = [IGNORE_INDEX] * len(input_ids)
    first_token = [-1] * len(words)
    previous = -1
    for i, w in enumerate(token_words):
        if w >= 0 and w != previous and first_token[w] < 0:
            first_token[w] = i + shift
            if tag_ids is not None:
                labels[i + shift] = tag_ids[w]
        previous = w
    return input_ids, labels, first_token


# --- batching -----------------------------------------------------------------------------------


class PaddingCollator:
    """Pads examples into a batch for ``model(**batch)``: ``input_ids`` (pad id) with
    ``attention_mask``, ``token_type_ids`` (when the model has token types) and ``labels``: with
    ``token_labels`` per-token lists padded with -100, else one label per example stacked (int64
    class ids, float32 multi-hot vectors or scores). Deterministic: the generator is not used."""

    def __init__(self, pad_id: int, *, token_types: bool = True, token_labels: bool = False) -> None:
        self.pad_id = pad_id
        self.token_types = token_types
        self.token_labels = token_labels

    def __call__(self, examples: list[dict[str, Any]], generator: Any = None) -> dict[str, Any]:
        import torch

        width = max(len(e["input_ids"]) for e in examples)
        input_ids = torch.full((len(examples), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
        token_type_ids = torch.zeros((len(examples), width), dtype=torch.long)
        for row, e in enumerate(examples):
            n = len(e["input_ids"])
            input_ids[row, :n] = torch.as_tensor(e["input_ids"])
            attention_mask[row, :n] = 1
            if "token_type_ids" in e:
                token_type_ids[row, :n] = torch.as_tensor(e["token_type_ids"])
        batch: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.token_types:
            batch["token_type_ids"] = token_type_ids
        if "labels" not in examples[0]:
            return batch
        if self.token_labels:
            labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
            for row, e in enumerate(examples):
                labels[row, :len(e["labels"])] = torch.as_tensor(e["labels"])
            batch["labels"] = labels
        else:
            dtype = torch.long if isinstance(examples[0]["labels"], int) else torch.float32
            batch["labels"] = torch.as_tensor([e["labels"] for e in examples], dtype=dtype)
        return batch
