"""lmzoo: BERT, RoBERTa, GPT-2, T5, BART and XLNet with the objectives that made them famous."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmzoo.config import ModelConfig
from lmzoo.errors import UserError

__version__ = "0.1.0"


def from_pretrained(folder: str | Path) -> "PreTrainedModel":  # noqa: F821
    """Load an lmzoo or Hugging Face folder (config.json + safetensors); the class comes from
    ``architectures`` in config.json (else the family's pretraining class)."""
    from lmzoo.hf import load_pretrained

    return load_pretrained(folder)


def from_preset(name: str, *, architecture: str | None = None, **overrides: Any) -> "PreTrainedModel":  # noqa: F821
    """A randomly initialised model of a preset (``lmzoo.presets.PRESETS``); ``overrides`` change
    config fields (e.g. ``vocab_size``); ``architecture`` picks another head (e.g. "BertForMaskedLM")."""
    from lmzoo.models import ARCHITECTURES
    from lmzoo.presets import PRESETS, preset_config

    config = preset_config(name, **overrides)
    architecture = architecture or PRESETS[name][1]
    if architecture not in ARCHITECTURES:
        raise UserError(f"unknown architecture {architecture!r}")
    return ARCHITECTURES[architecture](config)


__all__ = ["ModelConfig", "UserError", "from_preset", "from_pretrained"]
