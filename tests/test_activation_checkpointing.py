"""Activation checkpointing recomputes each layer in the backward pass: the loss and every gradient
equal the plain run's (dropout included: the RNG state is replayed)."""

from __future__ import annotations

import pytest
import torch

from lmzoo.models import family_spec
from lmzoo.nn.stack import set_activation_checkpointing
from lmzoo.objectives.plm import PLMCollator
from lmzoo.presets import preset_config


def batch_for(family: str, vocab: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    ids = torch.randint(5, vocab, (2, 24), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 18:] = 0
    labels = torch.where(torch.rand(ids.shape, generator=g) < 0.3, ids, torch.full_like(ids, -100))
    if family == "xlnet":
        return PLMCollator(pad_id=0, K=4, max_span=3, num_predict=8, special_ids=())(
            [{"input_ids": row} for row in ids], g)
    if family in ("t5", "bart"):
        return {"input_ids": ids, "attention_mask": mask, "labels": ids[:, :10]}
    if family == "gpt2":
        return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    return {**batch, "nsp_labels": torch.tensor([0, 1])} if family == "bert" else batch


def loss_and_grads(model: torch.nn.Module, batch: dict, seed: int) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the dropout masks
    loss = model(**batch).loss
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("preset", ["bert-tiny", "roberta-tiny", "gpt-tiny", "t5-tiny", "bart-tiny", "xlnet-tiny"])
def test_same_loss_and_gradients(preset):
    config = preset_config(preset, vocab_size=211, dropout=0.1)
    torch.manual_seed(0)
    spec = family_spec(config.family)
    model = spec.objectives[spec.default_objective](config).train()
    batch = batch_for(config.family, config.vocab_size, torch.Generator().manual_seed(1))
    calls = []
    layer = next(m for name, m in model.named_modules() if name.endswith("layers.0"))
    layer.register_forward_pre_hook(lambda *_: calls.append(1))  # a recompute may stop before the end
    plain_loss, plain = loss_and_grads(model, batch, seed=7)
    assert set_activation_checkpointing(model) >= 1
    plain_calls = len(calls)
    loss, grads = loss_and_grads(model, batch, seed=7)
    assert len(calls) == 3 * plain_calls  # run again in the backward pass: it was checkpointed
    assert loss == pytest.approx(plain_loss, abs=1e-6)
    assert grads.keys() == plain.keys() and len(grads) > 10
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain[name], rtol=1e-5, atol=1e-6, msg=name)
