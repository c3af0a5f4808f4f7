"""BART folders whose decoder differs from its encoder (heads, FFN width) load, match transformers and round-trip."""

import torch
import transformers

from lmzoo.hf import load_pretrained


def test_bart_with_unequal_encoder_and_decoder_matches_transformers(tmp_path):
    config = transformers.BartConfig(vocab_size=99, d_model=32, encoder_layers=2, decoder_layers=1,
                                     encoder_attention_heads=4, decoder_attention_heads=2, encoder_ffn_dim=48,
                                     decoder_ffn_dim=80, max_position_embeddings=64, dropout=0.0,
                                     attention_dropout=0.0, forced_eos_token_id=None)
    torch.manual_seed(0)
    ref = transformers.BartForConditionalGeneration(config).eval()
    ref.save_pretrained(tmp_path / "hf")
    ours = load_pretrained(tmp_path / "hf")
    assert ours.config.n_decoder_heads == 2 and ours.config.d_decoder_ff == 80
    ids = torch.randint(3, 99, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    labels = torch.randint(3, 99, (2, 5), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask, labels=labels)
        got = ours(input_ids=ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(got.logits, expected.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.loss, expected.loss, atol=1e-5, rtol=0)
    # cached greedy decoding equals transformers' (the decoder caches have the decoder's head count)
    from lmzoo.generate import generate

    want = ref.generate(ids, attention_mask=mask, max_new_tokens=6, num_beams=1, do_sample=False, min_new_tokens=6)
    assert torch.equal(generate(ours, ids, attention_mask=mask, max_new_tokens=6, min_new_tokens=6), want[:, 1:])
    ours.save_pretrained(tmp_path / "ours")
    back = transformers.BartForConditionalGeneration.from_pretrained(tmp_path / "ours").eval()
    assert (back.config.decoder_attention_heads, back.config.decoder_ffn_dim) == (2, 80)
    with torch.no_grad():
        torch.testing.assert_close(back(input_ids=ids, attention_mask=mask, labels=labels).logits, expected.logits,
                                   atol=1e-5, rtol=0)
