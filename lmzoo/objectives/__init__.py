"""The pretraining objectives. Each file declares its ``OBJECTIVE`` (``lmzoo.objectives.base.Objective``:
options dataclass, dataset / collator builder, metrics); this registry is the one place that lists them.

Adding an objective: its file (data → (inputs, labels), an options dataclass, a ``build``, ``OBJECTIVE``),
one line below, and the class each family trains with it in that family's ``FamilySpec.objectives``.
"""

from __future__ import annotations

from lmzoo.errors import UserError
from lmzoo.objectives import clm, denoising, mlm, nsp, plm, span_corruption
from lmzoo.objectives.base import Objective, ObjectiveSetup

OBJECTIVES: dict[str, Objective] = {o.name: o for o in (
    mlm.OBJECTIVE, nsp.OBJECTIVE, clm.OBJECTIVE, plm.OBJECTIVE, span_corruption.OBJECTIVE, denoising.OBJECTIVE)}


def get_objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise UserError(f"unknown objective {name!r} (known: {', '.join(OBJECTIVES)})")
    return OBJECTIVES[name]


def objectives_by_options() -> dict[type, list[Objective]]:
    """Each options dataclass → the objectives taking it, in registry order (mlm and mlm+nsp share
    MLMConfig): one CLI flag group each."""
    groups: dict[type, list[Objective]] = {}
    for unit in OBJECTIVES.values():
        groups.setdefault(unit.options, []).append(unit)
    return groups


__all__ = ["OBJECTIVES", "Objective", "ObjectiveSetup", "get_objective", "objectives_by_options"]
