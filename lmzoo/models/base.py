"""What every lmzoo model shares: its config, weight init, HF-format save/load, the key-map hook."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from lmzoo.config import ModelConfig


class PreTrainedModel(nn.Module):
    """Base class of every lmzoo model.

    Subclasses set ``hf_architecture`` (the transformers class they mirror, written to
    ``config.json``'s ``architectures``) and implement ``hf_key_map`` (see ``lmzoo.hf``).
    """

    hf_architecture: ClassVar[str] = ""
    # The attribute holding the bare encoder/decoder inside head models, named like HF's prefix
    # ("bert", "roberta", "transformer", ...); "" for the bare model itself.
    base_prefix: ClassVar[str] = ""
    # Top-level submodules that are task heads: a checkpoint may lack them (random init, with a note).
    head_modules: ClassVar[tuple[str, ...]] = ()
    # Body submodules (paths) that may also be absent and start from random init, e.g. BERT's pooler,
    # which MLM-only pretraining never trains or saves (HF initialises it too).
    fresh_modules: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config

    @classmethod
    def hf_key_map(cls, config: ModelConfig) -> list[tuple[str, str | None]]:
        """(HF module path, lmzoo module path) pairs; ``{}`` is a layer index, ``None`` drops the key."""
        raise NotImplementedError

    @classmethod
    def hf_tensors_in(cls, config: ModelConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Reshape HF tensors before renaming (split a fused qkv, transpose Conv1D ...). Default: as is."""
        return state

    @classmethod
    def hf_tensors_out(cls, config: ModelConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The inverse of ``hf_tensors_in``, applied after renaming to HF names when saving."""
        return state

    def tied_parameters(self) -> dict[str, str]:
        """lmzoo parameter name → the parameter it is tied to (not saved, HF re-ties it on load)."""
        return {}

    def init_weights(self) -> None:
        """BERT-style init: N(0, 0.02) for linear and embedding weights, zero biases, unit norms."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
            elif isinstance(module, nn.LayerNorm):
                if module.weight is not None:
                    nn.init.ones_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(self, folder: str | Path) -> None:
        """Write config.json + model.safetensors in Hugging Face format (loadable by transformers)."""
        from lmzoo.hf import save_pretrained

        save_pretrained(self, folder)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "PreTrainedModel":
        """Load an lmzoo or Hugging Face folder into this class."""
        from lmzoo.hf import load_pretrained

        return load_pretrained(folder, model_class=cls)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device
