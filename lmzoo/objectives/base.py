"""``Objective``: one pretraining objective as ``lmzoo.pretrain`` and ``lmzoo pretrain`` see it,
declared once at the end of its file (the registry is ``lmzoo.objectives.OBJECTIVES``).

An objective wraps data, never a model: ``build`` turns the tokenized train / held-out corpora
into map-style datasets, a collator and a metrics function. The class it trains is the family's
business (``lmzoo.models.model_class_for(family, objective)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol

if TYPE_CHECKING:
    from lmzoo.data import TokenizedCorpus
    from lmzoo.tokenizer import Tokenizer


@dataclass(frozen=True)
class ObjectiveSetup:
    """What the training loop needs from an objective."""

    train_data: Any  # map-style datasets of examples
    eval_data: Any
    collate: Callable  # collate(examples, generator) -> batch
    metrics_fn: Callable | None  # metrics_fn(batch, output) -> sums (see lmzoo.train.loop)


class Builder(Protocol):
    def __call__(self, tokenizer: "Tokenizer", train_corpus: "TokenizedCorpus", eval_corpus: "TokenizedCorpus",
                 options: Any, *, seq_len: int, seed: int) -> ObjectiveSetup: ...


@dataclass(frozen=True, kw_only=True)
class Objective:
    """``options`` is a frozen dataclass of the objective's hyperparameters whose fields are also
    its CLI flags (``lmzoo.options``), validated in its ``__post_init__``; two objectives may
    share one (mlm and mlm+nsp). ``build(tokenizer, train, eval, options, seq_len=, seed=)``
    makes the datasets (rows of at most ``seq_len`` tokens; ``seed`` fixes any data drawn once,
    such as NSP pairs). ``extra_ids``: sentinel tokens a tokenizer trained for it needs;
    ``segment_types``: the token types its examples use (sentence pairs: A and B)."""

    name: str  # --objective NAME
    title: str  # its CLI flag group, e.g. "masked LM"
    options: type
    build: Builder
    extra_ids: int = 0
    segment_types: int = 1
