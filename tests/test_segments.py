"""Packed documents attended one by one (lmzoo.nn.segments) equal the dense block-diagonal mask: outputs,
loss and gradients, in fp32 and under bf16 autocast; inside torch.compile, FlexAttention's block mask
equals it too."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from conftest import compile_unavailable

from lmzoo.models.gpt2 import GPT2LMHeadModel
from lmzoo.nn import masks
from lmzoo.nn.segments import (BlockMask, DocumentSegments, document_block_mask, flex_document_attention,
                                packed_attention_mask)
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
            mp.setattr("lmzoo.nn.segments.right_padded", lambda mask: False)
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


# ---- inside torch.compile: a FlexAttention block mask where it can run, else the dense mask -------


def test_packed_mask_choice(monkeypatch):
    batch = packed_batch()
    args = (batch["document_ids"], batch["attention_mask"], torch.float32)
    assert isinstance(packed_attention_mask(*args, dropout_p=0.0), DocumentSegments)  # eager
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    with torch.no_grad():
        assert isinstance(packed_attention_mask(*args, dropout_p=0.0), BlockMask)
        assert isinstance(packed_attention_mask(*args, dropout_p=0.1), torch.Tensor)  # flex has no dropout
    assert isinstance(packed_attention_mask(*args, dropout_p=0.0), torch.Tensor)  # no CPU backward for flex


def test_block_mask_attends_as_the_dense_mask():
    """Compiled FlexAttention under ``document_block_mask`` = SDPA under ``document_mask``, with a
    padded row (a padding query sees itself only)."""
    reason = compile_unavailable()
    if reason:
        pytest.skip(reason)
    batch = packed_batch()
    documents, padding = batch["document_ids"], batch["attention_mask"]
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(documents.shape[0], 2, documents.shape[1], 16, generator=g) for _ in range(3))
    dense = F.scaled_dot_product_attention(q, k, v, attn_mask=masks.document_mask(documents, q.dtype, padding))
    with torch.no_grad():
        flex = torch.compile(flex_document_attention)(q, k, v, document_block_mask(documents, padding), None)
    torch.testing.assert_close(flex, dense, rtol=1e-4, atol=1e-5)


def test_compiled_packed_forward_equals_eager():
    reason = compile_unavailable()
    if reason:
        pytest.skip(reason)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(preset_config("gpt-tiny", vocab_size=200, n_layers=1)).eval()
    batch = packed_batch()
    with torch.no_grad():
        eager = model(**batch)
        torch._dynamo.reset()
        compiled = torch.compile(model)(**batch)
    torch.testing.assert_close(compiled.logits, eager.logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(compiled.loss, eager.loss, rtol=1e-5, atol=1e-5)
