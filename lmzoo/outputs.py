"""Named model outputs: one dataclass for every family and head (fields unused by a model stay None)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class ModelOutput:
    """What a model's ``forward`` returns. Never a positional tuple.

    ``logits``: LM logits [batch, seq, vocab]; when MLM ``labels`` are given, only the rows at
    labelled positions are computed: [n_labelled, vocab], in row-major order of ``labels != -100``.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    nsp_logits: torch.Tensor | None = None
    mlm_loss: torch.Tensor | None = None
    nsp_loss: torch.Tensor | None = None
    encoder_last_hidden_state: torch.Tensor | None = None
    cache: Any = None
    mems: list[torch.Tensor] | None = None  # XLNet: per-layer memory for the next segment
