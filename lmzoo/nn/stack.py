"""The shared encoder / decoder stack: ``n`` blocks over embedded inputs, the masks they share
built once per forward, and the per-layer caches of incremental decoding.

BERT and RoBERTa configure it as a bidirectional encoder, GPT-2 as a causal decoder, T5 and BART
as both halves of an encoder-decoder (the decoder with cross-attention). What differs between them
(pre/post norm, FFN, biases, attention scaling) is read by ``Block`` from the config; embeddings,
positions and final norms stay with the families. XLNet's two-stream layers are its own.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.utils.checkpoint
from torch import nn

from lmzoo.config import ModelConfig
from lmzoo.nn.attention import LayerKVCache
from lmzoo.nn.block import Block
from lmzoo.nn.masks import attention_mask_for


def run_layer(layer: Callable[..., Any], checkpointed: bool, *args: Any, **kwargs: Any) -> Any:
    """``layer(*args, **kwargs)``; with ``checkpointed`` while autograd records, its activations are
    not kept but recomputed in the backward pass (``torch.utils.checkpoint``, non-reentrant, which
    works under DDP and FSDP2). The RNG state is replayed, so dropout draws the same masks: loss and
    gradients equal the plain run's."""
    if checkpointed and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(layer, *args, use_reentrant=False, **kwargs)
    return layer(*args, **kwargs)


def set_activation_checkpointing(model: nn.Module, enabled: bool = True) -> int:
    """Checkpoint every layer of ``model``'s stacks (each module with an ``activation_checkpointing``
    switch); returns how many stacks were switched."""
    stacks = [m for m in model.modules() if hasattr(m, "activation_checkpointing")]
    for stack in stacks:
        stack.activation_checkpointing = enabled
    return len(stacks)


class Stack(nn.ModuleList):
    """``n_layers`` Blocks (a ModuleList, so state-dict keys stay ``layers.{i}...``).

    ``causal``: a decoder (each token sees earlier ones); ``cross_attention``: each block also
    attends to the encoder's states; ``activation_checkpointing``: see :func:`run_layer`.
    """

    def __init__(self, config: ModelConfig, n_layers: int, *, causal: bool = False,
                 cross_attention: bool = False) -> None:
        super().__init__(Block(config, cross_attention=cross_attention) for _ in range(n_layers))
        self.causal = causal
        self.activation_checkpointing = False

    def forward(
        self,
        x: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        past: int = 0,
        caches: Sequence[LayerKVCache] | None = None,
        encoder_states: torch.Tensor | None = None,
        encoder_mask: torch.Tensor | None = None,
        cross_caches: Sequence[LayerKVCache] | None = None,
    ) -> torch.Tensor:
        """``x`` (B, T, D) embedded inputs → (B, T, D).

        ``attention_mask`` [B, past + T] 1/0 marks real keys; ``bias`` is added to every layer's
        scores (relative positions); ``past`` tokens are already in ``caches``. ``mask`` (additive)
        replaces what these imply, for masks only the caller knows (packed documents, a decoding
        state's left padding). ``encoder_mask`` is the additive key mask of cross-attention.
        """
        if mask is None:
            mask, is_causal = attention_mask_for(attention_mask, q_len=x.shape[1], k_len=past + x.shape[1],
                                                 causal=self.causal, dtype=x.dtype, device=x.device, bias=bias)
        else:
            is_causal = False
        for i, layer in enumerate(self):
            x = run_layer(layer, self.activation_checkpointing and not caches, x, mask=mask, is_causal=is_causal,
                          cache=caches[i] if caches else None, encoder_states=encoder_states,
                          encoder_mask=encoder_mask, cross_cache=cross_caches[i] if cross_caches else None)
        return x
