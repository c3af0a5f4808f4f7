"""GPT causal-LM training throughput: lmzoo vs transformers, same weights, same batch, one run.

    .venv/bin/python benchmarks/gpt_train_throughput.py [--steps 2] [--batch 16] [--seq 256]

GPT L6 d384 h6 (gpt-mini), GPT-2 vocabulary. Prints tokens/s for fp32 and bf16 autocast and
the ratio lmzoo / transformers. A step is forward + backward + AdamW update on plain causal
rows (labels = inputs). Timings are noisy on a shared machine: compare the ratio.
"""

from __future__ import annotations

import argparse
import tempfile

import torch
import transformers

import lmzoo
from timing import interleaved_seconds, trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2, help="steps per timed round (best of 3 rounds)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=50257)
    args = parser.parse_args()

    config = transformers.GPT2Config(vocab_size=args.vocab, n_embd=384, n_layer=6, n_head=6, n_positions=1024,
                                     attn_implementation="sdpa")
    torch.manual_seed(0)
    hf_model = transformers.GPT2LMHeadModel(config)
    with tempfile.TemporaryDirectory() as folder:
        hf_model.save_pretrained(folder)
        ours = lmzoo.from_pretrained(folder)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "labels": ids}
    tokens = args.batch * args.seq
    print(f"GPT L6 d384 h6, vocab {args.vocab}, batch {args.batch} x seq {args.seq}, causal LM, "
          f"{torch.get_num_threads()} threads, best of 3 rounds of {args.steps} steps")
    print(f"{'precision':<10}{'transformers tok/s':>20}{'lmzoo tok/s':>14}{'ratio':>8}")
    for precision in ("fp32", "bf16"):
        hf_s, our_s = interleaved_seconds(trainer(hf_model, batch, precision), trainer(ours, batch, precision),
                                          args.steps)
        print(f"{precision:<10}{tokens / hf_s:>20,.0f}{tokens / our_s:>14,.0f}{hf_s / our_s:>7.2f}x")


if __name__ == "__main__":
    main()
