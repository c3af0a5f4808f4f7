"""Packed documents attended one by one (lmzoo.nn.segments) equal the dense block-diagonal mask: outputs,
loss and gradients, in fp32 and under bf16 autocast."""

from __future__ import annotations

import pytest
import torch

from lmzoo.models.gpt2 import GPT2LMHeadModel
from lmzoo.nn import masks
from lmzoo.nn.segments import DocumentSegments
from lmzoo.objectives.clm import ClmCollator
from lmzoo.presets import preset_config


def packed_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """Rows of documents of 1..70 tokens (some longer than a bucket, one as long as the row), via the CLM collator."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for length in (96, 96, 80):
        ids = torch.randint(3, 200, (length,), generator=g)
        ends = torch.randint(0, length, (6,), generator=g)
        ids[ends] = 2  # eos ends a document
        docs = torch.cat([torch.zeros(1, dtype=torch.long), (ids == 2).long().cumsum(0)[:-1]])
        rows.append({"input_ids": ids.numpy(), "document_ids": docs.numpy(),
                     "position_ids": masks.document_positions(docs[None])[0].numpy()})
    rows.append({"input_ids": torch.randint(3, 200, (96,), generator=g).numpy(),
                 "document_ids": torch.zeros(96, dtype=torch.long).numpy(),
                 "position_ids": torch.arange(96).numpy()})
    return ClmCollator(eos_id=2, pad_id=0)(rows)


def run(model, batch, segments: bool, precision: str):
    model.zero_grad(set_to_none=True)
    with pytest.MonkeyPatch.context() as mp:
        if not segments:  # the dense mask, as for rows whose padding is not at the end
            mp.setattr("lmzoo.models.gpt2.right_padded", lambda mask: False)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = model(**batch)
        out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_segments_equal_the_dense_mask(precision):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(preset_config("gpt-tiny", vocab_size=211, dropout=0.0, attention_dropout=0.0)).train()
    batch = packed_batch()
    dense_loss, dense = run(model, batch, segments=False, precision=precision)
    loss, grads = run(model, batch, segments=True, precision=precision)
    tol = dict(rtol=1e-4, atol=1e-5) if precision == "fp32" else dict(rtol=2e-2, atol=2e-3)
    torch.testing.assert_close(loss, dense_loss, **tol)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, dense[name], **tol, msg=name)


def test_buckets_cover_every_position_once():
    ids = torch.tensor([[0] * 5 + [1] * 40 + [2] * 3, [0] * 48])
    seg = DocumentSegments(ids)
    assert torch.equal(seg.slots[seg.positions], torch.arange(ids.numel()))  # each position read back once
    assert seg.buckets == [(2, 16), (2, 48)]  # (documents, slots each), by bucket size
    # 5 and 3 tokens → bucket 16; 40 → 64, capped at the row's 48; 48 → 48


def test_each_document_sees_only_itself():
    """Through the segments path, a packed row's documents give the outputs each gives alone."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(preset_config("gpt-tiny", vocab_size=211, dropout=0.0, attention_dropout=0.0)).eval()
    batch = packed_batch(seed=1)
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        for row in range(batch["input_ids"].shape[0]):
            documents = batch["document_ids"][row]
            for d in documents[batch["attention_mask"][row].bool()].unique():
                where = (documents == d).nonzero().flatten()
                alone = model(input_ids=batch["input_ids"][row, where][None]).logits[0]
                torch.testing.assert_close(logits[row, where], alone, rtol=1e-4, atol=1e-4)
