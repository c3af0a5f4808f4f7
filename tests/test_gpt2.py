"""GPT-2 parity with transformers through the production loader (both directions), presets, masks."""

from __future__ import annotations

import pytest
import torch
import transformers

import lmzoo
from lmzoo.hf import read_state_dict
from lmzoo.presets import preset_config
from lmzoo.models.gpt2 import GPT2LMHeadModel, document_mask, document_positions

ATOL = 1e-5


def tiny_config(**kw):
    return transformers.GPT2Config(vocab_size=101, n_embd=32, n_layer=2, n_head=4, n_inner=37, n_positions=40,
                                   bos_token_id=100, eos_token_id=100, **kw)


def hf_model(cls, config, folder):
    torch.manual_seed(0)
    model = cls(config).eval()
    with torch.no_grad():  # non-trivial biases and norms: a wrongly mapped one cannot hide behind zeros/ones
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(folder)
    return model


def left_padded_batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 100, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    mask[2, :6] = 0
    ids[mask == 0] = 100
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    return ids, mask, positions


@pytest.mark.parametrize("hf_cls", [transformers.GPT2LMHeadModel, transformers.GPT2Model])
def test_parity_with_left_padded_batch(tmp_path, hf_cls):
    hf = hf_model(hf_cls, tiny_config(), tmp_path)
    ours = lmzoo.from_pretrained(tmp_path)
    assert type(ours).__name__ == hf_cls.__name__
    ids, mask, positions = left_padded_batch()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, position_ids=positions, output_hidden_states=True)
        out = ours(input_ids=ids, attention_mask=mask, position_ids=positions)
        plain_ref = hf(input_ids=ids, output_hidden_states=True)
        plain = ours(input_ids=ids)
    real = mask.bool()
    assert torch.allclose(out.last_hidden_state[real], ref.hidden_states[-1][real], atol=ATOL)
    assert torch.allclose(plain.last_hidden_state, plain_ref.hidden_states[-1], atol=ATOL)
    if hf_cls is transformers.GPT2LMHeadModel:
        assert torch.allclose(out.logits[real], ref.logits[real], atol=ATOL)
        assert torch.allclose(plain.logits, plain_ref.logits, atol=ATOL)


def test_loss_matches_hf(tmp_path):
    hf = hf_model(transformers.GPT2LMHeadModel, tiny_config(), tmp_path)
    ours = lmzoo.from_pretrained(tmp_path)
    ids, _, _ = left_padded_batch()
    labels = ids.clone()
    labels[0, 4] = -100
    with torch.no_grad():
        assert torch.allclose(ours(input_ids=ids, labels=labels).loss, hf(input_ids=ids, labels=labels).loss,
                              atol=ATOL)


def test_round_trip_to_transformers(tmp_path):
    torch.manual_seed(0)
    ours = GPT2LMHeadModel(preset_config("gpt-tiny", vocab_size=101, max_positions=32, bos_token_id=100, eos_token_id=100)).eval()
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    ours.save_pretrained(tmp_path)
    state = read_state_dict(tmp_path)
    assert state["transformer.h.0.attn.c_attn.weight"].shape == (128, 384)  # Conv1D layout: [in, 3 * out]
    assert "lm_head.weight" not in state  # tied
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    again = lmzoo.from_pretrained(tmp_path)
    ids, mask, positions = left_padded_batch()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        out = ours(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        out2 = again(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    real = mask.bool()
    assert torch.allclose(out[real], ref[real], atol=ATOL)
    assert torch.equal(out, out2)


def test_presets():
    with torch.device("meta"):  # shapes only: no memory, no init time
        sizes = {name: lmzoo.from_preset(name).num_parameters() for name in ("gpt-tiny", "gpt-mini", "gpt2-small")}
    # GPT-2 small: 124,439,808 parameters (tied head counted once)
    assert sizes["gpt2-small"] == 124_439_808
    cfg = preset_config("gpt-mini")
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.pre_norm, cfg.activation) == (6, 384, 6, True, "gelu_tanh")
    medium = preset_config("gpt2-medium")
    assert (medium.n_layers, medium.d_model, medium.n_heads) == (24, 1024, 16)


def test_document_mask_and_positions():
    docs = torch.tensor([[0, 0, 0, 1, 1, 2]])
    assert document_positions(docs).tolist() == [[0, 1, 2, 0, 1, 0]]
    allowed = document_mask(docs, torch.float32)[0, 0] == 0
    expected = torch.tensor([[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0],
                             [0, 0, 0, 1, 0, 0], [0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(allowed, expected)


def test_documents_are_independent():
    """A packed row with document_ids gives each document exactly the logits it gets alone."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(preset_config("gpt-tiny", vocab_size=50, max_positions=32)).eval()
    a, b = torch.randint(0, 50, (1, 7)), torch.randint(0, 50, (1, 5))
    packed = torch.cat([a, b], 1)
    docs = torch.tensor([[0] * 7 + [1] * 5])
    with torch.no_grad():
        both = model(input_ids=packed, document_ids=docs).logits
        alone_a, alone_b = model(input_ids=a).logits, model(input_ids=b).logits
    assert torch.allclose(both[:, :7], alone_a, atol=ATOL)
    assert torch.allclose(both[:, 7:], alone_b, atol=ATOL)
