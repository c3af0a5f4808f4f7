"""Sequence-to-sequence fine-tuning (translation, summarization, reconstruction) for T5 and BART.

(source, target) pairs come from JSONL / TSV / CSV with named columns; teacher forcing through the
model's ``labels``; evaluation with BLEU and chrF (sacrebleu) and ROUGE-L (rouge-score) on generated
text; the best checkpoint by the chosen metric is kept in ``<out>/best``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from lmzoo.errors import UserError

IGNORE_INDEX = -100
METRICS = ("bleu", "chrf", "rougeL")


# --- data ---------------------------------------------------------------------------------------


def read_pairs(path: str | Path, *, source_column: str = "source", target_column: str = "target") -> list[tuple[str, str]]:
    """(source, target) pairs of a .jsonl, .tsv or .csv file (TSV/CSV with a header row)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"pairs file {path} not found")
    suffix = path.suffix.lower()
    rows: list[dict[str, Any]] = []
    with path.open(encoding="utf-8", newline="") as f:
        if suffix in (".jsonl", ".json"):
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        raise UserError(f"{path}:{n} is not valid JSON") from None
                    if not isinstance(row, dict):
                        raise UserError(f"{path}:{n} is not a JSON object")
                    rows.append(row)
        elif suffix in (".tsv", ".csv"):
            rows = list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
        else:
            raise UserError(f"{path}: pairs must be .jsonl, .tsv or .csv, not {suffix or 'no extension'}")
    if not rows:
        raise UserError(f"{path} holds no pairs")
    pairs = []
    for n, row in enumerate(rows, 1):
        for column in (source_column, target_column):
            if column not in row:
                raise UserError(f"{path}: row {n} has no column {column!r} (columns: {', '.join(map(str, row))})")
        source, target = str(row[source_column] or "").strip(), str(row[target_column] or "").strip()
        if not source or not target:
            raise UserError(f"{path}: row {n} has an empty {'source' if not source else 'target'}")
        pairs.append((source, target))
    return pairs


class Seq2SeqDataset:
    """Map-style dataset of tokenized pairs: ``{"input_ids": source, "labels": target}``, each with the
    family's special tokens (T5 ``text </s>``, BART ``<s> text </s>``). A source longer than
    ``max_source_length`` is an error; targets are cut to ``max_target_length``."""

    def __init__(self, pairs: Sequence[tuple[str, str]], tokenizer: Any, *, max_source_length: int = 512,
                 max_target_length: int = 128, prefix: str = "") -> None:
        self.sources = [tokenizer.build_inputs(ids)[0] for ids in tokenizer.encode_batch([prefix + s for s, _ in pairs])]
        self.targets = [tokenizer.build_inputs(ids)[0][:max_target_length]
                        for ids in tokenizer.encode_batch([t for _, t in pairs])]
        for n, ids in enumerate(self.sources, 1):
            if len(ids) > max_source_length:
                raise UserError(f"source of pair {n} has {len(ids)} tokens, more than --max-source-length "
                                f"{max_source_length}")

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {"input_ids": np.asarray(self.sources[i], np.int64), "labels": np.asarray(self.targets[i], np.int64)}


class Seq2SeqCollator:
    """Pads ``input_ids`` (pad id, with ``attention_mask``) and ``labels`` (-100)."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, examples: list[dict[str, Any]], generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        n_in = max(len(e["input_ids"]) for e in examples)
        n_out = max(len(e["labels"]) for e in examples)
        input_ids = torch.full((len(examples), n_in), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        labels = torch.full((len(examples), n_out), IGNORE_INDEX, dtype=torch.long)
        for row, e in enumerate(examples):
            input_ids[row, :len(e["input_ids"])] = torch.as_tensor(e["input_ids"])
            attention_mask[row, :len(e["input_ids"])] = 1
            labels[row, :len(e["labels"])] = torch.as_tensor(e["labels"])
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


# --- generation and metrics ---------------------------------------------------------------------


@torch.no_grad()
def greedy_decode(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                  max_new_tokens: int) -> torch.Tensor:
    """Greedy decoding over the model's generation protocol (used when lmzoo.generate is absent)."""
    config = model.config
    state = model.prepare_generation(input_ids, attention_mask, max_new_tokens)
    tokens = torch.full((input_ids.shape[0], 1), config.decoder_start_token_id, dtype=torch.long, device=input_ids.device)
    out, done = [], torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    for _ in range(max_new_tokens):
        next_ids = model.generation_step(tokens, state).argmax(-1)
        next_ids = next_ids.masked_fill(done, config.pad_token_id)
        out.append(next_ids)
        done |= next_ids == config.eos_token_id
        if bool(done.all()):
            break
        tokens = next_ids[:, None]
    return torch.stack(out, 1)


def generate_ids(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, *,
                 max_new_tokens: int, num_beams: int = 1) -> torch.Tensor:
    """New decoder tokens [batch, <= max_new_tokens] (greedy or beam search)."""
    try:
        from lmzoo.generate import generate
    except ImportError:
        if num_beams > 1:
            raise UserError("beam search needs lmzoo.generate") from None
        return greedy_decode(model, input_ids, attention_mask, max_new_tokens)
    return generate(model, input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                    num_beams=num_beams)


def generate_texts(model: Any, tokenizer: Any, sources: Sequence[str], *, max_new_tokens: int = 64,
                   num_beams: int = 1, batch_size: int = 32, prefix: str = "") -> list[str]:
    """Decoded outputs for ``sources`` (in order)."""
    model.eval()
    collate = Seq2SeqCollator(tokenizer.pad_id if tokenizer.pad_id is not None else model.config.pad_token_id)
    texts: list[str] = []
    for start in range(0, len(sources), batch_size):
        chunk = sources[start:start + batch_size]
        encoded = [tokenizer.build_inputs(ids)[0] for ids in tokenizer.encode_batch([prefix + s for s in chunk])]
        batch = collate([{"input_ids": ids, "labels": [0]} for ids in encoded])
        ids = generate_ids(model, batch["input_ids"].to(model.device), batch["attention_mask"].to(model.device),
                           max_new_tokens=max_new_tokens, num_beams=num_beams)
        for row in ids.tolist():
            if model.config.eos_token_id in row:
                row = row[:row.index(model.config.eos_token_id)]
            texts.append(tokenizer.decode(row).strip())
    return texts


def reconstruct_texts(model: Any, tokenizer: Any, texts: Sequence[str], *, max_new_tokens: int = 64,
                      num_beams: int = 1) -> list[str]:
    """Fill the gaps of each text: BART writes the whole text out; T5 answers ``<extra_id_N> span ...``
    and the spans are put back in place of their sentinels."""
    if model.config.family != "t5":
        return generate_texts(model, tokenizer, texts, max_new_tokens=max_new_tokens, num_beams=num_beams)
    import re

    out = []
    for text in texts:
        encoded = tokenizer.build_inputs(tokenizer.encode(text))[0]
        batch = Seq2SeqCollator(model.config.pad_token_id)([{"input_ids": encoded, "labels": [0]}])
        ids = generate_ids(model, batch["input_ids"].to(model.device), batch["attention_mask"].to(model.device),
                           max_new_tokens=max_new_tokens, num_beams=num_beams)[0].tolist()
        answer = tokenizer.decode(ids, skip_special_tokens=False)
        spans = dict(re.findall(r"(<extra_id_\d+>)(.*?)(?=<extra_id_\d+>|</s>|<pad>|$)", answer))
        out.append(re.sub(r"<extra_id_\d+>", lambda m: spans.get(m.group(0), "").strip(), text))
    return out


class _UnicodeWords:
    """rouge-score's default tokenizer (lowercase runs of letters and digits) for every script:
    the default keeps only a-z and 0-9, which breaks German "Schließen" into "schlie" + "en"."""

    def tokenize(self, text: str) -> list[str]:
        return re.findall(r"[^\W_]+", text.lower())


def text_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU and chrF (sacrebleu) and mean ROUGE-L F1 (rouge-score, ×100)."""
    import sacrebleu
    from rouge_score import rouge_scorer

    refs = [list(references)]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False, tokenizer=_UnicodeWords())
    rouge = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)]
    return {
        "bleu": sacrebleu.corpus_bleu(list(predictions), refs).score,
        "chrf": sacrebleu.corpus_chrf(list(predictions), refs).score,
        "rougeL": 100.0 * float(np.mean(rouge)) if rouge else 0.0,
    }


# --- fine-tuning --------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Seq2SeqOptions:
    source_column: str = "source"
    target_column: str = "target"
    prefix: str = ""  # e.g. "translate English to German: " for T5
    max_source_length: int = 512
    max_target_length: int = 128
    label_smoothing: float = 0.0
    num_beams: int = 1
    metric: str = "bleu"  # the one that picks the best checkpoint
    max_eval_examples: int = 200

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise UserError(f"--metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise UserError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.max_source_length < 2 or self.max_target_length < 2:
            raise UserError("--max-source-length and --max-target-length must be >= 2")


def fit_to_positions(options: Seq2SeqOptions, config: Any) -> Seq2SeqOptions:
    """Learned positions (BART) end at ``max_positions``: lengths beyond it are cut to it up front
    instead of failing at the first evaluation (generation needs one position more). Defaults are
    cut silently; lengths a user asked for get a note."""
    if config.positions != "learned":
        return options
    source, target = min(options.max_source_length, config.max_positions), min(options.max_target_length,
                                                                                config.max_positions - 1)
    defaults = Seq2SeqOptions()
    cut_asked_source = source < options.max_source_length and options.max_source_length != defaults.max_source_length
    cut_asked_target = target < options.max_target_length and options.max_target_length != defaults.max_target_length
    if cut_asked_source or cut_asked_target:
        print(f"note: the model has {config.max_positions} positions: max source length {source}, "
              f"max target length {target}", file=sys.stderr)
    return dataclasses.replace(options, max_source_length=source, max_target_length=target)


def load_seq2seq_model(model: str) -> tuple[Any, Any]:
    """(model, tokenizer) of a model folder; the model must be an encoder-decoder with an LM head."""
    from lmzoo.pipelines import load_model_and_tokenizer

    net, tokenizer = load_model_and_tokenizer(model)
    if not hasattr(net, "prepare_generation") or not net.config.is_encoder_decoder:
        raise UserError(f"{model} is a {net.hf_architecture}; seq2seq needs T5ForConditionalGeneration or "
                        "BartForConditionalGeneration")
    return net, tokenizer


def finetune_seq2seq(*, model: str, train_path: str, eval_path: str | None, out: str | Path, train_config: Any,
                     options: Seq2SeqOptions = Seq2SeqOptions(), resume: bool = False, overwrite: bool = False,
                     progress: bool = True) -> tuple[Any, dict[str, float]]:
    """Fine-tune a T5/BART folder on pairs; returns (train result, generation metrics of the best model)."""
    from lmzoo.train.distributed import full_model
    from lmzoo.train.loop import train

    out = Path(out)
    net, tokenizer = load_seq2seq_model(model)
    options = fit_to_positions(options, net.config)
    net.label_smoothing = options.label_smoothing
    read = lambda p: read_pairs(p, source_column=options.source_column, target_column=options.target_column)  # noqa: E731
    dataset = lambda pairs: Seq2SeqDataset(pairs, tokenizer, max_source_length=options.max_source_length,  # noqa: E731
                                           max_target_length=options.max_target_length, prefix=options.prefix)
    train_data = dataset(read(train_path))
    eval_pairs = read(eval_path)[: options.max_eval_examples] if eval_path else []
    eval_data = dataset(eval_pairs) if eval_pairs else None
    collate = Seq2SeqCollator(net.config.pad_token_id)
    best: dict[str, Any] = {"score": -1.0, "metrics": {}}

    is_main = int(os.environ.get("RANK", "0")) == 0  # under torchrun rank 0 alone scores and writes

    def score_and_keep_best(step: int, path: Path) -> None:
        if not eval_pairs or not is_main:
            return
        model = full_model(net, path)  # FSDP2: a plain copy (generation runs submodules)
        was_training = model.training
        predictions = generate_texts(model, tokenizer, [s for s, _ in eval_pairs], num_beams=options.num_beams,
                                     max_new_tokens=options.max_target_length, prefix=options.prefix)
        model.train(was_training)
        metrics = text_metrics(predictions, [t for _, t in eval_pairs])
        print(f"step {step}: " + ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()), file=sys.stderr)
        if metrics[options.metric] > best["score"]:
            best.update(score=metrics[options.metric], metrics={**metrics, "step": step})
            model.save_pretrained(out / "best")
            tokenizer.save(out / "best")

    result = train(net, train_data, collate, out_dir=out, config=train_config, eval_data=eval_data,
                   resume=resume, overwrite=overwrite, on_checkpoint=score_and_keep_best, progress=progress)
    if is_main:  # other ranks hold no scores: their empty metrics must not overwrite rank 0's
        if (out / "best").is_dir():
            from lmzoo.io import atomic_write_json

            atomic_write_json(out / "best" / "seq2seq_metrics.json", best["metrics"])
        tokenizer.save(out)
    return result, best["metrics"]
