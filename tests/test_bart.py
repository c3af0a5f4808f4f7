"""BART parity with transformers through the production loader, both directions; cached decoding
equals uncached; a tiny BART learns a seq2seq task."""

from __future__ import annotations

import pytest
import torch
import transformers

import lmzoo
from lmzoo.models.bart import BartForConditionalGeneration, config_from_hf
from lmzoo.presets import preset_config

ATOL = 1e-5
VOCAB = 97


def tiny_bart_config(**kw):
    return transformers.BartConfig(vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=3,
                                   encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=37,
                                   decoder_ffn_dim=37, max_position_embeddings=40, forced_eos_token_id=None, **kw)


def hf_model(cls, config, tmp_path):
    torch.manual_seed(0)
    model = cls(config).eval()
    with torch.no_grad():  # non-trivial biases / norms / logits bias: a wrongly mapped one cannot hide
        for name, p in model.named_parameters():
            if name.endswith("bias") or "layer_norm" in name or "layernorm" in name:
                p.add_(torch.randn_like(p) * 0.1)
        if hasattr(model, "final_logits_bias"):
            model.final_logits_bias.normal_()
    model.save_pretrained(tmp_path)
    return model


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (3, 13), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    mask[2, 4:] = 0
    ids[mask == 0] = 1
    labels = torch.randint(3, VOCAB, (3, 8), generator=g)
    return ids, mask, labels


def close(a, b, atol=ATOL):
    assert torch.allclose(a, b, atol=atol), (a - b).abs().max().item()


@pytest.mark.parametrize("scale", [False, True])
def test_bart_parity_and_round_trip(tmp_path, scale):
    hf = hf_model(transformers.BartForConditionalGeneration, tiny_bart_config(scale_embedding=scale), tmp_path / "hf")
    ours = lmzoo.from_pretrained(tmp_path / "hf")
    assert type(ours) is BartForConditionalGeneration
    assert ours.config.max_positions == 40 and ours.config.embedding_scale == scale
    ids, mask, labels = batch()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, labels=labels)
        out = ours(input_ids=ids, attention_mask=mask, labels=labels)
    keep = mask.bool()
    close(out.encoder_last_hidden_state[keep], ref.encoder_last_hidden_state[keep])
    close(out.logits, ref.logits)
    close(out.loss, ref.loss)
    ours.save_pretrained(tmp_path / "ours")
    back = transformers.BartForConditionalGeneration.from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        close(back(input_ids=ids, attention_mask=mask, labels=labels).logits, out.logits)


def test_bart_model_parity_and_round_trip(tmp_path):
    hf = hf_model(transformers.BartModel, tiny_bart_config(), tmp_path / "hf")
    ours = lmzoo.from_pretrained(tmp_path / "hf")
    assert type(ours).__name__ == "BartModel"
    ids, mask, _ = batch(1)
    dec = torch.randint(3, VOCAB, (3, 6))
    dec_mask = torch.ones_like(dec)
    dec_mask[2, 4:] = 0
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask)
        out = ours(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask)
        keep = dec_mask.bool()
        close(out.last_hidden_state[keep], ref.last_hidden_state[keep])
        # no decoder inputs: both shift the encoder input right
        close(ours(input_ids=ids, attention_mask=mask).last_hidden_state,
              hf(input_ids=ids, attention_mask=mask).last_hidden_state)
    ours.save_pretrained(tmp_path / "ours")
    back = transformers.BartModel.from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        again = back(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask)
    close(again.last_hidden_state[keep], out.last_hidden_state[keep])
    # a bare-model checkpoint loads into the LM class (the logits bias then starts at zero)
    lm = BartForConditionalGeneration.from_pretrained(tmp_path / "ours")
    assert torch.equal(lm.model.shared.weight, ours.shared.weight) and not lm.final_logits_bias.any()


def test_cached_decoding_equals_uncached():
    torch.manual_seed(0)
    model = BartForConditionalGeneration(config_from_hf(tiny_bart_config().to_dict())).eval()
    ids, mask, _ = batch(2)
    dec = torch.randint(3, VOCAB, (3, 12))
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
        state = model.prepare_generation(ids, mask, max_new_tokens=12)
        steps = [model.generation_step(dec[:, :2], state)] + [
            model.generation_step(dec[:, t:t + 1], state) for t in range(2, 12)]
    close(torch.stack(steps, 1), full[:, 1:], atol=1e-5)


def test_bad_config_and_presets():
    with pytest.raises(lmzoo.errors.UserError, match="decoder_attention_heads"):
        config_from_hf({**tiny_bart_config().to_dict(), "decoder_attention_heads": 2})
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
    from lmzoo.tasks.seq2seq import greedy_decode

    hf = hf_model(transformers.BartForConditionalGeneration,
                  tiny_bart_config(eos_token_id=None, forced_bos_token_id=None), tmp_path)
    ours = lmzoo.from_pretrained(tmp_path)
    ids, mask, _ = batch(5)
    with torch.no_grad():
        ref = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=20, min_new_tokens=20, do_sample=False,
                          num_beams=1)
    assert torch.equal(greedy_decode(ours, ids, mask, 20), ref[:, 1:])


def test_state_reorder_follows_beams():
    """After reorder(index), decoding continues as if the batch had been built in that order."""
    torch.manual_seed(0)
    model = BartForConditionalGeneration(config_from_hf(tiny_bart_config().to_dict())).eval()
    ids, mask, _ = batch(6)
    dec = torch.randint(3, VOCAB, (3, 5))
    index = torch.tensor([2, 0, 0])
    with torch.no_grad():
        state = model.prepare_generation(ids, mask, max_new_tokens=5)
        model.generation_step(dec[:, :4], state)
        state.reorder(index)
        got = model.generation_step(dec[index, 4:], state)
        want = model(input_ids=ids[index], attention_mask=mask[index], decoder_input_ids=dec[index]).logits[:, -1]
    close(got, want)


def test_beam_search_equals_transformers_generate(tmp_path):
    from lmzoo.generate import generate

    hf = hf_model(transformers.BartForConditionalGeneration, tiny_bart_config(forced_bos_token_id=None), tmp_path)
    ours = lmzoo.from_pretrained(tmp_path)
    ids, mask, _ = batch(7)
    with torch.no_grad():
        ref = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=16, do_sample=False, num_beams=4,
                          length_penalty=1.0, early_stopping=False)
        mine = generate(ours, ids, attention_mask=mask, max_new_tokens=16, num_beams=4)
    eos = hf.config.eos_token_id

    def until_eos(row):
        out = []
        for token in row.tolist():
            out.append(token)
            if token == eos:
                break
        return out

    for row_ref, row_mine in zip(ref[:, 1:], mine):
        assert until_eos(row_mine) == until_eos(row_ref)


def test_beams_share_their_input_encoder_side_until_a_general_reorder():
    """Expanding each input to its beams keeps one encoder row per input (no copies); logits equal
    a batch built with the rows duplicated, also after beam steps and after an arbitrary reorder."""
    torch.manual_seed(0)
    model = BartForConditionalGeneration(config_from_hf(tiny_bart_config().to_dict())).eval()
    ids, mask, _ = batch(6)  # 3 inputs, the second left-padded
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
        close(model.generation_step(dec[:, 3:4], state), last_logits(expand, history))
        state.reorder(beam_step)
        assert state.encoder_states.shape[0] == 3
        history = torch.cat([history[beam_step], dec[:, 4:5]], 1)
        close(model.generation_step(dec[:, 4:5], state), last_logits(expand[beam_step], history))
        state.reorder(general)  # now one encoder row per decoder row
        assert state.encoder_states.shape[0] == 4 and state.cross_caches[0].kv[0].shape[0] == 4
        history = torch.cat([history[general], dec[:4, 5:6]], 1)
        close(model.generation_step(dec[:4, 5:6], state), last_logits(expand[beam_step][general], history))
