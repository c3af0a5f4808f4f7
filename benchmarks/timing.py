"""What the training benchmarks share: a training step with fused AdamW, and interleaved timing.

Imported by the scripts beside it (run them as ``python benchmarks/<script>.py``).
"""

from __future__ import annotations

import time

import torch


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def trainer(model, batch: dict, precision: str, device: str = "cpu"):
    """A function running one training step (forward, backward, fused AdamW) of ``model``."""
    # fused AdamW on both sides: lmzoo's loop uses it, and it is HF Trainer's default on torch >= 2.8
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    model.train()

    def step():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def interleaved_seconds(step_a, step_b, n_steps: int, rounds: int = 3, device: str = "cpu") -> tuple[float, float]:
    """Best-of-``rounds`` seconds per step of two step functions timed in alternation (after one
    warm-up step each), so a slow spell of a shared machine hits both sides alike."""
    step_a(), step_b()
    best = [float("inf"), float("inf")]
    for _ in range(rounds):
        for side, step in enumerate((step_a, step_b)):
            sync(device)
            start = time.perf_counter()
            for _ in range(n_steps):
                step()
            sync(device)
            best[side] = min(best[side], (time.perf_counter() - start) / n_steps)
    return best[0], best[1]
