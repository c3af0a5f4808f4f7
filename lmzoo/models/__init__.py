"""Model families. Each family module exposes MODEL_TYPES, ARCHITECTURES, DEFAULT_ARCHITECTURE,
config_from_hf and config_to_hf; this registry maps HF names to them."""

from __future__ import annotations

from types import ModuleType

from lmzoo.models import bert, roberta, xlnet, t5, bart, gpt2
from lmzoo.models.base import PreTrainedModel

FAMILY_MODULES: tuple[ModuleType, ...] = (bert, roberta, xlnet, t5, bart, gpt2)

# HF config.json "model_type" → family module
MODEL_TYPES: dict[str, ModuleType] = {t: m for m in FAMILY_MODULES for t in m.MODEL_TYPES}
# HF "architectures" class name → lmzoo class
ARCHITECTURES: dict[str, type[PreTrainedModel]] = {
    cls.hf_architecture: cls for m in FAMILY_MODULES for cls in m.ARCHITECTURES
}
FAMILY_OF: dict[str, ModuleType] = {m.MODEL_TYPES[0]: m for m in FAMILY_MODULES}

__all__ = ["ARCHITECTURES", "FAMILY_MODULES", "FAMILY_OF", "MODEL_TYPES", "PreTrainedModel"]
