"""Pretraining from local text: tokenizer → tokenized corpus → objective → model → the one loop.

What a run needs comes from two declarations, never from a family name: the preset's family spec
(``lmzoo.models.family_spec``: the tokenizer kind and template trained for it, its default
objective, the class it trains with each objective) and the objective unit
(``lmzoo.objectives.OBJECTIVES``: its options, datasets, collator and metrics). The same BERT
body trains with "mlm" or "mlm+nsp" by swapping the unit, never by a flag inside the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lmzoo.data import TokenizedCorpus
from lmzoo.errors import UserError
from lmzoo.models import PreTrainedModel, family_spec, model_class_for
from lmzoo.objectives import Objective, get_objective
from lmzoo.presets import PRESETS, preset_config
from lmzoo.tokenizer import Tokenizer, train_tokenizer
from lmzoo.train.loop import TrainConfig, TrainResult, train

MIN_SEQ_LEN = 8


def resolve_objective(preset: str, objective: str | None = None) -> Objective:
    """The objective unit ``preset`` trains with: ``objective``, or its family's default; a
    UserError naming the fix when the preset or objective is unknown or the two do not fit."""
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r} (known: {', '.join(PRESETS)})")
    family = preset_config(preset).family
    unit = get_objective(objective or family_spec(family).default_objective)
    model_class_for(family, unit.name)  # raises "objective plm trains xlnet presets, not t5 (...)"
    return unit


def holds_run(out: Path) -> bool:
    """Whether ``out`` holds a run (metrics, checkpoints or a final model): checked before the
    tokenizer is written there."""
    return any((out / name).exists() for name in ("metrics.jsonl", "checkpoints", "config.json"))


def prepare_tokenizer(*, preset: str, unit: Objective, data: Any, out: Path, tokenizer_path: str | None,
                      vocab_size: int, lowercase: bool) -> Tokenizer:
    """Load the user's tokenizer, or train the family's kind and template on the data (with the
    sentinels the objective needs); saved into ``out``."""
    if tokenizer_path:
        tokenizer = Tokenizer.load(tokenizer_path)
    else:
        spec = family_spec(preset_config(preset).family)
        tokenizer = train_tokenizer(data, kind=spec.tokenizer_kind, template=spec.template, vocab_size=vocab_size,
                                    lowercase=lowercase, extra_ids=unit.extra_ids)
    tokenizer.save(out)
    return tokenizer


def pretrain(*, preset: str, data: Any, out: str | Path, train_config: TrainConfig, objective: str | None = None,
             options: Any = None, seq_len: int = 128, tokenizer_path: str | None = None, vocab_size: int = 8000,
             lowercase: bool = False, eval_fraction: float = 0.02, document_split: str = "blank_line",
             resume: bool = False, overwrite: bool = False, progress: bool = True,
             model_overrides: dict[str, Any] | None = None) -> TrainResult:
    """Pretrain a preset with an objective (default: its family's) on local text; the final model,
    its tokenizer, metrics and a loss curve end up in ``out`` (an HF folder other tools load).

    ``options``: the objective's options dataclass (e.g. ``MLMConfig(whole_word=True)``; default:
    its defaults). ``seq_len``: tokens per example. ``train_config.seed`` seeds everything: the
    held-out split, data drawn once (NSP pairs), the initial weights and the masks."""
    from lmzoo.train.distributed import barrier, setup_distributed, teardown_distributed

    unit = resolve_objective(preset, objective)
    options = unit.options() if options is None else options
    if not isinstance(options, unit.options):
        raise UserError(f"objective {unit.name} takes {unit.options.__name__} options, got {type(options).__name__}")
    if seq_len < MIN_SEQ_LEN:
        raise UserError(f"--seq-len must be >= {MIN_SEQ_LEN}, got {seq_len}")
    out = Path(out)
    if holds_run(out) and not (resume or overwrite):
        raise UserError(f"{out} already holds a run; pass --resume to continue it or --overwrite to replace it")

    # Under torchrun, rank 0 trains the tokenizer and tokenizes the corpus; the others then read both.
    info = setup_distributed()
    try:
        if info.is_main and not resume:
            out.mkdir(parents=True, exist_ok=True)
            prepare_tokenizer(preset=preset, unit=unit, data=data, out=out, tokenizer_path=tokenizer_path,
                              vocab_size=vocab_size, lowercase=lowercase)
        barrier(info)
        tokenizer = Tokenizer.load(out)
        if info.is_main:
            TokenizedCorpus.build(data, tokenizer, out / "cache", document_split=document_split)
        barrier(info)
        corpus = TokenizedCorpus.build(data, tokenizer, out / "cache", document_split=document_split)
        train_corpus, eval_corpus = corpus.split(eval_fraction, seed=train_config.seed)
        setup = unit.build(tokenizer, train_corpus, eval_corpus, options, seq_len=seq_len, seed=train_config.seed)
        if len(setup.train_data) < train_config.batch_size:
            raise UserError(f"corpus too small: {len(setup.train_data)} training examples of {seq_len} tokens "
                            f"for a batch of {train_config.batch_size}; add text or lower --seq-len / --batch-size")
        model = _initial_model(preset, unit, tokenizer, seq_len, train_config.seed, model_overrides)
        return train(model, setup.train_data, setup.collate, out_dir=out, config=train_config,
                     eval_data=setup.eval_data, metrics_fn=setup.metrics_fn, resume=resume, overwrite=overwrite,
                     progress=progress)
    finally:
        teardown_distributed(info)


def _initial_model(preset: str, unit: Objective, tokenizer: Tokenizer, seq_len: int, seed: int,
                   model_overrides: dict[str, Any] | None) -> PreTrainedModel:
    """The class the preset's family trains with ``unit``, sized to the tokenizer's vocabulary and
    using its special-token ids; the same seed gives the same initial weights."""
    base = preset_config(preset)
    overrides = {"vocab_size": tokenizer.vocab_size, **(model_overrides or {})}
    for field_name, token_id in (("pad_token_id", tokenizer.pad_id), ("eos_token_id", tokenizer.eos_id),
                                 ("bos_token_id", tokenizer.bos_id)):
        if token_id is not None and getattr(base, field_name) is not None:
            overrides[field_name] = token_id
    config = preset_config(preset, **overrides)
    if config.max_positions < seq_len:
        raise UserError(f"--seq-len {seq_len} exceeds the preset's max_positions {config.max_positions}")
    torch.manual_seed(seed)
    return model_class_for(config.family, unit.name)(config)
