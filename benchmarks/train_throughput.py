"""BERT MLM+NSP training throughput: lmzoo vs transformers, same weights, same batch, one run.

    .venv/bin/python benchmarks/train_throughput.py [--steps 8] [--batch 32] [--seq 128]

Prints tokens/s for fp32 and bf16 autocast and the ratio lmzoo / transformers. A step is
forward + backward + AdamW update. Timings are noisy on a shared machine: compare the ratio.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
import transformers

import lmzoo


def make_batch(batch: int, seq: int, vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (batch, seq), generator=g)
    labels = torch.full_like(ids, -100)
    selected = torch.rand(batch, seq, generator=g) < 0.15
    labels[selected] = ids[selected]
    ids[selected] = 4
    types = torch.zeros_like(ids)
    types[:, seq // 2 :] = 1
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": types, "labels": labels,
            "nsp_labels": torch.randint(0, 2, (batch,), generator=g)}


def time_steps(step, n_steps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(n_steps):
        step()
    return (time.perf_counter() - start) / n_steps


def trainer(model, batch, precision: str, rename_nsp: bool):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    inputs = dict(batch)
    if rename_nsp:
        inputs["next_sentence_label"] = inputs.pop("nsp_labels")
    model.train()

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=30522)
    args = parser.parse_args()

    config = transformers.BertConfig(vocab_size=args.vocab, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                                     intermediate_size=1024, attn_implementation="sdpa")
    torch.manual_seed(0)
    hf_model = transformers.BertForPreTraining(config)
    with tempfile.TemporaryDirectory() as folder:
        hf_model.save_pretrained(folder)
        ours = lmzoo.from_pretrained(folder)
    batch = make_batch(args.batch, args.seq, args.vocab)
    tokens = args.batch * args.seq
    print(f"BERT L4 H256 A4 FF1024, vocab {args.vocab}, batch {args.batch} x seq {args.seq}, MLM+NSP, "
          f"{torch.get_num_threads()} threads, {args.steps} timed steps")
    print(f"{'precision':<10}{'transformers tok/s':>20}{'lmzoo tok/s':>14}{'ratio':>8}")
    for precision in ("fp32", "bf16"):
        hf_s = time_steps(trainer(hf_model, batch, precision, rename_nsp=True), args.steps)
        our_s = time_steps(trainer(ours, batch, precision, rename_nsp=False), args.steps)
        print(f"{precision:<10}{tokens / hf_s:>20,.0f}{tokens / our_s:>14,.0f}{hf_s / our_s:>7.2f}x")


if __name__ == "__main__":
    main()
