"""Fine-tuning for understanding tasks through the one training loop: sequence classification of
single texts (``classify``) and text pairs (``pair``) — multi-class, multi-label or regression —
and token classification (``ner``, see :mod:`lmzoo.tasks.ner`).

``finetune`` trains with :func:`lmzoo.train.train` and hands it a :class:`lmzoo.train.Selection`:
at every evaluation (every ``eval_every`` steps and at the end) the loop scores the eval file with
the task metric, keeps the best model in ``OUT/best`` (with its tokenizer, metrics, per-label report
and confusion matrix) and stops early after ``patience`` evaluations without improvement.
``evaluate_model`` and ``predict_examples`` use a trained folder.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from lmzoo.errors import UserError
from lmzoo.io import atomic_write_json, atomic_write_text
from lmzoo.nn.loss import PROBLEM_TYPES
from lmzoo.options import option
from lmzoo.tasks import ner
from lmzoo.tasks.data import (
    PaddingCollator,
    TaggedSentence,
    TextExample,
    build_label_map,
    check_labels,
    read_tagged_sentences,
    read_text_examples,
)
from lmzoo.tasks.metrics import (
    classification_metrics,
    format_report,
    multilabel_metrics,
    regression_metrics,
    write_confusion_matrix,
)

if TYPE_CHECKING:
    from lmzoo.train.loop import Selection

TASKS = ("classify", "pair", "ner")
TASK_FILE = "lmzoo_task.json"  # the data options a trained folder was fine-tuned with
LOWER_IS_BETTER = ("mse", "mae", "loss")
DEFAULT_METRIC = {"single_label_classification": "macro_f1", "multi_label_classification": "micro_f1",
                  "regression": "mse", "ner": "f1"}
METRICS = ("accuracy", "macro_f1", "micro_f1", "mse", "mae", "pearson", "f1", "precision", "recall",
           "token_accuracy")
# the scores each problem's evaluation gives (lmzoo.tasks.metrics), so --metric is checked before training
PROBLEM_METRICS = {"single_label_classification": ("accuracy", "macro_f1"),
                   "multi_label_classification": ("accuracy", "micro_f1", "macro_f1"),
                   "regression": ("mse", "mae", "pearson"), "ner": ("f1", "precision", "recall", "token_accuracy")}


@dataclass(frozen=True, kw_only=True)
class TaskOptions:
    """How to read the data and what to optimise. Column names default by task (classify/pair:
    text, text_pair, label; ner JSONL: tokens, tags); ``problem_type`` defaults to multi-label when
    the labels are lists, single-label otherwise (regression must be asked for)."""

    task: str = field(metadata={"cli": False})  # --task also names seq2seq: the CLI declares it
    text_column: str | None = option(None, "text column (default text; ner JSONL: tokens)")
    text_pair_column: str | None = option(None, "second text column for --task pair (default text_pair)")
    label_column: str | None = option(None, "label column (default label; ner JSONL: tags)")
    problem_type: str | None = option(None, "default: multi-label when labels are lists",
                                      choices=list(PROBLEM_TYPES))
    label_separator: str | None = option(None, "multi-label CSV/TSV: labels joined by this, e.g. '|'")
    max_length: int | None = option(None, "tokens per example, special tokens included (default 128, or the "
                                          "model's limit)")
    metric: str | None = option(None, "picks the best model; default by problem type (macro_f1, micro_f1, mse; "
                                      "ner f1)", choices=list(METRICS))
    patience: int = option(0, "stop after N evaluations without improvement (0: never)")
    threshold: float = option(0.5, "multi-label: a label is predicted when its probability exceeds this",
                              cli=False)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise UserError(f"--task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.problem_type is not None and self.problem_type not in PROBLEM_TYPES:
            raise UserError(f"--problem-type must be one of {', '.join(PROBLEM_TYPES)}, got {self.problem_type!r}")
        if self.task == "ner" and self.problem_type not in (None, "single_label_classification"):
            raise UserError("--problem-type does not apply to --task ner")
        if self.metric is not None and self.metric not in METRICS:
            raise UserError(f"--metric must be one of {', '.join(METRICS)} here, got {self.metric!r}")
        if self.max_length is not None and self.max_length < 4:
            raise UserError(f"--max-length must be >= 4, got {self.max_length}")
        if self.patience < 0:
            raise UserError(f"--patience must be >= 0, got {self.patience}")
        if not 0.0 < self.threshold < 1.0:
            raise UserError(f"threshold must be in (0, 1), got {self.threshold}")

    @property
    def text(self) -> str:
        return self.text_column or ("tokens" if self.task == "ner" else "text")

    @property
    def pair(self) -> str | None:
        return (self.text_pair_column or "text_pair") if self.task == "pair" else None

    @property
    def label(self) -> str:
        return self.label_column or ("tags" if self.task == "ner" else "label")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any], **overrides: Any) -> "TaskOptions":
        known = {f.name for f in dataclasses.fields(cls)}
        merged = {k: v for k, v in data.items() if k in known}
        merged.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**merged)


# --- data ---------------------------------------------------------------------------------------


def read_examples(path: str | Path, options: TaskOptions, *, with_labels: bool = True,
                  problem_type: str | None = None) -> list[TextExample] | list[TaggedSentence]:
    """The examples of a CSV / TSV / JSONL file (NER: CoNLL or JSONL) for ``options.task``."""
    if options.task == "ner":
        return read_tagged_sentences(path, tokens_column=options.text,
                                     tags_column=options.label if with_labels else None)
    return read_text_examples(path, text_column=options.text, text_pair_column=options.pair,
                              label_column=options.label if with_labels else None,
                              label_separator=options.label_separator,
                              regression=(problem_type or options.problem_type) == "regression")


def infer_problem_type(options: TaskOptions, examples: Sequence[Any]) -> str:
    if options.task == "ner":
        return "single_label_classification"
    if options.problem_type:
        return options.problem_type
    return "multi_label_classification" if any(isinstance(e.label, list) for e in examples) \
        else "single_label_classification"


def labels_of(examples: Sequence[Any]) -> list[Any]:
    return [t for e in examples for t in e.tags] if examples and isinstance(examples[0], TaggedSentence) \
        else [e.label for e in examples]


class TextDataset:
    """Map-style dataset: ``{"input_ids", "token_type_ids", "labels"}`` per example, with the
    family's special tokens (BERT ``[CLS] a [SEP] b [SEP]``, RoBERTa ``<s> a </s></s> b </s>``);
    pairs are truncated longest-first to ``max_length``."""

    def __init__(self, examples: Sequence[TextExample], tokenizer: Any, label2id: dict[str, int] | None,
                 problem_type: str, max_length: int) -> None:
        self.items = []
        for e in examples:
            encoded = tokenizer(e.text, e.text_pair, max_length=max_length)
            item: dict[str, Any] = {"input_ids": encoded["input_ids"][0].numpy(),
                                    "token_type_ids": encoded["token_type_ids"][0].numpy()}
            if e.label is not None and label2id is not None:
                item["labels"] = encode_label(e.label, label2id, problem_type)
            self.items.append(item)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.items[i]


def encode_label(label: Any, label2id: dict[str, int], problem_type: str) -> Any:
    """A class id (single-label), a multi-hot float list (multi-label) or a float (regression)."""
    if problem_type == "regression":
        return float(label)
    if problem_type == "multi_label_classification":
        hot = [0.0] * len(label2id)
        for name in label if isinstance(label, list) else [label]:
            hot[label2id[name]] = 1.0
        return hot
    if isinstance(label, list):
        raise UserError(f"label {label!r} is a list; use --problem-type multi_label_classification")
    return label2id[label]


def make_dataset(examples: Sequence[Any], tokenizer: Any, config: Any, options: TaskOptions) -> Any:
    label2id = {v: k for k, v in (config.id2label or {}).items()}
    if options.task == "ner":
        has_labels = any(s.tags for s in examples)
        return ner.TaggedDataset(examples, tokenizer, label2id if has_labels else None, max_length(options, config))
    has_labels = any(e.label is not None for e in examples)
    return TextDataset(examples, tokenizer, label2id if has_labels else None, config.problem_type,
                       max_length(options, config))


def max_length(options: TaskOptions, config: Any) -> int:
    return options.max_length or min(128, config.max_positions)


def make_collator(tokenizer: Any, model: Any, options: TaskOptions) -> PaddingCollator:
    return PaddingCollator(ner.pad_id(tokenizer, model), token_types=model.config.type_vocab_size > 0, token_labels=options.task == "ner")


def loop_metrics(batch: dict[str, torch.Tensor], output: Any) -> dict[str, float]:
    """The training loop's cheap running metric (``label_accuracy``; NER: per labelled token)."""
    labels, logits = batch["labels"], output.logits
    if labels.dtype != torch.long:  # multi-label / regression: the loop reports eval_loss only
        return {}
    keep = labels != -100
    return {"label_correct": float((logits.argmax(-1) == labels)[keep].sum()), "label_total": float(keep.sum())}


# --- models -------------------------------------------------------------------------------------


def task_class(family_name: str, task: str) -> type:
    """The family's head class for a task (``*ForSequenceClassification`` / ``*ForTokenClassification``)."""
    from lmzoo.models import family_spec

    return family_spec(family_name).head("token_classification" if task == "ner" else "sequence_classification")


def load_for_finetuning(folder: str | Path, task: str, id2label: dict[int, str], problem_type: str) -> Any:
    """A model folder (bare encoder, pretraining heads, or a classifier) as the task's head model.
    The head keeps its trained weights only when the folder has the same head and label map."""
    from lmzoo.hf import convert_from_hf, read_config, read_state_dict

    config, architecture = read_config(folder)
    cls = task_class(config.family, task)
    same_head = architecture == cls.hf_architecture and config.id2label == id2label \
        and (config.problem_type or "single_label_classification") == problem_type
    model = cls(config.replace(id2label=id2label, problem_type=problem_type))
    state = read_state_dict(folder)
    body = [k for k in state if k.startswith(cls.base_prefix + ".")]
    if body and not same_head:  # another head (or other labels): keep the body, the head starts afresh
        state = {k: state[k] for k in body}
    model.load_state_dict(convert_from_hf(model, state, source=str(folder)), strict=False)
    return model


def load_task_model(folder: str | Path) -> tuple[Any, Any, dict[str, Any]]:
    """(model, tokenizer, saved task options) of a fine-tuned folder."""
    from lmzoo.pipelines import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(folder)
    name = model.hf_architecture
    if not model.head_kind:
        raise UserError(f"{folder} holds a {name}; evaluate / predict need a fine-tuned classifier "
                        "(*ForSequenceClassification or *ForTokenClassification)")
    check_label_map(model.config, folder)
    task_file = Path(folder) / TASK_FILE
    saved = read_task_file(task_file) if task_file.is_file() else {}
    head_task = "ner" if model.head_kind == "token_classification" else "classify"
    saved.setdefault("task", head_task)
    if (saved["task"] == "ner") != (head_task == "ner"):
        raise UserError(f"{task_file}: task {saved['task']!r} does not fit the model's head ({name})")
    return model, tokenizer, saved


# the JSON type of each lmzoo_task.json field
TASK_FIELD_TYPES = {"task": "a string", "text_column": "a string or null", "text_pair_column": "a string or null",
                    "label_column": "a string or null", "problem_type": "a string or null",
                    "label_separator": "a string or null", "max_length": "an integer or null",
                    "metric": "a string or null", "patience": "an integer", "threshold": "a number"}
_JSON_TYPES = {"string": str, "integer": int, "number": (int, float)}


def read_task_file(path: Path) -> dict[str, Any]:
    """The task options saved next to a fine-tuned model, checked field by field (a UserError naming
    the file and the field when it is not JSON, not an object, or a value has the wrong type)."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}); fine-tune again or fix the file") from None
    if not isinstance(saved, dict):
        raise UserError(f"{path} must hold a JSON object of task options, not {type(saved).__name__}")
    for key, kind in TASK_FIELD_TYPES.items():
        if key not in saved:
            continue
        value = saved[key]
        ok = kind.endswith("or null") if value is None else (
            not isinstance(value, bool) and isinstance(value, _JSON_TYPES[kind.split()[1]]))
        if not ok:
            raise UserError(f"{path}: {key!r} must be {kind}, got {json.dumps(value)}")
    if saved.get("task", "classify") not in TASKS:
        raise UserError(f"{path}: unknown task {saved['task']!r} (one of {', '.join(TASKS)})")
    return saved


def check_label_map(config: Any, folder: str | Path) -> None:
    """A classifier's id2label must name each of its ids 0 .. n-1 once: a gap or a duplicate in
    config.json would name predictions wrongly (or not at all)."""
    id2label = config.id2label
    if not id2label:
        return
    if sorted(id2label) != list(range(len(id2label))):
        raise UserError(f"{folder}/config.json: id2label must number the labels 0 .. {len(id2label) - 1} without "
                        f"gaps, got ids {', '.join(map(str, sorted(id2label)))}")
    names = list(id2label.values())
    if len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise UserError(f"{folder}/config.json: id2label names {twice!r} twice")


# --- prediction and scoring ---------------------------------------------------------------------


@torch.no_grad()
def predict_examples(model: Any, tokenizer: Any, examples: Sequence[Any], options: TaskOptions, *,
                     batch_size: int = 32) -> list[dict[str, Any]]:
    """One JSON-ready prediction per example: ``label`` + ``score`` + ``scores`` (single-label),
    ``labels`` + ``scores`` (multi-label), ``score`` (regression), ``tags`` + ``entities`` (NER)."""
    check_prediction_options(model, options, batch_size)
    if options.task == "ner":
        out = ner.predict_tags(model, tokenizer, examples, max_length=max_length(options, model.config),
                               batch_size=batch_size)
        for s, p in zip(examples, out):
            p["entities"] = ner.entities(s.words, p["tags"])
        return out
    config = model.config
    data = TextDataset(examples, tokenizer, None, config.problem_type, max_length(options, config))
    collate = make_collator(tokenizer, model, options)
    id2label = config.id2label or {i: f"LABEL_{i}" for i in range(config.num_labels)}
    was_training = model.training
    model.eval()
    results = []
    for start in range(0, len(data), batch_size):
        batch = collate([data[i] for i in range(start, min(len(data), start + batch_size))])
        logits = model(**{k: v.to(model.device) for k, v in batch.items()}).logits.float().cpu()
        for row in logits:
            if config.problem_type == "regression":
                results.append({"score": round(float(row[0]), 6)})
            elif config.problem_type == "multi_label_classification":
                probs = row.sigmoid().tolist()
                results.append({"labels": [id2label[i] for i, p in enumerate(probs) if p > options.threshold],
                                "scores": {id2label[i]: round(p, 6) for i, p in enumerate(probs)}})
            else:
                probs = row.softmax(-1).tolist()
                best = int(np.argmax(probs))
                results.append({"label": id2label[best], "score": round(probs[best], 6),
                                "scores": {id2label[i]: round(p, 6) for i, p in enumerate(probs)}})
    model.train(was_training)
    return results


def check_prediction_options(model: Any, options: TaskOptions, batch_size: int) -> None:
    """The options of evaluate / predict a UserError names before any input is read."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise UserError(f"--batch-size must be a positive integer, got {batch_size!r}")
    if options.max_length is not None and options.max_length > model.config.max_positions:
        raise UserError(f"--max-length {options.max_length} exceeds the model's {model.config.max_positions} positions")


def score(examples: Sequence[Any], predictions: Sequence[dict[str, Any]], config: Any,
          options: TaskOptions) -> dict[str, Any]:
    """Task metrics of predictions against the examples' gold labels."""
    if options.task == "ner":
        return ner.score_tags(examples, predictions)
    id2label = config.id2label
    label2id = {v: k for k, v in id2label.items()}
    if config.problem_type == "regression":
        return regression_metrics([e.label for e in examples], [p["score"] for p in predictions])
    if config.problem_type == "multi_label_classification":
        gold = np.array([encode_label(e.label, label2id, config.problem_type) for e in examples]) > 0.5
        pred = np.array([[name in p["labels"] for name in label2id] for p in predictions])
        return multilabel_metrics(gold, pred, id2label)
    return classification_metrics([label2id[e.label] for e in examples],
                                  [label2id[p["label"]] for p in predictions], id2label)


def summary(metrics: dict[str, Any]) -> dict[str, float]:
    """The scalar metrics (no per-label tables)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}


def write_reports(metrics: dict[str, Any], config: Any, folder: str | Path, prefix: str = "eval") -> None:
    """``<prefix>_metrics.json``, ``<prefix>_report.txt`` (per label / entity type) and, for
    single-label classification, ``confusion_matrix.png`` into ``folder``."""
    folder = Path(folder)
    atomic_write_json(folder / f"{prefix}_metrics.json", metrics)
    per_label = metrics.get("per_label") or metrics.get("per_type")
    if per_label is not None:
        atomic_write_text(folder / f"{prefix}_report.txt", format_report(per_label, summary(metrics)))
    if "confusion_matrix" in metrics:
        write_confusion_matrix(metrics["confusion_matrix"], [config.id2label[i] for i in sorted(config.id2label)],
                               folder / "confusion_matrix.png")


def evaluate_model(folder: str | Path, data_path: str | Path, *, options: TaskOptions | None = None,
                   out: str | Path | None = None, batch_size: int = 32, **overrides: Any) -> dict[str, Any]:
    """Score a fine-tuned folder on a labelled file; with ``out``, write the metrics, the per-label
    report and the confusion matrix there. ``overrides`` change the folder's saved task options."""
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise UserError(f"--out {out} is a file; it names a folder for the metrics and reports")
    model, tokenizer, saved = load_task_model(folder)
    options = options or TaskOptions.from_json(saved, **overrides)
    check_prediction_options(model, options, batch_size)
    examples = read_examples(data_path, options, problem_type=model.config.problem_type)
    check_gold(examples, model.config, options, folder, data_path)
    metrics = score(examples, predict_examples(model, tokenizer, examples, options, batch_size=batch_size),
                    model.config, options)
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        write_reports(metrics, model.config, out)
    return metrics


def check_gold(examples: Sequence[Any], config: Any, options: TaskOptions, folder: str | Path,
               data_path: str | Path) -> None:
    """The gold labels of an evaluation file must be ones the model can be scored on: BIO tags (NER),
    one label per example for a single-label classifier, labels it was trained with."""
    if options.task == "ner":
        ner.check_bio(examples, data_path)
    elif config.problem_type in (None, "single_label_classification"):
        listed = next((e.label for e in examples if isinstance(e.label, list)), None)
        if listed is not None:  # a label split by --label-separator, or a JSON list
            raise UserError(f"{data_path}: label {listed!r} is a list, but {folder} is a single-label classifier: "
                            "give one label per example (without --label-separator)")
    if config.problem_type != "regression":
        check_labels(labels_of(examples), {v: k for k, v in (config.id2label or {}).items()}, data_path)


# --- fine-tuning --------------------------------------------------------------------------------


@dataclass
class FinetuneResult:
    step: int
    train_loss: float
    best: dict[str, Any]  # scalar metrics of the best evaluation, with its "step" (empty without eval data)
    stopped_early: bool
    out_dir: Path
    compile_s: float | None = None  # with --compile: seconds of the loop's compiling warm-up step


def finetune(*, model: str | Path, train_path: str | Path, eval_path: str | Path | None, out: str | Path,
             train_config: Any, options: TaskOptions, resume: bool = False, overwrite: bool = False,
             progress: bool = True) -> FinetuneResult:
    """Fine-tune a model folder on a labelled file through the one training loop (see module doc)."""
    from lmzoo.pipelines import check_vocab_fits
    from lmzoo.tokenizer import Tokenizer
    from lmzoo.train.distributed import process_count
    from lmzoo.train.loop import check_finetune_out, fit_batch_to_data, train

    out = Path(out)
    check_finetune_out(out, model, resume=resume, overwrite=overwrite)
    tokenizer = Tokenizer.load(model)
    options, problem, id2label, train_examples, eval_examples = read_labelled(train_path, eval_path, options)
    metric = task_metric(options, problem)
    torch.manual_seed(train_config.seed)  # the new head's initial weights: a rerun (and every rank) gets the same
    net = load_for_finetuning(model, options.task, id2label, problem)
    check_vocab_fits(tokenizer, net, model)
    if options.max_length is not None and options.max_length > net.config.max_positions:
        raise UserError(f"--max-length {options.max_length} exceeds the model's {net.config.max_positions} positions")
    options = dataclasses.replace(options, max_length=max_length(options, net.config))
    train_data = make_dataset(train_examples, tokenizer, net.config, options)
    eval_data = make_dataset(eval_examples, tokenizer, net.config, options) if eval_examples else None
    train_config, note = fit_batch_to_data(train_config, len(train_data), process_count(), train_path)
    collate = make_collator(tokenizer, net, options)
    if net.config.pad_token_id is None:  # saved with the model: transformers' GPT-2 classifier finds the last
        net.config = net.config.replace(pad_token_id=collate.pad_id)  # token by it and refuses batches without
    select = task_selection(tokenizer, eval_examples, options, metric) if eval_examples else None
    result = train(net, train_data, collate, out_dir=out, config=train_config,
                   eval_data=eval_data, metrics_fn=loop_metrics, select=select, resume=resume,
                   overwrite=overwrite, progress=progress,
                   run_signature={"task": options.task, "max_length": options.max_length},
                   notes=[note] if note else [],
                   finalize=lambda folder: save_task_files(folder, tokenizer, options))
    return FinetuneResult(step=result.step, train_loss=result.train_loss, best=result.best,
                          stopped_early=result.stopped_early, out_dir=out, compile_s=result.compile_s)


def task_metric(options: TaskOptions, problem: str) -> str:
    """The metric that picks the best model: ``options.metric`` if this task's evaluation scores it
    (a UserError naming those it does otherwise), else the problem's default."""
    kind = "ner" if options.task == "ner" else problem
    if options.metric is not None and options.metric not in PROBLEM_METRICS[kind]:
        what = "--task ner" if kind == "ner" else f"--problem-type {problem}"
        raise UserError(f"--metric {options.metric} does not fit {what}; choose one of "
                        f"{', '.join(PROBLEM_METRICS[kind])}")
    return options.metric or DEFAULT_METRIC[kind]


def read_labelled(train_path: str | Path, eval_path: str | Path | None, options: TaskOptions
                  ) -> tuple[TaskOptions, str, dict[int, str], list[Any], list[Any]]:
    """(options with the problem type filled in, problem type, id2label, train examples, eval
    examples) of the labelled files; labels of the eval file must occur in the training file."""
    train_examples = read_examples(train_path, options)
    if options.task == "ner":
        ner.check_bio(train_examples, train_path)
    problem = infer_problem_type(options, train_examples)
    if options.task != "ner":  # saved with the model, so evaluate / predict read labels the same way
        options = dataclasses.replace(options, problem_type=problem)
    if problem == "regression":
        id2label = {0: "LABEL_0"}
    else:
        id2label = build_label_map(labels_of(train_examples), outside=ner.OUTSIDE if options.task == "ner" else None)
        if len(id2label) < 2 and problem == "single_label_classification":
            raise UserError(f"{train_path}: only one label ({id2label[0]!r}); classification needs at least two")
    eval_examples = read_examples(eval_path, options) if eval_path else []
    if eval_examples and options.task == "ner":
        ner.check_bio(eval_examples, eval_path)
    if eval_examples and problem != "regression":
        check_labels(labels_of(eval_examples), {v: k for k, v in id2label.items()}, eval_path)
    return options, problem, id2label, train_examples, eval_examples


def task_selection(tokenizer: Any, examples: Sequence[Any], options: TaskOptions, metric: str) -> Selection:
    """The loop's :class:`lmzoo.train.Selection` for a task: score ``examples`` with the task metrics;
    the best folder holds the model, its tokenizer and task options, the metrics and the reports."""
    from lmzoo.train.loop import Selection

    def score_model(model: Any) -> dict[str, Any]:
        return score(examples, predict_examples(model, tokenizer, examples, options), model.config, options)

    def save_best(model: Any, folder: Path, metrics: dict[str, Any]) -> None:
        model.save_pretrained(folder)
        save_task_files(folder, tokenizer, options)
        write_reports(metrics, model.config, folder)

    return Selection(score=score_model, metric=metric, higher_is_better=metric not in LOWER_IS_BETTER,
                     patience=options.patience, save_best=save_best)


def save_task_files(folder: Path, tokenizer: Any, options: TaskOptions) -> None:
    """The tokenizer and the task options (``lmzoo_task.json``) next to a model."""
    tokenizer.save(folder)
    atomic_write_json(folder / TASK_FILE, options.to_json())


def is_conll(path: Path) -> bool:
    """Whether a NER input file is CoNLL (a token, maybe tags, per line) rather than a sentence per line:
    a .conll file, one with tabs, or one whose every line ends in a BIO tag after its token, as the
    space-separated CoNLL files finetune / evaluate read do."""
    if path.suffix.lower() == ".conll":
        return True
    if not path.is_file():
        return False
    text = path.read_text(encoding="utf-8", errors="replace")
    if "\t" in text:
        return True
    rows = [line.split() for line in text.splitlines() if line.strip() and not line.startswith("-DOCSTART-")]
    return bool(rows) and all(len(row) >= 2 and ner.is_bio(row[-1]) for row in rows)


def read_prediction_input(source: str, options: TaskOptions) -> list[Any]:
    """Unlabelled examples: a .csv / .tsv / .jsonl file (ner: also CoNLL, see :func:`is_conll`), or plain lines from stdin ("-") or another file: one text per line (pair:
    text<TAB>text_pair; ner: a sentence of whitespace-separated tokens)."""
    if source != "-" and Path(source).suffix.lower() in (".csv", ".tsv", ".jsonl", ".json"):
        return read_examples(source, options, with_labels=False)  # ner: a table, or CoNLL in a .tsv
    if source != "-" and options.task == "ner" and is_conll(Path(source)):
        return read_tagged_sentences(source, tags_column=None)  # CoNLL: a token (and maybe a tag) per line
    if source == "-":
        lines = sys.stdin.read().splitlines()
    else:
        if not Path(source).is_file():
            raise UserError(f"input file {source} not found")
        data = Path(source).read_bytes()
        if b"\0" in data:
            raise UserError(f"{source} is a binary file (NUL byte); expected text: one example per line, or "
                            ".csv .tsv .jsonl (ner: also CoNLL)")
        try:
            lines = data.decode("utf-8-sig").splitlines()
        except UnicodeDecodeError as e:
            raise UserError(f"{source} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    examples: list[Any] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if options.task == "ner":
            examples.append(TaggedSentence(line.split()))
        elif options.task == "pair":
            parts = line.split("\t")
            if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
                raise UserError(f"{source}:{n}: expected 'text<TAB>text_pair'")
            examples.append(TextExample(parts[0].strip(), parts[1].strip()))
        else:
            examples.append(TextExample(line.strip()))
    if not examples:
        raise UserError(f"no input in {'stdin' if source == '-' else source}")
    return examples


def predict_file(folder: str | Path, source: str, destination: str = "-", *, batch_size: int = 32,
                 **overrides: Any) -> int:
    """Predict every example of ``source`` (see :func:`read_prediction_input`) and write one JSON
    object per line to ``destination`` ("-" = stdout): the input fields plus the prediction."""
    if destination != "-":
        if Path(destination).is_dir():
            raise UserError(f"--output {destination} is a folder; give a file name for the JSONL predictions")
        if not Path(destination).resolve().parent.is_dir():
            raise UserError(f"--output {destination}: folder {Path(destination).parent} does not exist")
    model, tokenizer, saved = load_task_model(folder)
    options = TaskOptions.from_json(saved, **overrides)
    check_prediction_options(model, options, batch_size)
    examples = read_prediction_input(source, options)
    predictions = predict_examples(model, tokenizer, examples, options, batch_size=batch_size)
    lines = []
    for e, p in zip(examples, predictions):
        fields = {"tokens": e.words} if isinstance(e, TaggedSentence) else \
            {"text": e.text, **({"text_pair": e.text_pair} if e.text_pair is not None else {})}
        lines.append(json.dumps({**fields, **p}, ensure_ascii=False))
    text = "\n".join(lines) + "\n"
    if destination == "-":
        sys.stdout.write(text)
    else:
        atomic_write_text(destination, text)
    return len(lines)
