"""BART noise functions: each one's invariant, its rate within statistical bounds; a tiny BART learns
to fill masks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lmzoo.errors import UserError
from lmzoo.models.bart import BartForConditionalGeneration
from lmzoo.objectives.denoising import (DenoisingCollator, DenoisingConfig, document_rotation, sentence_permutation,
                                        text_infilling, token_deletion, token_masking)
from lmzoo.presets import preset_config

MASK = 4


def doc(n=300, seed=0):
    return np.random.default_rng(seed).integers(10, 1000, n)


def test_token_masking_rate():
    rng = np.random.default_rng(0)
    tokens = doc(1000)
    rates = [(token_masking(tokens, 0.15, MASK, rng) == MASK).mean() for _ in range(200)]
    # binomial: sd of the mean over 200k tokens ≈ 0.0008
    assert np.mean(rates) == pytest.approx(0.15, abs=0.004)
    out = token_masking(tokens, 0.15, MASK, rng)
    assert np.array_equal(out[out != MASK], tokens[out != MASK])  # the others untouched


def test_token_deletion_removes_the_stated_share_in_order():
    rng = np.random.default_rng(1)
    tokens = np.arange(10, 410)
    for _ in range(50):
        out = token_deletion(tokens, 0.2, rng)
        assert len(out) == 320 and np.all(np.diff(out) > 0)  # a subsequence: order kept
    # every position is equally likely to go
    gone = np.zeros(400)
    for _ in range(500):
        gone[np.setdiff1d(tokens, token_deletion(tokens, 0.2, rng)) - 10] += 1
    assert gone.mean() / 500 == pytest.approx(0.2) and gone.min() > 60 and gone.max() < 145


def test_text_infilling_ratio_poisson_mean_and_reconstruction():
    rng = np.random.default_rng(2)
    lengths, zero = [], 0
    for seed in range(300):
        tokens = doc(200, seed)
        out, spans = text_infilling(tokens, 0.3, 3.0, MASK, rng)
        assert sum(length for _, length in spans) == 60  # exactly 30% of the tokens
        assert (out == MASK).sum() == len(spans)  # each span, empty ones included, is one mask
        # put the spans back: the original document
        rebuilt, it = [], iter(spans)
        for t in out:
            if t == MASK:
                start, length = next(it)
                rebuilt.extend(tokens[start:start + length])
            else:
                rebuilt.append(t)
        assert np.array_equal(rebuilt, tokens)
        assert [s for s, _ in spans] == sorted(s for s, _ in spans)
        lengths += [length for _, length in spans[:-1]]  # the last one is cut to the budget
        zero += sum(length == 0 for _, length in spans[:-1])
    # Poisson(3): mean 3, P(0) = e^-3 ≈ 0.0498; ~6000 draws → sd of the mean ≈ 0.022
    assert np.mean(lengths) == pytest.approx(3.0, abs=0.1)
    assert np.var(lengths) == pytest.approx(3.0, abs=0.3)
    assert zero / len(lengths) == pytest.approx(math.exp(-3), abs=0.015)


def test_sentence_permutation_is_a_permutation_of_sentences():
    rng = np.random.default_rng(3)
    sentence_ids = np.repeat(np.arange(6), [3, 5, 1, 4, 2, 6])
    tokens = np.arange(100, 100 + len(sentence_ids))
    sentences = np.split(tokens, np.flatnonzero(np.diff(sentence_ids)) + 1)
    first = np.zeros(6)
    for _ in range(600):
        out, order = sentence_permutation(tokens, sentence_ids, rng)
        assert sorted(order) == list(range(6))
        assert np.array_equal(out, np.concatenate([sentences[i] for i in order]))
        first[order[0]] += 1
    assert first.min() > 60 and first.max() < 140  # uniform: 100 each


def test_document_rotation_is_a_rotation():
    rng = np.random.default_rng(4)
    tokens = np.arange(50)
    offsets = []
    for _ in range(500):
        out, offset = document_rotation(tokens, rng)
        assert np.array_equal(out, np.concatenate([tokens[offset:], tokens[:offset]]))
        offsets.append(offset)
    assert np.mean(offsets) == pytest.approx(24.5, abs=2.0) and len(set(offsets)) > 45


def test_collator_default_recipe():
    collate = DenoisingCollator(mask_id=MASK, pad_id=1, bos_id=0, eos_id=2)
    assert collate.config.infill_rate == 0.3 and collate.config.poisson_lambda == 3 and collate.config.permute_sentences
    tokens = doc(40)
    sentence_ids = np.repeat(np.arange(4), 10)
    batch = collate([{"input_ids": tokens, "sentence_ids": sentence_ids}, {"input_ids": tokens[:20]}],
                    torch.Generator().manual_seed(0))
    assert batch["labels"][0].tolist() == [0, *tokens.tolist(), 2]
    assert batch["labels"][1, :22].tolist() == [0, *tokens[:20].tolist(), 2] and (batch["labels"][1, 22:] == -100).all()
    src = batch["input_ids"][0][batch["attention_mask"][0].bool()]
    assert src[0] == 0 and src[-1] == 2 and (src == MASK).any()
    kept = src[(src != MASK)][1:-1]
    assert len(kept) == 40 - 12 and set(kept.tolist()) <= set(tokens.tolist())
    with pytest.raises(UserError):
        DenoisingConfig(infill_rate=1.0)


@pytest.mark.parametrize("lam", [0.1, 0.5, 1.0, 3.0])
def test_a_full_window_loses_no_clean_token_to_insertions(lam):
    """Zero-length spans insert a <mask> each; in a window that fills the row they are dropped once
    the row is full, so the model's input never loses the end of the text its target holds."""
    collate = DenoisingCollator(mask_id=MASK, pad_id=1, bos_id=0, eos_id=2, max_length=64,
                                config=DenoisingConfig(poisson_lambda=lam, permute_sentences=False))
    tokens = doc(62)
    batch = collate([{"input_ids": tokens}] * 32, torch.Generator().manual_seed(0))
    budget = round(0.3 * 62)
    for row in range(32):
        src = batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()
        assert len(src) <= 64 and src[0] == 0 and src[-1] == 2
        clean = [t for t in src[1:-1] if t != MASK]
        assert len(clean) == 62 - budget  # every clean token kept, the last ones included
        assert batch["labels"][row].tolist() == [0, *tokens.tolist(), 2]


def test_tiny_bart_learns_to_fill_masks():
    """Token masking on sequences with a learnable structure (x, x+1, x+2, ...): BART recovers them."""
    torch.manual_seed(0)
    model = BartForConditionalGeneration(preset_config("bart-tiny", vocab_size=40, dropout=0.0))
    collate = DenoisingCollator(mask_id=MASK, pad_id=1, bos_id=0, eos_id=2,
                                config=DenoisingConfig(infill_rate=0.0, mask_rate=0.3, permute_sentences=False))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    losses = []
    for step in range(120):
        starts = rng.integers(5, 28, 32)
        batch = collate([{"input_ids": np.arange(s, s + 12)} for s in starts], g)
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 3.0 and np.mean(losses[-10:]) < 0.15, (losses[0], losses[-10:])
    model.eval()
    batch = collate([{"input_ids": np.arange(s, s + 12)} for s in (7, 15)], torch.Generator().manual_seed(1))
    with torch.no_grad():
        pred = model(**batch).logits.argmax(-1)
    assert (pred == batch["labels"]).float().mean() > 0.95
