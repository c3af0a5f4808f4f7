"""Permutation LM: statistics of the collator, no leaks in the masks nor through the model, learning."""

from __future__ import annotations

import math

import pytest
import torch

import lmzoo
from lmzoo.errors import UserError
from lmzoo.objectives.plm import PLMCollator, sample_spans

VOCAB = 64


def runs(mask: torch.Tensor) -> list[int]:
    """Lengths of the runs of True in a 1-D bool tensor."""
    out, n = [], 0
    for x in mask.tolist() + [False]:
        if x:
            n += 1
        elif n:
            out.append(n)
            n = 0
    return out


def order_from(perm_mask: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
    """Rank of each predicted token = how many predicted tokens it may see."""
    visible = (perm_mask == 0) & predicted[None, :]
    return visible.sum(1)


@pytest.mark.parametrize("K", [6, 3.5])
def test_predicted_share_and_spans(K):
    g = torch.Generator().manual_seed(0)
    lengths = [128, 37, 1, 2, 63]
    total = chosen = 0
    all_runs: list[int] = []
    for _ in range(300):
        for n in lengths:
            mask = sample_spans(n, K, 5, g)
            total, chosen = total + n, chosen + int(mask.sum())
            all_runs += runs(mask)
    share = chosen / total
    # ~70k tokens: the standard error of the share is far below 0.01; truncated last chunks lower it a bit
    assert 1 / K - 0.025 < share < 1 / K + 0.01, share
    assert max(all_runs) <= 5 and min(all_runs) >= 1
    assert {1, 2, 3, 4, 5} <= set(all_runs)  # every span length occurs


def test_batch_structure_and_valid_permutations():
    collate = PLMCollator(pad_id=0, K=6)
    g = torch.Generator().manual_seed(1)
    examples = [{"input_ids": torch.randint(3, VOCAB, (n,), generator=g)} for n in (40, 33, 17, 40)]
    batch = collate(examples, torch.Generator().manual_seed(2))
    ids, pm, tm, labels, am = (batch[k] for k in ("input_ids", "perm_mask", "target_mapping", "labels", "attention_mask"))
    B, T = ids.shape
    assert (B, T) == (4, 40) and pm.shape == (4, 40, 40) and tm.shape[0::2] == (4, 40)
    assert torch.equal(am.sum(1), torch.tensor([40, 33, 17, 40])) and (ids[am == 0] == 0).all()
    for b in range(B):
        rows = tm[b].sum(1) > 0
        positions = tm[b, rows].argmax(1)
        assert (tm[b].sum(1) <= 1).all() and torch.all(positions[1:] > positions[:-1])  # one-hot, ascending
        assert torch.equal(labels[b, rows], ids[b, positions]) and (labels[b, ~rows] == -100).all()
        predicted = torch.zeros(T, dtype=torch.bool)
        predicted[positions] = True
        assert not (predicted & (am[b] == 0)).any()  # padding never predicted
        # context sees all context, and no predicted token
        ctx = ~predicted
        assert (pm[b][ctx][:, ctx] == 0).all() and (pm[b][ctx][:, predicted] == 1).all()
        # predicted tokens: a strict total order; each sees exactly the ones before it, never itself
        rank = order_from(pm[b], predicted)[predicted]
        assert sorted(rank.tolist()) == list(range(int(predicted.sum())))
        for i in positions.tolist():
            assert pm[b, i, i] == 1
            for j in positions.tolist():
                assert (pm[b, i, j] == 0) == (order_from(pm[b], predicted)[j] < order_from(pm[b], predicted)[i])


def test_orders_differ_between_sequences_and_num_predict_is_fixed():
    collate = PLMCollator(pad_id=0, num_predict=5)
    examples = [{"input_ids": torch.arange(3, 63)} for _ in range(8)]
    batch = collate(examples, torch.Generator().manual_seed(0))
    assert batch["labels"].shape == (8, 5) and batch["target_mapping"].shape == (8, 5, 60)
    assert len({tuple(row.flatten().tolist()) for row in batch["perm_mask"]}) == 8  # a fresh order each
    again = collate(examples, torch.Generator().manual_seed(0))
    assert all(torch.equal(batch[k], again[k]) for k in batch)  # all randomness from the generator


def test_bi_data_appends_reversed_sequences():
    batch = PLMCollator(pad_id=0, bi_data=True)([{"input_ids": [5, 6, 7, 8]}], torch.Generator().manual_seed(0))
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8], [8, 7, 6, 5]]


@pytest.mark.parametrize("bad", [dict(K=1), dict(K=0.5), dict(max_span=0), dict(num_predict=0)])
def test_bad_settings_are_user_errors(bad):
    with pytest.raises(UserError):
        PLMCollator(pad_id=0, **bad)


def test_no_leak_through_the_model():
    """Changing a predicted token (or any token after it in the order) leaves its prediction and
    those of every token before it unchanged; changing context changes them."""
    torch.manual_seed(0)
    model = lmzoo.from_preset("xlnet-tiny", vocab_size=VOCAB, pad_token_id=0).eval()
    g = torch.Generator().manual_seed(3)
    examples = [{"input_ids": torch.randint(3, VOCAB, (30,), generator=g)} for _ in range(2)]
    batch = PLMCollator(pad_id=0, K=3)(examples, torch.Generator().manual_seed(4))
    del batch["labels"]  # logits for every prediction row: (B, P, V)
    with torch.no_grad():
        base = model(**batch).logits  # (B, P, V)
    checked = 0
    for b in range(2):
        rows = (batch["target_mapping"][b].sum(1) > 0).nonzero().flatten()
        positions = batch["target_mapping"][b, rows].argmax(1)
        predicted = torch.zeros(30, dtype=torch.bool)
        predicted[positions] = True
        rank = order_from(batch["perm_mask"][b], predicted)
        for row, pos in zip(rows.tolist(), positions.tolist()):
            later = predicted & (rank >= rank[pos])  # pos itself and everything after it in the order
            changed = {k: v.clone() for k, v in batch.items()}
            changed["input_ids"][b, later] = (changed["input_ids"][b, later] + 7) % VOCAB
            with torch.no_grad():
                out = model(**changed).logits
            assert torch.allclose(out[b, row], base[b, row], atol=1e-5)
            earlier_rows = [r for r, p in zip(rows.tolist(), positions.tolist()) if rank[p] < rank[pos]]
            assert torch.allclose(out[b, earlier_rows], base[b, earlier_rows], atol=1e-5)
            checked += 1
    assert checked >= 10
    context = torch.nonzero(~predicted).flatten()[0]  # sanity: the test can fail
    changed = {k: v.clone() for k, v in batch.items()}
    changed["input_ids"][1, context] = (changed["input_ids"][1, context] + 7) % VOCAB
    with torch.no_grad():
        assert not torch.allclose(model(**changed).logits[1], base[1], atol=1e-4)


def test_tiny_xlnet_learns_with_plm():
    """Sequences are arithmetic progressions mod VOCAB: every predicted token follows from its context."""
    torch.manual_seed(0)
    model = lmzoo.from_preset("xlnet-tiny", vocab_size=VOCAB, pad_token_id=0, d_model=64, n_heads=4, d_ff=128,
                              dropout=0.0, attention_dropout=0.0)
    collate = PLMCollator(pad_id=0, K=4)
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def examples(n):
        start = torch.randint(0, VOCAB, (n, 1), generator=g)
        step = torch.randint(1, 4, (n, 1), generator=g)
        return [{"input_ids": row} for row in (start + step * torch.arange(24)) % VOCAB]

    losses = []
    for _ in range(300):
        loss = model(**collate(examples(16), g)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert first > 0.8 * math.log(VOCAB)
    assert last < 0.15 * first, (first, last)
