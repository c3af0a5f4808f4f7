"""MLM masking statistics, whole-word masking, the collator, RoBERTa packing and BERT NSP pairs."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lmzoo.data import TokenizedCorpus
from lmzoo.errors import UserError
from lmzoo.objectives.mlm import MLMCollator, MLMConfig, mask_tokens, mlm_metrics
from lmzoo.objectives.nsp import NSPDataset, _truncate_pair, mlm_nsp_metrics, nsp_metrics
from lmzoo.objectives.packing import PackedDataset

PAD, CLS, SEP, MASK, UNK = 0, 1, 2, 3, 4
SPECIALS = {PAD, CLS, SEP, MASK, UNK}
VOCAB = 5000


def make_corpus(n_docs: int, seed: int, *, sentences=(1, 40), sentence_len=(1, 12),
                unique_tokens: bool = False) -> TokenizedCorpus:
    """A random corpus; with unique_tokens, token at position p is p + 10 (so a token says where it
    came from)."""
    rng = np.random.default_rng(seed)
    n_sent = rng.integers(sentences[0], sentences[1] + 1, size=n_docs)
    lengths = rng.integers(sentence_len[0], sentence_len[1] + 1, size=int(n_sent.sum()))
    sentence_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    document_offsets = np.concatenate([[0], np.cumsum(n_sent)]).astype(np.int64)
    n = int(sentence_offsets[-1])
    if unique_tokens:
        tokens = np.arange(n, dtype=np.uint32) + 10
    else:
        tokens = rng.integers(10, VOCAB, size=n).astype(np.uint32)
    word_starts = rng.random(n) < 0.6
    word_starts[sentence_offsets[:-1]] = True
    return TokenizedCorpus(tokens, word_starts, sentence_offsets, document_offsets,
                           np.arange(n_docs, dtype=np.int64))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batch_of_rows(n_rows=60, seq=300, seed=0):
    """[CLS] tokens [SEP] then padding; about 13k candidate tokens with the defaults."""
    rng = np.random.default_rng(seed)
    ids = torch.full((n_rows, seq), PAD, dtype=torch.long)
    ws = torch.ones(n_rows, seq, dtype=torch.bool)
    for r in range(n_rows):
        n = int(rng.integers(seq // 2, seq - 1))
        ids[r, 0], ids[r, n + 1] = CLS, SEP
        ids[r, 1:n + 1] = torch.from_numpy(rng.integers(10, VOCAB, size=n))
        ws[r, 1:n + 1] = torch.from_numpy(rng.random(n) < 0.5)
    special = torch.isin(ids, torch.tensor(sorted(SPECIALS)))
    return ids, special, ws


def rates(ids, special, out, labels):
    chosen = labels != -100
    cand = ~special
    n_chosen = chosen.sum().item()
    masked = (chosen & (out == MASK)).sum().item()
    kept = (chosen & (out == ids)).sum().item()
    randomised = (chosen & (out != ids) & (out != MASK)).sum().item()
    return n_chosen / cand.sum().item(), masked / n_chosen, randomised / n_chosen, kept / n_chosen


# ---------------------------------------------------------------- MLM


@pytest.mark.parametrize("cfg, want", [
    (MLMConfig(), (0.15, 0.8, 0.1, 0.1)),
    (MLMConfig(mask_prob=0.3, mask_token_prob=0.5, random_token_prob=0.5), (0.3, 0.5, 0.5, 0.0)),
])
def test_mask_rates(cfg, want):
    ids, special, _ = batch_of_rows()
    assert (~special).sum() >= 10_000
    out, labels = mask_tokens(ids, special_mask=special, mask_id=MASK, vocab_size=VOCAB, config=cfg,
                              generator=gen(0))
    chosen = labels != -100
    assert not (chosen & special).any()                       # specials and padding never chosen
    assert torch.equal(labels[chosen], ids[chosen])           # labels are the original ids
    assert torch.equal(out[special], ids[special])            # specials untouched
    assert torch.equal(out[~chosen], ids[~chosen])
    share, masked, randomised, kept = rates(ids, special, out, labels)
    assert abs(share - want[0]) < 0.01
    assert abs(masked - want[1]) < 0.02
    assert abs(randomised - want[2]) < 0.02
    assert abs(kept - want[3]) < 0.02
    # the default random pool (no random_ids) excludes [MASK] and every special id seen in the batch
    replaced = chosen & (out != ids) & (out != MASK)
    assert not torch.isin(out[replaced], torch.tensor(sorted(SPECIALS))).any()


def test_mask_determinism_and_variation():
    ids, special, _ = batch_of_rows(n_rows=4, seq=100)
    kw = dict(special_mask=special, mask_id=MASK, vocab_size=VOCAB, config=MLMConfig())
    a = mask_tokens(ids, generator=gen(1), **kw)
    b = mask_tokens(ids, generator=gen(1), **kw)
    c = mask_tokens(ids, generator=gen(2), **kw)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    g = gen(1)  # a generator advances: the second call on it gives a new mask (dynamic masking)
    first, second = mask_tokens(ids, generator=g, **kw), mask_tokens(ids, generator=g, **kw)
    assert torch.equal(first[1], a[1]) and not torch.equal(first[1], second[1])
    one, one_labels = mask_tokens(ids[0], special_mask=special[0], mask_id=MASK, vocab_size=VOCAB,
                                  config=MLMConfig(), generator=gen(3))
    assert one.shape == ids[0].shape and one_labels.shape == ids[0].shape


def test_random_ids_respected():
    ids, special, _ = batch_of_rows(n_rows=20, seq=200)
    pool = torch.tensor([777, 888])
    out, labels = mask_tokens(ids, special_mask=special, mask_id=MASK, vocab_size=VOCAB, generator=gen(0),
                              config=MLMConfig(mask_prob=0.5, mask_token_prob=0.0, random_token_prob=1.0),
                              random_ids=pool)
    chosen = labels != -100
    assert torch.isin(out[chosen], pool).all()
    assert set(out[chosen].tolist()) == {777, 888}


def test_every_row_gets_a_label():
    ids = torch.tensor([[CLS, 11, 12, SEP, PAD, PAD]] * 200)
    special = torch.isin(ids, torch.tensor(sorted(SPECIALS)))
    _, labels = mask_tokens(ids, special_mask=special, mask_id=MASK, vocab_size=VOCAB,
                            config=MLMConfig(), generator=gen(0))
    per_row = (labels != -100).sum(1)
    assert (per_row >= 1).all()
    assert not (labels[special] != -100).any()


def words_of(ids, special, ws):
    """(row, start, end) of every word, specials excluded (a special ends a word)."""
    words = []
    for r in range(ids.shape[0]):
        start = None
        for t in range(ids.shape[1] + 1):
            boundary = t == ids.shape[1] or special[r, t] or ws[r, t] or (t > 0 and special[r, t - 1])
            if boundary and start is not None:
                words.append((r, start, t))
                start = None
            if t < ids.shape[1] and not special[r, t] and start is None:
                start = t
    return words


def test_whole_word_masking():
    ids, special, ws = batch_of_rows(n_rows=40, seq=400)
    ws[:, 1] = False  # a row starting mid-word: the token after [CLS] still starts a word
    cfg = MLMConfig(whole_word=True)
    out, labels = mask_tokens(ids, special_mask=special, mask_id=MASK, vocab_size=VOCAB, config=cfg,
                              generator=gen(0), word_starts=ws)
    chosen = labels != -100
    assert not (chosen & special).any()
    words = words_of(ids, special, ws)
    assert len(words) > 5000 and max(e - s for _, s, e in words) > 1
    in_words = [chosen[r, s:e] for r, s, e in words]
    assert all(w.all() or not w.any() for w in in_words)      # every word entirely in or out
    picked = [(r, s, e) for (r, s, e), w in zip(words, in_words) if w.all()]
    assert abs(len(picked) / len(words) - 0.15) < 0.01         # words chosen at mask_prob
    assert abs(chosen.sum().item() / (~special).sum().item() - 0.15) < 0.015  # token rate too
    # the 80/10/10 decision is per token, as Google's create_masked_lm_predictions and transformers'
    # whole-word collator: a chosen word of n pieces is uniform (all one kind) with p 0.8^n + 2 * 0.1^n
    masked, kept = out[chosen] == MASK, out[chosen] == ids[chosen]
    assert abs(masked.float().mean().item() - 0.8) < 0.02
    assert abs(kept.float().mean().item() - 0.1) < 0.015
    assert abs((~masked & ~kept).float().mean().item() - 0.1) < 0.015
    long_words = [(r, s, e) for r, s, e in picked if e - s > 1]
    mixed = sum(len(set(("mask" if o == MASK else "keep" if o == x else "random")
                        for o, x in zip(out[r, s:e].tolist(), ids[r, s:e].tolist()))) > 1 for r, s, e in long_words)
    p_mixed = [1 - 0.8 ** (e - s) - 2 * 0.1 ** (e - s) for _, s, e in long_words]
    expected, sd = sum(p_mixed), sum(p * (1 - p) for p in p_mixed) ** 0.5
    assert len(long_words) > 100 and abs(mixed - expected) < 4 * sd, (mixed, expected, sd)


@pytest.mark.parametrize("kw", [dict(mask_prob=0.0), dict(mask_prob=1.0), dict(mask_prob=-0.1),
                                dict(mask_token_prob=1.1), dict(random_token_prob=-0.1),
                                dict(mask_token_prob=0.8, random_token_prob=0.3)])
def test_invalid_config(kw):
    with pytest.raises(UserError):
        MLMConfig(**kw)


def test_collator_padding_and_fields():
    collate = MLMCollator(pad_id=PAD, mask_id=MASK, vocab_size=VOCAB, special_ids=SPECIALS,
                          config=MLMConfig(mask_prob=0.5))
    examples = [{"input_ids": [CLS, 11, 12, 13, 14, SEP]}, {"input_ids": np.array([CLS, 21, SEP])}]
    batch = collate(examples, gen(0))
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert batch["input_ids"].shape == (2, 6) and batch["input_ids"].dtype == torch.long
    assert batch["attention_mask"].tolist() == [[1] * 6, [1, 1, 1, 0, 0, 0]]
    assert batch["input_ids"][1, 3:].tolist() == [PAD] * 3
    assert batch["token_type_ids"].eq(0).all()
    assert batch["labels"][1, 3:].eq(-100).all() and batch["labels"][:, 0].eq(-100).all()
    assert batch["labels"][1].tolist() == [-100, 21, -100, -100, -100, -100]  # the only candidate
    # random replacement never produces a special id, even ones absent from the batch
    collate = MLMCollator(pad_id=PAD, mask_id=MASK, vocab_size=12, special_ids=SPECIALS,
                          config=MLMConfig(mask_prob=0.9, mask_token_prob=0.0, random_token_prob=1.0))
    batch = collate([{"input_ids": [CLS] + [11] * 500 + [SEP]}], gen(0))
    chosen = batch["labels"] != -100
    assert set(batch["input_ids"][chosen].tolist()) == set(range(5, 12))
    with pytest.raises(UserError):
        MLMCollator(pad_id=PAD, mask_id=MASK, vocab_size=VOCAB, special_ids=SPECIALS,
                    config=MLMConfig(whole_word=True))([{"input_ids": [CLS, 11, SEP]}], gen(0))


def test_mlm_metrics_counts():
    labels = torch.tensor([[-100, 7, -100, 9], [5, -100, -100, -100]])
    target = labels[labels != -100]  # [7, 9, 5]
    logits = torch.nn.functional.one_hot(target, 12).float()
    logits[1] = torch.nn.functional.one_hot(torch.tensor(3), 12).float()  # second prediction wrong
    m = mlm_metrics({"labels": labels}, SimpleNamespace(logits=logits))
    assert m == {"mlm_correct": 2.0, "mlm_total": 3.0}
    full = torch.zeros(2, 4, 12)
    full[labels != -100] = logits
    assert mlm_metrics({"labels": labels}, SimpleNamespace(logits=full)) == m
    out = SimpleNamespace(logits=logits, nsp_logits=torch.tensor([[2.0, 1.0], [2.0, 1.0], [0.0, 1.0]]))
    nsp_batch = {"labels": labels, "nsp_labels": torch.tensor([0, 1, 1])}
    assert nsp_metrics(nsp_batch, out) == {"nsp_correct": 2.0, "nsp_total": 3.0}
    assert mlm_nsp_metrics(nsp_batch, out) == {**m, "nsp_correct": 2.0, "nsp_total": 3.0}


# ---------------------------------------------------------------- packing


def test_packing_layout_and_content(tmp_path):
    corpus = make_corpus(30, seed=1, unique_tokens=True)
    # memmapped arrays and a view with a subset of the documents, as data.TokenizedCorpus.split gives
    arrays = {}
    for name in ("tokens", "word_starts", "sentence_offsets", "document_offsets"):
        a = getattr(corpus, name)
        a.tofile(tmp_path / name)
        arrays[name] = np.memmap(tmp_path / name, dtype=a.dtype, mode="r", shape=a.shape)
    view_docs = np.array([0, 3, 4, 7, 8, 9, 15, 22, 29], dtype=np.int64)
    view = TokenizedCorpus(**arrays, doc_ids=view_docs)
    BOS, EOS = 1, 2
    for max_length in (5, 64, 129):
        ds = PackedDataset(view, max_length=max_length, bos_id=BOS, eos_id=EOS)
        rows = [ds[i] for i in range(len(ds))]
        content = []
        for k, row in enumerate(rows):
            ids = row["input_ids"]
            assert ids[0] == BOS and ids[-1] == EOS
            assert len(row["word_starts"]) == len(ids) and row["word_starts"][[0, -1]].all()
            if k < len(rows) - 1:
                assert len(ids) == max_length
            else:
                assert 3 <= len(ids) <= max_length
            content.append(ids[1:-1])
        stream = np.concatenate(content)
        want = []
        for j, d in enumerate(view_docs):
            if j:
                want.append(np.array([EOS]))
            want.append(corpus.document_tokens(int(d)).astype(np.int64))
        np.testing.assert_array_equal(stream, np.concatenate(want))
        # word starts follow the corpus's; separators count as word starts
        ws = np.concatenate([r["word_starts"][1:-1] for r in rows])
        pos = stream >= 10
        np.testing.assert_array_equal(ws[pos], corpus.word_starts[stream[pos] - 10])
        assert ws[~pos].all()
    with pytest.raises(IndexError):
        ds[len(ds)]
    plain = PackedDataset(view, max_length=16, bos_id=None, eos_id=50, sep_between_docs=True)
    assert len(plain[0]["input_ids"]) == 16 and plain[0]["input_ids"][-1] == 50
    with pytest.raises(UserError):
        PackedDataset(view, max_length=2, bos_id=BOS, eos_id=EOS)


def test_packed_rows_through_collator():
    corpus = make_corpus(20, seed=2)
    ds = PackedDataset(corpus, max_length=128, bos_id=CLS, eos_id=SEP)
    collate = MLMCollator(pad_id=PAD, mask_id=MASK, vocab_size=VOCAB, special_ids=SPECIALS,
                          config=MLMConfig(whole_word=True))
    examples = [ds[i] for i in range(len(ds))]
    batch = collate(examples, gen(0))
    ids = torch.full((len(examples), 128), PAD)
    for r, e in enumerate(examples):
        ids[r, :len(e["input_ids"])] = torch.as_tensor(e["input_ids"])
    assert batch["input_ids"].shape[1] == 128
    special = torch.isin(ids, torch.tensor(sorted(SPECIALS)))
    chosen = batch["labels"] != -100
    assert not (chosen & special).any()
    assert torch.equal(batch["labels"][chosen], ids[chosen])
    assert torch.equal(batch["input_ids"][~chosen], ids[~chosen])
    share = chosen.sum().item() / (batch["attention_mask"].sum().item() - 2 * len(examples))
    assert abs(share - 0.15) < 0.03


# ---------------------------------------------------------------- NSP


def locate(corpus, tokens):
    """Token positions of a segment of a unique-token corpus; they must be contiguous."""
    pos = np.asarray(tokens, dtype=np.int64) - 10
    assert (np.diff(pos) == 1).all()
    return int(pos[0]), int(pos[-1])


def doc_of(corpus, position):
    sentence = np.searchsorted(corpus.sentence_offsets, position, side="right") - 1
    return int(np.searchsorted(corpus.document_offsets, sentence, side="right") - 1)


def test_nsp_pairs():
    corpus = make_corpus(150, seed=3, sentences=(1, 40), unique_tokens=True)
    max_length = 64
    ds = NSPDataset(corpus, max_length=max_length, cls_id=CLS, sep_id=SEP, seed=0)
    assert 200 < len(ds) < 2000
    sentence_starts = set(corpus.sentence_offsets.tolist())
    labels, n_checked_exact = [], 0
    for epoch in range(6):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            ex = ds[i]
            ids, tt = ex["input_ids"], ex["token_type_ids"]
            assert len(ids) <= max_length and len(tt) == len(ids) == len(ex["word_starts"])
            assert ids[0] == CLS and ids[-1] == SEP and (ids == SEP).sum() == 2
            sep = int(np.flatnonzero(ids == SEP)[0])
            assert (tt[:sep + 1] == 0).all() and (tt[sep + 1:] == 1).all()
            assert ex["word_starts"][[0, 1, sep, sep + 1, -1]].all()
            a, b = ids[1:sep], ids[sep + 1:-1]
            assert len(a) >= 1 and len(b) >= 1
            a0, a1 = locate(corpus, a)
            b0, b1 = locate(corpus, b)
            labels.append(ex["nsp_label"])
            if ex["nsp_label"] == 0:  # IsNext: B continues A in the same document
                assert doc_of(corpus, a0) == doc_of(corpus, b1)
                assert a1 < b0 and any(a1 < s <= b0 for s in sentence_starts)
                if len(a) + len(b) < max_length - 3:  # nothing truncated: exactly adjacent sentences
                    assert a1 + 1 == b0 and a0 in sentence_starts and b1 + 1 in sentence_starts
                    n_checked_exact += 1
            else:
                assert ex["nsp_label"] == 1
                assert doc_of(corpus, b0) != doc_of(corpus, a0)
                assert doc_of(corpus, b0) == doc_of(corpus, b1)
    labels = np.array(labels)
    assert len(labels) >= 2000 and n_checked_exact > 100
    assert abs(labels.mean() - 0.5) < 0.04
    # one-sentence chunks always get a random B (Google); the others are a fair coin
    single = np.mean([ds.chunk_end[i] - ds.chunk_first[i] == 1 for i in range(len(ds))])
    assert abs(labels.mean() - (0.5 + 0.5 * single)) < 0.03
    lengths = [len(ds[i]["input_ids"]) for i in range(len(ds))]
    assert np.mean(lengths) > 0.75 * max_length  # chunks fill the target length
    assert min(lengths) < max_length // 2         # short_seq_prob gives some short ones


def test_nsp_determinism_and_epochs():
    corpus = make_corpus(10, seed=4)
    a = NSPDataset(corpus, max_length=48, cls_id=CLS, sep_id=SEP, seed=7)
    b = NSPDataset(corpus, max_length=48, cls_id=CLS, sep_id=SEP, seed=7)
    b.set_epoch(3)
    b.set_epoch(0)
    for i in range(len(a)):
        for key in ("input_ids", "token_type_ids", "word_starts"):
            np.testing.assert_array_equal(a[i][key], b[i][key])
        assert a[i]["nsp_label"] == b[i]["nsp_label"]
    b.set_epoch(1)
    differ = sum(not np.array_equal(a[i]["input_ids"], b[i]["input_ids"]) for i in range(len(a)))
    assert differ > len(a) // 3
    c = NSPDataset(corpus, max_length=48, cls_id=CLS, sep_id=SEP, seed=8)
    assert any(not np.array_equal(a[i]["input_ids"], c[i]["input_ids"]) for i in range(min(len(a), len(c))))


def test_nsp_small_corpora():
    one_sentence_docs = make_corpus(3, seed=5, sentences=(1, 1))
    ds = NSPDataset(one_sentence_docs, max_length=32, cls_id=CLS, sep_id=SEP, seed=0)
    assert len(ds) == 3 and all(ds[i]["nsp_label"] == 1 for i in range(3))
    with pytest.raises(UserError):
        NSPDataset(make_corpus(1, seed=6), max_length=32, cls_id=CLS, sep_id=SEP, seed=0)
    with pytest.raises(UserError):
        NSPDataset(make_corpus(3, seed=6), max_length=4, cls_id=CLS, sep_id=SEP, seed=0)
    with pytest.raises(UserError):
        NSPDataset(make_corpus(3, seed=6), max_length=32, cls_id=CLS, sep_id=SEP, seed=0, short_seq_prob=2)
    # a view of a single document is too small, even when the full corpus is not
    corpus = make_corpus(5, seed=6)
    view = TokenizedCorpus(corpus.tokens, corpus.word_starts, corpus.sentence_offsets,
                           corpus.document_offsets, np.array([2]))
    with pytest.raises(UserError):
        NSPDataset(view, max_length=32, cls_id=CLS, sep_id=SEP, seed=0)


def test_truncate_pair_matches_google_loop():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        la, lb, m = (int(x) for x in rng.integers(1, 40, size=3))
        m += 1
        a, b = (100, 100 + la), (500, 500 + lb)
        ta, tb = _truncate_pair(a, b, m, rng)
        x, y = la, lb
        while x + y > m:  # Google's truncate_seq_pair, lengths only
            if x > y:
                x -= 1
            else:
                y -= 1
        assert (ta[1] - ta[0], tb[1] - tb[0]) == (x, y)
        assert a[0] <= ta[0] <= ta[1] <= a[1] and b[0] <= tb[0] <= tb[1] <= b[1]


def test_nsp_collator_path():
    corpus = make_corpus(12, seed=8)
    ds = NSPDataset(corpus, max_length=40, cls_id=CLS, sep_id=SEP, seed=0)
    collate = MLMCollator(pad_id=PAD, mask_id=MASK, vocab_size=VOCAB, special_ids=SPECIALS,
                          config=MLMConfig(whole_word=True))
    examples = [ds[i] for i in range(16)]
    batch = collate(examples, gen(0))
    assert batch["nsp_labels"].tolist() == [e["nsp_label"] for e in examples]
    for r, e in enumerate(examples):
        n = len(e["input_ids"])
        assert batch["token_type_ids"][r, :n].tolist() == e["token_type_ids"].tolist()
        assert batch["token_type_ids"][r, n:].eq(0).all() and batch["labels"][r, n:].eq(-100).all()
        assert batch["attention_mask"][r].sum().item() == n
        chosen = batch["labels"][r, :n] != -100
        assert chosen.any() and not chosen[torch.as_tensor(e["input_ids"]) == SEP].any()
        assert torch.equal(batch["labels"][r, :n][chosen], torch.as_tensor(e["input_ids"])[chosen])
