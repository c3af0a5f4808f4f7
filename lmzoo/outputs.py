"""Named model outputs: one dataclass for every family and head (fields unused by a model stay None)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ModelOutput:
    """What a model's ``forward`` returns. Never a positional tuple.

    ``logits``, by head, is a fixed contract:
    - LM heads (GPT-2, T5, BART; XLNet and BERT/RoBERTa MLM without labels): [batch, seq, vocab]
      (XLNet with ``target_mapping``: [batch, n_targets, vocab]).
    - Masked / permutation LM with ``labels`` (BERT, RoBERTa, XLNet): only the labelled rows go
      through the head: [n_labelled, vocab], in row-major order of ``labels != -100``.
    - While training with autograd and ``labels`` (GPT-2, T5, BART, XLNet), the head is fused with
      the loss and ``logits`` is None: the [tokens, vocab] logits are never stored.
    - Sequence heads: [batch, num_labels]; token heads: [batch, seq, num_labels].
    ``loss`` is the mean over the labelled targets (see ``lmzoo.nn.loss``).
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    nsp_logits: torch.Tensor | None = None
    mlm_loss: torch.Tensor | None = None
    nsp_loss: torch.Tensor | None = None
    encoder_last_hidden_state: torch.Tensor | None = None
    mems: list[torch.Tensor] | None = None  # XLNet: per-layer memory for the next segment
