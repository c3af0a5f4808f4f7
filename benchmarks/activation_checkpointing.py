"""Peak memory of one training step with and without activation checkpointing (``--activation-checkpointing``).

    .venv/bin/python benchmarks/activation_checkpointing.py [--preset gpt-mini] [--batch 8] [--seq 512]
                                                             [--device cpu|cuda]

Each mode runs in a fresh process (so one mode's peak cannot hide the other's): the preset's
pretraining class, a random batch, one forward + backward. Peak memory: CUDA's max allocated, or on
CPU the growth of the process's peak RSS during the step (weights and the first allocations are
there before it). Also printed: the step's seconds (checkpointing recomputes each layer's forward).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from lmzoo.models import family_spec
from lmzoo.nn.stack import set_activation_checkpointing
from lmzoo.presets import preset_config


def step(preset: str, batch: int, seq: int, device: str, checkpointed: bool) -> dict[str, float]:
    """One forward + backward of the preset's default pretraining class on random token ids."""
    config = preset_config(preset)
    spec = family_spec(config.family)
    torch.manual_seed(0)
    model = spec.objectives[spec.default_objective](config).to(device).train()
    if checkpointed:
        set_activation_checkpointing(model)
    ids = torch.randint(5, config.vocab_size, (batch, seq), device=device)
    inputs = {"input_ids": ids, "labels": ids}
    if config.is_encoder_decoder:
        inputs["labels"] = ids[:, : seq // 4]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    model(**inputs).loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    return {"checkpointed": checkpointed, "peak_mb": peak, "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gpt-mini")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--one", choices=["plain", "checkpointed"], help=argparse.SUPPRESS)  # the child run
    args = parser.parse_args()
    if args.one:
        print(json.dumps(step(args.preset, args.batch, args.seq, args.device, args.one == "checkpointed")))
        return
    rows = []
    for mode in ("plain", "checkpointed"):
        out = subprocess.run([sys.executable, __file__, "--preset", args.preset, "--batch", str(args.batch),
                              "--seq", str(args.seq), "--device", args.device, "--one", mode],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    for row in rows:
        print(f"{args.preset} batch {args.batch} seq {args.seq} {args.device} "
              f"{'checkpointed' if row['checkpointed'] else 'plain':>12}: peak {row['peak_mb']:8.1f} MiB, "
              f"step {row['seconds']:.2f} s")
    print(f"activation checkpointing: {rows[1]['peak_mb'] / max(rows[0]['peak_mb'], 1e-9):.2f}x the peak memory")


if __name__ == "__main__":
    main()
