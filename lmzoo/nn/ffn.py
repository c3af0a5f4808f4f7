"""Position-wise feed-forward: plain (GELU/ReLU) or gated (T5 v1.1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmzoo.config import ModelConfig
from lmzoo.nn.linear import Linear


def activation_fn(name: str):
    return {
        "gelu": F.gelu,
        "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
        "relu": F.relu,
        "silu": F.silu,
    }[name]


class FeedForward(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.up = Linear(config.d_model, config.d_ff, bias=config.bias)
        self.gate = Linear(config.d_model, config.d_ff, bias=config.bias) if config.gated_ffn else None
        self.down = Linear(config.d_ff, config.d_model, bias=config.bias)
        self.act = activation_fn(config.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate is not None:  # T5 v1.1: act(gate(x)) * up(x); HF names them wi_0 (gate) and wi_1 (up)
            h = self.act(self.gate(x)) * self.up(x)
        else:
            h = self.act(self.up(x))
        return self.down(h)
