"""Fused chunked linear + cross-entropy (lmzoo.nn.loss) against F.cross_entropy(F.linear(...)), and the
GPT-2 training loss that uses it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmzoo.models.bart import BartForConditionalGeneration
from lmzoo.models.gpt2 import GPT2LMHeadModel
from lmzoo.models.t5 import T5ForConditionalGeneration
from lmzoo.nn.loss import linear_cross_entropy
from lmzoo.presets import preset_config


def problem(n=37, d=16, v=53, bias=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=g).requires_grad_()
    weight = (torch.randn(v, d, generator=g) * 0.5).requires_grad_()
    b = (torch.randn(v, generator=g) * 0.5).requires_grad_() if bias else None
    labels = torch.randint(0, v, (n,), generator=g)
    labels[::5] = -100
    return hidden, weight, b, labels


def grads(loss, tensors):
    return torch.autograd.grad(loss, [t for t in tensors if t is not None], retain_graph=True)


@pytest.mark.parametrize("chunk_size", [1, 7, 16, 37, 1000])
@pytest.mark.parametrize("bias", [False, True])
def test_loss_and_gradients_equal_unfused(chunk_size, bias):
    hidden, weight, b, labels = problem(bias=bias)
    ref = F.cross_entropy(F.linear(hidden, weight, b), labels, ignore_index=-100)
    ours = linear_cross_entropy(hidden, weight, labels, b, chunk_size=chunk_size)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    g_ours = grads(ours * 3.0, (hidden, weight, b))
    for g_o, g_ref in zip(g_ours, grads(ref * 3.0, (hidden, weight, b))):
        torch.testing.assert_close(g_o, g_ref, atol=1e-5, rtol=0)
    assert bool((g_ours[0][labels == -100] == 0).all())  # ignored rows get no gradient
    with pytest.raises(RuntimeError, match="twice"):
        grads(ours, (hidden,))


@pytest.mark.parametrize("smoothing", [0.1, 0.3])
@pytest.mark.parametrize("bias", [False, True])
def test_label_smoothing_equals_cross_entropy(smoothing, bias):
    hidden, weight, b, labels = problem(bias=bias)
    ref = F.cross_entropy(F.linear(hidden, weight, b), labels, ignore_index=-100, label_smoothing=smoothing)
    ours = linear_cross_entropy(hidden, weight, labels, b, chunk_size=8, label_smoothing=smoothing)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    for g_ours, g_ref in zip(grads(ours, (hidden, weight, b)), grads(ref, (hidden, weight, b))):
        torch.testing.assert_close(g_ours, g_ref, atol=1e-5, rtol=0)


def test_default_chunks_keep_the_logits_buffer_small():
    hidden, weight, _, labels = problem(n=300, v=40000)
    ref = F.cross_entropy(F.linear(hidden, weight), labels, ignore_index=-100)
    torch.testing.assert_close(linear_cross_entropy(hidden, weight, labels), ref, atol=1e-5, rtol=0)


def test_extreme_logits_keep_the_exact_loss():
    # a target probability below float32's range: -log(softmax) would be inf, log-softmax is finite
    hidden, weight, _, labels = problem(n=6, v=11)
    hidden = (hidden.detach() * 60).requires_grad_()
    ref = F.cross_entropy(F.linear(hidden, weight), labels)
    ours = linear_cross_entropy(hidden, weight, labels, chunk_size=4)
    worst = F.cross_entropy(F.linear(hidden, weight), labels, reduction="none").max()
    assert worst.item() > 110 and torch.isfinite(ours)  # exp(-110) is 0 in float32
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-6)


def test_bf16_autocast_matches_unfused_autocast():
    hidden, weight, _, labels = problem(n=64, d=32, v=97)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = F.cross_entropy(F.linear(hidden, weight).float(), labels)
        ours = linear_cross_entropy(hidden, weight, labels, chunk_size=24)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)
    g_ours, g_ref = grads(ours, (hidden, weight)), grads(ref, (hidden, weight))
    for a, r in zip(g_ours, g_ref):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, r, atol=2e-4, rtol=2e-2)


def test_all_ignored_is_nan_as_cross_entropy():
    hidden, weight, _, labels = problem(n=5)
    labels[:] = -100
    assert torch.isnan(F.cross_entropy(F.linear(hidden, weight), labels))
    assert torch.isnan(linear_cross_entropy(hidden, weight, labels))


def test_gpt2_training_loss_and_gradients_equal_unfused_path():
    config = preset_config("gpt-tiny", vocab_size=211, dropout=0.0, attention_dropout=0.0)
    model = GPT2LMHeadModel(config)
    ids = torch.randint(0, 211, (3, 19), generator=torch.Generator().manual_seed(2))
    labels = ids.clone()
    labels[1, 5:9] = -100
    model.train()
    fused = model(input_ids=ids, labels=labels)
    assert fused.logits is None  # the fused path ran
    fused_grads = torch.autograd.grad(fused.loss, list(model.parameters()))
    model.eval()  # eval (dropout is 0 anyway) takes the plain logits path
    plain = model(input_ids=ids, labels=labels)
    assert plain.logits.shape == (3, 19, 211)
    ref = F.cross_entropy(plain.logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
    torch.testing.assert_close(plain.loss, ref)
    torch.testing.assert_close(fused.loss, plain.loss, atol=1e-5, rtol=0)
    for g_fused, g_plain in zip(fused_grads, torch.autograd.grad(plain.loss, list(model.parameters()))):
        torch.testing.assert_close(g_fused, g_plain, atol=1e-5, rtol=1e-4)
    with torch.no_grad():  # no grad in training mode: logits are still returned
        model.train()
        assert model(input_ids=ids, labels=labels).logits is not None


@pytest.mark.parametrize("cls,preset", [(T5ForConditionalGeneration, "t5-tiny"),
                                        (T5ForConditionalGeneration, "t5-v1_1-small"),
                                        (BartForConditionalGeneration, "bart-tiny")])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_seq2seq_training_loss_and_gradients_equal_unfused_path(cls, preset, smoothing):
    overrides = dict(vocab_size=150, dropout=0.0, attention_dropout=0.0)
    if preset == "t5-v1_1-small":
        overrides.update(d_model=32, d_ff=48, n_layers=2, n_decoder_layers=2, n_heads=2, d_head=16)
    torch.manual_seed(0)
    model = cls(preset_config(preset, **overrides))
    if hasattr(model, "final_logits_bias"):
        model.final_logits_bias.normal_()
    g = torch.Generator().manual_seed(3)
    ids, labels = torch.randint(3, 150, (2, 11), generator=g), torch.randint(3, 150, (2, 7), generator=g)
    labels[1, 4:] = -100
    model.train()
    fused = model(input_ids=ids, labels=labels, label_smoothing=smoothing)
    assert fused.logits is None
    fused_grads = torch.autograd.grad(fused.loss, list(model.parameters()))
    model.eval()
    plain = model(input_ids=ids, labels=labels, label_smoothing=smoothing)
    ref = F.cross_entropy(plain.logits.flatten(0, 1), labels.flatten(), ignore_index=-100, label_smoothing=smoothing)
    torch.testing.assert_close(fused.loss, ref, atol=1e-5, rtol=0)
    for g_fused, g_plain in zip(fused_grads, torch.autograd.grad(plain.loss, list(model.parameters()))):
        torch.testing.assert_close(g_fused, g_plain, atol=1e-5, rtol=1e-4)


def test_bf16_weight_gradient_in_several_stashes_matches_unfused(monkeypatch):
    import lmzoo.nn.loss as loss_module

    hidden, weight, _, labels = problem(n=64, d=32, v=97)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = F.cross_entropy(F.linear(hidden, weight).float(), labels)
    g_ref = grads(ref, (hidden, weight))
    monkeypatch.setattr(loss_module, "STASH_BYTES", 97 * 2 * 20)  # a stash of 16 rows: 4 weight-gradient GEMMs
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = linear_cross_entropy(hidden, weight, labels, chunk_size=8)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)
    for a, r in zip(grads(ours, (hidden, weight)), g_ref):
        torch.testing.assert_close(a, r, atol=2e-4, rtol=2e-2)
