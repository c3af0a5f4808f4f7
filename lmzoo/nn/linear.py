"""How projections run while decoding on CPU.

Training and long inputs use plain ``F.linear``. Decoding feeds a handful of rows per step, and for
those shapes the float32 CPU GEMM takes slow paths that depend on the weight layout (measured on
this project's 2-core AVX-512 CPU, GPT-2 124M and T5-small shapes, cold weights):

- 2-4 rows (beam search at batch 1, small batches): ``(W @ x.T).T`` beats ``F.linear`` 1.3-3.7x.
- 1 row (greedy / sampling at batch 1): ``x @ W`` with W stored [in, out] beats the [out, in]
  layout of ``nn.Linear``: 1.2x on the blocks, 2x on a 50k-token LM head (GPT-2's ``Conv1D`` keeps
  [in, out], which is why transformers' GPT-2 decodes faster than a plain ``nn.Linear`` model).
  :func:`set_row_vector_layout` switches the weights' storage to [in, out] in place (same values,
  same Parameters, no second copy).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SMALL_ROWS = (2, 4)


def _small_float_cpu(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and weight.stride(1) == 1 and not torch.is_grad_enabled())


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           max_rows: int = SMALL_ROWS[1]) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, computed as ``(W @ x.T).T`` for 2..``max_rows`` float32 CPU rows
    without autograd (same values up to float rounding)."""
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if SMALL_ROWS[0] <= rows <= max_rows and _small_float_cpu(x, weight):
        out = (weight @ x.reshape(rows, x.shape[-1]).t()).t().contiguous()
        if bias is not None:
            out += bias
        return out.view(*x.shape[:-1], weight.shape[0])
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same state-dict keys) whose decoding-size products take the
    faster CPU path of :func:`linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


def set_row_vector_layout(model: nn.Module, enabled: bool) -> None:
    """Store every float32 CPU ``nn.Linear`` weight of ``model`` [in, out] (``enabled``) or in the usual
    [out, in] layout (other dtypes: always the usual one, the faster there), in place: same values,
    same Parameters, no second copy kept.

    [in, out] makes one-row products ``x @ W`` run at memory speed (a 50k x 768 LM head: 6 ms instead
    of 13 ms); long inputs run as fast in either layout. A tied LM head is the embedding's Parameter,
    switched once; embedding lookups read it through strides. Switching copies the weights (GPT-2
    124M: ~0.3 s), so ``generate`` leaves the layout in place for the next call, and
    ``PreTrainedModel.train()`` restores the usual one before any training.
    """
    weights = {id(m.weight): m.weight for m in model.modules()
               if isinstance(m, nn.Linear) and isinstance(m.weight, nn.Parameter) and m.weight.ndim == 2}
    for weight in weights.values():
        row_vector = enabled and weight.device.type == "cpu" and weight.dtype == torch.float32
        if row_vector and weight.stride(1) == 1:
            weight.data = weight.data.t().contiguous().t()
        elif not row_vector and not weight.is_contiguous():
            weight.data = weight.data.contiguous()
