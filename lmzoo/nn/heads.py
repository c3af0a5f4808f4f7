"""Task-head pieces shared by the families: the pooled-vector classifier and Hugging Face's loss rules.

Each family chooses the vector a sequence head reads (BERT: the pooler over [CLS]; RoBERTa: <s>;
GPT-2: the last non-padding token; BART: the last </s>; XLNet: its sequence summary) with the
pooling functions below, then classifies it with a plain Linear or :class:`ClassificationHead`.
"""

from __future__ import annotations

import torch
from torch import nn

from lmzoo.config import ModelConfig
from lmzoo.nn.dropout import Dropout
from lmzoo.nn.linear import linear



def classifier_dropout(config: ModelConfig) -> float:
    """HF's rule: ``classifier_dropout`` when set, else the hidden dropout."""
    return config.dropout if config.classifier_dropout is None else config.classifier_dropout


class ClassificationHead(nn.Module):
    """dropout → dense → tanh → dropout → out_proj on a pooled vector (HF's RobertaClassificationHead,
    BartClassificationHead)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.d_model, config.d_model)
        self.dropout = Dropout(classifier_dropout(config))
        self.out_proj = nn.Linear(config.d_model, config.num_labels)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.dense(self.dropout(pooled)))
        return self.out_proj(self.dropout(x))


def first_token(hidden: torch.Tensor) -> torch.Tensor:
    """[batch, seq, d] → the first position ([CLS] / <s>): [batch, d]."""
    return hidden[:, 0]


def last_token(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """The last non-padding position of each row (GPT-style heads), for left or right padding."""
    if attention_mask is None:
        return hidden[:, -1]
    positions = torch.arange(hidden.shape[1], device=hidden.device)
    last = (attention_mask.to(positions.dtype) * positions).argmax(dim=1)  # (B,)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def last_token_of(hidden: torch.Tensor, input_ids: torch.Tensor, token_id: int) -> torch.Tensor:
    """The last position holding ``token_id`` in each row (BART: the final </s>)."""
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    found = input_ids == token_id
    if not bool(found.any(dim=1).all()):
        raise ValueError(f"every sequence must contain token {token_id}")
    last = torch.where(found, positions, -1).argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def decode_logits(hidden: torch.Tensor, head: nn.Module | torch.Tensor, bias: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """LM-head logits [N, V] of a decoding step's rows ``hidden`` [N, D]; ``head`` is an nn.Linear
    (or a quantized head module) or a weight [V, D].

    For 1-64 float32 rows on CPU the product runs as (W @ hidden.T).T (``lmzoo.nn.linear.linear``):
    F.linear takes slow GEMM paths for such row counts there, and decoding feeds exactly such small
    batches (one row per prompt, num_beams rows per prompt in beam search); benchmarks/generate.py
    measures the difference.
    """
    if isinstance(head, nn.Linear):
        head, bias = head.weight, head.bias
    elif isinstance(head, nn.Module):
        return head(hidden)
    return linear(hidden, head, bias, max_rows=64)
