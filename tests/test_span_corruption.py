"""T5 span corruption invariants: exact lengths, sentinel order, reassembly, rates within bounds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmzoo.errors import UserError
from lmzoo.objectives.span_corruption import (SpanCorruptionCollator, SpanCorruptionConfig, corrupt,
                                               corrupted_lengths, noise_mask, raw_length_for, reassemble)

SENTINELS = list(range(999, 899, -1))  # <extra_id_0> = 999, <extra_id_1> = 998, ... like T5
EOS, PAD = 1, 0


@pytest.mark.parametrize("density,mean", [(0.15, 3.0), (0.3, 2.0), (0.5, 8.0), (0.05, 1.0)])
def test_raw_length_fills_inputs_exactly(density, mean):
    config = SpanCorruptionConfig(noise_density=density, mean_span_length=mean)
    for input_length in range(3, 300):
        raw, target = raw_length_for(input_length, config)
        assert corrupted_lengths(raw, config) == (input_length, target)
        assert corrupted_lengths(raw + 1, config)[0] > input_length  # the longest such raw length
    # the T5 paper's setting: 512 inputs read 568 raw tokens and give 114 targets
    assert raw_length_for(512, SpanCorruptionConfig()) == (568, 114)


@pytest.mark.parametrize("density,mean", [(0.5, 1.0), (0.65, 1.5), (0.8, 3.0)])
def test_raw_length_where_one_span_per_clean_token_caps_the_count(density, mean):
    """With the span count capped at one per clean token the input grows by 2 per clean token: a
    length like 256 is then not reachable, and the input is one short (T5's helper does the same)
    instead of the run being refused."""
    config = SpanCorruptionConfig(noise_density=density, mean_span_length=mean)
    for input_length in (*range(3, 300), 512):
        raw, target = raw_length_for(input_length, config)
        assert input_length - 1 <= corrupted_lengths(raw, config)[0] <= input_length
        assert corrupted_lengths(raw + 1, config)[0] > input_length and target == corrupted_lengths(raw, config)[1]


def test_collator_lengths_sentinel_order_and_reassembly():
    config = SpanCorruptionConfig()
    raw, target = raw_length_for(64, config)
    rng = np.random.default_rng(0)
    examples = [{"input_ids": rng.integers(2, 800, raw)} for _ in range(50)]
    batch = SpanCorruptionCollator(sentinel_ids=SENTINELS, eos_id=EOS, pad_id=PAD, config=config)(
        examples, torch.Generator().manual_seed(0))
    assert batch["input_ids"].shape == (50, 64) and batch["labels"].shape == (50, target)
    assert batch["attention_mask"].all() and (batch["labels"] != -100).all()  # no padding at all
    for ex, inputs, labels in zip(examples, batch["input_ids"].tolist(), batch["labels"].tolist()):
        in_sentinels = [t for t in inputs if t in SENTINELS]
        assert in_sentinels == SENTINELS[:len(in_sentinels)]  # <extra_id_0>, <extra_id_1>, ... in order
        assert [t for t in labels if t in SENTINELS] == in_sentinels
        assert labels[0] == SENTINELS[0] and inputs[-1] == EOS and labels[-1] == EOS
        assert reassemble(inputs, labels, SENTINELS, EOS) == ex["input_ids"].tolist()


def test_density_and_mean_span_length_within_bounds():
    config = SpanCorruptionConfig(noise_density=0.15, mean_span_length=3.0)
    rng = np.random.default_rng(1)
    length, trials = 568, 400
    span_lengths, noise = [], 0
    starts_at = np.zeros(length)
    for _ in range(trials):
        mask = noise_mask(length, config, rng)
        noise += mask.sum()
        edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]])))
        span_lengths += list(edges[1::2] - edges[::2])
        starts_at += mask
    assert noise / (trials * length) == pytest.approx(0.15, abs=0.002)  # rounding only
    # spans are 85/28 ≈ 3.04 long on average by construction; random segmentation keeps each >= 1
    assert np.mean(span_lengths) == pytest.approx(85 / 28, abs=0.05)
    assert min(span_lengths) >= 1 and np.std(span_lengths) > 1.0  # really random lengths, not all 3
    # as in T5 the row starts with a clean span and ends with a noise span; in between noise is uniform
    assert starts_at[0] == 0 and starts_at[-1] == trials
    middle = starts_at[50:-50] / trials
    assert 0.12 < middle.mean() < 0.18 and middle.min() > 0.07 and middle.max() < 0.24


def test_corrupt_small_example():
    tokens = np.array([10, 11, 12, 13, 14, 15, 16])
    mask = np.array([0, 1, 1, 0, 0, 1, 0], dtype=bool)
    inputs, targets = corrupt(tokens, mask, SENTINELS, EOS)
    assert inputs.tolist() == [10, 999, 13, 14, 998, 16, EOS]
    assert targets.tolist() == [999, 11, 12, 998, 15, EOS]


def test_too_few_sentinels_is_a_user_error():
    config = SpanCorruptionConfig()
    raw, _ = raw_length_for(128, config)
    collate = SpanCorruptionCollator(sentinel_ids=SENTINELS[:3], eos_id=EOS, pad_id=PAD, config=config)
    with pytest.raises(UserError, match="sentinels"):
        collate([{"input_ids": np.arange(2, 2 + raw)}], torch.Generator().manual_seed(0))
    with pytest.raises(UserError):
        SpanCorruptionConfig(noise_density=1.5)


def test_shorter_last_row_is_padded_and_draws_are_seeded():
    config = SpanCorruptionConfig()
    collate = SpanCorruptionCollator(sentinel_ids=SENTINELS, eos_id=EOS, pad_id=PAD, config=config)
    examples = [{"input_ids": np.arange(2, 70)}, {"input_ids": np.arange(2, 30)}]
    a = collate(examples, torch.Generator().manual_seed(5))
    b = collate(examples, torch.Generator().manual_seed(5))
    c = collate(examples, torch.Generator().manual_seed(6))
    assert torch.equal(a["input_ids"], b["input_ids"]) and not torch.equal(a["input_ids"], c["input_ids"])
    n = corrupted_lengths(28, config)[0]
    assert a["attention_mask"][1].sum() == n and (a["input_ids"][1, n:] == PAD).all()
