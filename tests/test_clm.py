"""CLM objective: packing with end-of-text, labels, block-diagonal attention, learning."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from lmzoo.data import TokenizedCorpus
from lmzoo.generate import generate
from lmzoo.models.gpt2 import GPT2LMHeadModel
from lmzoo.objectives.clm import ClmCollator, clm_dataset, clm_metrics
from lmzoo.presets import preset_config

EOS = 20


def corpus_of(docs: list[list[int]]) -> TokenizedCorpus:
    """An in-memory corpus, one sentence per document."""
    lengths = np.array([len(d) for d in docs])
    return TokenizedCorpus(
        tokens=np.concatenate([np.asarray(d, dtype=np.uint32) for d in docs]),
        word_starts=np.ones(int(lengths.sum()), dtype=bool),
        sentence_offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        document_offsets=np.arange(len(docs) + 1, dtype=np.int64),
        doc_ids=np.arange(len(docs), dtype=np.int64),
    )


def test_rows_labels_documents_and_positions():
    docs = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    data = clm_dataset(corpus_of(docs), max_length=4, eos_id=EOS)
    rows = [data[i]["input_ids"].tolist() for i in range(len(data))]
    assert rows == [[1, 2, 3, EOS], [4, 5, EOS, 6], [7, 8, 9]]
    batch = ClmCollator(eos_id=EOS)([data[i] for i in range(len(data))], torch.Generator())  # pad = eos
    assert batch["input_ids"][2].tolist() == [7, 8, 9, EOS]  # padding that looks like an eos ...
    assert batch["labels"][2].tolist() == [7, 8, 9, -100]  # ... is no target, but real eos tokens are:
    assert batch["labels"][0].tolist() == [1, 2, 3, EOS]
    assert batch["document_ids"][1].tolist() == [0, 0, 0, 1]  # an eos ends its own document
    assert batch["position_ids"][1].tolist() == [0, 1, 2, 0]
    # "6" starts a new document: it cannot be predicted from the previous document's eos
    assert batch["labels"][1].tolist() == [4, 5, EOS, -100]
    assert batch["attention_mask"][2].tolist() == [1, 1, 1, 0]
    plain = ClmCollator(eos_id=EOS)([clm_dataset(corpus_of(docs), 4, EOS, cross_document_attention=True)[1]])
    assert set(plain) == {"input_ids", "attention_mask", "labels"}
    assert plain["labels"][0].tolist() == [4, 5, EOS, 6]


def test_no_attention_weight_crosses_end_of_text(monkeypatch):
    """Record the real attention probabilities of every layer on packed rows."""
    g = torch.Generator().manual_seed(0)
    docs = [torch.randint(0, EOS, (int(n),), generator=g).tolist() for n in torch.randint(2, 9, (20,), generator=g)]
    data = clm_dataset(corpus_of(docs), max_length=24, eos_id=EOS)
    batch = ClmCollator(eos_id=EOS)([data[i] for i in range(len(data))])
    recorded = []

    def sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None):
        scores = q @ k.transpose(-1, -2) * (scale or q.shape[-1] ** -0.5)
        assert attn_mask is not None and not is_causal
        weights = (scores + attn_mask).softmax(-1)
        recorded.append(weights)
        return weights @ v

    monkeypatch.setattr(F, "scaled_dot_product_attention", sdpa)
    # the dense block-diagonal mask (right-padded rows take lmzoo.nn.segments: tests/test_segments.py)
    monkeypatch.setattr("lmzoo.nn.segments.right_padded", lambda mask: False)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(preset_config("gpt-tiny", vocab_size=EOS + 1, eos_token_id=EOS)).eval()
    with torch.no_grad():
        model(**batch)
    assert len(recorded) == 2
    ids = batch["input_ids"]
    # eos_before[b, i] = number of eos strictly before i; keys j < i with fewer are other documents
    eos_before = torch.cat([torch.zeros_like(ids[:, :1]), (ids == EOS).cumsum(1)[:, :-1]], 1)
    real = batch["attention_mask"].bool()
    crossing = (eos_before[:, :, None] != eos_before[:, None, :]) & real[:, :, None] & real[:, None, :]
    assert crossing.any()  # the rows really hold several documents
    for weights in recorded:
        assert (weights.masked_select(crossing[:, None]) == 0).all()
        assert ((weights > 0) & ~torch.ones(24, 24, dtype=torch.bool).tril()).sum() == 0  # and causal


def test_tiny_gpt_learns_counting_and_to_end_documents():
    """Documents "a a+1 a+2 a+3 a+4" then eos: after training, greedy decoding counts on from any
    start and emits end-of-text after exactly five tokens."""
    torch.manual_seed(0)
    starts = torch.randint(0, EOS - 4, (400,)).tolist()
    data = clm_dataset(corpus_of([[a + i for i in range(5)] for a in starts]), max_length=36, eos_id=EOS)
    collate = ClmCollator(eos_id=EOS)
    config = preset_config("gpt-tiny", vocab_size=EOS + 1, eos_token_id=EOS, bos_token_id=EOS, d_model=64,
                           n_heads=4, dropout=0.0, attention_dropout=0.0, max_positions=64)
    model = GPT2LMHeadModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(150):
        rows = torch.randint(0, len(data), (16,)).tolist()
        loss = model(**collate([data[i] for i in rows])).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
    model.eval()
    batch = collate([data[i] for i in range(len(data))])
    with torch.no_grad():
        sums = clm_metrics(EOS)(batch, model(**batch))
    assert sums["eos_total"] > 300 and sums["eos_correct"] / sums["eos_total"] > 0.95
    for a in (0, 7, 15):
        out = generate(model, torch.tensor([[a]]), max_new_tokens=8)
        assert out[0].tolist()[:5] == [a + 1, a + 2, a + 3, a + 4, EOS]
