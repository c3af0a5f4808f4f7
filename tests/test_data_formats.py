"""Columnar corpora (.parquet, .csv, datasets save_to_disk folders) read as the same documents and the
same token stream as the same text in a .txt file."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from lmzoo.data import TokenizedCorpus, iter_documents
from lmzoo.errors import UserError
from lmzoo.tokenizer import train_tokenizer

DOCUMENTS = [f"Document {i} speaks of the {w} king.\nA second line, with \"quotes\", commas and {i * 7} things."
             for i, w in enumerate(["old", "young", "mad", "wise", "cruel"] * 6)]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("formats")
    (root / "plain.txt").write_text("\n\n".join(DOCUMENTS) + "\n")
    rows = [{"id": i, "text": d} for i, d in enumerate(DOCUMENTS)]
    # several row groups and record batches, so reading streams
    pq.write_table(pa.Table.from_pylist(rows), root / "corpus.parquet", row_group_size=7)
    import csv

    with open(root / "corpus.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "text"])
        writer.writeheader()
        writer.writerows(rows)
    dataset = datasets.Dataset.from_list(rows)
    dataset.save_to_disk(str(root / "saved"), max_shard_size="1KB")  # several .arrow shards
    datasets.DatasetDict({"train": dataset}).save_to_disk(str(root / "dict"))
    return root


def test_every_format_gives_the_same_documents(sources):
    assert list(iter_documents(sources / "plain.txt")) == DOCUMENTS
    for name in ("corpus.parquet", "corpus.csv", "saved"):
        assert list(iter_documents(sources / name)) == DOCUMENTS, name
    assert len(list((sources / "saved").glob("*.arrow"))) > 1


def test_same_token_stream(sources, tmp_path):
    tokenizer = train_tokenizer(str(sources / "plain.txt"), kind="bpe", vocab_size=300)
    reference = TokenizedCorpus.build(sources / "plain.txt", tokenizer, tmp_path / "txt")
    for name in ("corpus.parquet", "corpus.csv", "saved"):
        corpus = TokenizedCorpus.build(sources / name, tokenizer, tmp_path / name)
        for field in ("tokens", "word_starts", "sentence_offsets", "document_offsets"):
            assert np.array_equal(getattr(corpus, field), getattr(reference, field)), (name, field)


def test_columnar_mistakes_are_one_line(sources, tmp_path, monkeypatch):
    for name in ("corpus.parquet", "corpus.csv", "saved"):
        with pytest.raises(UserError, match="no column 'body'.*--text-column"):
            list(iter_documents(sources / name, text_field="body"))
    with pytest.raises(UserError, match="holds .*int64, not text"):
        list(iter_documents(sources / "corpus.parquet", text_field="id"))
    with pytest.raises(UserError, match="DatasetDict: name one split's folder"):
        list(iter_documents(sources / "dict"))
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 not really parquet")
    with pytest.raises(UserError, match="bad.parquet: cannot read"):
        list(iter_documents(bad))
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # the extra not installed
    with pytest.raises(UserError, match=r"pip install 'lmzoo\[data\]'"):
        list(iter_documents(sources / "corpus.parquet"))
