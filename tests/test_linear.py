"""Decoding-size products (lmzoo.nn.linear): the same numbers as F.linear on every path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmzoo.nn.heads import decode_logits
from lmzoo.nn.linear import Linear, linear


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 16, 64, 65])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_equals_f_linear(rows, with_bias):
    torch.manual_seed(rows)
    weight, bias = torch.randn(40, 24), torch.randn(40) if with_bias else None
    x = torch.randn(rows, 1, 24)
    with torch.no_grad():
        out = linear(x, weight, bias, max_rows=64)
        expected = F.linear(x, weight, bias)
    assert out.shape == expected.shape == (rows, 1, 40) and out.is_contiguous()
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_linear_module_matches_nn_linear_and_keeps_autograd():
    torch.manual_seed(0)
    ours, reference = Linear(6, 8), torch.nn.Linear(6, 8)
    reference.load_state_dict(ours.state_dict())
    x = torch.randn(1, 1, 6)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), atol=1e-6, rtol=1e-6)
    ours(x).sum().backward()  # grad enabled: the plain F.linear path
    torch.testing.assert_close(ours.weight.grad, x[0].expand(8, 6))


def test_decode_logits_for_one_and_several_rows():
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 300, bias=False)
    for rows in (1, 4, 64):
        hidden = torch.randn(rows, 16)
        with torch.no_grad():
            torch.testing.assert_close(decode_logits(hidden, head), head(hidden), atol=1e-5, rtol=1e-5)


def test_projections_stack_weights_while_training_and_equal_separate_layers():
    from lmzoo.nn.attention import projections

    torch.manual_seed(0)
    layers = [Linear(16, 8), Linear(16, 8), Linear(16, 4)]
    x = torch.randn(3, 5, 16, requires_grad=True)
    fused = projections(x, *layers)
    separate = [layer(x) for layer in layers]
    for a, b in zip(fused, separate):
        assert torch.allclose(a, b, atol=1e-6)
    sum(a.sum() * (i + 1) for i, a in enumerate(fused)).backward()
    grads = [p.grad.clone() for layer in layers for p in layer.parameters()] + [x.grad.clone()]
    for p in [*[p for layer in layers for p in layer.parameters()], x]:
        p.grad = None
    sum(b.sum() * (i + 1) for i, b in enumerate(separate)).backward()
    expected = [p.grad for layer in layers for p in layer.parameters()] + [x.grad]
    for a, b in zip(grads, expected):
        assert torch.allclose(a, b, atol=1e-5)
