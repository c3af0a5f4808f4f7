"""Reading local text, sentences, the held-out split and the memmapped token cache."""

from __future__ import annotations

import gzip
import json
import os

import numpy as np
import pytest

from lmzoo.data import (TokenizedCorpus, default_corpus, is_heldout, iter_documents, resolve_paths,
                        split_sentences)
from lmzoo.errors import UserError
from lmzoo.tokenizer import train_tokenizer

TEXT_A = "First doc line one.\nline two: more here!\n\n\n  \nSecond doc.   Has two sentences?\n\nThird\n"
TEXT_B = "def f(x):\n    return x  \n\n\tclass A:  pass\n"


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "tree"
    (root / "sub" / "deep").mkdir(parents=True)
    (root / "a.txt").write_text(TEXT_A)
    (root / "sub" / "b.md").write_text("# Title\n\n**NAME**  \nSpeaks _softly_ here.  \n")
    (root / "sub" / "deep" / "c.jsonl").write_text(
        json.dumps({"text": "json one", "id": 1}) + "\n\n" + json.dumps({"text": "json two"}) + "\n")
    with gzip.open(root / "sub" / "d.txt.gz", "wt") as f:
        f.write("gz doc one\n\ngz doc two\n")
    (root / "script.py").write_text("def f():\n    return 1\n")  # source code is text too
    (root / "weights.bin").write_bytes(b"\x00\x01")
    return root


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokcorpus")
    (root / "t.txt").write_text((TEXT_A + TEXT_B) * 5)
    return train_tokenizer([str(default_corpus()[0]), str(root)], kind="bpe", vocab_size=400)


def write_docs(folder, n_docs=30, seed=0):
    rng = np.random.default_rng(seed)
    words = ["king", "queen", "the", "night", "moon", "sword", "love", "death", "O", "my", "lord"]
    docs = []
    for d in range(n_docs):
        sentences = [" ".join(rng.choice(words, rng.integers(1, 8))) + rng.choice([".", "!", "?", ";"])
                     for _ in range(rng.integers(1, 5))]
        docs.append(("\n" if d % 3 == 0 else " ").join(sentences) + f" doc{d}.")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "part1.txt").write_text("\n\n".join(docs[: n_docs // 2]) + "\n")
    (folder / "part2.txt.gz").write_bytes(gzip.compress(("\n\n\n".join(docs[n_docs // 2:])).encode()))
    return docs


def first_doc(tmp_path):
    return next(iter_documents(str(tmp_path / "src")))


def test_resolve_paths_folder_glob_file_and_list(tree):
    found = resolve_paths(str(tree))
    assert [p.name for p in found] == ["a.txt", "script.py", "b.md", "d.txt.gz", "c.jsonl"]  # sorted by full path
    assert found == sorted(found)
    assert resolve_paths(str(tree / "a.txt")) == [(tree / "a.txt").resolve()]
    assert [p.name for p in resolve_paths(str(tree / "**" / "*.md"))] == ["b.md"]
    assert resolve_paths([str(tree / "a.txt"), str(tree), str(tree / "a.txt")]) == found  # no duplicates
    with pytest.raises(UserError, match="nothing_here"):
        resolve_paths(str(tree / "nothing_here"))
    with pytest.raises(UserError, match=r"\*\.zzz"):
        resolve_paths(str(tree / "*.zzz"))


def test_documents_from_every_format(tree):
    docs = list(iter_documents(str(tree)))
    assert docs == ["First doc line one.\nline two: more here!", "Second doc.   Has two sentences?", "Third",
                    "def f():\n    return 1", "Title", "NAME\nSpeaks softly here.", "gz doc one", "gz doc two",
                    "json one", "json two"]
    by_file = list(iter_documents(str(tree), document_split="file"))
    assert by_file[0] == TEXT_A.rstrip() and by_file[2] == "Title\n\nNAME\nSpeaks softly here."
    assert by_file[1] == "def f():\n    return 1"  # indentation kept
    assert by_file[3] == "gz doc one\n\ngz doc two"
    assert by_file[4:] == ["json one", "json two"]  # jsonl stays one document per line
    (tree / "code.txt").write_text("\n\n" + TEXT_B)
    assert list(iter_documents(str(tree / "code.txt"), document_split="file")) == [TEXT_B.rstrip()]
    (tree / "x.jsonl").write_text(json.dumps({"body": "custom field"}) + "\n")
    assert list(iter_documents(str(tree / "x.jsonl"), text_field="body")) == ["custom field"]
    with pytest.raises(UserError, match="document_split"):
        list(iter_documents(str(tree), document_split="paragraph"))


def test_markdown_cleanup_on_a_real_play():
    hamlet = next(p for p in default_corpus() if p.name == "hamlet.md")
    raw = hamlet.read_text()
    assert "**HAMLET**" in raw and raw.startswith("# ")
    docs = list(iter_documents(str(hamlet)))
    assert docs[0] == raw.splitlines()[0][2:]  # "# Hamlet" -> "Hamlet"
    assert any(d.startswith("HAMLET\n") for d in docs)
    text = "\n".join(docs)
    assert "**" not in text and "#" not in text and "\\[" not in text
    assert not any(line.endswith(" ") for line in text.splitlines())
    assert not any(w.startswith("_") or w.endswith("_") for w in text.split())
    # the markup goes, the words stay
    strip = lambda s: "".join(ch for ch in s if ch.isalnum())  # noqa: E731
    assert strip(text) == strip(raw.replace("\\", ""))


def test_default_corpus_is_the_38_plays():
    plays = default_corpus()
    assert len(plays) == 38 and all(p.suffix == ".md" and p.is_file() for p in plays) and plays == sorted(plays)


def test_bad_files_raise_user_errors_naming_the_file(tmp_path):
    (tmp_path / "bin.txt").write_bytes(b"hello\x00world\n")
    (tmp_path / "latin1.txt").write_bytes("café\n".encode("latin-1"))
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n\n{"text": broken\n')
    (tmp_path / "noField.jsonl").write_text('{"other": "x"}\n')
    (tmp_path / "notgz.txt.gz").write_bytes(b"plain bytes, not gzip")
    for name, pattern in [("bin.txt", "bin.txt:1.*binary"), ("latin1.txt", "latin1.txt.*UTF-8"),
                          ("bad.jsonl", "bad.jsonl:3: bad JSON"), ("noField.jsonl", "noField.jsonl:1"),
                          ("notgz.txt.gz", "notgz.txt.gz")]:
        with pytest.raises(UserError, match=pattern):
            list(iter_documents(str(tmp_path / name)))


def test_iter_documents_streams(tmp_path):
    (tmp_path / "a.txt").write_text("good one\n\ngood two\n")
    (tmp_path / "b.txt").write_bytes(b"\x00" * 10)
    docs = iter_documents(str(tmp_path))
    assert next(docs) == "good one" and next(docs) == "good two"  # yielded before b.txt is opened
    with pytest.raises(UserError, match="b.txt"):
        next(docs)


def test_split_sentences():
    doc = "Now, fair Hippolyta, our nuptial hour\nDraws on apace; four happy days!  Really?Yes. e.g.x\n\n  last  "
    assert split_sentences(doc) == ["Now, fair Hippolyta, our nuptial hour", "Draws on apace;", "four happy days!",
                                    "Really?Yes.", "e.g.x", "last"]
    assert split_sentences("") == [] and split_sentences(" \n\t ") == []
    assert split_sentences("one: two") == ["one:", "two"]


def test_is_heldout_is_stable_and_has_the_right_rate():
    n, frac = 20000, 0.1
    a = np.array([is_heldout(i, frac, seed=3) for i in range(n)])
    assert (a == np.array([is_heldout(i, frac, seed=3) for i in range(n)])).all()
    sd = (n * frac * (1 - frac)) ** 0.5
    assert abs(a.sum() - n * frac) < 5 * sd
    b = np.array([is_heldout(i, frac, seed=4) for i in range(n)])
    assert abs((a & b).sum() - n * frac * frac) < 5 * (n * frac * frac) ** 0.5  # seeds are independent
    assert not any(is_heldout(i, 0.0, 1) for i in range(100)) and all(is_heldout(i, 1.0, 1) for i in range(100))


def test_build_load_round_trip_decodes_to_the_text(tmp_path, bpe):
    docs = write_docs(tmp_path / "src")
    corpus = TokenizedCorpus.build(str(tmp_path / "src"), bpe, tmp_path / "cache", batch_size=7)
    assert len(corpus) == len(docs) and corpus.tokens.dtype == np.uint32 and isinstance(corpus.tokens, np.memmap)
    assert corpus.n_tokens == len(corpus.tokens) == corpus.sentence_offsets[-1]
    assert (np.diff(corpus.sentence_offsets) > 0).all() and (np.diff(corpus.document_offsets) > 0).all()
    for d, text in enumerate(docs):
        assert bpe.decode(corpus.document_tokens(d).tolist()) == text  # byte-level BPE: exact
        s0, s1 = corpus.sentence_range(d)
        assert [bpe.decode(corpus.sentence_tokens(s).tolist()).strip() for s in range(s0, s1)] == split_sentences(text)
        t0, t1 = corpus.token_range(d)
        assert corpus.word_starts[t0] and sum(corpus.word_starts[t0:t1]) >= len(text.split())
    loaded = TokenizedCorpus.load(tmp_path / "cache")
    for name in ("tokens", "word_starts", "sentence_offsets", "document_offsets", "doc_ids"):
        assert np.array_equal(getattr(loaded, name), getattr(corpus, name)), name
    # the batch size does not change the result
    other = TokenizedCorpus.build(str(tmp_path / "src"), bpe, tmp_path / "cache1", batch_size=1000)
    assert np.array_equal(other.tokens, corpus.tokens) and np.array_equal(other.word_starts, corpus.word_starts)
    assert np.array_equal(other.sentence_offsets, corpus.sentence_offsets)


def test_cache_is_reused_and_invalidated(tmp_path, bpe, monkeypatch):
    write_docs(tmp_path / "src")
    cache = tmp_path / "cache"
    first = TokenizedCorpus.build(str(tmp_path / "src"), bpe, cache)
    stamp = (cache / "tokens.bin").stat().st_mtime_ns
    calls = []
    original = type(bpe).encode_with_word_starts
    monkeypatch.setattr(type(bpe), "encode_with_word_starts",
                        lambda self, texts, **kw: calls.append(len(texts)) or original(self, texts, **kw))
    again = TokenizedCorpus.build(str(tmp_path / "src"), bpe, cache)
    assert calls == [] and (cache / "tokens.bin").stat().st_mtime_ns == stamp
    assert np.array_equal(again.tokens, first.tokens)
    # a different document split, a changed file, another tokenizer: each rebuilds
    by_file = TokenizedCorpus.build(str(tmp_path / "src"), bpe, cache, document_split="file")
    assert calls and len(by_file) == 2
    assert bpe.decode(by_file.document_tokens(0).tolist()) == (tmp_path / "src" / "part1.txt").read_text().rstrip()
    calls.clear()
    with open(tmp_path / "src" / "part1.txt", "a") as f:
        f.write("\nA brand new document.\n")
    grown = TokenizedCorpus.build(str(tmp_path / "src"), bpe, cache)
    assert calls and len(grown) == len(first) + 1
    wp = train_tokenizer([str(tmp_path / "src")], kind="wordpiece", vocab_size=68, min_frequency=1)
    calls.clear()
    rebuilt = TokenizedCorpus.build(str(tmp_path / "src"), wp, cache)
    assert calls and rebuilt.tokens.max() < wp.vocab_size and rebuilt.n_tokens != grown.n_tokens
    assert np.array_equal(rebuilt.sentence_tokens(0), wp.encode(split_sentences(first_doc(tmp_path))[0]))
    # a half-built cache (no meta.json) is never used
    os.remove(cache / "meta.json")
    with pytest.raises(UserError, match="meta.json"):
        TokenizedCorpus.load(cache)
    assert len(TokenizedCorpus.build(str(tmp_path / "src"), bpe, cache)) == len(grown)
    (cache / "tokens.bin").write_bytes(b"\x00" * 4)
    with pytest.raises(UserError, match="corrupt"):
        TokenizedCorpus.load(cache)


def test_empty_corpus_is_a_user_error(tmp_path, bpe):
    (tmp_path / "blank.txt").write_text("\n \n\t\n")
    with pytest.raises(UserError, match="empty corpus"):
        TokenizedCorpus.build(str(tmp_path / "blank.txt"), bpe, tmp_path / "cache")
    assert not (tmp_path / "cache" / "meta.json").exists()
    with pytest.raises(UserError, match="missing"):
        TokenizedCorpus.build(str(tmp_path / "missing"), bpe, tmp_path / "cache")


def test_split_is_disjoint_complete_and_deterministic(tmp_path, bpe):
    write_docs(tmp_path / "src", n_docs=60)
    corpus = TokenizedCorpus.build(str(tmp_path / "src"), bpe, tmp_path / "cache")
    train, evaluation = corpus.split(0.2, seed=0)
    assert set(train.doc_ids).isdisjoint(evaluation.doc_ids)
    assert sorted([*train.doc_ids, *evaluation.doc_ids]) == list(range(60))
    assert train.n_tokens + evaluation.n_tokens == corpus.n_tokens
    assert train.tokens is corpus.tokens  # views share the memmaps
    assert list(evaluation.doc_ids) == [d for d in range(60) if is_heldout(d, 0.2, 0)]
    t2, e2 = corpus.split(0.2, seed=0)
    assert np.array_equal(t2.doc_ids, train.doc_ids) and np.array_equal(e2.doc_ids, evaluation.doc_ids)
    assert not np.array_equal(corpus.split(0.2, seed=1)[1].doc_ids, evaluation.doc_ids)
    d = int(evaluation.doc_ids[0])
    assert np.array_equal(evaluation.document_tokens(d), corpus.document_tokens(d))
    tiny_train, tiny_eval = corpus.split(1e-9, seed=0)
    assert len(tiny_eval) == 1 and len(tiny_train) == 59
    sub_train, sub_eval = train.split(0.5, seed=2)  # splitting a view splits its documents
    assert sorted([*sub_train.doc_ids, *sub_eval.doc_ids]) == sorted(train.doc_ids)
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(UserError, match="eval_fraction"):
            corpus.split(bad, seed=0)


def test_special_token_strings_in_a_corpus_are_text(tmp_path, bpe):
    text = "Read the <mask> and </s> marks; re.compile(r'(?P<s>\\w+)') keeps <pad> too."
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "code.txt").write_text(text + "\n")
    corpus = TokenizedCorpus.build(str(tmp_path / "src"), bpe, tmp_path / "cache")
    tokens = corpus.document_tokens(0).tolist()
    assert not set(tokens) & set(bpe.special_ids)
    assert bpe.decode(tokens) == text
