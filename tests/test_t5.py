"""T5 v1.0 / v1.1 beyond the shared parity harness (tests/test_parity.py): relative buckets, a v1.1
checkpoint without lm_head, cached decoding equals uncached, greedy and beam search equal
transformers' generate, a tiny T5 learns a seq2seq task."""

from __future__ import annotations

import pytest
import torch
import transformers

import lmzoo
from conftest import assert_close, hf_model, padded_batch, tiny_config, until_eos
from lmzoo.generate import generate
from lmzoo.models.t5 import T5ForConditionalGeneration, relative_position_bucket
from lmzoo.presets import preset_config

VOCAB = tiny_config("t5").vocab_size


def batch(seed: int):
    """Sources longer than relative_attention_max_distance (log buckets used), right-padded; targets."""
    return padded_batch((30, 17, 4), high=VOCAB, low=2, pad_id=0, seed=seed, target_length=9)


def test_relative_buckets_match_hf():
    rel = torch.arange(-300, 300)[None, :]
    for bidirectional in (True, False):
        for buckets, dist in ((32, 128), (8, 20)):
            ours = relative_position_bucket(rel, bidirectional=bidirectional, num_buckets=buckets, max_distance=dist)
            ref = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
                rel, bidirectional=bidirectional, num_buckets=buckets, max_distance=dist)
            assert torch.equal(ours, ref)


def test_t5_v11_checkpoint_without_lm_head_uses_shared(tmp_path):
    """transformers 5 saves v1.1 configs with the head tied and no lm_head.weight."""
    hf = hf_model(transformers.T5ForConditionalGeneration, tiny_config("t5-v1.1"), tmp_path)
    ours = lmzoo.from_pretrained(tmp_path)
    ids, mask, labels = batch(1)
    with torch.no_grad():
        assert_close(ours(input_ids=ids, attention_mask=mask, labels=labels).logits,
                     hf(input_ids=ids, attention_mask=mask, labels=labels).logits)


@pytest.mark.parametrize("family", ["t5", "t5-v1.1"], ids=["v1.0", "v1.1"])
def test_cached_decoding_equals_uncached(family):
    """Token by token through the caches (self and cross) gives the full forward's logits, also past the
    exact buckets (relative bias at absolute decoder positions)."""
    torch.manual_seed(0)
    config = lmzoo.models.t5.config_from_hf(tiny_config(family).to_dict())
    model = T5ForConditionalGeneration(config).eval()
    ids, mask, _ = batch(3)
    dec = torch.randint(2, VOCAB, (3, 26))
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
        state = model.prepare_generation(ids, mask, max_new_tokens=26)
        first = model.generation_step(dec[:, :3], state)  # a prompt of 3, then one at a time
        steps = [first] + [model.generation_step(dec[:, t:t + 1], state) for t in range(3, 26)]
    assert_close(torch.stack(steps, 1), full[:, 2:], atol=1e-4)


def test_presets():
    small = preset_config("t5-small")
    assert (small.d_model, small.n_layers, small.n_heads, small.d_ff, small.vocab_size) == (512, 6, 8, 2048, 32128)
    v11 = preset_config("t5-v1_1-small")
    assert v11.gated_ffn and not v11.tie_embeddings and v11.d_ff == 1024 and v11.n_decoder_layers == 8
    base = T5ForConditionalGeneration(preset_config("t5-tiny"))
    assert base.config.is_encoder_decoder


def test_tiny_t5_learns_to_reverse():
    """Teacher-forced training on a learnable mapping (reverse the source) drives the loss far below chance.

    T5 has no absolute positions (alignment must come from relative buckets), so it learns this slower
    than BART: after 150 steps it is well below the uniform ln(17) = 2.83 but not yet at zero."""
    torch.manual_seed(0)
    config = preset_config("t5-tiny", vocab_size=20, dropout=0.0, attention_dropout=0.0)
    model = T5ForConditionalGeneration(config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for step in range(150):
        words = torch.randint(3, 20, (32, 6), generator=g)
        src = torch.cat([words, torch.full((32, 1), 1)], 1)  # + </s>
        labels = torch.cat([words.flip(1), torch.full((32, 1), 1)], 1)
        loss = model(input_ids=src, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 4.0 and sum(losses[-10:]) / 10 < 1.6, (losses[0], losses[-10:])


@pytest.mark.parametrize("family", ["t5", "t5-v1.1"], ids=["v1.0", "v1.1"])
def test_greedy_decoding_equals_transformers_generate(tmp_path, family):
    """Through the generation protocol (encoder once, self + cross caches), 40 tokens: past the exact
    relative buckets, so the bias must be taken at absolute decoder positions. (Equal encoder/decoder
    depth: transformers' own generate cache breaks with a deeper decoder.)"""
    hf = hf_model(transformers.T5ForConditionalGeneration, tiny_config(family, eos_token_id=None, num_decoder_layers=2),
                  tmp_path, untie=family == "t5-v1.1")
    ours = lmzoo.from_pretrained(tmp_path)
    ids, mask, _ = batch(4)
    with torch.no_grad():
        ref = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=40, do_sample=False, num_beams=1,
                          min_new_tokens=40)
        mine = generate(ours, ids, attention_mask=mask, max_new_tokens=40)
    assert torch.equal(mine, ref[:, 1:])


@pytest.mark.parametrize("family", ["t5", "t5-v1.1"], ids=["v1.0", "v1.1"])
def test_beam_search_equals_transformers_generate(tmp_path, family):
    hf = hf_model(transformers.T5ForConditionalGeneration, tiny_config(family, num_decoder_layers=2), tmp_path,
                  untie=family == "t5-v1.1")
    ours = lmzoo.from_pretrained(tmp_path)
    ids, mask, _ = batch(6)
    with torch.no_grad():
        ref = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=24, do_sample=False, num_beams=4,
                          length_penalty=1.0, early_stopping=False)
        mine = generate(ours, ids, attention_mask=mask, max_new_tokens=24, num_beams=4)
    eos = hf.config.eos_token_id
    for row_ref, row_mine in zip(ref[:, 1:], mine):
        assert until_eos(row_mine, eos) == until_eos(row_ref, eos)
