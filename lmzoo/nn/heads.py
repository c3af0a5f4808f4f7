"""Task-head pieces shared by the families: the pooled-vector classifier and Hugging Face's loss rules.

Each family chooses the vector a sequence head reads (BERT: the pooler over [CLS]; RoBERTa: <s>;
GPT-2: the last non-padding token; BART: the last </s>; XLNet: its sequence summary) with the
pooling functions below, then classifies it with a plain Linear or :class:`ClassificationHead`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmzoo.config import ModelConfig
from lmzoo.nn.dropout import Dropout
from lmzoo.nn.linear import linear

IGNORE_INDEX = -100
PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression")


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


def problem_type(config: ModelConfig, labels: torch.Tensor) -> str:
    """``config.problem_type``, else HF's guess: regression for one output, single-label for integer
    labels, multi-label otherwise."""
    if config.problem_type:
        return config.problem_type
    if config.num_labels == 1:
        return "regression"
    return "single_label_classification" if labels.dtype in (torch.long, torch.int) else "multi_label_classification"


def sequence_classification_loss(config: ModelConfig, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (single label), BCE with logits on float multi-hot labels (multi-label), or MSE
    (regression), as HF's *ForSequenceClassification compute it."""
    kind = problem_type(config, labels)
    logits = logits.float()
    if kind == "regression":
        if config.num_labels == 1:
            return F.mse_loss(logits.squeeze(-1), labels.float().view(-1))
        return F.mse_loss(logits, labels.float())
    if kind == "single_label_classification":
        return F.cross_entropy(logits.view(-1, config.num_labels), labels.view(-1))
    return F.binary_cross_entropy_with_logits(logits, labels.float())


def token_classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over labelled tokens (-100 = not scored: padding, specials, later subwords)."""
    return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), labels.view(-1), ignore_index=IGNORE_INDEX)


def decode_logits(hidden: torch.Tensor, head: nn.Module | torch.Tensor, bias: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """LM-head logits [N, V] of a decoding step's rows ``hidden`` [N, D]; ``head`` is an nn.Linear
    (or a quantized head module) or a weight [V, D].

    For 1-64 float32 rows on CPU the product runs as (W @ hidden.T).T (``lmzoo.nn.linear.linear``):
    there F.linear takes slow paths (1 row of a 50k x 768 head: 12.3 ms vs 4.8 ms; 4 rows of a
    32k x 512 head: 12.7 ms vs 3.4 ms), and decoding feeds exactly such small batches (one row per
    prompt, num_beams rows per prompt in beam search).
    """
    if isinstance(head, nn.Linear):
        head, bias = head.weight, head.bias
    elif isinstance(head, nn.Module):
        return head(hidden)
    return linear(hidden, head, bias, max_rows=64)
