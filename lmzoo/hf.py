"""Hugging Face folders (config.json + *.safetensors) → lmzoo models, the class picked from config.json.

``model_type`` names the family (``lmzoo.models.FAMILIES``), ``architectures`` the class; the key-map
conversion itself is ``lmzoo.weights``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from lmzoo.config import ModelConfig
from lmzoo.errors import UserError
from lmzoo.models import ARCHITECTURES, MODEL_TYPES, PreTrainedModel
from lmzoo.weights import config_of, convert_from_hf, convert_to_hf, load_into, read_hf_config, read_state_dict, rename

__all__ = ["convert_from_hf", "convert_to_hf", "load_pretrained", "read_config", "read_state_dict", "rename",
           "save_pretrained"]


def read_config(folder: str | Path) -> tuple[ModelConfig, str | None]:
    """config.json of an lmzoo or HF folder → (ModelConfig, first entry of ``architectures``)."""
    hf = read_hf_config(folder)
    model_type = hf.get("model_type")
    if model_type not in MODEL_TYPES:
        raise UserError(
            f"{folder}/config.json: unsupported model_type {model_type!r} (supported: {', '.join(sorted(MODEL_TYPES))})"
        )
    spec = MODEL_TYPES[model_type]
    architectures = hf.get("architectures") or [None]
    return config_of(spec.default_architecture, hf, folder), architectures[0]


def load_pretrained(folder: str | Path, model_class: type[PreTrainedModel] | None = None) -> PreTrainedModel:
    """Load an lmzoo or HF folder; the class comes from ``architectures`` unless ``model_class`` is given."""
    if model_class is not None:
        return load_into(model_class, folder)
    config, architecture = read_config(folder)
    model_class = ARCHITECTURES.get(architecture or "") or MODEL_TYPES[read_hf_config(folder)["model_type"]
                                                                       ].default_architecture
    if architecture and architecture not in ARCHITECTURES:
        print(f"note: architecture {architecture} is not in lmzoo; loading it as {model_class.hf_architecture}",
              file=sys.stderr)
    return load_into(model_class, folder, config)


def save_pretrained(model: PreTrainedModel, folder: str | Path) -> None:
    """Write ``config.json`` and ``model.safetensors`` in HF format; each file atomically."""
    model.save_pretrained(folder)


def random_init_copy(folder: str | Path, destination: str | Path, seed: int = 0) -> Path:
    """The architecture of the model in ``folder`` at random initialization (``seed``), with the same
    tokenizer, saved in ``destination``: the baseline that shows what pretraining bought."""
    import torch

    from lmzoo.tokenizer import Tokenizer

    model = load_pretrained(folder)
    torch.manual_seed(seed)
    type(model)(model.config).save_pretrained(destination)
    Tokenizer.load(folder).save(destination)
    return Path(destination)
