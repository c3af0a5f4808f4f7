"""What every lmzoo model shares (config, weight init, HF-format save/load, the key-map hooks), and
``FamilySpec``: everything lmzoo knows about one family, declared once at the end of its model file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

import torch
from torch import nn

from lmzoo.config import ModelConfig
from lmzoo.errors import UserError
from lmzoo.tokenizer import KINDS, TEMPLATES
from lmzoo.weights import load_into, save_folder

HEAD_KINDS = ("sequence_classification", "token_classification")


class PreTrainedModel(nn.Module):
    """Base class of every lmzoo model.

    Subclasses set ``hf_architecture`` (the transformers class they mirror, written to
    ``config.json``'s ``architectures``), the family's HF config converters, and implement
    ``hf_key_map`` (see ``lmzoo.weights``).
    """

    hf_architecture: ClassVar[str] = ""
    # HF config.json "model_type" values this class reads, and the family's config converters
    model_types: ClassVar[tuple[str, ...]] = ()
    config_from_hf: ClassVar[Callable[[dict[str, Any]], ModelConfig]]
    config_to_hf: ClassVar[Callable[[ModelConfig], dict[str, Any]]]
    # The attribute holding the bare encoder/decoder inside head models, named like HF's prefix
    # ("bert", "roberta", "transformer", ...); "" for the bare model itself.
    base_prefix: ClassVar[str] = ""
    # A bare model: the prefix of its keys inside the family's head checkpoints ("" for head models).
    prefix_in_heads: ClassVar[str] = ""
    # Top-level submodules that are task heads: a checkpoint may lack them (random init, with a note).
    head_modules: ClassVar[tuple[str, ...]] = ()
    # Body submodules (paths) that may also be absent and start from random init, e.g. BERT's pooler,
    # which MLM-only pretraining never trains or saves (HF initialises it too).
    fresh_modules: ClassVar[tuple[str, ...]] = ()
    # The fine-tuning head this class is (one of HEAD_KINDS), "" for the others.
    head_kind: ClassVar[str] = ""
    # Whether some parameters may get no gradient in a step (DDP must then look for them).
    ddp_find_unused_parameters: ClassVar[bool] = False

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
        save_folder(self, folder)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "PreTrainedModel":
        """Load an lmzoo or Hugging Face folder into this class."""
        return load_into(cls, folder)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


@dataclass(frozen=True, kw_only=True)
class FamilySpec:
    """One family as shared code sees it; shared code asks this, never a family name.

    ``objectives`` maps each pretraining objective the family trains with to the class it trains;
    the first is the family's default. ``architectures`` are its classes, the first being built
    when a config.json names none.
    """

    name: str  # ModelConfig.family
    architectures: tuple[type[PreTrainedModel], ...]
    tokenizer_kind: str  # trained for it when the user brings no tokenizer
    template: str  # its special-token layout (a key of lmzoo.tokenizer.TEMPLATES)
    objectives: Mapping[str, type[PreTrainedModel]]

    def __post_init__(self) -> None:
        if self.tokenizer_kind not in KINDS or self.template not in TEMPLATES or not self.objectives:
            raise ValueError(f"incomplete family spec {self.name!r}")

    @property
    def default_objective(self) -> str:
        return next(iter(self.objectives))

    @property
    def default_architecture(self) -> type[PreTrainedModel]:
        return self.architectures[0]

    @property
    def model_types(self) -> tuple[str, ...]:
        return self.architectures[0].model_types

    def head(self, kind: str) -> type[PreTrainedModel]:
        """The family's fine-tuning head class of ``kind`` (one of HEAD_KINDS)."""
        for cls in self.architectures:
            if cls.head_kind == kind:
                return cls
        raise UserError(f"the {self.name} family has no {kind.replace('_', ' ')} head")
