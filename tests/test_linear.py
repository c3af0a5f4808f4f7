"""Decoding-time products (lmzoo.nn.linear): same numbers as F.linear, layout switch that changes
nothing but strides, and training / saving unaffected by it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import lmzoo
from lmzoo.generate import generate
from lmzoo.models.gpt2 import GPT2LMHeadModel
from lmzoo.nn.linear import linear, set_row_vector_layout
from lmzoo.presets import preset_config


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 16, 17])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_equals_f_linear(rows, with_bias):
    torch.manual_seed(rows)
    weight, bias = torch.randn(40, 24), torch.randn(40) if with_bias else None
    x = torch.randn(rows, 1, 24)
    with torch.no_grad():
        out = linear(x, weight, bias, max_rows=16)
        expected = F.linear(x, weight, bias)
    assert out.shape == expected.shape == (rows, 1, 40) and out.is_contiguous()
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_linear_keeps_autograd():
    weight = torch.randn(8, 6, requires_grad=True)
    x = torch.randn(3, 6)
    linear(x, weight).sum().backward()  # grad enabled: the plain F.linear path
    torch.testing.assert_close(weight.grad, x.sum(0).expand(8, 6))


def _gpt(vocab: int = 64) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return GPT2LMHeadModel(preset_config("gpt-tiny", vocab_size=vocab, max_positions=64)).eval()


def test_row_vector_layout_changes_strides_not_values():
    model = _gpt()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    ids = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        logits = model(ids).logits
    set_row_vector_layout(model, True)
    head = model.lm_head.weight
    assert head is model.transformer.embed.tokens.weight  # still tied: one Parameter
    assert head.t().is_contiguous() and not head.is_contiguous()
    assert model.transformer.layers[0].ffn.up.weight.t().is_contiguous()
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, logits, atol=1e-5, rtol=1e-5)
    set_row_vector_layout(model, False)
    assert all(p.is_contiguous() for p in model.parameters())


def test_generate_switches_layout_for_one_row_and_training_restores_it(tmp_path):
    model = _gpt()
    prompt = torch.tensor([[1, 2, 3]])
    ids = prompt
    with torch.no_grad():  # greedy by full forward passes, usual layout
        for _ in range(12):
            ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    # one row: the weights are left [in, out] for the next call, and the tokens are unchanged
    assert torch.equal(generate(model, prompt, max_new_tokens=12, eos_token_id=()), ids[:, 3:])
    assert model.lm_head.weight.t().is_contiguous()
    # several rows: back to [out, in]
    generate(model, prompt.repeat(3, 1), max_new_tokens=4, eos_token_id=())
    assert all(p.is_contiguous() for p in model.parameters())
    generate(model, prompt, max_new_tokens=4, eos_token_id=())
    # saving a switched model writes ordinary checkpoints that load to the same numbers
    model.save_pretrained(tmp_path / "switched")
    loaded = lmzoo.from_pretrained(tmp_path / "switched").eval()
    ids = torch.randint(0, 64, (1, 7))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, atol=1e-5, rtol=1e-5)
    # training mode restores the usual layout before any optimizer sees the weights
    model.train()
    assert all(p.is_contiguous() for p in model.parameters())


def test_bfloat16_weights_keep_the_usual_layout():
    model = _gpt().to(torch.bfloat16)
    generate(model, torch.tensor([[1, 2, 3]]), max_new_tokens=4, eos_token_id=())
    assert all(p.is_contiguous() for p in model.parameters())
