"""The model families. Each family file declares its classes and, at its end, a ``SPEC``
(``lmzoo.models.base.FamilySpec``); this registry is the one place that lists them.

Adding a family: its file (classes, HF key maps and config converters, ``SPEC``), one line below,
its name in ``lmzoo.config.FAMILIES`` and its presets (see docs/architecture.md).
"""

from __future__ import annotations

from lmzoo.errors import UserError
from lmzoo.models import bart, bert, gpt2, roberta, t5, xlnet
from lmzoo.models.base import FamilySpec, PreTrainedModel

FAMILIES: dict[str, FamilySpec] = {spec.name: spec for spec in (
    bert.SPEC, roberta.SPEC, xlnet.SPEC, t5.SPEC, bart.SPEC, gpt2.SPEC)}

# HF config.json "model_type" → family
MODEL_TYPES: dict[str, FamilySpec] = {t: spec for spec in FAMILIES.values() for t in spec.model_types}
# HF "architectures" class name → lmzoo class
ARCHITECTURES: dict[str, type[PreTrainedModel]] = {
    cls.hf_architecture: cls for spec in FAMILIES.values() for cls in spec.architectures
}
# pretraining objective → the families that train with it
OBJECTIVE_FAMILIES: dict[str, list[str]] = {}
for _spec in FAMILIES.values():
    for _objective in _spec.objectives:
        OBJECTIVE_FAMILIES.setdefault(_objective, []).append(_spec.name)


def family_spec(family: str) -> FamilySpec:
    """The spec of ``ModelConfig.family``."""
    if family not in FAMILIES:
        raise UserError(f"unknown family {family!r} (known: {', '.join(FAMILIES)})")
    return FAMILIES[family]


def model_class_for(family: str, objective: str) -> type[PreTrainedModel]:
    """The class a family trains with a pretraining objective; a UserError naming the fix otherwise."""
    spec = family_spec(family)
    if objective not in spec.objectives:
        trained = OBJECTIVE_FAMILIES.get(objective)
        if not trained:
            raise UserError(f"unknown objective {objective!r} (known: {', '.join(OBJECTIVE_FAMILIES)})")
        raise UserError(f"objective {objective} trains {' / '.join(trained)} presets, not {family} "
                        f"({family} trains with {', '.join(spec.objectives)}: use --objective {spec.default_objective})")
    return spec.objectives[objective]


__all__ = ["ARCHITECTURES", "FAMILIES", "MODEL_TYPES", "OBJECTIVE_FAMILIES", "FamilySpec", "PreTrainedModel",
           "family_spec", "model_class_for"]
