"""Pretraining from local text: tokenizer → tokenized corpus → objective → model → the one loop.

What a run needs comes from two declarations, never from a family name: the model's family spec
(``lmzoo.models.family_spec``: the tokenizer kind and template trained for it, its default
objective, the class it trains with each objective) and the objective unit
(``lmzoo.objectives.OBJECTIVES``: its options, datasets, collator and metrics). The same BERT
body trains with "mlm" or "mlm+nsp" by swapping the unit, never by a flag inside the model.

The model comes from a preset, a config file or a model folder (continued pretraining), with typed
overrides (:mod:`lmzoo.run_config`); the data from one spec or a weighted mixture of sources.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from lmzoo.config import ModelConfig
from lmzoo.data import MixtureDataset, TokenizedCorpus, check_weights, resolve_paths
from lmzoo.errors import UserError
from lmzoo.io import temp_folder
from lmzoo.models import PreTrainedModel, family_spec, model_class_for
from lmzoo.objectives import Objective, get_objective
from lmzoo.objectives.base import ObjectiveSetup
from lmzoo.presets import PRESETS, preset_config
from lmzoo.run_config import ModelSource, base_config, write_run_config
from lmzoo.tokenizer import Tokenizer, train_tokenizer
from lmzoo.train.distributed import (
    barrier,
    main_decides,
    setup_distributed,
    teardown_distributed,
)
from lmzoo.train.lock import LOCK_NAME, run_folder
from lmzoo.train.loop import (
    TrainConfig,
    TrainResult,
    check_extras,
    check_not_source,
    check_out_dir,
    check_resume_signature,
    derive_seed,
    full_disk_is_a_user_error,
    refuse_taken,
    remove_stale_temps,
    require_checkpoint,
    train,
)
from lmzoo.train.throughput import batch_flops
from lmzoo.weights import convert_from_hf, read_state_dict

MIN_SEQ_LEN = 8


@dataclass(frozen=True, kw_only=True)
class Plan:
    """What a run resolved before anything is written: the model's source and base config (before the
    tokenizer sizes it), the objective and its options, and the data (one spec per mixture source)."""

    source: ModelSource
    config: ModelConfig
    unit: Objective
    options: Any
    sources: list[Any]
    weights: list[float] | None
    text_field: str
    seq_len: int
    eval_fraction: float
    document_split: str
    tokenizer_path: str | None
    vocab_size: int
    lowercase: bool
    files: str = ""  # the files the sources name (see data_files_signature)

    @property
    def signature(self) -> dict[str, Any]:
        """The options a resume must keep, beside the loop's own (batch size, seed ...): the objective's
        options too (their field names are their flags), since a resumed run must draw the same batches."""
        return {**self.source.signature, "objective": self.unit.name, "seq_len": self.seq_len,
                "architecture": model_class_for(self.config.family, self.unit.name).hf_architecture,
                "data": self.files, "data_weights": self.weights or [], "text_column": self.text_field,
                "eval_fraction": self.eval_fraction, "document_split": self.document_split,
                **dataclasses.asdict(self.options)}


def resolve_objective(preset: str, objective: str | None = None) -> Objective:
    """The objective unit ``preset`` trains with: ``objective``, or its family's default; a
    UserError naming the fix when the preset or objective is unknown or the two do not fit."""
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r} (known: {', '.join(PRESETS)})")
    return objective_for(preset_config(preset).family, objective)


def objective_for(family: str, objective: str | None = None) -> Objective:
    """The objective unit a family trains with: ``objective``, or the family's default."""
    unit = get_objective(objective or family_spec(family).default_objective)
    model_class_for(family, unit.name)  # raises "objective plm trains xlnet presets, not t5 (...)"
    return unit


def holds_run(out: Path) -> bool:
    """Whether ``out`` holds a run (metrics, checkpoints or a final model): checked before the
    tokenizer is written there."""
    return any((out / name).exists() for name in ("metrics.jsonl", "checkpoints", "config.json"))


def prepare_tokenizer(*, preset: str | None = None, unit: Objective, data: Any, out: Path,
                      tokenizer_path: str | None, vocab_size: int, lowercase: bool, family: str | None = None,
                      text_field: str = "text") -> Tokenizer:
    """Load the user's tokenizer, or train the family's kind and template on the data (with the
    sentinels the objective needs); saved into ``out``. ``family``: instead of a preset's."""
    if tokenizer_path:
        tokenizer = Tokenizer.load(tokenizer_path)
    else:
        spec = family_spec(family or preset_config(preset).family)
        tokenizer = train_tokenizer(data, kind=spec.tokenizer_kind, template=spec.template, vocab_size=vocab_size,
                                    lowercase=lowercase, extra_ids=unit.extra_ids, text_field=text_field)
    tokenizer.save(out)
    return tokenizer


def plan_pretraining(*, source: ModelSource, objective: str | None, options: Any, data: Any, seq_len: int,
                     eval_fraction: float, data_weights: Any, text_field: str, tokenizer_path: str | None,
                     vocab_size: int, lowercase: bool, document_split: str) -> Plan:
    """Every mistake that needs no tokenizer, found before anything is written: the model source and
    its config, the objective and its options, the sequence length against the model's positions,
    the held-out share, the input files and the mixture weights."""
    config = base_config(source)
    unit = objective_for(config.family, objective)
    options = unit.options() if options is None else options
    if not isinstance(options, unit.options):
        raise UserError(f"objective {unit.name} takes {unit.options.__name__} options, got {type(options).__name__}")
    if not isinstance(seq_len, int) or seq_len < MIN_SEQ_LEN:
        raise UserError(f"--seq-len must be >= {MIN_SEQ_LEN}, got {seq_len!r}")
    if config.max_positions < seq_len:
        kind = "preset" if source.preset else "config" if source.config else "model"
        raise UserError(f"--seq-len {seq_len} exceeds the {kind}'s max_positions {config.max_positions}")
    if not (isinstance(eval_fraction, (int, float)) and 0.0 < eval_fraction < 1.0):
        raise UserError(f"--eval-fraction must be a number in (0, 1), got {eval_fraction!r}")
    if not isinstance(text_field, str) or not text_field:
        raise UserError(f"--text-column must name a column, got {text_field!r}")
    weights, sources = None, [data]
    if data_weights is not None:
        sources = [data] if isinstance(data, (str, os.PathLike)) else list(data)
        weights = check_weights(data_weights, len(sources))
    files = data_files_signature([resolve_paths(spec) for spec in sources])  # missing files or folders: refused
    if source.model and not tokenizer_path:
        Tokenizer.load(source.model)  # the folder's own tokenizer: "no tokenizer in ..." before a write
    return Plan(source=source, config=config, unit=unit, options=options, sources=sources, weights=weights,
                text_field=text_field, seq_len=seq_len, eval_fraction=eval_fraction, document_split=document_split,
                tokenizer_path=tokenizer_path, vocab_size=vocab_size, lowercase=lowercase, files=files)


def data_files_signature(files: list[list[Path]]) -> str:
    """The files of each source as a resume compares them: names and sizes, so a run folder moved or
    copied with its corpus resumes, and another or a changed corpus is refused; for many files,
    their count and a digest."""
    text = " + ".join(" ".join(f"{f.name} ({f.stat().st_size} bytes)" for f in source) for source in files)
    if len(text) <= 400:
        return text
    digest = hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
    return f"{sum(len(source) for source in files)} files (digest of names and sizes {digest})"


def pretrain(*, preset: str | None = None, data: Any, out: str | Path, train_config: TrainConfig,
             objective: str | None = None, options: Any = None, seq_len: int = 128, tokenizer_path: str | None = None,
             vocab_size: int = 8000, lowercase: bool = False, eval_fraction: float = 0.02,
             document_split: str = "blank_line", resume: bool = False, overwrite: bool = False,
             progress: bool = True, model_overrides: dict[str, Any] | None = None, model: str | None = None,
             config: str | None = None, text_field: str = "text", data_weights: Any = None,
             run_args: dict[str, Any] | None = None,
             plan_steps: Callable[[TrainConfig, list[dict[str, Any]], PreTrainedModel], TrainConfig] | None = None
             ) -> TrainResult:
    """Pretrain a model with an objective (default: its family's) on local text; the final model,
    its tokenizer, metrics, a loss curve and ``run_config.json`` end up in ``out`` (an HF folder
    other tools load).

    The model is one of ``preset`` (a named size, random init), ``config`` (an HF config.json or
    lmzoo's config file, random init) or ``model`` (an lmzoo or HF folder: continued pretraining
    from its weights with its tokenizer; the heads the objective needs and the folder lacks are
    created, tied as the family ties them). ``model_overrides``: ModelConfig fields set on top.
    ``data``: files, folders or globs; with ``data_weights`` (one per entry of ``data``) each entry
    is a source of a :class:`lmzoo.data.MixtureDataset`. ``text_field``: the column of .jsonl /
    .csv / .parquet / datasets inputs. ``options``: the objective's options dataclass. ``seq_len``:
    tokens per example. ``train_config.seed`` seeds everything. ``run_args``: the CLI options,
    recorded for ``lmzoo pretrain --run-config``. ``plan_steps(train_config, batches, model)``: called
    once the data and the initial model exist, with :data:`SAMPLE_BATCHES` collated training batches,
    it returns the TrainConfig to train with (``lmzoo compare`` sets the steps of a compute budget).

    Nothing is written before every check passed: options first, then (holding ``out``'s lock) the
    folder, and the tokenizer is prepared in a temporary folder published only once the corpus
    gave enough examples. A fresh run that fails on the way leaves ``out`` as it found it."""
    source = ModelSource(preset=preset, config=None if config is None else str(config),
                         model=None if model is None else str(model), overrides=tuple((model_overrides or {}).items()))
    plan = plan_pretraining(source=source, objective=objective, options=options, data=data, seq_len=seq_len,
                            eval_fraction=eval_fraction, data_weights=data_weights, text_field=text_field,
                            tokenizer_path=tokenizer_path, vocab_size=vocab_size, lowercase=lowercase,
                            document_split=document_split)
    check_extras(train_config)
    out = Path(out)
    check_not_source(out, model)
    check_out_dir(out, resume=resume, overwrite=overwrite)
    fresh = not out.exists()
    info = setup_distributed()
    try:
        with run_folder(out, info):
            main_decides(info, lambda: _check_run_folder(out, resume=resume, overwrite=overwrite,
                                                         config=train_config, signature=plan.signature,
                                                         world_size=info.world_size))
            before = {p.name for p in out.iterdir()}
            try:
                with full_disk_is_a_user_error(out):
                    tokenizer, setup, net = _prepare(plan, out=out, info=info, config=train_config, resume=resume)
            except BaseException:
                if info.is_main and not resume:  # what this run created goes: the tokenizer stage, the cache
                    _remove_new_entries(out, keep=before)
                raise
            if plan_steps is not None:
                train_config = plan_steps(train_config, sample_batches(setup, train_config), net)
            if info.is_main:
                write_run_config(out, run_record(plan, net, tokenizer, train_config, run_args))
            return train(net, setup.train_data, setup.collate, out_dir=out, config=train_config,
                         eval_data=setup.eval_data, metrics_fn=setup.metrics_fn, resume=resume,
                         overwrite=overwrite, progress=progress, run_signature=plan.signature,
                         flops_fn=lambda batch: batch_flops(net.config, batch))
    except UserError:
        if fresh and info.is_main:
            with contextlib.suppress(OSError):
                out.rmdir()  # only if empty: a refused fresh run leaves no folder behind
        raise
    finally:
        teardown_distributed(info)


SAMPLE_BATCHES = 8


def sample_batches(setup: ObjectiveSetup, config: TrainConfig, n: int = SAMPLE_BATCHES) -> list[dict[str, Any]]:
    """The first ``n`` training batches of ``config.batch_size`` examples (fewer if the data is short),
    collated with a fixed generator: what a budget is measured on, before training draws its own."""
    size, total = config.batch_size, len(setup.train_data)
    generator = torch.Generator().manual_seed(config.seed)
    return [setup.collate([setup.train_data[i] for i in range(start, start + size)], generator)
            for start in range(0, min(n * size, total - size + 1), size)]


def run_record(plan: Plan, model: PreTrainedModel, tokenizer: Tokenizer, train_config: TrainConfig,
               run_args: dict[str, Any] | None) -> dict[str, Any]:
    """The resolved options of a run, as ``run_config.json`` holds them."""
    record = {
        "model": {**plan.source.signature, "class": type(model).hf_architecture, "config": model.config.to_dict()},
        "objective": {"name": plan.unit.name, "options": dataclasses.asdict(plan.options)},
        "train": dataclasses.asdict(train_config),
        "data": {"sources": json.loads(json.dumps(plan.sources, default=str)),
                 "weights": plan.weights, "text_column": plan.text_field, "document_split": plan.document_split,
                 "eval_fraction": plan.eval_fraction, "seq_len": plan.seq_len},
        "tokenizer": {"path": plan.tokenizer_path or plan.source.model, "kind": tokenizer.kind,
                      "vocab_size": tokenizer.vocab_size},
    }
    return {"args": run_args, **record} if run_args is not None else record


def _check_run_folder(out: Path, *, resume: bool, overwrite: bool, config: TrainConfig,
                      signature: dict[str, Any], world_size: int) -> None:
    """Holding the lock, on rank 0: a run in ``out`` needs --resume or --overwrite; a resume needs a
    checkpoint whose options agree. Stale temporary files of a killed run are removed."""
    if holds_run(out) and not (resume or overwrite):
        raise UserError(f"{out} already holds a run; pass --resume to continue it or --overwrite to replace it")
    refuse_taken(out, resume=resume, overwrite=overwrite)  # a model folder (weights, no config) too
    if resume:
        require_checkpoint(out)
        check_resume_signature(out, config, signature, world_size)
    remove_stale_temps(out, out / "cache")


def _prepare(plan: Plan, *, out: Path, info: Any, config: TrainConfig, resume: bool
             ) -> tuple[Tokenizer, ObjectiveSetup, PreTrainedModel]:
    """Tokenizer, datasets and the initial model. Under torchrun, rank 0 prepares the tokenizer and
    tokenizes the corpus; the others then read both. A new tokenizer lies in a temporary folder until
    the corpus proved large enough, then its files move into ``out``."""
    stage = None
    if not resume:
        stage = main_decides(info, lambda: temp_folder(out, "tokenizer"))
        if info.is_main:
            prepare_tokenizer(unit=plan.unit, data=plan.sources if plan.weights else plan.sources[0], out=stage,
                              tokenizer_path=plan.tokenizer_path or plan.source.model, vocab_size=plan.vocab_size,
                              lowercase=plan.lowercase, family=plan.config.family, text_field=plan.text_field)
    barrier(info)
    tokenizer = Tokenizer.load(stage or out)
    setup = _datasets(plan, tokenizer, out / "cache", info=info, seed=config.seed)
    needed = config.batch_size * info.world_size
    if len(setup.train_data) < needed:
        raise UserError(f"corpus too small: {len(setup.train_data)} training examples of {plan.seq_len} tokens "
                        f"for a batch of {needed}; add text or lower --seq-len / --batch-size")
    model = _build_model(plan, tokenizer, config.seed, say=info.is_main and not resume)
    barrier(info)  # every rank has read the stage before rank 0 empties it
    if stage is not None and info.is_main:
        if model.config.positions == "learned":  # transformers truncates at it: the model's real limit, not 512
            tokenizer.model_max_length = model.config.max_positions
            tokenizer.save(stage)
        for f in sorted(stage.iterdir()):
            os.replace(f, out / f.name)
        stage.rmdir()
    return tokenizer, setup, model


def _datasets(plan: Plan, tokenizer: Tokenizer, cache: Path, *, info: Any, seed: int) -> ObjectiveSetup:
    """The objective's datasets of each source (rank 0 tokenizes, then every rank reads the cache);
    with weights, train and held-out data are mixtures of the sources' (see MixtureDataset)."""
    caches = [cache] if plan.weights is None else [cache / f"source-{i}" for i in range(len(plan.sources))]
    setups = []
    options = {"document_split": plan.document_split, "text_field": plan.text_field}
    for spec, folder in zip(plan.sources, caches):
        if info.is_main:
            TokenizedCorpus.build(spec, tokenizer, folder, **options)
        barrier(info)
        corpus = TokenizedCorpus.build(spec, tokenizer, folder, **options)  # the cache rank 0 wrote
        train_corpus, eval_corpus = corpus.split(plan.eval_fraction, seed=seed)
        setups.append(plan.unit.build(tokenizer, train_corpus, eval_corpus, plan.options, seq_len=plan.seq_len,
                                      seed=seed))
    if plan.weights is None:
        return setups[0]
    return ObjectiveSetup(
        train_data=MixtureDataset([s.train_data for s in setups], plan.weights, seed),
        eval_data=MixtureDataset([s.eval_data for s in setups], plan.weights, derive_seed(seed, "eval mixture")),
        collate=setups[0].collate, metrics_fn=setups[0].metrics_fn)


def _build_model(plan: Plan, tokenizer: Tokenizer, seed: int, *, say: bool) -> PreTrainedModel:
    """The class the family trains with the objective: from the model folder's weights, or new from
    the config, sized to the tokenizer's vocabulary with its special-token ids. The same seed gives
    the same initial weights (of new heads too)."""
    cls = model_class_for(plan.config.family, plan.unit.name)
    torch.manual_seed(seed)
    if not plan.source.model:
        config = _sized_config(plan.config, tokenizer, dict(plan.source.overrides))
        _check_fits(config, tokenizer, plan.unit, None)
        return cls(config)
    _check_fits(plan.config, tokenizer, plan.unit, plan.source.model)
    model = cls(plan.config)
    state = convert_from_hf(model, read_state_dict(plan.source.model), source=plan.source.model)
    model.load_state_dict(state, strict=False)
    created = sorted({k.split(".")[0] for k in model.state_dict() if k not in state
                      and k not in model.tied_parameters() and k.split(".")[0] in cls.head_modules})
    if say and created:
        tied = [f"{k} tied to {v}" for k, v in model.tied_parameters().items() if k.split(".")[0] in created]
        print(f"note: {plan.source.model} has no {', '.join(created)}: created for {cls.hf_architecture}"
              + (f" ({'; '.join(tied)}, as {plan.config.family} ties them)" if tied else ""), file=sys.stderr)
    return model


def _check_fits(config: ModelConfig, tokenizer: Tokenizer, unit: Objective, model: str | None) -> None:
    """A UserError when the model cannot embed what the run feeds it: the tokenizer's ids, the
    objective's token types (``model``: the folder the config comes from, else --set made it)."""
    if tokenizer.vocab_size > config.vocab_size:
        fix = f"use {model}'s own tokenizer" if model else "leave --set vocab_size out: the tokenizer sizes it"
        raise UserError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model embeds only "
                        f"{config.vocab_size}; {fix}")
    if unit.segment_types > max(1, config.type_vocab_size):  # 0: a family without token-type embeddings
        raise UserError(f"objective {unit.name} gives its examples {unit.segment_types} token types but the model "
                        f"embeds {config.type_vocab_size}; choose another objective"
                        + ("" if model else f" or --set type_vocab_size={unit.segment_types}"))


def _sized_config(base: ModelConfig, tokenizer: Tokenizer, overrides: dict[str, Any]) -> ModelConfig:
    """``base`` with the tokenizer's vocabulary size and special-token ids (where the config uses
    them), then ``overrides``."""
    sized = {"vocab_size": tokenizer.vocab_size}
    for field_name, token_id in (("pad_token_id", tokenizer.pad_id), ("eos_token_id", tokenizer.eos_id),
                                 ("bos_token_id", tokenizer.bos_id)):
        if token_id is not None and getattr(base, field_name) is not None:
            sized[field_name] = token_id
    return base.replace(**{**sized, **overrides})


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
    config = _sized_config(preset_config(preset), tokenizer, model_overrides or {})
    torch.manual_seed(seed)
    return model_class_for(config.family, unit.name)(config)
