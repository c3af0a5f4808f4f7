"""User mistakes across verbs, one table: each exits 2 with one ``error:`` line last on stderr (any
line before it a ``note:``), no traceback, nothing on stdout, and every file that was there before
is byte-identical after (nothing written, nothing replaced).

The folders are tiny random models saved as the verbs find them (a classifier, a NER tagger, a
BERT pretraining model), damaged one way each: no training runs here, so the table stays fast.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import safetensors.torch
import torch

import lmzoo
from lmzoo.cli import build_parser, main
from lmzoo.errors import UserError
from lmzoo.tokenizer import Tokenizer, train_tokenizer

WORDS = "the cat sat on a mat and dog ran far away alice smith went to paris".split()


def _tokenizer(folder: Path) -> Tokenizer:
    letters = sorted(set("".join(WORDS)))
    vocab = dict.fromkeys(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters, *(f"##{c}" for c in letters),
                           *sorted(WORDS)])  # once each: "a" is a letter and a word
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = Tokenizer.load(folder)
    tok.save(folder)
    return tok


def _model(folder: Path, architecture: str, vocab_size: int, **overrides) -> None:
    torch.manual_seed(0)
    lmzoo.from_preset("bert-tiny", architecture=architecture, vocab_size=vocab_size, max_positions=64,
                      **overrides).save_pretrained(folder)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """Every folder and file the table names, built once; each test works on its own copy."""
    root = tmp_path_factory.mktemp("bad-input")
    for name, architecture, labels in [("cls", "BertForSequenceClassification", ["neg", "pos"]),
                                       ("ner", "BertForTokenClassification", ["O", "B-PER", "I-PER"])]:
        tok = _tokenizer(root / name)
        _model(root / name, architecture, tok.vocab_size, id2label=dict(enumerate(labels)))
        task = {"task": "ner" if name == "ner" else "classify"}
        (root / name / "lmzoo_task.json").write_text(json.dumps(task))
    tok = _tokenizer(root / "mlm")
    _model(root / "mlm", "BertForPreTraining", tok.vocab_size)

    def damaged(name: str, source: str, change) -> None:
        shutil.copytree(root / source, root / name)
        change(root / name)

    damaged("BADJSON", "cls", lambda f: (f / "lmzoo_task.json").write_text("{not json"))
    damaged("BADTYPE", "cls", lambda f: (f / "lmzoo_task.json").write_text('{"task": "classify", "max_length": "x"}'))
    damaged("LISTJSON", "cls", lambda f: (f / "lmzoo_task.json").write_text("[1, 2]"))
    damaged("WRONGTASK", "cls", lambda f: (f / "lmzoo_task.json").write_text('{"task": "ner"}'))

    def gap(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        config["id2label"], config["label2id"] = {"0": "neg", "2": "pos"}, {"neg": 0, "pos": 2}
        (folder / "config.json").write_text(json.dumps(config))

    damaged("GAP", "cls", gap)

    def no_heads(folder: Path) -> None:
        state = safetensors.torch.load_file(folder / "model.safetensors")
        safetensors.torch.save_file({k: v for k, v in state.items() if k.startswith("bert.")},
                                    folder / "model.safetensors", metadata={"format": "pt"})

    damaged("NOHEAD", "mlm", no_heads)

    def big_tokenizer(folder: Path) -> None:  # a tokenizer with ids past the model's embedding rows
        _model(folder, "BertForSequenceClassification", 40, id2label={0: "neg", 1: "pos"})

    damaged("BIGTOK", "cls", big_tokenizer)
    (root / "train.csv").write_text("text,label\nthe cat sat,pos\na dog ran,neg\n")
    (root / "words.csv").write_text("words\nalice smith went to paris\n")
    (root / "corpus.txt").write_text("\n\n".join(" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))))
    (root / "existing.txt").write_text("keep me\n")
    (root / "DIR").mkdir()
    (root / "BINARY.txt").write_bytes(b"\x10\x13\x00\x00{not text}\x00")
    (root / "LATIN.txt").write_bytes("café au lait\n".encode("latin-1"))
    return root


def snapshot(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def tokenizer_overwrite_flag() -> bool:
    """Whether ``lmzoo train-tokenizer`` has --overwrite yet (lmzoo/cli.py passes it to train_tokenizer)."""
    parser = build_parser(only="train-tokenizer")
    sub = next(a for a in parser._actions if a.dest == "verb")
    return any("--overwrite" in a.option_strings for a in sub.choices["train-tokenizer"]._actions)


needs_flag = pytest.mark.skipif(not tokenizer_overwrite_flag(),
                                reason="lmzoo/cli.py does not yet pass train-tokenizer --overwrite")
TRAIN = ["--no-progress", "--max-steps", "2"]

# (argv with folder / file names of the `base` fixture, a part of the error line)
CASES = [
    (["evaluate", "--model", "cls", "--data", "train.csv", "--out", "existing.txt"], "--out existing.txt is a file"),
    (["predict", "--model", "cls", "--input", "train.csv", "--output", "DIR"], "--output DIR is a folder"),
    (["predict", "--model", "cls", "--input", "train.csv", "--output", "nowhere/p.jsonl"], "does not exist"),
    (["predict", "--model", "BADJSON", "--input", "train.csv"], "lmzoo_task.json is not valid JSON"),
    (["evaluate", "--model", "BADJSON", "--data", "train.csv"], "lmzoo_task.json is not valid JSON"),
    (["predict", "--model", "BADTYPE", "--input", "train.csv"], "'max_length' must be an integer or null, got \"x\""),
    (["predict", "--model", "LISTJSON", "--input", "train.csv"], "must hold a JSON object of task options, not list"),
    (["predict", "--model", "WRONGTASK", "--input", "train.csv"], "task 'ner' does not fit the model's head"),
    (["predict", "--model", "GAP", "--input", "train.csv"], "id2label must number the labels 0 .. 1 without gaps"),
    (["evaluate", "--model", "GAP", "--data", "train.csv"], "got ids 0, 2"),
    (["predict", "--model", "ner", "--input", "words.csv"], "words.csv:2: no column 'tokens' (columns: words)"),
    (["fill-mask", "NOHEAD", "the [MASK] sat"], "no weights for its masked-LM head"),
    (["nsp", "NOHEAD", "the cat sat", "a dog ran"], "no weights for its next-sentence head"),
    (["text2text", "mlm", ""], "an input text is empty"),
    (["predict", "--model", "BIGTOK", "--input", "train.csv"], "tokens but the model embeds only 40"),
    pytest.param(["train-tokenizer", "corpus.txt", "--kind", "wordpiece", "--vocab-size", "60", "--out", "cls"],
                 "holds a model (config.json)", marks=needs_flag),
    # mistakes of our own, across verbs
    (["predict", "--model", "cls", "--input", "BINARY.txt"], "BINARY.txt is a binary file (NUL byte)"),
    (["predict", "--model", "cls", "--input", "LATIN.txt"], "LATIN.txt is not UTF-8 text"),
    (["predict", "--model", "cls", "--input", "DIR"], "input file DIR not found"),
    (["predict", "--model", "cls", "--input", "train.csv", "--batch-size", "0"], "--batch-size must be a positive"),
    (["evaluate", "--model", "cls", "--data", "train.csv", "--batch-size", "-1"], "--batch-size must be a positive"),
    (["predict", "--model", "ner", "--input", "train.csv", "--max-length", "1000"], "exceeds the model's 64 positions"),
    (["evaluate", "--model", "mlm", "--data", "train.csv"], "need a fine-tuned classifier"),
    (["train-tokenizer", "BINARY.txt", "--kind", "wordpiece", "--vocab-size", "60", "--out", "tok"], "binary file"),
    (["train-tokenizer", "DIR", "--kind", "wordpiece", "--vocab-size", "60", "--out", "tok"], "no text files found"),
    (["finetune", "--task", "classify", "--model", "mlm", "--train", "train.csv", "--out", "run", *TRAIN,
      "--batch-size", "0"], "batch_size must be a positive integer, got 0"),
    (["finetune", "--task", "classify", "--model", "mlm", "--train", "train.csv", "--out", "run", *TRAIN,
      "--max-steps", "-5"], "max_steps must be a positive integer, got -5"),
    (["finetune", "--task", "classify", "--model", "mlm", "--train", "BINARY.txt", "--out", "run", *TRAIN],
     "expected a .csv, .tsv or .jsonl file"),
    (["finetune", "--task", "classify", "--model", "DIR", "--train", "train.csv", "--out", "run", *TRAIN],
     "no tokenizer in"),
    (["fill-mask", "mlm", "the [MASK] sat", "--top-k", "0"], "--top-k must be >= 1"),
]


@pytest.mark.parametrize("argv, message", CASES, ids=[getattr(c, "values", c)[1] for c in CASES])
def test_mistake_is_one_error_line_and_changes_nothing(base, tmp_path, capsys, monkeypatch, argv, message):
    work = tmp_path / "w"
    shutil.copytree(base, work)
    monkeypatch.chdir(work)  # relative names, as a user types them
    before = snapshot(work)
    code = main(list(argv))
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert code == 2 and out == "", (code, out, err)
    assert lines and lines[-1].startswith("error: ") and message in lines[-1], err
    assert all(line.startswith("note: ") for line in lines[:-1]) and "Traceback" not in err, err
    assert snapshot(work) == before


def test_train_tokenizer_refuses_a_run_folder_without_overwrite(base, tmp_path):
    work = tmp_path / "w"
    shutil.copytree(base, work)
    corpus = [str(work / "corpus.txt")]
    before = snapshot(work / "cls")
    with pytest.raises(UserError, match=r"holds a model \(config.json\).*--overwrite"):
        train_tokenizer(corpus, kind="wordpiece", vocab_size=60, out_dir=str(work / "cls"), overwrite=False)
    only_tokenizer = work / "tok"
    Tokenizer.load(work / "cls").save(only_tokenizer)
    with pytest.raises(UserError, match=r"already holds a tokenizer \(tokenizer.json\)"):
        train_tokenizer(corpus, kind="wordpiece", vocab_size=60, out_dir=str(only_tokenizer), overwrite=False)
    with pytest.raises(UserError, match="is a file"):
        train_tokenizer(corpus, kind="wordpiece", vocab_size=60, out_dir=str(work / "existing.txt"), overwrite=False)
    assert snapshot(work / "cls") == before
    tok = train_tokenizer(corpus, kind="wordpiece", vocab_size=60, out_dir=str(work / "cls"), overwrite=True)
    assert Tokenizer.load(work / "cls").vocab_size == tok.vocab_size != Tokenizer.load(only_tokenizer).vocab_size
    train_tokenizer(corpus, kind="wordpiece", vocab_size=60, out_dir=str(work / "fresh"), overwrite=False)
    assert (work / "fresh" / "tokenizer.json").is_file()


@pytest.mark.parametrize("name, content", [
    ("in.csv", "tokens\nalice smith went to paris\nthe cat sat\n"),
    ("in.csv", 'tokens\n"[""alice"", ""smith"", ""went"", ""to"", ""paris""]"\n"[""the"", ""cat"", ""sat""]"\n'),
    ("in.tsv", "id\ttokens\n1\talice smith went to paris\n2\tthe cat sat\n"),
    ("in.tsv", "alice\nsmith\nwent\nto\nparis\n\nthe\ncat\nsat\n"),  # CoNLL in a .tsv, no header
])
def test_ner_reads_a_table_with_a_header_as_rows_of_tokens(base, tmp_path, capsys, name, content):
    (tmp_path / name).write_text(content)
    assert main(["predict", "--model", str(base / "ner"), "--input", str(tmp_path / name)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["tokens"] for r in rows] == [["alice", "smith", "went", "to", "paris"], ["the", "cat", "sat"]]
    assert all(len(r["tags"]) == len(r["tokens"]) for r in rows)
