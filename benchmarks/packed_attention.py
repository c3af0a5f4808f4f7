"""Packed CLM rows of short documents: attention per document (lmzoo.nn.segments) vs the dense
block-diagonal mask, in one run, on the plays' speeches at seq 512 (training steps, interleaved).

    .venv/bin/python benchmarks/packed_attention.py [--preset gpt-mini] [--batch 8] [--seq 512] [--steps 3]
"""

from __future__ import annotations

import argparse
import tempfile
from contextlib import contextmanager

import numpy as np
import torch

import lmzoo.nn.segments as segments
from lmzoo.models.gpt2 import GPT2LMHeadModel
from lmzoo.data import TokenizedCorpus, default_corpus
from lmzoo.objectives.clm import ClmCollator, clm_dataset
from lmzoo.presets import preset_config
from lmzoo.tokenizer import train_tokenizer
from timing import interleaved_seconds, trainer


@contextmanager
def dense_mask():
    """The model takes the dense block-diagonal mask, as it does for rows not padded at the end."""
    original = segments.right_padded
    segments.right_padded = lambda mask: False
    try:
        yield
    finally:
        segments.right_padded = original


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="gpt-mini")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--plays", type=int, default=4)
    args = p.parse_args()
    plays = [str(f) for f in default_corpus()[: args.plays]]
    tokenizer = train_tokenizer(plays, kind="bpe", vocab_size=2000)
    with tempfile.TemporaryDirectory() as cache:
        corpus = TokenizedCorpus.build(plays, tokenizer, cache)
        data = clm_dataset(corpus, args.seq, tokenizer.eos_id)
        batch = ClmCollator(tokenizer.eos_id, tokenizer.pad_id)([data[i] for i in range(args.batch)])
        lengths = np.diff(np.flatnonzero(np.r_[1, np.diff(batch["document_ids"].flatten().numpy()) != 0, 1]))
    config = preset_config(args.preset, vocab_size=tokenizer.vocab_size, max_positions=max(args.seq, 1024))
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    print(f"{args.preset} (d {config.d_model}, {config.n_layers} layers), batch {args.batch} x seq {args.seq}, "
          f"{len(lengths)} documents (median {int(np.median(lengths))} tokens, longest {lengths.max()}), "
          f"{torch.get_num_threads()} threads")
    print(f"{'precision':<10}{'dense mask tok/s':>18}{'per document tok/s':>20}{'ratio':>8}")
    tokens = batch["input_ids"].numel()
    for precision in ("fp32", "bf16"):
        segmented = trainer(model, batch, precision)
        dense_step = trainer(model, batch, precision)

        def dense():
            with dense_mask():
                dense_step()

        a, b = interleaved_seconds(dense, segmented, args.steps)
        print(f"{precision:<10}{tokens / a:>18,.0f}{tokens / b:>20,.0f}{a / b:>7.2f}x", flush=True)


if __name__ == "__main__":
    main()
