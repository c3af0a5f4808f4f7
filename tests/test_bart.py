"""BART beyond the shared parity harness (tests/test_parity.py): a bare-model checkpoint in the LM
class, cached decoding equals uncached, greedy and beam search equal transformers' generate, beam
state reordering, a tiny BART learns a seq2seq task."""

from __future__ import annotations

import pytest
import torch
import transformers

import lmzoo
from conftest import assert_close, hf_model, padded_batch, tiny_config, until_eos
from lmzoo.generate import generate
from lmzoo.models.bart import BartForConditionalGeneration, config_from_hf
from lmzoo.presets import preset_config

VOCAB = tiny_config("bart").vocab_size


def batch(seed: int):
    """Right-padded sources (pad id 1) and targets."""
    return padded_batch((13, 9, 4), high=VOCAB, low=3, pad_id=1, seed=seed, target_length=8)


def test_bare_model_checkpoint_loads_into_the_lm_class(tmp_path):
    """A BartModel folder loads into BartForConditionalGeneration: the shared embedding (the tied
    head) from the checkpoint, the logits bias, which it lacks, at zero."""
    hf_model(transformers.BartModel, tiny_config("bart"), tmp_path / "hf")
    body = lmzoo.from_pretrained(tmp_path / "hf")
    assert type(body).__name__ == "BartModel"
    body.save_pretrained(tmp_path / "ours")
    lm = BartForConditionalGeneration.from_pretrained(tmp_path / "ours")
    assert torch.equal(lm.model.shared.weight, body.shared.weight) and not lm.final_logits_bias.any()


def test_cached_decoding_equals_uncached():
    torch.manual_seed(0)
    model = BartForConditionalGeneration(config_from_hf(tiny_config("bart").to_dict())).eval()
    ids, mask, _ = batch(2)
    dec = torch.randint(3, VOCAB, (3, 12))
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
        state = model.prepare_generation(ids, mask, max_new_tokens=12)
        steps = [model.generation_step(dec[:, :2], state)] + [
            model.generation_step(dec[:, t:t + 1], state) for t in range(2, 12)]
    assert_close(torch.stack(steps, 1), full[:, 1:])


def test_bad_config_and_presets():
    with pytest.raises(lmzoo.errors.UserError, match="n_decoder_heads"):
        config_from_hf({**tiny_config("bart").to_dict(), "decoder_attention_heads": 5})  # 32 is not divisible by 5
    base = preset_config("bart-base")
    assert (base.d_model, base.n_layers, base.n_decoder_layers, base.vocab_size, base.position_offset) == (
        768, 6, 6, 50265, 2)


def test_tiny_bart_learns_to_reverse():
    torch.manual_seed(0)
    model = BartForConditionalGeneration(preset_config("bart-tiny", vocab_size=20, dropout=0.0))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for step in range(120):
        src = torch.randint(3, 20, (32, 6), generator=g)
        labels = torch.cat([src.flip(1), torch.full((32, 1), 2)], 1)  # reversed + </s>
        loss = model(input_ids=src, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 2.5 and sum(losses[-10:]) / 10 < 0.1, (losses[0], losses[-10:])


def test_greedy_decoding_equals_transformers_generate(tmp_path):
    hf = hf_model(transformers.BartForConditionalGeneration,
                  tiny_config("bart", eos_token_id=None, forced_bos_token_id=None), tmp_path)
    ours = lmzoo.from_pretrained(tmp_path)
    ids, mask, _ = batch(5)
    with torch.no_grad():
        ref = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=20, min_new_tokens=20, do_sample=False,
                          num_beams=1)
        mine = generate(ours, ids, attention_mask=mask, max_new_tokens=20)
    assert torch.equal(mine, ref[:, 1:])


def test_state_reorder_follows_beams():
    """After reorder(index), decoding continues as if the batch had been built in that order."""
    torch.manual_seed(0)
    model = BartForConditionalGeneration(config_from_hf(tiny_config("bart").to_dict())).eval()
    ids, mask, _ = batch(6)
    dec = torch.randint(3, VOCAB, (3, 5))
    index = torch.tensor([2, 0, 0])
    with torch.no_grad():
        state = model.prepare_generation(ids, mask, max_new_tokens=5)
        model.generation_step(dec[:, :4], state)
        state.reorder(index)
        got = model.generation_step(dec[index, 4:], state)
        want = model(input_ids=ids[index], attention_mask=mask[index], decoder_input_ids=dec[index]).logits[:, -1]
    assert_close(got, want)


def test_beam_search_equals_transformers_generate(tmp_path):
    hf = hf_model(transformers.BartForConditionalGeneration, tiny_config("bart", forced_bos_token_id=None), tmp_path)
    ours = lmzoo.from_pretrained(tmp_path)
    ids, mask, _ = batch(7)
    with torch.no_grad():
        ref = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=16, do_sample=False, num_beams=4,
                          length_penalty=1.0, early_stopping=False)
        mine = generate(ours, ids, attention_mask=mask, max_new_tokens=16, num_beams=4)
    eos = hf.config.eos_token_id
    for row_ref, row_mine in zip(ref[:, 1:], mine):
        assert until_eos(row_mine, eos) == until_eos(row_ref, eos)


def test_beams_share_their_input_encoder_side_until_a_general_reorder():
    """Expanding each input to its beams keeps one encoder row per input (no copies); logits equal
    a batch built with the rows duplicated, also after beam steps and after an arbitrary reorder."""
    torch.manual_seed(0)
    model = BartForConditionalGeneration(config_from_hf(tiny_config("bart").to_dict())).eval()
    ids, mask, _ = batch(6)  # 3 inputs, two of them padded
    dec = torch.randint(3, VOCAB, (9, 6))
    expand = torch.arange(3).repeat_interleave(3)  # 3 beams per input
    beam_step = torch.tensor([1, 1, 0, 3, 5, 4, 8, 6, 6])  # rows stay within their input's group
    general = torch.tensor([4, 0, 8, 8])  # rows of different inputs, unequal counts

    def last_logits(rows, decoder_ids):
        """From scratch, on a batch built with the rows duplicated."""
        return model(input_ids=ids[rows], attention_mask=mask[rows], decoder_input_ids=decoder_ids).logits[:, -1]

    with torch.no_grad():
        state = model.prepare_generation(ids, mask, max_new_tokens=6)
        model.generation_step(dec[::3, :3], state)  # the decoder prompt, one row per input
        state.reorder(expand)
        assert state.encoder_states.shape[0] == 3 and state.cross_caches[0].kv[0].shape[0] == 3  # shared
        history = torch.cat([dec[::3, :3][expand], dec[:, 3:4]], 1)
        assert_close(model.generation_step(dec[:, 3:4], state), last_logits(expand, history))
        state.reorder(beam_step)
        assert state.encoder_states.shape[0] == 3
        history = torch.cat([history[beam_step], dec[:, 4:5]], 1)
        assert_close(model.generation_step(dec[:, 4:5], state), last_logits(expand[beam_step], history))
        state.reorder(general)  # now one encoder row per decoder row
        assert state.encoder_states.shape[0] == 4 and state.cross_caches[0].kv[0].shape[0] == 4
        history = torch.cat([history[general], dec[:4, 5:6]], 1)
        assert_close(model.generation_step(dec[:4, 5:6], state), last_logits(expand[beam_step][general], history))


@pytest.mark.parametrize("beams", [1, 3])
def test_forced_bos_and_eos_tokens_as_transformers(tmp_path, beams):
    """BART checkpoints force the last new token to eos (config.json's forced_eos_token_id, HF's ForcedEOS
    processor) and some the first to bos (forced_bos_token_id: transformers 5 reads it from
    generation_config.json only, so it is passed to both here); an lmzoo folder keeps both."""
    hf = hf_model(transformers.BartForConditionalGeneration, tiny_config("bart", forced_eos_token_id=2),
                  tmp_path / "hf")
    ours = lmzoo.from_pretrained(tmp_path / "hf")
    assert ours.config.forced_eos_token_id == 2
    ids, mask, _ = batch(8)
    with torch.no_grad():
        ref = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, min_new_tokens=6, do_sample=False,
                          num_beams=beams, early_stopping=False, forced_bos_token_id=0)
        mine = generate(ours, ids, attention_mask=mask, max_new_tokens=6, min_new_tokens=6, num_beams=beams,
                        forced_bos_token_id=0)
    assert torch.equal(mine, ref[:, 1:]) and (mine[:, 0] == 0).all() and (mine[:, -1] == 2).all()
    forced = ours.config.replace(forced_bos_token_id=0)
    BartForConditionalGeneration(forced).save_pretrained(tmp_path / "ours")
    again = lmzoo.from_pretrained(tmp_path / "ours").config
    assert (again.forced_bos_token_id, again.forced_eos_token_id) == (0, 2)
    assert transformers.BartForConditionalGeneration.from_pretrained(tmp_path / "ours").generation_config \
        .forced_eos_token_id == 2
