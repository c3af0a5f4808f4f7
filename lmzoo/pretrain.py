"""Pretraining from local text: tokenizer → tokenized corpus → objective → model → the one loop.

Objectives register a builder in ``OBJECTIVES``: it turns the tokenized train/eval corpora
into map-style datasets, a collator and a metrics function, and names the model class it
trains. The same BERT body trains with "mlm", "mlm+nsp" or whole-word MLM by swapping the
builder, never by a flag inside the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from lmzoo.data import TokenizedCorpus
from lmzoo.errors import UserError
from lmzoo.presets import PRESETS, preset_config
from lmzoo.tokenizer import Tokenizer, train_tokenizer
from lmzoo.train.loop import TrainConfig, TrainResult, train

# The tokenizer each family is trained with when the user brings none.
FAMILY_TOKENIZER = {"bert": "wordpiece", "roberta": "bpe", "gpt2": "bpe", "bart": "bpe", "t5": "unigram",
                    "xlnet": "unigram"}


@dataclass(frozen=True, kw_only=True)
class ObjectiveOptions:
    """Objective hyperparameters the CLI exposes (each objective reads the ones it uses)."""

    seq_len: int = 128
    mask_prob: float = 0.15
    mask_token_prob: float = 0.8
    random_token_prob: float = 0.1
    whole_word: bool = False
    plm_k: float = 6.0  # permutation LM: predict about 1/K of the tokens
    max_span: int = 5  # permutation LM: spans of 1..max_span predicted tokens
    cross_document_attention: bool = False  # causal LM: plain concatenation instead of per-document masks
    noise_density: float = 0.15  # T5 span corruption: share of tokens corrupted
    mean_span_length: float = 3.0  # T5 span corruption
    denoising: dict[str, Any] = field(default_factory=dict)  # BART: DenoisingConfig fields (default: the paper's)
    seed: int = 0
    family: str = "bert"  # the preset's family (set by pretrain): picks the model class trained
    extra: dict[str, Any] = field(default_factory=dict)  # objective-specific options

    def __post_init__(self) -> None:
        from lmzoo.objectives.mlm import MLMConfig

        if self.seq_len < 8:
            raise UserError(f"--seq-len must be >= 8, got {self.seq_len}")
        MLMConfig(mask_prob=self.mask_prob, mask_token_prob=self.mask_token_prob,
                  random_token_prob=self.random_token_prob, whole_word=self.whole_word)  # validates early
        if not self.plm_k > 1:
            raise UserError(f"--plm-k must be > 1 (about 1/K of the tokens are predicted), got {self.plm_k}")
        if self.max_span < 1:
            raise UserError(f"--max-span must be >= 1, got {self.max_span}")
        from lmzoo.objectives.denoising import DenoisingConfig
        from lmzoo.objectives.span_corruption import SpanCorruptionConfig

        SpanCorruptionConfig(noise_density=self.noise_density, mean_span_length=self.mean_span_length)
        DenoisingConfig(**self.denoising)


@dataclass
class ObjectiveSetup:
    train_data: Any
    eval_data: Any
    collate: Callable
    metrics_fn: Callable | None
    architecture: str  # the lmzoo class trained, e.g. "BertForPreTraining"


Builder = Callable[[Tokenizer, TokenizedCorpus, TokenizedCorpus, ObjectiveOptions], ObjectiveSetup]
OBJECTIVES: dict[str, Builder] = {}
# objective → tokenizer special tokens it needs beyond the family's defaults
OBJECTIVE_TOKENIZER_EXTRAS: dict[str, dict[str, Any]] = {}


def objective(name: str, **tokenizer_extras: Any) -> Callable[[Builder], Builder]:
    def register(builder: Builder) -> Builder:
        OBJECTIVES[name] = builder
        OBJECTIVE_TOKENIZER_EXTRAS[name] = tokenizer_extras
        return builder

    return register


def _mlm_collator(tokenizer: Tokenizer, options: ObjectiveOptions):
    from lmzoo.objectives.mlm import MLMCollator, MLMConfig

    config = MLMConfig(mask_prob=options.mask_prob, mask_token_prob=options.mask_token_prob,
                       random_token_prob=options.random_token_prob, whole_word=options.whole_word)
    return MLMCollator(pad_id=tokenizer.pad_id, mask_id=tokenizer.mask_id, vocab_size=tokenizer.vocab_size,
                       special_ids=tokenizer.special_ids, config=config)


@objective("mlm")
def build_mlm(tokenizer: Tokenizer, train_corpus: TokenizedCorpus, eval_corpus: TokenizedCorpus,
              options: ObjectiveOptions) -> ObjectiveSetup:
    """RoBERTa recipe: full sentences packed across documents to seq_len, masks drawn afresh each time."""
    from lmzoo.objectives.mlm import mlm_metrics
    from lmzoo.objectives.packing import PackedDataset

    def packed(corpus: TokenizedCorpus) -> PackedDataset:
        return PackedDataset(corpus, max_length=options.seq_len, bos_id=tokenizer.cls_id, eos_id=tokenizer.sep_id)

    architecture = {"bert": "BertForMaskedLM", "roberta": "RobertaForMaskedLM"}.get(options.family)
    if architecture is None:
        raise UserError(f"objective mlm trains bert or roberta presets, not {options.family}")
    return ObjectiveSetup(packed(train_corpus), packed(eval_corpus), _mlm_collator(tokenizer, options), mlm_metrics,
                          architecture)


@objective("mlm+nsp")
def build_mlm_nsp(tokenizer: Tokenizer, train_corpus: TokenizedCorpus, eval_corpus: TokenizedCorpus,
                  options: ObjectiveOptions) -> ObjectiveSetup:
    """BERT recipe: sentence pairs (50% true next, 50% from another document) with MLM on both."""
    from lmzoo.objectives.nsp import NSPDataset, mlm_nsp_metrics

    if options.family != "bert":
        raise UserError("objective mlm+nsp trains bert presets (RoBERTa drops NSP: use --objective mlm)")
    if tokenizer.cls_id is None or tokenizer.sep_id is None:
        raise UserError("next-sentence prediction needs a tokenizer with [CLS] and [SEP] tokens")

    for name, corpus in (("training", train_corpus), ("held-out", eval_corpus)):
        if len(corpus) < 2:
            raise UserError(f"corpus too small for next-sentence prediction: the {name} split has {len(corpus)} "
                            "document(s), NSP needs at least 2 (add text or change --eval-fraction)")

    def pairs(corpus: TokenizedCorpus, seed: int) -> NSPDataset:
        return NSPDataset(corpus, max_length=options.seq_len, cls_id=tokenizer.cls_id, sep_id=tokenizer.sep_id,
                          seed=seed)

    return ObjectiveSetup(pairs(train_corpus, options.seed), pairs(eval_corpus, options.seed + 1),
                          _mlm_collator(tokenizer, options), mlm_nsp_metrics, "BertForPreTraining")


@objective("clm")
def build_clm(tokenizer: Tokenizer, train_corpus: TokenizedCorpus, eval_corpus: TokenizedCorpus,
              options: ObjectiveOptions) -> ObjectiveSetup:
    """GPT recipe: documents packed into full rows, an end-of-text token after each (a learned
    target); by default no token attends across a document boundary and positions restart."""
    from lmzoo.objectives.clm import ClmCollator, clm_dataset, clm_metrics

    if options.family != "gpt2":
        raise UserError(f"objective clm trains gpt presets, not {options.family}")
    if tokenizer.eos_id is None:
        raise UserError("causal LM needs a tokenizer with an end-of-text token")

    def rows(corpus: TokenizedCorpus):
        return clm_dataset(corpus, options.seq_len, tokenizer.eos_id,
                           cross_document_attention=options.cross_document_attention)

    return ObjectiveSetup(rows(train_corpus), rows(eval_corpus), ClmCollator(tokenizer.eos_id, tokenizer.pad_id),
                          clm_metrics(tokenizer.eos_id), "GPT2LMHeadModel")


@objective("plm")
def build_plm(tokenizer: Tokenizer, train_corpus: TokenizedCorpus, eval_corpus: TokenizedCorpus,
              options: ObjectiveOptions) -> ObjectiveSetup:
    """XLNet recipe: packed rows, a random factorization order per row, ~1/K of the tokens
    predicted as spans; a fixed number of prediction rows keeps shapes static."""
    import math

    from lmzoo.objectives.mlm import mlm_metrics
    from lmzoo.objectives.packing import PackedDataset
    from lmzoo.objectives.plm import PLMCollator

    if options.family != "xlnet":
        raise UserError(f"objective plm trains xlnet presets, not {options.family}")
    if tokenizer.pad_id is None:
        raise UserError("permutation LM needs a tokenizer with a pad token")

    def packed(corpus: TokenizedCorpus) -> PackedDataset:
        return PackedDataset(corpus, max_length=options.seq_len, bos_id=None, eos_id=tokenizer.eos_id,
                             sep_between_docs=tokenizer.eos_id is not None)

    collate = PLMCollator(pad_id=tokenizer.pad_id, K=options.plm_k, max_span=options.max_span,
                          num_predict=math.ceil(options.seq_len / options.plm_k) + options.max_span,
                          special_ids=tuple(tokenizer.special_ids))
    def plm_metrics(batch, output) -> dict[str, float]:  # accuracy on the predicted tokens
        return {k.replace("mlm", "plm"): v for k, v in mlm_metrics(batch, output).items()}

    return ObjectiveSetup(packed(train_corpus), packed(eval_corpus), collate, plm_metrics, "XLNetLMHeadModel")


def token_accuracy_metrics(batch, output) -> dict[str, float]:
    """Accuracy of the predicted target tokens (seq2seq / denoising)."""
    from lmzoo.objectives.mlm import mlm_metrics

    return {k.replace("mlm", "token"): v for k, v in mlm_metrics(batch, output).items()}


@objective("span", extra_ids=100)
def build_span_corruption(tokenizer: Tokenizer, train_corpus: TokenizedCorpus, eval_corpus: TokenizedCorpus,
                          options: ObjectiveOptions) -> ObjectiveSetup:
    """T5 recipe: packed raw rows sized so the corrupted inputs fill seq_len exactly, spans →
    sentinels <extra_id_N>, targets = sentinels followed by their spans."""
    from lmzoo.objectives.packing import PackedDataset
    from lmzoo.objectives.span_corruption import (SpanCorruptionCollator, SpanCorruptionConfig, raw_length_for,
                                                  sentinel_ids_of)

    if options.family != "t5":
        raise UserError(f"objective span trains t5 presets, not {options.family}")
    config = SpanCorruptionConfig(noise_density=options.noise_density, mean_span_length=options.mean_span_length)
    raw_length, _ = raw_length_for(options.seq_len, config)

    def packed(corpus: TokenizedCorpus) -> PackedDataset:
        return PackedDataset(corpus, max_length=raw_length, bos_id=None, eos_id=None, sep_id=tokenizer.eos_id,
                             sep_between_docs=tokenizer.eos_id is not None)

    collate = SpanCorruptionCollator(sentinel_ids=sentinel_ids_of(tokenizer), eos_id=tokenizer.eos_id,
                                     pad_id=tokenizer.pad_id, config=config)
    return ObjectiveSetup(packed(train_corpus), packed(eval_corpus), collate, token_accuracy_metrics,
                          "T5ForConditionalGeneration")


@objective("denoise")
def build_denoising(tokenizer: Tokenizer, train_corpus: TokenizedCorpus, eval_corpus: TokenizedCorpus,
                    options: ObjectiveOptions) -> ObjectiveSetup:
    """BART recipe: windows of whole sentences of one document; text infilling (30%, Poisson λ=3)
    plus sentence permutation by default; the decoder reconstructs the original."""
    from lmzoo.objectives.denoising import DenoisingCollator, DenoisingConfig, SentenceWindows

    if options.family != "bart":
        raise UserError(f"objective denoise trains bart presets, not {options.family}")
    config = DenoisingConfig(**options.denoising)
    collate = DenoisingCollator(mask_id=tokenizer.mask_id, pad_id=tokenizer.pad_id, bos_id=tokenizer.bos_id,
                                eos_id=tokenizer.eos_id, config=config, max_length=options.seq_len)
    return ObjectiveSetup(SentenceWindows(train_corpus, max_tokens=options.seq_len - 2),
                          SentenceWindows(eval_corpus, max_tokens=options.seq_len - 2), collate,
                          token_accuracy_metrics, "BartForConditionalGeneration")


def holds_run(out: Path) -> bool:
    return any((out / name).exists() for name in ("metrics.jsonl", "checkpoints", "config.json"))


def prepare_tokenizer(*, family: str, data: Any, out: Path, tokenizer_path: str | None, vocab_size: int,
                      lowercase: bool, objective_name: str) -> Tokenizer:
    """Load the user's tokenizer, or train the family's kind on the data; saved into ``out``."""
    if tokenizer_path:
        tokenizer = Tokenizer.load(tokenizer_path)
    else:
        extras = OBJECTIVE_TOKENIZER_EXTRAS.get(objective_name, {})
        tokenizer = train_tokenizer(data, kind=FAMILY_TOKENIZER[family], vocab_size=vocab_size,
                                    lowercase=lowercase, **extras)
    tokenizer.save(out)
    return tokenizer


def pretrain(*, preset: str, objective_name: str, data: Any, out: str | Path, train_config: TrainConfig,
             options: ObjectiveOptions = ObjectiveOptions(), tokenizer_path: str | None = None,
             vocab_size: int = 8000, lowercase: bool = False, eval_fraction: float = 0.02,
             document_split: str = "blank_line", resume: bool = False, overwrite: bool = False,
             progress: bool = True, model_overrides: dict[str, Any] | None = None) -> TrainResult:
    """Pretrain a preset with an objective on local text; the final model, its tokenizer, metrics
    and a loss curve end up in ``out`` (an HF folder other tools load)."""
    from lmzoo.train.distributed import barrier, setup_distributed, teardown_distributed

    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r} (known: {', '.join(PRESETS)})")
    if objective_name not in OBJECTIVES:
        raise UserError(f"unknown objective {objective_name!r} (known: {', '.join(OBJECTIVES)})")
    out = Path(out)
    if holds_run(out) and not (resume or overwrite):
        raise UserError(f"{out} already holds a run; pass --resume to continue it or --overwrite to replace it")
    family = preset_config(preset).family

    # Under torchrun, rank 0 trains the tokenizer and tokenizes the corpus; the others then read both.
    info = setup_distributed()
    try:
        if info.is_main and not resume:
            out.mkdir(parents=True, exist_ok=True)
            prepare_tokenizer(family=family, data=data, out=out, tokenizer_path=tokenizer_path,
                              vocab_size=vocab_size, lowercase=lowercase, objective_name=objective_name)
        barrier(info)
        tokenizer = Tokenizer.load(out)
        if info.is_main:
            TokenizedCorpus.build(data, tokenizer, out / "cache", document_split=document_split)
        barrier(info)
        corpus = TokenizedCorpus.build(data, tokenizer, out / "cache", document_split=document_split)
        return _pretrain(preset, objective_name, out, train_config, options, tokenizer, corpus, eval_fraction,
                         resume, overwrite, progress, model_overrides)
    finally:
        teardown_distributed(info)


def _pretrain(preset, objective_name, out, train_config, options, tokenizer, corpus, eval_fraction, resume,
              overwrite, progress, model_overrides) -> TrainResult:
    from lmzoo.models import ARCHITECTURES

    import dataclasses

    options = dataclasses.replace(options, family=preset_config(preset).family)
    train_corpus, eval_corpus = corpus.split(eval_fraction, seed=options.seed)
    setup = OBJECTIVES[objective_name](tokenizer, train_corpus, eval_corpus, options)
    if len(setup.train_data) < train_config.batch_size:
        raise UserError(f"corpus too small: {len(setup.train_data)} training examples of {options.seq_len} tokens "
                        f"for a batch of {train_config.batch_size}; add text or lower --seq-len / --batch-size")

    overrides = {"vocab_size": tokenizer.vocab_size, **(model_overrides or {})}
    for field_name, token_id in (("pad_token_id", tokenizer.pad_id), ("eos_token_id", tokenizer.eos_id),
                                 ("bos_token_id", tokenizer.bos_id)):
        if token_id is not None and getattr(preset_config(preset), field_name) is not None:
            overrides[field_name] = token_id
    config = preset_config(preset, **overrides)
    if config.max_positions < options.seq_len:
        raise UserError(f"--seq-len {options.seq_len} exceeds the preset's max_positions {config.max_positions}")
    torch.manual_seed(train_config.seed)  # the same seed gives the same initial weights
    model = ARCHITECTURES[setup.architecture](config)
    return train(model, setup.train_data, setup.collate, out_dir=out, config=train_config, eval_data=setup.eval_data,
                 metrics_fn=setup.metrics_fn, resume=resume, overwrite=overwrite, progress=progress)
