"""Sequence-to-sequence fine-tuning (translation, summarization, reconstruction) for T5 and BART.

(source, target) pairs come from JSONL / TSV / CSV with named columns; teacher forcing through the
model's ``labels``; evaluation with BLEU and chrF (sacrebleu) and ROUGE-L (rouge-score) on generated
text; the training loop keeps the best model by the chosen metric in ``<out>/best``
(:class:`lmzoo.train.Selection`).
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from lmzoo.errors import UserError
from lmzoo.io import atomic_write_json, atomic_write_text
from lmzoo.options import option
from lmzoo.tasks.data import existing_file, table_cell, table_rows

if TYPE_CHECKING:  # torch and numpy load on first use: the CLI reads Seq2SeqOptions for --help
    import numpy as np
    import torch

    from lmzoo.train.loop import Selection

IGNORE_INDEX = -100
# chrF first, the default: defined for short outputs, where corpus BLEU is 0 until 4-grams match
METRICS = ("chrf", "bleu", "rougeL")
TASK_FILE = "lmzoo_seq2seq.json"  # what a fine-tuned folder needs at text2text: the source prefix
SENTINEL = re.compile(r"<extra_id_\d+>")  # span-corruption gaps (a tokenizer may or may not know them)
MASK_GAP = re.compile(r"<mask>|\[MASK\]")  # text-infilling gaps, in either common spelling


# --- data ---------------------------------------------------------------------------------------


def read_pairs(path: str | Path, *, source_column: str = "source", target_column: str = "target") -> list[tuple[str, str]]:
    """(source, target) pairs of a .jsonl, .tsv or .csv file (TSV/CSV with a header row); errors name
    the line."""
    path = existing_file(path)
    pairs = []
    for n, row in table_rows(path):
        source, target = (str(table_cell(path, n, row, column) or "").strip() for column in (source_column, target_column))
        if not source or not target:
            raise UserError(f"{path}:{n}: empty {'source' if not source else 'target'}")
        pairs.append((source, target))
    if not pairs:
        raise UserError(f"{path} holds no pairs")
    return pairs


class Seq2SeqDataset:
    """Map-style dataset of tokenized pairs: ``{"input_ids": source, "labels": target}``, each with the
    family's special tokens (T5 ``text </s>``, BART ``<s> text </s>``). A source longer than
    ``max_source_length`` is an error; a target's text is cut so that it fits ``max_target_length``
    with its special tokens."""

    def __init__(self, pairs: Sequence[tuple[str, str]], tokenizer: Any, *, max_source_length: int = 512,
                 max_target_length: int = 128, prefix: str = "") -> None:
        self.sources = [tokenizer.build_inputs(ids)[0] for ids in tokenizer.encode_batch([prefix + s for s, _ in pairs])]
        # the text is cut, then the specials are added (as transformers does): a long target keeps its </s>
        room = max(0, max_target_length - tokenizer.num_special_tokens_to_add(False))
        self.targets = [tokenizer.build_inputs(ids[:room])[0] for ids in tokenizer.encode_batch([t for _, t in pairs])]
        for n, ids in enumerate(self.sources, 1):
            if len(ids) > max_source_length:
                raise UserError(f"source of pair {n} has {len(ids)} tokens, more than --max-source-length "
                                f"{max_source_length}")

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        import numpy as np

        return {"input_ids": np.asarray(self.sources[i], np.int64), "labels": np.asarray(self.targets[i], np.int64)}


class Seq2SeqCollator:
    """Pads ``input_ids`` (pad id, with ``attention_mask``) and ``labels`` (-100). A ``label_smoothing``
    above 0 travels in the batch: the loop passes batches to ``model(**batch)`` as they are, so every
    forward (training steps, and the eval loss alike) smooths its targets."""

    def __init__(self, pad_id: int, *, label_smoothing: float = 0.0) -> None:
        self.pad_id = pad_id
        self.label_smoothing = label_smoothing

    def __call__(self, examples: list[dict[str, Any]], generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        import torch

        n_in = max(len(e["input_ids"]) for e in examples)
        n_out = max(len(e["labels"]) for e in examples)
        input_ids = torch.full((len(examples), n_in), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        labels = torch.full((len(examples), n_out), IGNORE_INDEX, dtype=torch.long)
        for row, e in enumerate(examples):
            input_ids[row, :len(e["input_ids"])] = torch.as_tensor(e["input_ids"])
            attention_mask[row, :len(e["input_ids"])] = 1
            labels[row, :len(e["labels"])] = torch.as_tensor(e["labels"])
        batch: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        if self.label_smoothing:
            batch["label_smoothing"] = self.label_smoothing
        return batch


# --- generation and metrics ---------------------------------------------------------------------


def generate(model: Any, input_ids: torch.Tensor, **options: Any) -> torch.Tensor:
    """:func:`lmzoo.generate.generate`, imported on first use (it imports torch)."""
    from lmzoo.generate import generate as generate_ids

    return generate_ids(model, input_ids, **options)


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
        ids = generate(model, batch["input_ids"].to(model.device),
                       attention_mask=batch["attention_mask"].to(model.device), max_new_tokens=max_new_tokens,
                       num_beams=num_beams)
        for row in ids.tolist():
            if model.config.eos_token_id in row:
                row = row[:row.index(model.config.eos_token_id)]
            texts.append(tokenizer.decode(row).strip())
    return texts


def reconstruct_texts(model: Any, tokenizer: Any, texts: Sequence[str], *, max_new_tokens: int = 64,
                      num_beams: int = 1) -> list[str]:
    """Fill the gaps of each text. A text whose gaps are sentinels the tokenizer knows (``<extra_id_N>``,
    span corruption) gets an answer ``<extra_id_N> span ...`` and the spans are put back in place of
    their sentinels; any other text (``<mask>`` gaps, text infilling) the model writes out whole.
    Gaps are first written the way the tokenizer's model fills them (:func:`gaps_for_model`)."""
    texts = [gaps_for_model(tokenizer, text) for text in texts]
    spans = [i for i, text in enumerate(texts) if has_sentinels(tokenizer, text)]
    whole = [i for i in range(len(texts)) if i not in spans]
    out = [""] * len(texts)
    for i, text in zip(whole, generate_texts(model, tokenizer, [texts[i] for i in whole],
                                             max_new_tokens=max_new_tokens, num_beams=num_beams)):
        out[i] = text
    for i in spans:
        out[i] = _fill_sentinels(model, tokenizer, texts[i], max_new_tokens=max_new_tokens, num_beams=num_beams)
    return out


def gaps_for_model(tokenizer: Any, text: str) -> str:
    """``text`` with its gaps in the form the tokenizer has: ``<mask>`` / ``[MASK]`` become its mask
    token, or, when it has none but has sentinels (T5), ``<extra_id_0>``, ``<extra_id_1>``, ... in
    order (numbers the text does not use already). A UserError naming the gap token to write when
    the text has no gap, or gaps the tokenizer cannot have (``<extra_id_0>`` for a BART ``<mask>``
    model, more sentinels than it knows). Decided by the tokenizer's tokens, never the family."""
    mask = tokenizer.id_to_token(tokenizer.mask_id) if tokenizer.mask_id is not None else None
    known = list(itertools.takewhile(lambda k: tokenizer.token_to_id(f"<extra_id_{k}>") is not None,
                                     itertools.count()))  # T5 numbers its sentinels from 0 without holes
    gap = mask or ("<extra_id_0>" if known else None)
    if gap is None:
        raise UserError("this model's tokenizer has neither a mask token nor <extra_id_N> sentinels: it was not "
                        "pretrained to fill gaps (reconstruct needs a BART or T5 denoising / span model)")
    masks, sentinels = MASK_GAP.findall(text), SENTINEL.findall(text)
    if not masks and not sentinels:
        raise UserError(f'the text has no gap to fill: write "{gap}" where text is missing')
    unknown = [t for t in sentinels if tokenizer.token_to_id(t) is None]
    if unknown:
        offer = f"write {mask}" if mask else f"its sentinels are <extra_id_0> to <extra_id_{known[-1]}>"
        raise UserError(f"this model's tokenizer has no {unknown[0]} gap token: {offer}")
    if mask is not None:
        return MASK_GAP.sub(mask, text)
    free = iter([k for k in known if f"<extra_id_{k}>" not in sentinels])

    def next_sentinel(_: re.Match) -> str:
        k = next(free, None)
        if k is None:
            raise UserError(f"the text has more gaps than this model's {len(known)} sentinels <extra_id_N>")
        return f"<extra_id_{k}>"

    return MASK_GAP.sub(next_sentinel, text)


def has_sentinels(tokenizer: Any, text: str) -> bool:
    return any(tokenizer.token_to_id(s) is not None for s in SENTINEL.findall(text))


def _fill_sentinels(model: Any, tokenizer: Any, text: str, *, max_new_tokens: int, num_beams: int) -> str:
    model.eval()
    encoded = tokenizer.build_inputs(tokenizer.encode(text))[0]
    batch = Seq2SeqCollator(model.config.pad_token_id)([{"input_ids": encoded, "labels": [0]}])
    ids = generate(model, batch["input_ids"].to(model.device), attention_mask=batch["attention_mask"].to(model.device),
                   max_new_tokens=max_new_tokens, num_beams=num_beams)[0].tolist()
    if model.config.eos_token_id in ids:  # the answer ends there (padding follows)
        ids = ids[:ids.index(model.config.eos_token_id)]
    answer = tokenizer.decode(ids, skip_special_tokens=False)  # keeps the sentinels
    spans = dict(re.findall(r"(<extra_id_\d+>)(.*?)(?=<extra_id_\d+>|$)", answer))  # sentinel -> its span
    return SENTINEL.sub(lambda m: spans.get(m.group(0), "").strip(), text)


class _UnicodeWords:
    """rouge-score's default tokenizer (lowercase runs of letters and digits) for every script:
    the default keeps only a-z and 0-9, which breaks German "Schließen" into "schlie" + "en"."""

    def tokenize(self, text: str) -> list[str]:
        return re.findall(r"[^\W_]+", text.lower())


def text_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU and chrF (sacrebleu) and mean ROUGE-L F1 (rouge-score, ×100)."""
    import numpy as np
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
    source_column: str = option("source", "source column of the pairs file")
    target_column: str = option("target", "target column of the pairs file")
    prefix: str = option("", 'prepended to every source, e.g. "summarize: "')
    max_source_length: int = option(512, "tokens per source, special tokens included (longer: an error)")
    max_target_length: int = option(128, "tokens per target (longer: cut); also the generation limit")
    label_smoothing: float = option(0.0, "share of the target probability spread over the vocabulary")
    num_beams: int = option(1, "beams when generating for evaluation")
    # --metric and --patience are the finetune verb's, shared with the classification tasks
    metric: str = option("chrf", "picks the best model", choices=list(METRICS), cli=False)
    patience: int = option(0, "stop after N evaluations without improvement (0: never)", cli=False)
    max_eval_examples: int = option(200, "eval pairs scored by generation", cli=False)

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise UserError(f"--metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise UserError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.max_source_length < 2 or self.max_target_length < 2:
            raise UserError("--max-source-length and --max-target-length must be >= 2")
        if self.num_beams < 1:
            raise UserError(f"--num-beams must be >= 1, got {self.num_beams}")
        if self.patience < 0:
            raise UserError(f"--patience must be >= 0, got {self.patience}")


def fit_to_positions(options: Seq2SeqOptions, config: Any) -> Seq2SeqOptions:
    """Learned positions (BART) end at ``max_positions``: lengths beyond it are cut to it up front
    instead of failing at the first evaluation (a target of n tokens fills n decoder positions, in
    training and when generated: the start token and the first n - 1 tokens). Defaults are cut
    silently; lengths a user asked for get a note."""
    if config.positions != "learned":
        return options
    source = min(options.max_source_length, config.max_positions)
    target = min(options.max_target_length, config.max_positions)
    defaults = Seq2SeqOptions()
    cut_asked_source = source < options.max_source_length and options.max_source_length != defaults.max_source_length
    cut_asked_target = target < options.max_target_length and options.max_target_length != defaults.max_target_length
    if cut_asked_source or cut_asked_target:
        print(f"note: the model has {config.max_positions} positions: max source length {source}, "
              f"max target length {target}", file=sys.stderr)
    return dataclasses.replace(options, max_source_length=source, max_target_length=target)


def load_seq2seq_model(model: str, compile: bool = False) -> tuple[Any, Any]:
    """(model, tokenizer) of a model folder; the model must be an encoder-decoder with an LM head.
    ``compile``: its decoding step compiled (``lmzoo.generate.compile_decoding``)."""
    from lmzoo.generate import compile_decoding
    from lmzoo.pipelines import load_model_and_tokenizer

    net, tokenizer = load_model_and_tokenizer(model)
    if not hasattr(net, "prepare_generation") or not net.config.is_encoder_decoder:
        raise UserError(f"{model} is a {net.hf_architecture}; seq2seq needs T5ForConditionalGeneration or "
                        "BartForConditionalGeneration")
    return (compile_decoding(net) if compile else net), tokenizer


def finetune_seq2seq(*, model: str, train_path: str, eval_path: str | None, out: str | Path, train_config: Any,
                     options: Seq2SeqOptions = Seq2SeqOptions(), resume: bool = False, overwrite: bool = False,
                     progress: bool = True) -> tuple[Any, dict[str, float]]:
    """Fine-tune a T5/BART folder on pairs; returns (train result, generation metrics of the best model
    with its "step"; empty without eval pairs)."""
    from lmzoo.train.distributed import process_count
    from lmzoo.train.loop import check_finetune_out, fit_batch_to_data, train

    out = Path(out)
    check_finetune_out(out, model, resume=resume, overwrite=overwrite)
    net, tokenizer = load_seq2seq_model(model)
    options = fit_to_positions(options, net.config)
    train_data = _dataset(_read(train_path, options), tokenizer, options)
    train_config, note = fit_batch_to_data(train_config, len(train_data), process_count(), train_path)
    eval_pairs = _read(eval_path, options)[: options.max_eval_examples] if eval_path else []
    eval_data = _dataset(eval_pairs, tokenizer, options) if eval_pairs else None
    collate = Seq2SeqCollator(net.config.pad_token_id, label_smoothing=options.label_smoothing)
    select = seq2seq_selection(tokenizer, eval_pairs, options) if eval_pairs else None
    result = train(net, train_data, collate, out_dir=out, config=train_config, eval_data=eval_data, select=select,
                   resume=resume, overwrite=overwrite, progress=progress, notes=[note] if note else [],
                   finalize=lambda folder: save_task_files(folder, tokenizer, options),
                   run_signature={"max_source_length": options.max_source_length,
                                  "max_target_length": options.max_target_length})
    return result, result.best


def seq2seq_selection(tokenizer: Any, pairs: Sequence[tuple[str, str]], options: Seq2SeqOptions) -> Selection:
    """The loop's :class:`lmzoo.train.Selection`: generate for the eval sources, score BLEU / chrF /
    ROUGE-L against the targets; the best folder holds the model, its tokenizer and
    ``seq2seq_metrics.json``."""
    from lmzoo.train.loop import Selection

    sources, references = [s for s, _ in pairs], [t for _, t in pairs]

    def score_model(model: Any) -> dict[str, float]:
        predictions = generate_texts(model, tokenizer, sources, num_beams=options.num_beams,
                                     max_new_tokens=options.max_target_length, prefix=options.prefix)
        return text_metrics(predictions, references)

    def save_best(model: Any, folder: Path, metrics: dict[str, Any]) -> None:
        model.save_pretrained(folder)
        save_task_files(folder, tokenizer, options)
        atomic_write_json(folder / "seq2seq_metrics.json", metrics)

    return Selection(score=score_model, metric=options.metric, patience=options.patience, save_best=save_best)


def save_task_files(folder: Path, tokenizer: Any, options: Seq2SeqOptions) -> None:
    """The tokenizer and the source ``prefix`` (``lmzoo_seq2seq.json``) next to a model, so
    ``text2text`` applies the prefix the model was fine-tuned with."""
    tokenizer.save(folder)
    atomic_write_json(Path(folder) / TASK_FILE, {"prefix": options.prefix})


def saved_prefix(folder: str | Path) -> str:
    """The source prefix a folder was fine-tuned with ("" for a pretrained or foreign folder)."""
    import json

    path = Path(folder) / TASK_FILE
    if not path.is_file():
        return ""
    try:
        prefix = json.loads(path.read_text(encoding="utf-8")).get("prefix", "")
    except (ValueError, AttributeError, UnicodeDecodeError):
        raise UserError(f"{path}: not a valid lmzoo_seq2seq.json (delete it or fine-tune again)") from None
    if not isinstance(prefix, str):
        raise UserError(f"{path}: prefix must be a string, got {prefix!r}")
    return prefix


def _read(path: str | Path, options: Seq2SeqOptions) -> list[tuple[str, str]]:
    return read_pairs(path, source_column=options.source_column, target_column=options.target_column)


def _dataset(pairs: Sequence[tuple[str, str]], tokenizer: Any, options: Seq2SeqOptions) -> Seq2SeqDataset:
    return Seq2SeqDataset(pairs, tokenizer, max_source_length=options.max_source_length,
                          max_target_length=options.max_target_length, prefix=options.prefix)


# --- evaluation and prediction of a fine-tuned folder (lmzoo evaluate / predict / text2text) -----


def is_seq2seq_folder(folder: str | Path) -> bool:
    """Whether ``folder`` holds an encoder-decoder LM (text in, text out) rather than a classifier head,
    read from its config.json and the class it names (as loading picks it), before any weights load."""
    from lmzoo.hf import read_config
    from lmzoo.models import ARCHITECTURES, MODEL_TYPES
    from lmzoo.weights import read_hf_config

    config, architecture = read_config(folder)
    cls = ARCHITECTURES.get(architecture or "") or MODEL_TYPES[read_hf_config(folder)["model_type"]].default_architecture
    return bool(config.is_encoder_decoder and hasattr(cls, "prepare_generation") and not cls.head_kind)


def read_sources(source: str, *, source_column: str = "source") -> list[str]:
    """Source texts: the ``source_column`` of a .jsonl / .csv / .tsv file, else one text per non-blank
    line of a plain file or of stdin ("-")."""
    from lmzoo.tasks.data import TABLE_SUFFIXES

    if source != "-" and Path(source).suffix.lower() in TABLE_SUFFIXES:
        path = existing_file(source)
        texts = []
        for n, row in table_rows(path):
            text = str(table_cell(path, n, row, source_column) or "").strip()
            if not text:
                raise UserError(f"{path}:{n}: empty source")
            texts.append(text)
    else:
        if source != "-" and not Path(source).is_file():
            raise UserError(f"input file {source} not found")
        try:
            lines = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise UserError(f"{source} is not UTF-8 text ({e.reason} at byte {e.start})") from None
        if "\0" in lines:
            raise UserError(f"{'stdin' if source == '-' else source} is a binary file (NUL byte); expected text: "
                            "one input per line, or a .jsonl .csv .tsv file")
        texts = [line.strip() for line in lines.splitlines() if line.strip()]
    if not texts:
        raise UserError(f"no input in {'stdin' if source == '-' else source}")
    return texts


def predict_texts(folder: str | Path, sources: Sequence[str], *, prefix: str | None = None, max_new_tokens: int = 64,
                  num_beams: int = 1, batch_size: int = 32, compile: bool = False) -> list[str]:
    """The outputs of a T5 / BART folder for ``sources``, each read with ``prefix`` in front (default:
    the prefix the folder was fine-tuned with, :func:`saved_prefix`); ``compile``: decode with a
    compiled step."""
    if max_new_tokens < 1 or num_beams < 1:
        raise UserError("--max-new-tokens and --num-beams must be >= 1")
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    if not all(text.strip() for text in sources):
        raise UserError("an input text is empty")
    from lmzoo.inference import decoder_room

    prefix = saved_prefix(folder) if prefix is None else prefix
    model, tokenizer = load_seq2seq_model(str(folder), compile)
    config = model.config
    if config.positions == "learned":  # learned positions end at max_positions: say so instead of failing inside
        for n, ids in enumerate(tokenizer.encode_batch([prefix + s for s in sources]), 1):
            if len(tokenizer.build_inputs(ids)[0]) > config.max_positions:
                raise UserError(f"input {n} has more tokens than the model's {config.max_positions} positions")
        max_new_tokens = decoder_room(config, max_new_tokens)
    return generate_texts(model, tokenizer, list(sources), max_new_tokens=max_new_tokens, num_beams=num_beams,
                          batch_size=batch_size, prefix=prefix)


def prediction_lines(sources: Sequence[str], predictions: Sequence[str]) -> str:
    """One JSON object per line: ``{"source": ..., "prediction": ...}``."""
    import json

    return "".join(json.dumps({"source": s, "prediction": p}, ensure_ascii=False) + "\n"
                   for s, p in zip(sources, predictions))


def write_output(destination: str, text: str) -> None:
    """``text`` to stdout ("-") or, atomically, to a file."""
    if destination == "-":
        sys.stdout.write(text)
        return
    try:
        atomic_write_text(destination, text)
    except OSError as e:
        raise UserError(f"cannot write {destination}: {e.strerror or e}") from None


def evaluate_seq2seq(folder: str | Path, data_path: str | Path, *, out: str | Path | None = None,
                     source_column: str = "source", target_column: str = "target", prefix: str | None = None,
                     max_new_tokens: int = 128, num_beams: int = 1, batch_size: int = 32) -> dict[str, Any]:
    """BLEU / chrF / ROUGE-L (:func:`text_metrics`) of a T5 / BART folder's outputs against the targets
    of a pairs file, with ``n`` pairs; with ``out``, ``eval_metrics.json`` and the outputs
    (``eval_predictions.jsonl``, with their targets) are written there."""
    import json

    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise UserError(f"--out {out} is a file; it names a folder for the metrics and predictions")
    pairs = read_pairs(data_path, source_column=source_column, target_column=target_column)
    sources, targets = [s for s, _ in pairs], [t for _, t in pairs]
    predictions = predict_texts(folder, sources, prefix=prefix, max_new_tokens=max_new_tokens, num_beams=num_beams,
                                batch_size=batch_size)
    metrics: dict[str, Any] = {**text_metrics(predictions, targets), "n": len(pairs)}
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        atomic_write_json(Path(out) / "eval_metrics.json", metrics)
        atomic_write_text(Path(out) / "eval_predictions.jsonl", "".join(
            json.dumps({"source": s, "target": t, "prediction": p}, ensure_ascii=False) + "\n"
            for s, t, p in zip(sources, targets, predictions)))
    return metrics
