"""T5 v1.0 / v1.1 parity with transformers through the production loader, both directions; cached
decoding equals uncached; a tiny T5 learns a seq2seq task."""

from __future__ import annotations

import pytest
import torch
import transformers

import lmzoo
from lmzoo.models.t5 import T5ForConditionalGeneration, relative_position_bucket
from lmzoo.presets import preset_config

ATOL = 1e-5
VOCAB = 97


def tiny_t5_config(v11: bool, **kw):
    extra = dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False) if v11 else {}
    return transformers.T5Config(**{**dict(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=37, num_layers=2,
                                           num_decoder_layers=3, num_heads=4, relative_attention_num_buckets=8,
                                           relative_attention_max_distance=20, decoder_start_token_id=0),
                                    **extra, **kw})


def hf_model(cls, config, tmp_path, untie=False):
    torch.manual_seed(0)
    model = cls(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:  # unit RMSNorm weights would hide a wrongly mapped one
                p.add_(torch.randn_like(p) * 0.3)
        if untie:  # a v1.1 checkpoint has its own lm_head
            model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight) * 0.05)
    model.save_pretrained(tmp_path)
    return model


def batch(seed: int = 0, src: int = 30, tgt: int = 9):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (3, src), generator=g)  # longer than max_distance: log buckets used
    mask = torch.ones_like(ids)
    mask[1, 17:] = 0
    mask[2, 4:] = 0
    ids[mask == 0] = 0
    labels = torch.randint(2, VOCAB, (3, tgt), generator=g)
    return ids, mask, labels


def close(a, b, atol=ATOL):
    assert torch.allclose(a, b, atol=atol), (a - b).abs().max().item()


def test_relative_buckets_match_hf():
    rel = torch.arange(-300, 300)[None, :]
    for bidirectional in (True, False):
        for buckets, dist in ((32, 128), (8, 20)):
            ours = relative_position_bucket(rel, bidirectional=bidirectional, num_buckets=buckets, max_distance=dist)
            ref = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
                rel, bidirectional=bidirectional, num_buckets=buckets, max_distance=dist)
            assert torch.equal(ours, ref)


@pytest.mark.parametrize("v11", [False, True], ids=["v1.0", "v1.1"])
def test_t5_parity_and_round_trip(tmp_path, v11):
    hf = hf_model(transformers.T5ForConditionalGeneration, tiny_t5_config(v11), tmp_path / "hf", untie=v11)
    ours = lmzoo.from_pretrained(tmp_path / "hf")
    assert type(ours) is T5ForConditionalGeneration
    assert ours.config.gated_ffn == v11 and ours.config.tie_embeddings == (not v11)
    ids, mask, labels = batch()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, labels=labels)
        out = ours(input_ids=ids, attention_mask=mask, labels=labels)
    keep = mask.bool()
    close(out.encoder_last_hidden_state[keep], ref.encoder_last_hidden_state[keep])
    close(out.logits, ref.logits)
    close(out.loss, ref.loss)
    # round trip: lmzoo → HF folder → transformers gives the same logits
    ours.save_pretrained(tmp_path / "ours")
    back = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "ours").eval()
    assert (back.lm_head.weight is back.shared.weight) == (not v11)
    with torch.no_grad():
        close(back(input_ids=ids, attention_mask=mask, labels=labels).logits, out.logits)


def test_t5_v11_checkpoint_without_lm_head_uses_shared(tmp_path):
    """transformers 5 saves v1.1 configs with the head tied and no lm_head.weight."""
    hf = hf_model(transformers.T5ForConditionalGeneration, tiny_t5_config(True), tmp_path)
    ours = lmzoo.from_pretrained(tmp_path)
    ids, mask, labels = batch(1)
    with torch.no_grad():
        close(ours(input_ids=ids, attention_mask=mask, labels=labels).logits,
              hf(input_ids=ids, attention_mask=mask, labels=labels).logits)


def test_t5_encoder_model_parity(tmp_path):
    hf = hf_model(transformers.T5EncoderModel, tiny_t5_config(False), tmp_path / "hf")
    ours = lmzoo.from_pretrained(tmp_path / "hf")
    assert type(ours).__name__ == "T5EncoderModel"
    ids, mask, _ = batch(2)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        out = ours(input_ids=ids, attention_mask=mask).last_hidden_state
    close(out[mask.bool()], ref[mask.bool()])
    ours.save_pretrained(tmp_path / "ours")
    back = transformers.T5EncoderModel.from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        close(back(input_ids=ids, attention_mask=mask).last_hidden_state[mask.bool()], out[mask.bool()])


@pytest.mark.parametrize("v11", [False, True], ids=["v1.0", "v1.1"])
def test_cached_decoding_equals_uncached(v11):
    """Token by token through the caches (self and cross) gives the full forward's logits, also past the
    exact buckets (relative bias at absolute decoder positions)."""
    torch.manual_seed(0)
    config = lmzoo.models.t5.config_from_hf(tiny_t5_config(v11).to_dict())
    model = T5ForConditionalGeneration(config).eval()
    ids, mask, _ = batch(3)
    dec = torch.randint(2, VOCAB, (3, 26))
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
        state = model.prepare_generation(ids, mask, max_new_tokens=26)
        first = model.generation_step(dec[:, :3], state)  # a prompt of 3, then one at a time
        steps = [first] + [model.generation_step(dec[:, t:t + 1], state) for t in range(3, 26)]
    close(torch.stack(steps, 1), full[:, 2:], atol=1e-4)


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


@pytest.mark.parametrize("v11", [False, True], ids=["v1.0", "v1.1"])
def test_greedy_decoding_equals_transformers_generate(tmp_path, v11):
    """Through the generation protocol (encoder once, self + cross caches), 40 tokens: past the exact
    relative buckets, so the bias must be taken at absolute decoder positions. (Equal encoder/decoder
    depth: transformers' own generate cache breaks with a deeper decoder.)"""
    from lmzoo.tasks.seq2seq import greedy_decode

    hf = hf_model(transformers.T5ForConditionalGeneration, tiny_t5_config(v11, eos_token_id=None, num_decoder_layers=2), tmp_path,
                  untie=v11)
    ours = lmzoo.from_pretrained(tmp_path)
    ids, mask, _ = batch(4)
    with torch.no_grad():
        ref = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=40, do_sample=False, num_beams=1,
                          min_new_tokens=40)
    assert torch.equal(greedy_decode(ours, ids, mask, 40), ref[:, 1:])


def until_eos(row: torch.Tensor, eos: int) -> list[int]:
    """Tokens up to and including the first eos (what follows is padding, filled differently)."""
    out = []
    for token in row.tolist():
        out.append(token)
        if token == eos:
            break
    return out


@pytest.mark.parametrize("v11", [False, True], ids=["v1.0", "v1.1"])
def test_beam_search_equals_transformers_generate(tmp_path, v11):
    from lmzoo.generate import generate

    hf = hf_model(transformers.T5ForConditionalGeneration, tiny_t5_config(v11, num_decoder_layers=2), tmp_path,
                  untie=v11)
    ours = lmzoo.from_pretrained(tmp_path)
    ids, mask, _ = batch(6)
    with torch.no_grad():
        ref = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=24, do_sample=False, num_beams=4,
                          length_penalty=1.0, early_stopping=False)
        mine = generate(ours, ids, attention_mask=mask, max_new_tokens=24, num_beams=4)
    eos = hf.config.eos_token_id
    for row_ref, row_mine in zip(ref[:, 1:], mine):
        assert until_eos(row_mine, eos) == until_eos(row_ref, eos)
