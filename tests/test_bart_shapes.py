"""A BART whose decoder differs from its encoder (heads, FFN width) decodes as transformers does: its
decoder caches take the decoder's head count. (Its parity and round trip are a case of test_parity.)"""

import torch
import transformers

from conftest import hf_model, padded_batch, tiny_config
from lmzoo.generate import generate
from lmzoo.hf import load_pretrained


def test_unequal_decoder_greedy_decoding_equals_transformers(tmp_path):
    config = tiny_config("bart", decoder_attention_heads=2, decoder_ffn_dim=80, forced_eos_token_id=None)
    ref = hf_model(transformers.BartForConditionalGeneration, config, tmp_path)
    ours = load_pretrained(tmp_path)
    assert (ours.config.n_decoder_heads, ours.config.d_decoder_ff) == (2, 80)
    ids, mask = padded_batch([9, 6], high=config.vocab_size, low=3, pad_id=config.pad_token_id)
    want = ref.generate(ids, attention_mask=mask, max_new_tokens=6, num_beams=1, do_sample=False, min_new_tokens=6)
    assert torch.equal(generate(ours, ids, attention_mask=mask, max_new_tokens=6, min_new_tokens=6), want[:, 1:])
