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


def test_exports_of_other_tools_read_as_their_text(tmp_path):
    """What spreadsheets, pandas and datasets write: a byte-order mark, categorical or string-view
    columns, a document longer than the csv module's default field limit, JSON Lines named .json."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    bom = "\ufeff"
    (tmp_path / "bom.txt").write_text(bom + "hello there\n\nsecond one\n")
    (tmp_path / "bom.csv").write_text(bom + "text,label\nhello there,1\n")
    (tmp_path / "bom.jsonl").write_text(bom + '{"text": "hello there"}\n')
    assert list(iter_documents(tmp_path / "bom.txt")) == ["hello there", "second one"]
    assert list(iter_documents(tmp_path / "bom.csv")) == ["hello there"]
    assert list(iter_documents(tmp_path / "bom.jsonl")) == ["hello there"]

    texts = ["the old king", "the mad king", "the old king"]
    pq.write_table(pa.table({"text": pa.array(texts).dictionary_encode()}), tmp_path / "categorical.parquet")
    pq.write_table(pa.table({"text": pa.array(texts, pa.string_view())}), tmp_path / "view.parquet")
    for name in ("categorical.parquet", "view.parquet"):
        assert list(iter_documents(tmp_path / name)) == texts, name

    long_document = "word " * 40_000  # 200 KB in one field
    (tmp_path / "long.csv").write_text(f'text\n"{long_document}"\nshort\n')
    assert list(iter_documents(tmp_path / "long.csv")) == [long_document, "short"]

    datasets.Dataset.from_list([{"text": t} for t in texts]).to_json(str(tmp_path / "export.json"))
    assert list(iter_documents(tmp_path / "export.json")) == texts


def test_a_quote_left_open_in_a_csv_is_an_error_not_one_long_document(tmp_path):
    (tmp_path / "open.csv").write_text('text,label\n"hello world,1\nsecond,0\nthird,1\n')
    with pytest.raises(UserError, match=r"open.csv:\d+: bad CSV \(unexpected end of data\)"):
        list(iter_documents(tmp_path / "open.csv"))
    (tmp_path / "array.json").write_text('[{"text": "a"}]\n')
    with pytest.raises(UserError, match="array.json:1: expected JSON Lines"):
        list(iter_documents(tmp_path / "array.json"))


def test_train_tokenizer_reads_a_named_column(sources, tmp_path, capsys):
    """`lmzoo train-tokenizer shards.parquet --text-column body` (its own error names that flag)
    gives the tokenizer the same text in a .txt file gives."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lmzoo.cli import main
    from lmzoo.tokenizer import Tokenizer

    pq.write_table(pa.table({"body": DOCUMENTS}), tmp_path / "shard.parquet")
    common = ["--kind", "bpe", "--vocab-size", "300"]
    assert main(["train-tokenizer", str(tmp_path / "shard.parquet"), *common, "--out", str(tmp_path / "t")]) == 2
    assert "--text-column" in capsys.readouterr().err
    assert main(["train-tokenizer", str(tmp_path / "shard.parquet"), "--text-column", "body", *common,
                 "--out", str(tmp_path / "column")]) == 0
    assert main(["train-tokenizer", str(sources / "plain.txt"), *common, "--out", str(tmp_path / "plain")]) == 0
    column, plain = Tokenizer.load(tmp_path / "column"), Tokenizer.load(tmp_path / "plain")
    assert column.backend.get_vocab() == plain.backend.get_vocab()
