"""How projections run while decoding on CPU.

Training and long inputs use plain ``F.linear``. Decoding feeds 1-4 rows per step (greedy at
batch 1, beam search at batch 1), and for those float32 CPU shapes ``F.linear`` (x @ W.T, W stored
[out, in]) takes slow GEMM paths, while ``W @ x.T`` with at least two columns does not: a single
row is padded with a zero row to a 2-column product. The values are the same up to float
rounding; benchmarks/generate.py measures the speed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MAX_DECODE_ROWS = 4


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           max_rows: int = MAX_DECODE_ROWS) -> torch.Tensor:
    """``F.linear(x, weight, bias)``; for 1..``max_rows`` float32 CPU rows without autograd computed
    as ``(W @ x.T).T``, a single row padded with a zero row (same values up to float rounding)."""
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if (1 <= rows <= max_rows and x.device.type == "cpu" and x.dtype == torch.float32
            and weight.dtype == torch.float32 and not torch.is_grad_enabled()):
        flat = x.reshape(rows, x.shape[-1])
        if rows == 1:
            out = (weight @ torch.cat([flat, torch.zeros_like(flat)]).t())[:, :1].t()
        else:
            out = (weight @ flat.t()).t()
        out = out.contiguous()
        if bias is not None:
            out += bias
        return out.view(*x.shape[:-1], weight.shape[0])
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same state-dict keys) whose decoding-size products take the
    faster CPU path of :func:`linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
