"""GPT-2 beyond the shared parity harness (tests/test_parity.py): an lmzoo preset through
transformers (Conv1D layout, tied head), presets, document masks."""

from __future__ import annotations

import torch
import transformers

import lmzoo
from conftest import assert_close, padded_batch
from lmzoo.hf import read_state_dict
from lmzoo.models.gpt2 import GPT2LMHeadModel
from lmzoo.nn.masks import document_mask, document_positions
from lmzoo.presets import preset_config


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
    ids, mask = padded_batch((9, 6, 3), high=100, low=0, pad_id=100, seed=1, left=True)
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        out = ours(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        out2 = again(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    assert_close(out, ref, mask)
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
    assert_close(both[:, :7], alone_a)
    assert_close(both[:, 7:], alone_b)
