"""Pretraining from local text: tokenizer → tokenized corpus → objective → model → the one loop.

What a run needs comes from two declarations, never from a family name: the preset's family spec
(``lmzoo.models.family_spec``: the tokenizer kind and template trained for it, its default
objective, the class it trains with each objective) and the objective unit
(``lmzoo.objectives.OBJECTIVES``: its options, datasets, collator and metrics). The same BERT
body trains with "mlm" or "mlm+nsp" by swapping the unit, never by a flag inside the model.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from lmzoo.data import TokenizedCorpus, resolve_paths
from lmzoo.io import temp_folder
from lmzoo.errors import UserError
from lmzoo.models import PreTrainedModel, family_spec, model_class_for
from lmzoo.objectives import Objective, get_objective
from lmzoo.presets import PRESETS, preset_config
from lmzoo.tokenizer import Tokenizer, train_tokenizer
from lmzoo.train.distributed import barrier, main_decides, setup_distributed, teardown_distributed
from lmzoo.train.lock import LOCK_NAME, run_folder
from lmzoo.train.loop import (
    TrainConfig,
    TrainResult,
    check_out_dir,
    check_resume_signature,
    full_disk_is_a_user_error,
    remove_stale_temps,
    require_checkpoint,
    train,
)

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


def check_pretrain_options(*, preset: str, objective: str | None, options: Any, seq_len: int, eval_fraction: float,
                           data: Any, model_overrides: dict[str, Any] | None) -> tuple[Objective, Any]:
    """Every mistake that needs no tokenizer, found before anything is written: the preset /
    objective pair, the options' type, the sequence length against the model's positions, the
    held-out share and the input files. Returns (the objective unit, its options)."""
    unit = resolve_objective(preset, objective)
    options = unit.options() if options is None else options
    if not isinstance(options, unit.options):
        raise UserError(f"objective {unit.name} takes {unit.options.__name__} options, got {type(options).__name__}")
    if not isinstance(seq_len, int) or seq_len < MIN_SEQ_LEN:
        raise UserError(f"--seq-len must be >= {MIN_SEQ_LEN}, got {seq_len!r}")
    positions = preset_config(preset, **(model_overrides or {})).max_positions
    if positions < seq_len:
        raise UserError(f"--seq-len {seq_len} exceeds the preset's max_positions {positions}")
    if not (isinstance(eval_fraction, (int, float)) and 0.0 < eval_fraction < 1.0):
        raise UserError(f"--eval-fraction must be a number in (0, 1), got {eval_fraction!r}")
    resolve_paths(data)  # missing files or folders without text
    return unit, options


def pretrain(*, preset: str, data: Any, out: str | Path, train_config: TrainConfig, objective: str | None = None,
             options: Any = None, seq_len: int = 128, tokenizer_path: str | None = None, vocab_size: int = 8000,
             lowercase: bool = False, eval_fraction: float = 0.02, document_split: str = "blank_line",
             resume: bool = False, overwrite: bool = False, progress: bool = True,
             model_overrides: dict[str, Any] | None = None) -> TrainResult:
    """Pretrain a preset with an objective (default: its family's) on local text; the final model,
    its tokenizer, metrics and a loss curve end up in ``out`` (an HF folder other tools load).

    ``options``: the objective's options dataclass (e.g. ``MLMConfig(whole_word=True)``; default:
    its defaults). ``seq_len``: tokens per example. ``train_config.seed`` seeds everything: the
    held-out split, data drawn once (NSP pairs), the initial weights and the masks.

    Nothing is written before every check passed: options first, then (holding ``out``'s lock) the
    folder, and the tokenizer is trained into a temporary folder published only once the corpus
    gave enough examples. A fresh run that fails on the way leaves ``out`` as it found it."""
    unit, options = check_pretrain_options(preset=preset, objective=objective, options=options, seq_len=seq_len,
                                           eval_fraction=eval_fraction, data=data, model_overrides=model_overrides)
    out = Path(out)
    check_out_dir(out, resume=resume, overwrite=overwrite)
    signature = {"preset": preset, "objective": unit.name, "seq_len": seq_len}
    fresh = not out.exists()
    info = setup_distributed()
    try:
        with run_folder(out, info):
            main_decides(info, lambda: _check_run_folder(out, resume=resume, overwrite=overwrite,
                                                         config=train_config, signature=signature))
            before = {p.name for p in out.iterdir()}
            try:
                with full_disk_is_a_user_error(out):
                    tokenizer, setup, model = _prepare(
                        preset=preset, unit=unit, options=options, data=data, out=out, info=info,
                        config=train_config, seq_len=seq_len, tokenizer_path=tokenizer_path, vocab_size=vocab_size,
                        lowercase=lowercase, eval_fraction=eval_fraction, document_split=document_split,
                        resume=resume, model_overrides=model_overrides)
            except BaseException:
                if info.is_main and not resume:  # what this run created goes: the tokenizer stage, the cache
                    _remove_new_entries(out, keep=before)
                raise
            return train(model, setup.train_data, setup.collate, out_dir=out, config=train_config,
                         eval_data=setup.eval_data, metrics_fn=setup.metrics_fn, resume=resume,
                         overwrite=overwrite, progress=progress, run_signature=signature)
    except UserError:
        if fresh and info.is_main:
            with contextlib.suppress(OSError):
                out.rmdir()  # only if empty: a refused fresh run leaves no folder behind
        raise
    finally:
        teardown_distributed(info)


def _check_run_folder(out: Path, *, resume: bool, overwrite: bool, config: TrainConfig,
                      signature: dict[str, Any]) -> None:
    """Holding the lock, on rank 0: a run in ``out`` needs --resume or --overwrite; a resume needs a
    checkpoint whose options agree. Stale temporary files of a killed run are removed."""
    if holds_run(out) and not (resume or overwrite):
        raise UserError(f"{out} already holds a run; pass --resume to continue it or --overwrite to replace it")
    if resume:
        require_checkpoint(out)
        check_resume_signature(out, config, signature)
    remove_stale_temps(out, out / "cache")


def _prepare(*, preset: str, unit: Objective, options: Any, data: Any, out: Path, info: Any, config: TrainConfig,
             seq_len: int, tokenizer_path: str | None, vocab_size: int, lowercase: bool, eval_fraction: float,
             document_split: str, resume: bool, model_overrides: dict[str, Any] | None
             ) -> tuple[Tokenizer, Any, PreTrainedModel]:
    """Tokenizer, datasets and the initial model. Under torchrun, rank 0 trains the tokenizer and
    tokenizes the corpus; the others then read both. A new tokenizer lies in a temporary folder until
    the corpus proved large enough, then its files move into ``out``."""
    stage = None
    if not resume:
        stage = main_decides(info, lambda: temp_folder(out, "tokenizer"))
        if info.is_main:
            prepare_tokenizer(preset=preset, unit=unit, data=data, out=stage, tokenizer_path=tokenizer_path,
                              vocab_size=vocab_size, lowercase=lowercase)
    barrier(info)
    tokenizer = Tokenizer.load(stage or out)
    if info.is_main:
        TokenizedCorpus.build(data, tokenizer, out / "cache", document_split=document_split)
    barrier(info)
    corpus = TokenizedCorpus.build(data, tokenizer, out / "cache", document_split=document_split)
    train_corpus, eval_corpus = corpus.split(eval_fraction, seed=config.seed)
    setup = unit.build(tokenizer, train_corpus, eval_corpus, options, seq_len=seq_len, seed=config.seed)
    needed = config.batch_size * info.world_size
    if len(setup.train_data) < needed:
        raise UserError(f"corpus too small: {len(setup.train_data)} training examples of {seq_len} tokens "
                        f"for a batch of {needed}; add text or lower --seq-len / --batch-size")
    model = _initial_model(preset, unit, tokenizer, seq_len, config.seed, model_overrides)
    barrier(info)  # every rank has read the stage before rank 0 empties it
    if stage is not None and info.is_main:
        for f in sorted(stage.iterdir()):
            os.replace(f, out / f.name)
        stage.rmdir()
    return tokenizer, setup, model


def _remove_new_entries(out: Path, *, keep: set[str]) -> None:
    """Remove what appeared in ``out`` since ``keep`` was listed (the lock file is not ours to remove)."""
    for p in out.iterdir():
        if p.name in keep or p.name == LOCK_NAME:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


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
    torch.manual_seed(seed)
    return model_class_for(config.family, unit.name)(config)
