"""Readers (CSV / TSV / JSONL column mapping, CoNLL), label maps, and word-level tags aligned to
subwords and mapped back to words, for WordPiece and byte-level BPE."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from lmzoo.errors import UserError
from lmzoo.outputs import ModelOutput
from lmzoo.tasks.data import (
    IGNORE_INDEX,
    PaddingCollator,
    TaggedSentence,
    align_tags,
    build_label_map,
    check_labels,
    read_tagged_sentences,
    read_text_examples,
)
from lmzoo.tasks.ner import TaggedDataset, entities, predict_tags
from lmzoo.tokenizer import train_tokenizer


def test_tables_with_column_mapping(tmp_path):
    (tmp_path / "a.tsv").write_text("sentence\tother\tgold\nit was fine\tx\tpos\nawful, really\ty\tneg\n")
    ex = read_text_examples(tmp_path / "a.tsv", text_column="sentence", text_pair_column="other", label_column="gold")
    assert [(e.text, e.text_pair, e.label) for e in ex] == [("it was fine", "x", "pos"), ("awful, really", "y", "neg")]
    (tmp_path / "b.csv").write_text('text,label\n"a, quoted ""text""",sports|news\nplain,news\n')
    ex = read_text_examples(tmp_path / "b.csv", label_separator="|")
    assert ex[0].text == 'a, quoted "text"' and ex[0].label == ["news", "sports"] and ex[1].label == ["news"]
    (tmp_path / "c.jsonl").write_text('{"text": "x", "label": 0.5}\n\n{"text": "y", "label": "-2"}\n')
    assert [e.label for e in read_text_examples(tmp_path / "c.jsonl", regression=True)] == [0.5, -2.0]
    (tmp_path / "d.jsonl").write_text('{"text": "x", "label": ["b", "a", "b"]}\n')
    assert read_text_examples(tmp_path / "d.jsonl")[0].label == ["a", "b"]
    assert read_text_examples(tmp_path / "d.jsonl", label_column=None)[0].label is None


def test_tsv_quotes_are_text(tmp_path):
    """TSV has no quoting: a cell starting with a quote, or an unbalanced one, is read verbatim and
    never swallows the rows after it."""
    (tmp_path / "q.tsv").write_text('text\tlabel\n"Jaws" is great\tpos\n"what a film\tpos\nawful plot\tneg\n'
                                    'superb" acting, 10/10\tpos\ndismal ending\tneg\n')
    ex = read_text_examples(tmp_path / "q.tsv")
    assert [(e.text, e.label) for e in ex] == [('"Jaws" is great', "pos"), ('"what a film', "pos"), ("awful plot", "neg"),
                                              ('superb" acting, 10/10', "pos"), ("dismal ending", "neg")]


@pytest.mark.parametrize("name,content,kwargs,message", [
    ("a.csv", "text,label\nhi,pos\n", {"label_column": "gold"}, "a.csv:2: no column 'gold'"),
    ("a.csv", "text,label\n", {}, "holds no examples"),
    ("a.csv", "text,label\nhi,\n", {}, "a.csv:2: empty label"),
    ("a.csv", "text,label\nhi,pos,extra\n", {}, "a.csv:2: 3 fields"),
    ("a.jsonl", '{"text": "hi", "label": "x"}\nnot json\n', {}, "a.jsonl:2: not valid JSON"),
    ("a.jsonl", '{"text": "hi", "label": "x"}\n', {"regression": True}, "is not a number"),
    ("a.txt", "hi\n", {}, "expected a .csv, .tsv or .jsonl"),
])
def test_table_errors_name_the_problem(tmp_path, name, content, kwargs, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(UserError, match=message):
        read_text_examples(tmp_path / name, **kwargs)


def test_conll_and_jsonl_tagged(tmp_path):
    (tmp_path / "a.conll").write_text("-DOCSTART- O\n\nEmpire\tB-fac\nState I-fac\n\t\nhi\tO\n")
    sentences = read_tagged_sentences(tmp_path / "a.conll")
    assert [(s.words, s.tags) for s in sentences] == [(["Empire", "State"], ["B-fac", "I-fac"]), (["hi"], ["O"])]
    (tmp_path / "b.conll").write_text("a\tO\n\nb\tO\nc\n")
    with pytest.raises(UserError, match=r"b.conll:4: expected 'token<TAB>tag'"):
        read_tagged_sentences(tmp_path / "b.conll")
    (tmp_path / "c.conll").write_text("\n\t\n")
    with pytest.raises(UserError, match="holds no sentences"):
        read_tagged_sentences(tmp_path / "c.conll")
    (tmp_path / "d.jsonl").write_text('{"tokens": ["a", "b"], "tags": ["O", "B-x"]}\n{"tokens": ["a"], "tags": []}\n')
    with pytest.raises(UserError, match="d.jsonl:2: 1 tokens but 0 tags"):
        read_tagged_sentences(tmp_path / "d.jsonl")


def test_label_maps():
    assert build_label_map(["pos", "neg", "pos", "neu"]) == {0: "neg", 1: "neu", 2: "pos"}
    assert build_label_map([["b", "a"], ["c"]]) == {0: "a", 1: "b", 2: "c"}
    assert build_label_map(["I-x", "O", "B-x"], outside="O") == {0: "O", 1: "B-x", 2: "I-x"}
    check_labels(["a", ["a", "b"]], {"a": 0, "b": 1}, "f")
    with pytest.raises(UserError, match="f: label 'c' was not seen in the training data"):
        check_labels(["a", "c"], {"a": 0, "b": 1}, "f")


WORDS = "Empire State Building storm yesterday unbelievably rainy Copenhagen @paulwalk 's".split()


@pytest.fixture(scope="module", params=["wordpiece", "bpe"])
def tokenizer(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    rng = random.Random(0)
    # frequent words become whole tokens; the rest (seen once, so their characters are known) split
    (folder / "c.txt").write_text("\n\n".join([" ".join(rng.choices(WORDS[:5], k=8)) for _ in range(50)] + WORDS))
    # a small vocabulary, so rarer words split into several subwords
    return train_tokenizer([str(folder / "c.txt")], kind=request.param, vocab_size=120 if request.param ==
                           "wordpiece" else 290, out_dir=str(folder))


def test_first_subword_is_labelled_the_rest_ignored(tokenizer):
    tags = list(range(len(WORDS)))
    input_ids, labels, first = align_tags(tokenizer, WORDS, tags, max_length=128)
    assert len(input_ids) == len(labels) >= len(WORDS) + 2 + 3  # specials, and several words did split
    assert [labels[p] for p in first] == tags  # each word's tag at its first subword ...
    assert sum(lab != IGNORE_INDEX for lab in labels) == len(WORDS)  # ... and nowhere else
    assert labels[0] == IGNORE_INDEX and labels[-1] == IGNORE_INDEX  # [CLS]/<s>, [SEP]/</s>
    # the tokens between two first positions decode to exactly the word (spaces aside)
    bounds = first + [len(input_ids) - 1]
    for w, word in enumerate(WORDS):
        piece = tokenizer.decode(input_ids[bounds[w]:bounds[w + 1]]).replace(" ", "")
        assert piece == word.lower() or piece == word, (piece, word)


@dataclass
class _Config:
    id2label: dict
    type_vocab_size: int = 0
    pad_token_id: int = 0


class Oracle(nn.Module):
    """Outputs, for a sentence it has seen, its aligned labels at first subwords and a WRONG label at
    every other token: predictions come out right only if they are read at first subwords."""

    def __init__(self, table: dict, id2label: dict) -> None:
        super().__init__()
        self.table, self.config, self.dummy = table, _Config(id2label), nn.Parameter(torch.zeros(1))
        self.device = torch.device("cpu")

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        n = len(self.config.id2label)
        logits = torch.zeros(*input_ids.shape, n)
        for r, row in enumerate(input_ids):
            labels = self.table[tuple(row[attention_mask[r].bool()].tolist())]
            for t, lab in enumerate(labels):
                logits[r, t, lab if lab != IGNORE_INDEX else (t % n)] = 5.0
                if lab != IGNORE_INDEX and t + 1 < len(labels) and labels[t + 1] == IGNORE_INDEX:
                    logits[r, t + 1, (lab + 1) % n] = 9.0  # a later subword shouts another tag
        return ModelOutput(logits=logits)


def test_word_level_tags_in_word_level_predictions_out(tokenizer):
    id2label = {0: "O", 1: "B-LOC", 2: "I-LOC", 3: "B-PER"}
    label2id = {v: k for k, v in id2label.items()}
    sentences = [TaggedSentence(WORDS[:4], ["B-LOC", "I-LOC", "I-LOC", "O"]),
                 TaggedSentence(WORDS[4:], ["O", "O", "O", "B-LOC", "B-PER", "O"])]
    data = TaggedDataset(sentences, tokenizer, label2id, max_length=64)
    table = {tuple(item["input_ids"].tolist()): item["labels"] for item in data.items}
    out = predict_tags(Oracle(table, id2label), tokenizer, sentences, max_length=64, batch_size=2)
    assert [p["tags"] for p in out] == [s.tags for s in sentences]
    assert entities(sentences[0].words, out[0]["tags"]) == [
        {"type": "LOC", "start": 0, "end": 3, "text": "Empire State Building"}]


def test_truncated_words_predict_outside(tokenizer):
    words = WORDS * 3
    _, labels, first = align_tags(tokenizer, words, [1] * len(words), max_length=12)
    assert len(labels) == 12 and first[0] == 1 and first[-1] == -1  # words past the budget have no token
    with pytest.raises(UserError, match="leaves no room"):
        align_tags(tokenizer, words, None, max_length=2)


def test_padding_collator():
    examples = [{"input_ids": [5, 6, 7], "token_type_ids": [0, 0, 1], "labels": [1, -100, 2]},
                {"input_ids": [5], "token_type_ids": [0], "labels": [0]}]
    batch = PaddingCollator(9, token_labels=True)(examples)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 9, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 1], [0, 0, 0]]
    assert batch["labels"].tolist() == [[1, -100, 2], [0, -100, -100]]
    seq = PaddingCollator(1, token_types=False)([{"input_ids": [3], "labels": 2}, {"input_ids": [4], "labels": 0}])
    assert "token_type_ids" not in seq and seq["labels"].dtype == torch.long and seq["labels"].tolist() == [2, 0]
    multi = PaddingCollator(1)([{"input_ids": [3], "labels": [1.0, 0.0]}])
    assert multi["labels"].dtype == torch.float32
