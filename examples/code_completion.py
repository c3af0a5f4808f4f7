"""Code completion: a GPT pretrained on the Python standard library of the running interpreter,
completing code from files it never saw, through `lmzoo complete`.

    python examples/code_completion.py                       # ~8 minutes of training, gpt-tiny
    python examples/code_completion.py --minutes 2 --preset gpt-mini

1. Corpus: every *.py under --source (default: this interpreter's stdlib) outside test folders
   (test/, tests/, idle_test/) and site-packages; a stable ~3% of the files (by a hash of their
   path) is held out: never seen by the tokenizer or the model.
2. A byte-level BPE tokenizer trained on the training files; tokenize → decode must give every
   file back exactly (indentation, blank lines, trailing spaces, non-ASCII), else the run stops.
3. `lmzoo.pretrain.pretrain(objective="clm", document_split="file")`: one document per file, the
   budget in --minutes turned into optimizer steps by timing a few steps of a short run first.
4. On the held-out files: loss, perplexity, bits per byte and next-token accuracy, against a
   unigram baseline (token frequencies of the training files) on exactly the same targets.
5. Prompts cut from held-out files (a function's signature and docstring, an
   `if __name__ == "__main__":` line, a `for` header, a half-written line) completed greedily with
   `lmzoo complete RUN --file PROMPT --until block|line`, next to what the file really says.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import itertools
import math
import re
import shutil
import sysconfig
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from lmzoo.cli import main as lmzoo_main
from lmzoo.data import TokenizedCorpus, iter_documents
from lmzoo.generate import code_block_end
from lmzoo.io import atomic_write_text
from lmzoo.models import family_spec
from lmzoo.objectives.clm import IGNORE_INDEX, ClmCollator, clm_dataset, clm_metrics
from lmzoo.pipelines import load_model_and_tokenizer
from lmzoo.presets import preset_config
from lmzoo.pretrain import pretrain
from lmzoo.tokenizer import Tokenizer, train_tokenizer
from lmzoo.train import TrainConfig, evaluate, read_metrics

SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
PROMPT_TOKENS = 128  # context given to each completion (the rest of seq_len is for new tokens)


def python_files(source: Path) -> tuple[list[Path], list[str]]:
    """Sorted *.py files under ``source`` outside test folders, and why others were skipped.

    A file must be UTF-8 and non-empty. Special-token strings inside a file (the regex group
    ``(?P<s>...)``) are fine: source text is encoded with ``split_special_tokens=True``, as
    ``lmzoo pretrain`` and ``lmzoo complete`` do."""
    files, skipped = [], []
    for path in sorted(source.rglob("*.py")):
        if SKIP_DIRS & set(path.relative_to(source).parts[:-1]) or not path.is_file():
            continue
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            skipped.append(f"{path.relative_to(source)} (not UTF-8)")
            continue
        if not text.strip():
            continue
        files.append(path)
    return files, skipped


def is_heldout(path: Path, source: Path, percent: float) -> bool:
    """Stable by the file's path relative to ``source``, whatever else is on the machine."""
    return zlib.crc32(path.relative_to(source).as_posix().encode()) % 10_000 < percent * 100


def check_round_trip(tokenizer: Tokenizer, files: list[Path], corpus: TokenizedCorpus | None = None) -> int:
    """Raise SystemExit unless decode(encode(file)) is every file byte for byte, and (with
    ``corpus``) every training document's cached tokens decode to that document. Returns the
    number of tokens of the files."""
    n_tokens, bad = 0, []
    for path in files:
        text = path.read_bytes().decode("utf-8")
        ids = tokenizer.encode(text, split_special_tokens=True)
        n_tokens += len(ids)
        if tokenizer.decode(ids) != text:
            bad.append(str(path))
    if corpus is not None:
        documents = list(iter_documents([str(p) for p in files], document_split="file"))
        if len(documents) != len(corpus):
            bad.append(f"the cache holds {len(corpus)} documents for {len(documents)} files")
        bad += [f"cached document {d}" for d, text in zip(corpus.doc_ids, documents)
                if tokenizer.decode(corpus.document_tokens(int(d)).tolist()) != text]
    if bad:
        raise SystemExit(f"tokenize → decode is not exact for {len(bad)} file(s): {', '.join(bad[:5])}")
    return n_tokens


def steps_for_budget(seconds: float, *, preset: str, files: list[Path], out: Path, batch_size: int,
                     seq_len: int) -> tuple[int, float]:
    """(optimizer steps that fit in ``seconds``, seconds per step), timed with a short pretrain run."""
    config = TrainConfig(max_steps=8, batch_size=batch_size, log_every=4, eval_batches=1)
    pretrain(preset=preset, objective="clm", data=[str(p) for p in files[::10]], out=out / "calibrate",
             train_config=config, seq_len=seq_len, tokenizer_path=str(out),
             eval_fraction=0.1, document_split="file", overwrite=True, progress=False)
    window = [r for r in read_metrics(out / "calibrate" / "metrics.jsonl") if "tokens_per_s" in r][-1]
    per_step = batch_size * seq_len / window["tokens_per_s"]  # the last window: warm, without step 1
    shutil.rmtree(out / "calibrate")
    return max(1, int(seconds / per_step)), per_step


def heldout_metrics(model, tokenizer: Tokenizer, corpus: TokenizedCorpus, n_bytes: int, train_counts: torch.Tensor,
                    seq_len: int) -> dict[str, float]:
    """Loss, perplexity, bits per byte (``n_bytes``: the corpus' size in UTF-8) and next-token
    accuracy on every target of the held-out corpus, and the same for a unigram model of the
    training tokens (add-one smoothed; it always guesses the most frequent token)."""
    unigram_logp = torch.log((train_counts + 1) / (train_counts + 1).sum())
    top = int(train_counts.argmax())
    accuracy = clm_metrics()

    def metrics(batch, output) -> dict[str, float]:
        target = batch["labels"][:, 1:]
        keep = target != IGNORE_INDEX
        nll = F.cross_entropy(output.logits[:, :-1].flatten(0, 1).float(), target.flatten(), reduction="sum",
                              ignore_index=IGNORE_INDEX)
        return {**accuracy(batch, output), "nll_sum": float(nll),
                "unigram_nll_sum": float(-unigram_logp[target[keep]].sum()),
                "unigram_correct": float((target[keep] == top).sum()), "unigram_total": float(keep.sum()),
                "targets": float(keep.sum())}  # the *_total sums become accuracies; this one stays

    data = clm_dataset(corpus, seq_len, tokenizer.eos_id)
    m = evaluate(model, data, ClmCollator(tokenizer.eos_id, tokenizer.pad_id), batch_size=16,
                 max_batches=math.ceil(len(data) / 16), device=torch.device("cpu"), metrics_fn=metrics)
    n = m["targets"]
    loss, unigram_loss = m["nll_sum"] / n, m["unigram_nll_sum"] / n
    bits = corpus.n_tokens / n_bytes / math.log(2)  # nats per token → bits per byte of code
    return {"targets": n, "loss": loss, "perplexity": math.exp(loss), "accuracy": m["clm_accuracy"],
            "bits_per_byte": loss * bits, "unigram_loss": unigram_loss, "unigram_perplexity": math.exp(unigram_loss),
            "unigram_accuracy": m["unigram_accuracy"], "unigram_bits_per_byte": unigram_loss * bits}


@dataclass(frozen=True)
class Prompt:
    name: str
    path: Path
    prefix: str  # the code before the cut, ending without a newline
    rest: str  # what the file really says after it
    until: str  # "block" or "line"


def _prompt(name: str, path: Path, text: str, cut: int, until: str, tokenizer: Tokenizer) -> Prompt:
    """The prompt ending at character ``cut`` of ``text``, starting at the earliest line that keeps
    it within PROMPT_TOKENS tokens."""
    starts = [0] + [m.end() for m in re.finditer("\n", text[:cut])]
    start = next((s for s in starts if len(tokenizer.encode(text[s:cut], split_special_tokens=True)) <= PROMPT_TOKENS),
                 starts[-1])
    return Prompt(name, path, text[start:cut], text[cut:], until)


def find_prompts(files: list[Path], tokenizer: Tokenizer) -> list[Prompt]:
    """The first held-out place (files in sorted order) of each kind of prompt."""
    found: dict[str, Prompt] = {}
    for path in files:
        text = path.read_bytes().decode("utf-8")
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue
        lines = text.splitlines(keepends=True)
        ends = [0, *itertools.accumulate(len(line) for line in lines)]  # ends[k]: offset after line k
        for node in ast.walk(tree):
            if (isinstance(node, ast.FunctionDef) and "def" not in found and 2 <= len(node.body) <= 6
                    and ast.get_docstring(node) and lines[node.body[0].lineno - 1].lstrip().startswith('"""')
                    and node.end_lineno - node.body[0].end_lineno <= 8):
                found["def"] = _prompt("def + docstring", path, text, ends[node.body[0].end_lineno] - 1,
                                       "block", tokenizer)
            if (isinstance(node, ast.For) and "for" not in found and node.lineno == node.body[0].lineno - 1
                    and node.end_lineno - node.lineno <= 4):
                found["for"] = _prompt("for loop", path, text, ends[node.lineno] - 1, "block", tokenizer)
            if (isinstance(node, ast.Raise) and "raise" not in found and node.lineno == node.end_lineno
                    and isinstance(node.exc, ast.Call) and node.exc.args):
                line = lines[node.lineno - 1]
                cut = ends[node.lineno - 1] + line.index("(", node.col_offset) + 1
                found["raise"] = _prompt("raise, half a line", path, text, cut, "line", tokenizer)
        for node in tree.body:  # top level only: the same line inside a docstring does not count
            if (isinstance(node, ast.If) and "main" not in found and node.body[0].lineno == node.lineno + 1
                    and ast.unparse(node.test) == "__name__ == '__main__'"):
                found["main"] = _prompt("__main__", path, text, ends[node.lineno] - 1, "block", tokenizer)
    return [found[k] for k in ("def", "main", "for", "raise") if k in found]


def complete(run: Path, prompt_file: Path, until: str, max_new_tokens: int) -> str:
    """What `lmzoo complete RUN --file PROMPT --until UNTIL` prints (greedy)."""
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = lmzoo_main(["complete", str(run), "--file", str(prompt_file), "--until", until,
                           "--max-new-tokens", str(max_new_tokens)])
    if code != 0:
        raise SystemExit(f"lmzoo complete failed with exit code {code}")
    return stdout.getvalue().removesuffix("\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", type=Path, default=Path(sysconfig.get_paths()["stdlib"]),
                   help="folder of Python code (default: this interpreter's standard library)")
    p.add_argument("--out", type=Path, default=Path("runs/code-gpt"))
    p.add_argument("--minutes", type=float, default=8.0, help="training budget (default 8)")
    p.add_argument("--steps", type=int, help="train exactly this many steps (default: what fits in --minutes)")
    p.add_argument("--preset", default="gpt-tiny", choices=["gpt-tiny", "gpt-mini"])
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8, help="default 8: more steps beat bigger batches here")
    p.add_argument("--lr", type=float, help="peak learning rate (default 2e-3 for gpt-tiny, 1e-3 for gpt-mini)")
    p.add_argument("--heldout-percent", type=float, default=3.0, help="share of files held out (default 3)")
    args = p.parse_args()
    start = time.perf_counter()
    source, out = args.source.resolve(), args.out
    if not source.is_dir():
        raise SystemExit(f"--source {source} is not a folder")
    if args.steps is not None and args.steps < 1:
        raise SystemExit(f"--steps must be >= 1, got {args.steps}")

    files, skipped = python_files(source)
    train_files = [f for f in files if not is_heldout(f, source, args.heldout_percent)]
    heldout = [f for f in files if is_heldout(f, source, args.heldout_percent)]
    if len(train_files) < 10 or not heldout:
        raise SystemExit(f"too few Python files under {source}: {len(train_files)} to train on, {len(heldout)} held out")
    print(f"{len(files)} Python files under {source}: {len(train_files)} to train on, {len(heldout)} held out")
    for reason in skipped:
        print(f"  skipped {reason}")

    out.mkdir(parents=True, exist_ok=True)
    spec = family_spec(preset_config(args.preset).family)  # GPT: byte-level BPE adding no special tokens
    train_tokenizer([str(f) for f in train_files], kind=spec.tokenizer_kind, template=spec.template,
                    vocab_size=args.vocab_size, out_dir=str(out), document_split="file")
    tokenizer = Tokenizer.load(out)  # what pretrain and `lmzoo complete` will load
    corpus = TokenizedCorpus.build([str(f) for f in train_files], tokenizer, out / "cache", document_split="file")
    n_train = check_round_trip(tokenizer, train_files, corpus)
    n_heldout = check_round_trip(tokenizer, heldout)
    print(f"byte-level BPE, {tokenizer.vocab_size} tokens: every file round-trips exactly; "
          f"{n_train:,} training tokens, {n_heldout:,} held out "
          f"({sum(f.stat().st_size for f in train_files) / n_train:.2f} bytes per token)")

    steps = args.steps
    if steps is None:
        steps, per_step = steps_for_budget(args.minutes * 60, preset=args.preset, files=train_files, out=out,
                                           batch_size=args.batch_size, seq_len=args.seq_len)
        print(f"{args.preset}: {per_step:.2f} s per step of {args.batch_size}x{args.seq_len} tokens → {steps} "
              f"steps in {args.minutes:g} min")
    lr = args.lr or {"gpt-tiny": 2e-3, "gpt-mini": 1e-3}[args.preset]
    config = TrainConfig(max_steps=steps, batch_size=args.batch_size, lr=lr, weight_decay=0.1,
                         warmup_steps=min(100, steps // 10), schedule="cosine", min_lr_ratio=0.1, eval_batches=4,
                         log_every=max(1, steps // 20))
    t = time.perf_counter()
    result = pretrain(preset=args.preset, objective="clm", data=[str(f) for f in train_files], out=out,
                      train_config=config, seq_len=args.seq_len,
                      tokenizer_path=str(out), eval_fraction=0.002, document_split="file", overwrite=True)
    train_s = time.perf_counter() - t
    epochs = steps * args.batch_size * args.seq_len / n_train
    print(f"trained {result.step} steps ({epochs:.2f} epochs) in {train_s / 60:.1f} min, "
          f"final train loss {result.train_loss:.3f}")

    model, tokenizer = load_model_and_tokenizer(out)
    heldout_corpus = TokenizedCorpus.build([str(f) for f in heldout], tokenizer, out / "heldout-cache",
                                           document_split="file")
    counts = torch.bincount(torch.from_numpy(corpus.tokens[:].astype("int64")), minlength=tokenizer.vocab_size)
    counts[tokenizer.eos_id] += len(corpus)  # one end-of-text target per training document
    n_bytes = sum(len(doc.encode()) for doc in iter_documents([str(f) for f in heldout], document_split="file"))
    m = heldout_metrics(model, tokenizer, heldout_corpus, n_bytes, counts.double(), args.seq_len)
    print(f"\nheld-out files ({m['targets']:,.0f} next-token targets):")
    print(f"  {'':10} {'loss':>7} {'ppl':>9} {'bits/byte':>9} {'accuracy':>9}")
    for name, key in (("unigram", "unigram_"), (args.preset, "")):
        print(f"  {name:10} {m[key + 'loss']:7.3f} {m[key + 'perplexity']:9.1f} {m[key + 'bits_per_byte']:9.3f} "
              f"{m[key + 'accuracy']:9.3f}")

    (out / "prompts").mkdir(exist_ok=True)
    for n, prompt in enumerate(find_prompts(heldout, tokenizer), 1):
        prompt_file = out / "prompts" / f"{n}.py"
        atomic_write_text(prompt_file, prompt.prefix)
        # positions beyond seq_len were never trained
        room = args.seq_len - len(tokenizer.encode(prompt.prefix, split_special_tokens=True))
        completion = complete(out, prompt_file, prompt.until, max(1, min(128, room)))
        cut = code_block_end(prompt.prefix, prompt.until)(prompt.rest)
        reference = prompt.rest[:cut].rstrip("\n") if cut is not None else prompt.rest.rstrip("\n")
        *before, last = prompt.prefix.split("\n")
        print(f"\n=== {prompt.name} ({prompt.path.relative_to(source)}): "
              f"lmzoo complete {out} --file {prompt_file} --until {prompt.until}")
        print("--- prompt (last lines)\n" + "\n".join(before[-3:] + [last]))
        print(f"--- model\n{last}{completion}\n--- the file\n{last}{reference}")
    print(f"\ntotal wall time {(time.perf_counter() - start) / 60:.1f} min; model and tokenizer in {out}")


if __name__ == "__main__":
    main()
