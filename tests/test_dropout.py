"""The CPU dropout and the attention that uses it: statistics, gradients, replay, SDPA equality."""

import math

import pytest
import torch
import torch.nn.functional as F

from lmzoo.nn.dropout import Dropout, attention, dropout, keep_mask


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_drop_share_and_scale(p):
    torch.manual_seed(0)
    n = 1 << 22
    y = dropout(torch.ones(n), p)
    dropped = (y == 0).float().mean().item()
    # binomial standard deviation of the share is sqrt(p(1-p)/n) ~ 2.5e-4: allow 5 of them
    assert abs(dropped - p) < 5 * math.sqrt(p * (1 - p) / n)
    kept = y[y != 0]
    p_eff = round(p * 65536) / 65536
    assert torch.allclose(kept, torch.full_like(kept, 1 / (1 - p_eff)))
    assert abs(y.mean().item() - 1.0) < 5 * math.sqrt(p / (1 - p) / n)


def test_mask_elements_are_independent():
    """Neighbouring elements come from the same 64-bit word: their drops must still be independent."""
    torch.manual_seed(1)
    m = ~keep_mask((1 << 20, 4), 0.25)  # the 4 slices of one word side by side
    both = (m[:, 0] & m[:, 1]).float().mean().item()
    assert abs(both - 0.25 * 0.25) < 5 * math.sqrt(0.0625 * 0.9375 / (1 << 20))
    for lane in range(4):
        assert abs(m[:, lane].float().mean().item() - 0.25) < 0.003


def test_backward_is_the_mask_times_the_scale():
    torch.manual_seed(2)
    x = torch.randn(1000, 37, requires_grad=True)
    y = dropout(x, 0.2)
    y.backward(torch.ones_like(y))
    kept = y != 0
    assert torch.equal(x.grad != 0, kept)
    assert torch.allclose(y[kept], x[kept] * x.grad[kept])


def test_replays_with_the_seed_and_is_identity_in_eval():
    x = torch.randn(64, 33)
    torch.manual_seed(3)
    a = dropout(x, 0.1)
    torch.manual_seed(3)
    assert torch.equal(a, dropout(x, 0.1))
    module = Dropout(0.1).eval()
    assert module(x) is x
    assert dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    assert dropout(x.bfloat16(), 0.5).dtype == torch.bfloat16


@pytest.mark.parametrize("kind", ["none", "additive", "bool", "causal"])
def test_attention_math_equals_sdpa(kind):
    """With a dropout too small to drop anything, the math path runs and must equal SDPA."""
    torch.manual_seed(4)
    q, k, v = (torch.randn(2, 3, 9, 8, dtype=torch.float64) for _ in range(3))
    kwargs = {}
    if kind == "additive":
        kwargs["attn_mask"] = torch.randn(2, 1, 9, 9, dtype=torch.float64)
    elif kind == "bool":
        kwargs["attn_mask"] = torch.rand(2, 1, 9, 9) > 0.3
        kwargs["attn_mask"][..., 0] = True  # every row sees at least one key
    elif kind == "causal":
        kwargs["is_causal"] = True
    ref = F.scaled_dot_product_attention(q, k, v, scale=0.3, **kwargs)
    out = attention(q, k, v, dropout_p=1e-7, scale=0.3, **kwargs)
    assert torch.allclose(out, ref, atol=1e-12)


def test_attention_dropout_drops_probabilities():
    """Dropping attention probabilities, then averaging many draws, gives the undropped output."""
    torch.manual_seed(5)
    q, k, v = (torch.randn(1, 1, 4, 8, dtype=torch.float64) for _ in range(3))
    ref = F.scaled_dot_product_attention(q, k, v)
    draws = torch.stack([attention(q, k, v, dropout_p=0.5) for _ in range(4000)])
    assert not torch.allclose(draws[0], ref)
    assert torch.allclose(draws.mean(0), ref, atol=0.1)


def test_bf16_training_attention_takes_the_math_path_and_matches_sdpa():
    torch.manual_seed(6)
    q, k, v = (torch.randn(2, 4, 32, 16, requires_grad=True) for _ in range(3))
    mask = torch.zeros(2, 1, 1, 32)
    mask[0, ..., -5:] = torch.finfo(torch.float32).min  # padding keys in the first row
    low = [t.detach().bfloat16().requires_grad_() for t in (q, k, v)]
    out = attention(*low, attn_mask=mask.bfloat16())
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), ref, atol=3e-2)
    out.float().sum().backward()
    ref.sum().backward()
    for a, b in zip(low, (q, k, v)):
        assert torch.allclose(a.grad.float(), b.grad, atol=5e-2, rtol=5e-2)
    with torch.no_grad():  # inference keeps SDPA's kernel
        assert torch.allclose(attention(*low).float(), F.scaled_dot_product_attention(*low).float(), atol=1e-2)
