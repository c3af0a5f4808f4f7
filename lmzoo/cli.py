"""`lmzoo <verb>`: a dict of verbs → functions. A user mistake prints one line and exits 2."""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from lmzoo.errors import UserError
from lmzoo.options import Switch

if TYPE_CHECKING:
    from lmzoo.objectives import Objective

# verb name → (one-line help, function adding its arguments, function running it)
VERBS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int | None]]] = {}


def verb(name: str, help: str, arguments: Callable[[argparse.ArgumentParser], None]):
    """Register ``fn(args)`` as ``lmzoo <name>``."""

    def register(fn: Callable[[argparse.Namespace], int | None]):
        VERBS[name] = (help, arguments, fn)
        return fn

    return register


def _train_arguments(p: argparse.ArgumentParser) -> None:
    """Optimisation flags shared by pretraining and fine-tuning (TrainConfig fields)."""
    g = p.add_argument_group("training")
    g.add_argument("--max-steps", type=int, default=1000, help="optimizer steps")
    g.add_argument("--epochs", type=float, help="passes over the training data; replaces --max-steps")
    g.add_argument("--batch-size", type=int, default=32, help="examples per process per micro-step")
    g.add_argument("--grad-accum", type=int, default=1, help="micro-steps per optimizer step")
    g.add_argument("--lr", type=float, default=5e-4, help="peak learning rate")
    g.add_argument("--weight-decay", type=float, default=0.01)
    g.add_argument("--warmup-steps", type=int, default=0)
    g.add_argument("--schedule", default="linear", choices=["linear", "cosine", "constant"])
    g.add_argument("--clip-norm", type=float, default=1.0, help="gradient clipping (<= 0: off)")
    g.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="bf16 = autocast")
    g.add_argument("--eval-every", type=int, default=0, help="evaluate every N steps (0: at the end)")
    g.add_argument("--eval-batches", type=int, default=20)
    g.add_argument("--log-every", type=int, default=10)
    g.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps (0: at the end)")
    g.add_argument("--keep-checkpoints", type=int, default=2)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--compile", action=Switch, default=False, help="torch.compile the model")
    g.add_argument("--fsdp", action=Switch, default=False, help="shard with FSDP2 under torchrun (default DDP)")
    g.add_argument("--activation-checkpointing", action=Switch, default=False,
                   help="recompute each layer's activations in the backward pass (less memory, ~30%% more compute)")
    g.add_argument("--tensorboard", action=Switch, default=False, help="also write TensorBoard events to OUT/tensorboard")
    g.add_argument("--peak-flops", type=float, help="FLOP/s of one device for MFU (default: a cached matmul probe)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    g.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def train_config_from_args(args: argparse.Namespace):
    from lmzoo.train.loop import TrainConfig

    return TrainConfig(epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size, grad_accum=args.grad_accum,
                       lr=args.lr, weight_decay=args.weight_decay, warmup_steps=args.warmup_steps, schedule=args.schedule,
                       clip_norm=None if args.clip_norm <= 0 else args.clip_norm, precision=args.precision,
                       eval_every=args.eval_every, eval_batches=args.eval_batches, log_every=args.log_every,
                       save_every=args.save_every, keep_checkpoints=args.keep_checkpoints, seed=args.seed,
                       compile=args.compile, fsdp=args.fsdp, activation_checkpointing=args.activation_checkpointing,
                       tensorboard=args.tensorboard, peak_flops=args.peak_flops)


def _data_spec(data: list[str] | None):
    from lmzoo.data import default_corpus

    return data if data else [str(p) for p in default_corpus()]


def _tokenizer_arguments(p: argparse.ArgumentParser) -> None:
    from lmzoo.data import DOCUMENT_SPLITS

    p.add_argument("data", nargs="*", help="files, folders (also datasets save_to_disk folders) or globs of .txt "
                   ".md .jsonl .csv .parquet (text ones optionally .gz); default: the bundled Shakespeare plays")
    p.add_argument("--text-column", default="text", help="the text column of .jsonl .csv .parquet and datasets")
    p.add_argument("--document-split", default="blank_line", choices=list(DOCUMENT_SPLITS))
    p.add_argument("--kind", required=True, choices=["wordpiece", "bpe", "unigram"],
                   help="wordpiece (BERT), byte-level bpe (RoBERTa/GPT-2/BART), unigram (T5/XLNet)")
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--out", required=True, help="folder for tokenizer.json (+ vocab files)")
    p.add_argument("--lowercase", action="store_true")
    p.add_argument("--min-frequency", type=int, default=2)
    p.add_argument("--extra-ids", type=int, default=0, help="T5 sentinels <extra_id_N> (unigram only)")
    p.add_argument("--special-token", action="append", default=[], help="an extra special token (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace the model's or tokenizer's files already in --out")


@verb("train-tokenizer", "train a WordPiece / byte-level BPE / Unigram tokenizer on your text", _tokenizer_arguments)
def cmd_train_tokenizer(args: argparse.Namespace) -> None:
    from lmzoo.tokenizer import train_tokenizer

    tok = train_tokenizer(_data_spec(args.data), kind=args.kind, vocab_size=args.vocab_size, out_dir=args.out,
                          lowercase=args.lowercase, min_frequency=args.min_frequency, extra_ids=args.extra_ids,
                          special_tokens=args.special_token, overwrite=args.overwrite, text_field=args.text_column,
                          document_split=args.document_split)
    print(f"{args.kind} tokenizer with {tok.vocab_size} tokens written to {args.out}")


def _pretrain_arguments(p: argparse.ArgumentParser) -> None:
    from lmzoo.objectives import OBJECTIVES
    from lmzoo.presets import PRESETS

    m = p.add_argument_group("model (one of --preset, --config, --model)")
    m.add_argument("--preset", choices=list(PRESETS), help="a named model size and family (random init)")
    m.add_argument("--config", help="an HF config.json or lmzoo config file: a custom size (random init)")
    m.add_argument("--model", help="an lmzoo or HF model folder: continue pretraining it, with its tokenizer")
    m.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="model config fields set on top, typed (e.g. --set n_layers=4 dropout=0.0)")
    p.add_argument("--run-config", help="replay OUT/run_config.json of an earlier run; flags given here override it")
    p.add_argument("--objective", help=f"one of {', '.join(OBJECTIVES)} (default: the family's own)")
    p.add_argument("--data", nargs="+", action="extend",
                   help="files, folders (also datasets save_to_disk folders) or globs of .txt .md .jsonl .csv "
                   ".parquet; default: the bundled Shakespeare plays")
    p.add_argument("--data-weights", nargs="+", action="extend", type=float,
                   help="one weight per --data entry: examples are drawn from each source in proportion")
    p.add_argument("--text-column", default="text", help="the text column of .jsonl .csv .parquet and datasets")
    p.add_argument("--out", required=True, help="run folder: model, tokenizer, metrics, checkpoints")
    p.add_argument("--tokenizer", help="an HF tokenizer folder (default: train one on --data)")
    p.add_argument("--vocab-size", type=int, default=8000, help="for a tokenizer trained here")
    p.add_argument("--lowercase", action=Switch, default=False, help="for a tokenizer trained here")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per example")
    p.add_argument("--eval-fraction", type=float, default=0.02, help="share of documents held out")
    p.add_argument("--document-split", default="blank_line", choices=["blank_line", "file"])
    _objective_arguments(p)
    _train_arguments(p)


def _objective_arguments(p: argparse.ArgumentParser) -> None:
    """One flag group per objective options dataclass, its flags derived from the dataclass; the
    argparse destinations are the field names (all distinct: tests/test_objective_units.py)."""
    from lmzoo.models import OBJECTIVE_FAMILIES
    from lmzoo.objectives import objectives_by_options
    from lmzoo.options import add_options

    for cls, units in objectives_by_options().items():
        names = [u.name for u in units]
        families = dict.fromkeys(f for name in names for f in OBJECTIVE_FAMILIES.get(name, []))
        add_options(p, cls, f"{units[0].title} (--objective {' / '.join(names)}: {', '.join(families)} presets)")


def objective_options_from_args(args: argparse.Namespace, unit: "Objective") -> Any:
    """The options dataclass of ``unit`` from its flags (validated by the dataclass); a flag of
    another objective set to anything but its default is a UserError, not silently ignored."""
    from lmzoo.objectives import objectives_by_options
    from lmzoo.options import cli_fields, flag_name, options_from_args

    for cls, units in objectives_by_options().items():
        if cls is unit.options:
            continue
        for f in cli_fields(cls):
            if hasattr(args, f.name) and getattr(args, f.name) != f.default:
                raise UserError(f"{flag_name(f)} is an option of objective {' / '.join(u.name for u in units)}, "
                                f"not of {unit.name}")
    return options_from_args(unit.options, args)


@verb("pretrain", "pretrain (or continue pretraining) a model with its objective on local text", _pretrain_arguments)
def cmd_pretrain(args: argparse.Namespace) -> None:
    from lmzoo.pretrain import objective_for, pretrain
    from lmzoo.run_config import ModelSource, base_config, parse_overrides, replay_args
    from lmzoo.train.distributed import is_main_process

    if args.run_config:  # options not given here take the recorded run's values
        replay_args(args, args._given, args.run_config)
    ignored = sorted({"vocab_size", "lowercase"} & args._given) if args.tokenizer or args.model else []
    if ignored:  # those flags shape a tokenizer trained here: say they would do nothing
        raise UserError(f"--{ignored[0].replace('_', '-')} shapes the tokenizer trained on --data; the run uses the "
                        f"tokenizer of --{'tokenizer' if args.tokenizer else 'model'} as it is")
    overrides = parse_overrides(args.set)
    source = ModelSource(preset=args.preset, config=args.config, model=args.model, overrides=tuple(overrides.items()))
    unit = objective_for(base_config(source).family, args.objective)
    recorded = {k: v for k, v in vars(args).items() if not k.startswith("_") and k not in (
        "verb", "out", "resume", "overwrite", "run_config", "no_progress")}  # the objective as given: a replay
    # with another --preset takes that family's default
    for key in ("data", "tokenizer", "model", "config"):  # the replay may run from another folder
        value = recorded[key]
        recorded[key] = [os.path.abspath(v) for v in value] if isinstance(value, list) else (
            os.path.abspath(value) if value else value)
    result = pretrain(preset=args.preset, model=args.model, config=args.config, model_overrides=overrides,
                      objective=unit.name, data=_data_spec(args.data), out=args.out,
                      train_config=train_config_from_args(args), options=objective_options_from_args(args, unit),
                      seq_len=args.seq_len, tokenizer_path=args.tokenizer, vocab_size=args.vocab_size,
                      lowercase=args.lowercase, eval_fraction=args.eval_fraction, document_split=args.document_split,
                      text_field=args.text_column, data_weights=args.data_weights, resume=args.resume,
                      overwrite=args.overwrite, progress=not args.no_progress, run_args=recorded)
    if not is_main_process():
        return
    metrics = ", ".join(f"{k.removeprefix('eval_')} {v:.4g}" for k, v in result.eval_metrics.items())
    compiled = f"; compiled in {result.compile_s:.1f} s" if result.compile_s else ""
    print(f"step {result.step}: train loss {result.train_loss:.4f}" + (f"; held-out {metrics}" if metrics else "")
          + f"{compiled}; model in {args.out}")


def _fill_mask_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model folder (with its tokenizer)")
    p.add_argument("text", help='text with [MASK] (or <mask>) where tokens should be predicted')
    p.add_argument("--top-k", type=int, default=5)


@verb("fill-mask", "predict the masked tokens of a text, with probabilities", _fill_mask_arguments)
def cmd_fill_mask(args: argparse.Namespace) -> None:
    from lmzoo.pipelines import fill_mask, load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(args.model)
    for n, predictions in enumerate(fill_mask(model, tokenizer, args.text, top_k=args.top_k), 1):
        print(f"mask {n}:")
        for p in predictions:
            print(f"  {p.probability:7.4f}  {p.token}")


def _nsp_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a BertForPreTraining folder (with its tokenizer)")
    p.add_argument("first", help="sentence A")
    p.add_argument("second", help="sentence B")


@verb("nsp", "probability that sentence B follows sentence A (BERT next-sentence head)", _nsp_arguments)
def cmd_nsp(args: argparse.Namespace) -> None:
    from lmzoo.pipelines import load_model_and_tokenizer, next_sentence_probability

    model, tokenizer = load_model_and_tokenizer(args.model)
    print(f"P(B follows A) = {next_sentence_probability(model, tokenizer, args.first, args.second):.4f}")


def _refuse_file_out(out: str) -> None:
    """--out names a folder of runs: an existing file there is a UserError before anything is written."""
    if Path(out).exists() and not Path(out).is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the runs")


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="folder for the demo's models")
    p.add_argument("--only", nargs="+", action="extend", help="run only these sections")


@verb("demo", "pretrain tiny models on the bundled plays and show each approach working", _demo_arguments)
def cmd_demo(args: argparse.Namespace) -> None:
    from lmzoo.demo import run_demo

    _refuse_file_out(args.out)
    run_demo(args.out, only=args.only)


def _explain_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("text", help="the text to explain ('-' reads stdin); blank lines separate documents")
    p.add_argument("--objective", required=True, help="mlm, mlm+nsp, clm, span, denoise or plm")
    p.add_argument("--tokenizer", help="a tokenizer folder (default: the objective's kind, trained once on the "
                                       "bundled plays and cached)")
    p.add_argument("--seed", type=int, default=0, help="seeds the objective's random choices")
    p.add_argument("--json", action="store_true", help="print the explanation as JSON")
    p.add_argument("--png", help="also draw the attention / permutation masks into this PNG file")
    p.add_argument("--no-color", action="store_true", help="no colours (they are off anyway when not a terminal)")
    _objective_arguments(p)


@verb("explain", "show what a pretraining objective does to a text: masks, pairs, targets, spans, noise, orders",
      _explain_arguments)
def cmd_explain(args: argparse.Namespace) -> None:
    import json
    import sys

    from lmzoo.explain import explain, render, write_png
    from lmzoo.objectives import get_objective
    from lmzoo.tokenizer import Tokenizer

    unit = get_objective(args.objective)
    options = objective_options_from_args(args, unit)
    text = sys.stdin.read() if args.text == "-" else args.text
    tokenizer = Tokenizer.load(args.tokenizer) if args.tokenizer else None
    explanation = explain(unit.name, text, tokenizer=tokenizer, seed=args.seed, options=options)
    if args.png:
        write_png(explanation, args.png)
    if args.json:
        print(json.dumps(explanation, ensure_ascii=False))
    else:
        sys.stdout.write(render(explanation, color=not args.no_color and sys.stdout.isatty()))


def run_seq2seq_finetune(args: argparse.Namespace) -> None:
    from lmzoo.options import options_from_args
    from lmzoo.tasks.seq2seq import Seq2SeqOptions, finetune_seq2seq

    options = options_from_args(Seq2SeqOptions, args, metric=args.metric, patience=args.patience)
    result, best = finetune_seq2seq(model=args.model, train_path=args.train, eval_path=args.eval, out=args.out,
                                    train_config=train_config_from_args(args), options=options, resume=args.resume,
                                    overwrite=args.overwrite, progress=not args.no_progress)
    scores = ", ".join(f"{k} {v:.2f}" for k, v in best.items() if k != "step")
    print(f"step {result.step}: train loss {result.train_loss:.4f}"
          + (f"; best (step {best['step']}): {scores} in {args.out}/best" if best else f"; model in {args.out}"))


def _text2text_arguments(p: argparse.ArgumentParser, *, texts: str = "+") -> None:
    p.add_argument("model", help="a T5 / BART model folder (with its tokenizer)")
    p.add_argument("text", nargs=texts, help='input text(s), e.g. "summarize: ..."')
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--num-beams", type=int, default=1)
    _compile_decoding_argument(p)


def _prefix_argument(p: argparse.ArgumentParser | Any) -> None:
    p.add_argument("--prefix", help="prepended to every input (default: the prefix the folder was fine-tuned "
                                    "with, saved in its lmzoo_seq2seq.json)")


def _text2text_file_arguments(p: argparse.ArgumentParser) -> None:
    _text2text_arguments(p, texts="*")
    _prefix_argument(p)
    p.add_argument("--input", help="read the inputs from this file instead: the --source-column of a .jsonl "
                   ".csv .tsv file, else one text per line (- = stdin)")
    p.add_argument("--source-column", default="source", help="the inputs' column in a .jsonl .csv .tsv --input")
    p.add_argument("--output", help="write the outputs to this file instead of stdout: .jsonl gets "
                   '{"source", "prediction"} lines, any other name one output per line')


@verb("text2text", "generate an output text for each input text with a T5 / BART model",
      _text2text_file_arguments)
def cmd_text2text(args: argparse.Namespace) -> None:
    from lmzoo.tasks.seq2seq import predict_texts, prediction_lines, read_sources, write_output

    if bool(args.text) == bool(args.input):
        raise UserError("give the input texts either on the command line or as --input FILE")
    if args.text and args.source_column != "source":
        raise UserError("--source-column names the inputs' column in an --input file; the texts came on the "
                        "command line")
    sources = args.text or read_sources(args.input, source_column=args.source_column)
    outputs = predict_texts(args.model, sources, prefix=args.prefix, max_new_tokens=args.max_new_tokens,
                            num_beams=args.num_beams, compile=args.compile)
    if args.output and Path(args.output).suffix.lower() == ".jsonl":
        write_output(args.output, prediction_lines(sources, outputs))
    else:
        write_output(args.output or "-", "".join(output + "\n" for output in outputs))


@verb("reconstruct", "fill the <mask> spans of a text with a BART model (T5: <extra_id_N> sentinels)",
      _text2text_arguments)
def cmd_reconstruct(args: argparse.Namespace) -> None:
    from lmzoo.inference import decoder_room
    from lmzoo.tasks.seq2seq import load_seq2seq_model, reconstruct_texts

    model, tokenizer = load_seq2seq_model(args.model, compile=args.compile)
    max_new_tokens = decoder_room(model.config, args.max_new_tokens)
    for output in reconstruct_texts(model, tokenizer, args.text, max_new_tokens=max_new_tokens,
                                    num_beams=args.num_beams):
        print(output)


def _sampling_arguments(p: argparse.ArgumentParser, max_new_tokens: int) -> None:
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    p.add_argument("--temperature", type=float, help="sample with this temperature (default: greedy)")
    p.add_argument("--top-k", type=int, help="sample from the k most probable tokens")
    p.add_argument("--top-p", type=float, help="sample from the smallest set with this probability (0, 1]")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeats")
    p.add_argument("--seed", type=int, help="seed for reproducible sampling")
    p.add_argument("--bf16", action="store_true", help="run the model in bfloat16")
    p.add_argument("--quantize", choices=["int8"],
                   help="int8 weight-only quantization (bf16 activations): fastest decoding, slightly different "
                        "outputs")
    _compile_decoding_argument(p)


def _compile_decoding_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the decoding step (same output; pays a one-time compile first)")


def _generate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a model folder with an LM head and its tokenizer (e.g. from lmzoo pretrain)")
    p.add_argument("prompt", help="text to continue")
    _sampling_arguments(p, 50)
    p.add_argument("--num-beams", type=int, default=1, help="beam search with this many beams")
    p.add_argument("--num-return-sequences", type=int, default=1)
    p.add_argument("--length-penalty", type=float, default=1.0, help="beam search: > 1 favours longer outputs")
    p.add_argument("--stop", action="append", default=[], help="stop at this string (repeatable)")


@verb("generate", "continue a prompt with a causal LM (greedy, sampling or beam search), streamed",
      _generate_arguments)
def cmd_generate(args: argparse.Namespace) -> None:
    import torch

    from lmzoo.generate import TextStreamer, continuation_text, generate, truncate_at_stop
    from lmzoo.inference import encode_prompt, load_lm, sampling_options

    if args.num_beams < 1 or args.num_return_sequences < 1:
        raise UserError("--num-beams and --num-return-sequences must be >= 1")
    if not math.isfinite(args.length_penalty):
        raise UserError(f"--length-penalty must be a finite number, got {args.length_penalty}")
    if args.length_penalty != 1.0 and args.num_beams == 1:
        raise UserError("--length-penalty scores beam hypotheses: it needs --num-beams > 1")
    options = sampling_options(args)
    if args.seed is not None and not options["do_sample"]:
        raise UserError("--seed seeds sampling: give --temperature, --top-k or --top-p too (greedy and beam "
                        "search are deterministic)")
    model, tokenizer = load_lm(args.model, args.bf16, args.quantize, args.compile)
    ids, max_new = encode_prompt(model, tokenizer, args.prompt, args.max_new_tokens)
    stream = args.num_beams == 1 and args.num_return_sequences == 1 and not args.stop
    # a decoder-only model continues the prompt: its new text is what follows the prompt's tokens
    # (a Unigram piece "▁enter" alone decodes to "enter", glued to the prompt)
    prompt_ids = [] if model.config.is_encoder_decoder else ids
    streamer = TextStreamer(tokenizer, prompt_ids=prompt_ids) if stream else None
    if stream and prompt_ids:
        print(args.prompt, end="", flush=True)
    out = generate(model, torch.tensor([ids]), max_new_tokens=max_new, num_beams=args.num_beams,
                   num_return_sequences=args.num_return_sequences, length_penalty=args.length_penalty,
                   stop_strings=tuple(args.stop), tokenizer=tokenizer, streamer=streamer, **options)
    if stream:
        print()
        return
    prefix = "" if model.config.is_encoder_decoder else args.prompt
    for n, row in enumerate(out.tolist()):
        if n:
            print("---")
        print(prefix + truncate_at_stop(continuation_text(tokenizer, prompt_ids, row), args.stop))


def _chat_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a causal LM folder, e.g. trained on a dialogue corpus of speaker turns")
    p.add_argument("--user", default="Romeo", help="your speaker name")
    p.add_argument("--bot", default="Juliet", help="the model's speaker name")
    p.add_argument("--context", type=int, help="positions for the conversation + reply; older turns are dropped "
                   "(default: the --seq-len the folder was pretrained at, from its run_config.json, else the "
                   "model's max positions)")
    _sampling_arguments(p, 80)


@verb("chat", "talk with a causal LM, one line of stdin per turn (speaker-turn format)", _chat_arguments)
def cmd_chat(args: argparse.Namespace) -> None:
    import torch

    from lmzoo.generate import can_write, generate, truncate_at_stop
    from lmzoo.inference import empty_reply_note, load_lm, sampling_options
    from lmzoo.objectives.clm import TURN_END, chat_turn
    from lmzoo.run_config import trained_seq_len

    options = sampling_options(args)
    if args.max_new_tokens <= 0:
        raise UserError(f"--max-new-tokens must be > 0, got {args.max_new_tokens}")
    model, tokenizer = load_lm(args.model, args.bf16, args.quantize, args.compile)
    if model.config.is_encoder_decoder:
        raise UserError("chat needs a decoder-only causal LM (e.g. GPT2LMHeadModel)")
    if not can_write(tokenizer, TURN_END):  # a reply can never end its turn: said once, not silently
        print(f"note: {args.model}'s {tokenizer.kind} tokenizer cannot write a blank line, which ends a turn: "
              "each reply runs to --max-new-tokens (a byte-level BPE model stops at the end of its turn)",
              file=sys.stderr)
    context = args.context if args.context is not None else min(  # past the trained positions replies fall apart
        trained_seq_len(args.model) or model.config.max_positions, model.config.max_positions)
    if not 0 < context <= model.config.max_positions:
        raise UserError(f"--context must be in 1..{model.config.max_positions} (the model's positions), got {context}")
    budget = context - args.max_new_tokens
    if budget < 8:
        raise UserError(f"--max-new-tokens {args.max_new_tokens} leaves no room for the conversation in a "
                        f"context of {context}")
    bot = args.bot.strip().upper()
    history = ""
    interactive = sys.stdin.isatty()
    noted = False  # the empty-reply note, once per conversation
    while True:
        if interactive:
            print(f"{args.user.strip().upper()}> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line:
            break
        if not line.strip():
            continue
        history += chat_turn(args.user, line)
        # the most recent turns that fit; what people type is text, never a special token
        ids = tokenizer.encode(history + bot + "\n", split_special_tokens=True)[-budget:]
        out = generate(model, torch.tensor([ids]), max_new_tokens=args.max_new_tokens, stop_strings=(TURN_END,),
                       tokenizer=tokenizer, **options)
        reply = " ".join(truncate_at_stop(tokenizer.decode(out[0].tolist()), [TURN_END]).split())
        print(f"{bot}: {reply}", flush=True)
        if not reply and not noted:
            print(empty_reply_note(bot), file=sys.stderr, flush=True)
            noted = True
        history += chat_turn(bot, reply)


def _complete_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a causal LM folder trained on code")
    p.add_argument("--file", help="a file whose content is the code prefix (default: stdin)")
    p.add_argument("--until", default="block", choices=["block", "line"],
                   help="stop at the end of the block being written (default) or of the line")
    p.add_argument("--context", type=int,
                   help="positions for prefix + new tokens (default: the model's max positions; give the "
                        "pretraining --seq-len to stay on trained positions); a longer prefix keeps its end")
    _sampling_arguments(p, 128)


@verb("complete", "complete code from a prefix (file or stdin), stopping at the end of the line / block",
      _complete_arguments)
def cmd_complete(args: argparse.Namespace) -> None:
    import torch

    from lmzoo.generate import code_block_end, continuation_text, generate, heal_trailing_whitespace
    from lmzoo.inference import load_lm, prefix_ids, sampling_options

    options = sampling_options(args)
    if args.file:
        try:
            prefix = open(args.file, encoding="utf-8").read()
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read {args.file}: {e}") from None
    else:
        prefix = sys.stdin.read()
    if "\0" in prefix:
        raise UserError(f"{args.file or 'stdin'} is a binary file (NUL byte); complete reads code as UTF-8 text")
    model, tokenizer = load_lm(args.model, args.bf16, args.quantize, args.compile)
    prompt, tail, allowed = heal_trailing_whitespace(prefix, tokenizer)
    ids = prefix_ids(model, tokenizer, prompt, args.max_new_tokens, args.context)
    cut = code_block_end(prefix, args.until)

    def completion(text: str) -> str | None:
        """The new text after the prefix's own trailing whitespace (None while that is not written yet)."""
        return text[len(tail):] if text.startswith(tail) else None

    def done(text: str) -> bool:
        new = completion(text)
        return new is not None and cut(new) is not None

    out = generate(model, torch.tensor([ids]), max_new_tokens=args.max_new_tokens, tokenizer=tokenizer,
                   stop_when=done, allowed_tokens=allowed, **options)
    text = completion(continuation_text(tokenizer, ids, out[0].tolist())) or ""  # keeps a leading space
    end = cut(text)
    sys.stdout.write((text[:end] if end is not None else text).rstrip("\n") + "\n")


def _task_data_arguments(p: argparse.ArgumentParser) -> None:
    """Column mapping and reading options of classify / pair / ner data (defaults: saved with the model)."""
    g = p.add_argument_group("classify / pair / ner data")
    g.add_argument("--text-column", help="text column (default text; ner JSONL: tokens)")
    g.add_argument("--text-pair-column", help="second text of --task pair (default text_pair)")
    g.add_argument("--label-column", help="label column (default label; ner JSONL: tags)")
    g.add_argument("--label-separator", help="multi-label CSV/TSV: labels joined by this, e.g. '|'")
    g.add_argument("--max-length", type=int,
                   help="tokens per example, special tokens included (default 128, or the model's limit)")


def _finetune_arguments(p: argparse.ArgumentParser) -> None:
    """One verb for every task; a flag the --task does not read is refused (_refuse_other_tasks_flags)."""
    from lmzoo.options import add_options
    from lmzoo.tasks.seq2seq import Seq2SeqOptions

    p.add_argument("--task", required=True, choices=["classify", "pair", "ner", "seq2seq"],
                   help="classify: text → label; pair: (text, text_pair) → label; ner: token<TAB>tag; "
                        "seq2seq: source → target")
    p.add_argument("--model", required=True, help="a model folder (with its tokenizer); seq2seq: T5 / BART")
    p.add_argument("--train", required=True, help="labelled file (.csv .tsv .jsonl; ner: CoNLL token<TAB>tag); "
                   "seq2seq: pairs file, .jsonl, .tsv or .csv with a header")
    p.add_argument("--eval", help="held-out file: scored every --eval-every steps and at the end, the best "
                   "model kept")
    p.add_argument("--out", required=True, help="run folder (the best model goes to OUT/best)")
    p.add_argument("--metric", help="picks the best model: seq2seq chrf (default) | bleu | rougeL; "
                   "classify/pair macro_f1 (default) | accuracy | micro_f1 | mse | pearson ...; "
                   "ner f1 (default) | precision | recall")
    add_options(p, Seq2SeqOptions, "seq2seq")
    _train_arguments(p)
    _task_data_arguments(p)
    p.add_argument("--patience", type=int, default=0, help="stop after N evaluations without improvement (0: never)")
    g = p.add_argument_group("classify / pair / ner")
    # TaskOptions checks the name: lmzoo.nn.loss.PROBLEM_TYPES imports torch, which --help does not need
    g.add_argument("--problem-type", metavar="TYPE", help="single_label_classification, multi_label_classification "
                   "or regression (default: multi-label when labels are lists)")


@verb("finetune", "fine-tune a model on a task: classify, pair, ner (best checkpoint kept) or seq2seq",
      _finetune_arguments)
def cmd_finetune(args: argparse.Namespace) -> None:
    _refuse_other_tasks_flags(args)
    if args.task == "seq2seq":
        from lmzoo.tasks.seq2seq import METRICS

        args.metric = args.metric or METRICS[0]  # Seq2SeqOptions names the choices in its error
        return run_seq2seq_finetune(args)
    from lmzoo.tasks.classification import TaskOptions, finetune
    from lmzoo.train.distributed import is_main_process

    options = TaskOptions(task=args.task, text_column=args.text_column, text_pair_column=args.text_pair_column,
                          label_column=args.label_column, problem_type=args.problem_type,
                          label_separator=args.label_separator, max_length=args.max_length,
                          metric=args.metric, patience=args.patience)
    result = finetune(model=args.model, train_path=args.train, eval_path=args.eval, out=args.out,
                      train_config=train_config_from_args(args), options=options, resume=args.resume,
                      overwrite=args.overwrite, progress=not args.no_progress)
    if not is_main_process():
        return
    line = f"step {result.step}: train loss {result.train_loss:.4f}"
    if result.best:
        scores = ", ".join(f"{k} {v:.4f}" for k, v in result.best.items() if k not in ("step", "n"))
        line += f"; best (step {result.best['step']}): {scores}; best model in {args.out}/best"
    compiled = f"; compiled in {result.compile_s:.1f} s" if result.compile_s else ""
    print(line + ("; stopped early" if result.stopped_early else "") + f"{compiled}; last model in {args.out}")


def _seq2seq_data_arguments(p: argparse.ArgumentParser, *, targets: bool) -> None:
    """How evaluate / predict read pairs or sources for a T5 / BART folder, and how it generates."""
    g = p.add_argument_group("seq2seq (a T5 / BART folder)")
    g.add_argument("--source-column", default="source", help="source column of .jsonl .csv .tsv data")
    if targets:
        g.add_argument("--target-column", default="target", help="target column of the pairs file")
    _prefix_argument(g)
    g.add_argument("--max-new-tokens", type=int, default=128, help="tokens generated per output at most")
    g.add_argument("--num-beams", type=int, default=1, help="beam search with this many beams")


_CLASSIFIER_FLAGS = ("text_column", "text_pair_column", "label_column", "label_separator", "max_length")
_SEQ2SEQ_FLAGS = {"source_column": "source", "target_column": "target", "prefix": None, "max_new_tokens": 128,
                  "num_beams": 1}


def _refuse_flags(args: argparse.Namespace, defaults: dict[str, Any], reader: str) -> None:
    """A flag set away from its default that ``reader`` (what the command runs) does not read: a UserError."""
    for name, default in defaults.items():
        if hasattr(args, name) and getattr(args, name) != default:
            raise UserError(f"--{name.replace('_', '-')} does not apply to {reader}")


def _refuse_other_tasks_flags(args: argparse.Namespace) -> None:
    """finetune has every task's flags; one set for a task that does not read it would be ignored
    silently (a --prefix on a classifier, a --label-column on seq2seq pairs): a UserError instead."""
    from lmzoo.options import cli_fields
    from lmzoo.tasks.seq2seq import Seq2SeqOptions

    task = f"--task {args.task}"
    if args.task == "seq2seq":
        return _refuse_flags(args, dict.fromkeys((*_CLASSIFIER_FLAGS, "problem_type")),
                             f"{task} (its columns: --source-column, --target-column)")
    _refuse_flags(args, {f.name: f.default for f in cli_fields(Seq2SeqOptions)}, f"{task} (seq2seq only)")
    unread = {"classify": ("text_pair_column",), "pair": (), "ner": ("text_pair_column", "label_separator")}
    _refuse_flags(args, dict.fromkeys(unread[args.task]), task)


def _evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a fine-tuned classifier / NER folder (e.g. OUT/best), or a "
                   "T5 / BART one")
    p.add_argument("--data", required=True, help="labelled file (.csv .tsv .jsonl; ner: CoNLL token<TAB>tag); "
                   "seq2seq: pairs file (.jsonl .tsv .csv with a header)")
    p.add_argument("--out", help="folder for eval_metrics.json, eval_report.txt and confusion_matrix.png "
                   "(seq2seq: eval_metrics.json and eval_predictions.jsonl)")
    p.add_argument("--batch-size", type=int, default=32)
    _task_data_arguments(p)
    _seq2seq_data_arguments(p, targets=True)


@verb("evaluate", "score a fine-tuned model on a labelled file: a classifier / NER model with a per-label "
      "report, a T5 / BART model with BLEU, chrF and ROUGE-L", _evaluate_arguments)
def cmd_evaluate(args: argparse.Namespace) -> None:
    from lmzoo.tasks.seq2seq import evaluate_seq2seq, is_seq2seq_folder

    if is_seq2seq_folder(args.model):
        _refuse_flags(args, dict.fromkeys(_CLASSIFIER_FLAGS), f"{args.model}, which holds a text-to-text model "
                      "(its columns: --source-column, --target-column)")
        metrics = evaluate_seq2seq(args.model, args.data, out=args.out, source_column=args.source_column,
                                   target_column=args.target_column, prefix=args.prefix,
                                   max_new_tokens=args.max_new_tokens, num_beams=args.num_beams,
                                   batch_size=args.batch_size)
        print(", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()))
        if args.out:
            print(f"metrics and outputs in {args.out}")
        return
    _refuse_flags(args, _SEQ2SEQ_FLAGS, f"{args.model}, which holds a classifier / NER model")
    from lmzoo.tasks.classification import evaluate_model, summary

    metrics = evaluate_model(args.model, args.data, out=args.out, batch_size=args.batch_size,
                             text_column=args.text_column, text_pair_column=args.text_pair_column,
                             label_column=args.label_column, label_separator=args.label_separator,
                             max_length=args.max_length)
    print(", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in summary(metrics).items()))
    if args.out:
        print(f"report in {args.out}")


def _eval_arguments(p: argparse.ArgumentParser) -> None:
    from lmzoo.data import DOCUMENT_SPLITS

    p.add_argument("model", help="a model folder with its tokenizer (from pretrain, finetune, or Hugging Face)")
    p.add_argument("--data", nargs="+", action="extend",
                   help="files, folders or globs, read and split into documents as pretrain reads them "
                        "(intrinsic scores; the pairs probe's text, default the bundled plays)")
    p.add_argument("--probes", help="comma-separated downstream probes to fine-tune and score: "
                   "sentiment, ner, pairs, translation, summarization, or all")
    p.add_argument("--probe-steps", type=int, help="optimizer steps of each probe's fine-tuning "
                   "(default: the protocol's budget, see docs/eval.md)")
    p.add_argument("--probe-data", help="folder holding downloaded probe data (vaderSentiment's sdist); "
                   "default $LMZOO_PROBE_DATA, else the lmzoo cache")
    p.add_argument("--probe-out", help="folder for the probes' fine-tuning runs (default: a temporary folder)")
    p.add_argument("--document-split", default="blank_line", choices=list(DOCUMENT_SPLITS),
                   help="documents separated by blank lines (default) or one per file, as pretrain")
    p.add_argument("--context", type=int,
                   help="tokens per window / row (default: the --seq-len a pretrain run folder trained at, "
                        "else the model's max positions)")
    p.add_argument("--batch-size", type=int, default=16, help="windows / rows per forward pass (default 16)")
    p.add_argument("--seed", type=int, default=0,
                   help="masks and noise of masked_accuracy, plm_loss and the seq2seq objective (default 0)")
    p.add_argument("--json", help="also write the scores to this JSON file (atomically)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


@verb("eval", "intrinsic scores of a pretrained model on local text: (pseudo-)perplexity, bits per byte, "
      "its objective's loss", _eval_arguments)
def cmd_eval(args: argparse.Namespace) -> None:
    import time
    from pathlib import Path

    from lmzoo.io import atomic_write_json
    from lmzoo.scoring import evaluate_model, format_table

    if args.json and Path(args.json).is_dir():
        raise UserError(f"--json {args.json} is a folder; give a file name")
    if args.json and not _writable_place(Path(args.json)):  # said before the scoring, not after it
        raise UserError(f"--json {args.json}: a part of its path is a file, not a folder")
    if args.seed < 0:
        raise UserError(f"--seed must be >= 0, got {args.seed}")
    if not args.data and not args.probes:
        raise UserError("give --data FILES (intrinsic scores), --probes NAMES (downstream probes), or both")
    started = time.perf_counter()
    scores: dict[str, Any] = {}
    if args.data:
        scores = evaluate_model(args.model, args.data, context=args.context, batch_size=args.batch_size,
                                seed=args.seed, document_split=args.document_split, progress=not args.no_progress)
        print(format_table(scores))
    if args.probes:
        from lmzoo.probes import format_probe_table, parse_probe_names, run_probes

        results = run_probes(args.model, parse_probe_names(args.probes), data=args.data, steps=args.probe_steps,
                             probe_data=args.probe_data, seed=args.seed, work_dir=args.probe_out,
                             progress=not args.no_progress)
        print(format_probe_table(results))
        scores = {**scores, "probes": results}
    if args.json:
        try:
            atomic_write_json(args.json, scores)
        except OSError as e:
            raise UserError(f"cannot write {args.json}: {e.strerror or e}") from None
    print(f"scored in {time.perf_counter() - started:.1f} s", file=sys.stderr)


def _compare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", nargs="+", action="extend",
                   help="pretraining corpus: files, folders or globs (default: the bundled plays, the last one held out)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--flops", type=float, help="training FLOPs per approach, counted from the configs "
                        "(default: the small budget in docs/compare.md)")
    budget.add_argument("--minutes", type=float, help="equal wall-clock per approach instead of equal FLOPs")
    p.add_argument("--approaches", nargs="+", action="extend",
                   help="a subset of: mlm, mlm+nsp, clm, span, denoise, plm (default all)")
    p.add_argument("--probes", default="all", help="comma-separated probes run on each model (default all, "
                   "'none' for intrinsic scores only)")
    p.add_argument("--probe-steps", type=int, help="optimizer steps of each probe (default: the protocol's)")
    p.add_argument("--probe-data", help="folder holding downloaded probe data (see lmzoo eval --help)")
    p.add_argument("--no-random-init", action="store_true", help="skip scoring each architecture at random "
                   "initialization (the baseline that shows what its pretraining bought)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="folder for one run folder per approach, compare.md/.json/.png")
    p.add_argument("--resume", action="store_true", help="continue a compare in --out: finished approaches "
                   "are kept, an interrupted one resumes from its checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


@verb("compare", "pretrain every approach on one corpus at equal compute, then score and probe each: the "
      "seed's conclusion table, measured", _compare_arguments)
def cmd_compare(args: argparse.Namespace) -> None:
    from lmzoo.compare import run_compare

    _refuse_file_out(args.out)
    run_compare(args)


def _predict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a fine-tuned classifier / NER folder (e.g. OUT/best), or a "
                   "T5 / BART one")
    p.add_argument("--input", default="-", help=".csv .tsv .jsonl file (ner: also CoNLL: .conll or tabs), else "
                   "plain lines, - = stdin: one text per line (pair: text<TAB>text_pair; ner: tokens split by spaces)")
    p.add_argument("--output", default="-", help="JSONL predictions (default stdout); seq2seq: "
                   '{"source", "prediction"} lines')
    p.add_argument("--batch-size", type=int, default=32)
    _task_data_arguments(p)
    _seq2seq_data_arguments(p, targets=False)


@verb("predict", "label texts (or tag tokens) with a fine-tuned model, or transform them with a T5 / BART one: "
      "file or stdin in, JSONL out", _predict_arguments)
def cmd_predict(args: argparse.Namespace) -> None:
    from lmzoo.tasks.seq2seq import is_seq2seq_folder

    if is_seq2seq_folder(args.model):
        from lmzoo.tasks.seq2seq import predict_texts, prediction_lines, read_sources, write_output

        _refuse_flags(args, dict.fromkeys(_CLASSIFIER_FLAGS), f"{args.model}, which holds a text-to-text model (its "
                      "column: --source-column)")
        sources = read_sources(args.input, source_column=args.source_column)
        outputs = predict_texts(args.model, sources, prefix=args.prefix, max_new_tokens=args.max_new_tokens,
                                num_beams=args.num_beams, batch_size=args.batch_size)
        write_output(args.output, prediction_lines(sources, outputs))
        return
    _refuse_flags(args, _SEQ2SEQ_FLAGS, f"{args.model}, which holds a classifier / NER model")
    from lmzoo.tasks.classification import predict_file

    predict_file(args.model, args.input, args.output, batch_size=args.batch_size, text_column=args.text_column,
                 text_pair_column=args.text_pair_column, label_column=args.label_column,
                 label_separator=args.label_separator, max_length=args.max_length)


def _serve_arguments(p: argparse.ArgumentParser) -> None:
    from lmzoo.serve import add_arguments

    add_arguments(p)


@verb("serve", "serve models over HTTP: JSON endpoints, an OpenAI-compatible API and a playground page",
      _serve_arguments)
def cmd_serve(args: argparse.Namespace) -> int:
    from lmzoo.serve import run

    return run(args)


DESCRIPTION = """\
lmzoo trains the classic transformer language models (BERT, RoBERTa, GPT-2, T5, BART, XLNet)
on your own text, each with the objective that made it famous (masked LM and next-sentence
prediction, causal LM, T5 span corruption, BART denoising, permutation LM), and uses them:
fine-tune for classification, NER or seq2seq, score, fill masks, generate, chat, complete code and
serve over HTTP. Models are Hugging Face folders (config.json + safetensors), in and out.

Try `lmzoo demo`; `lmzoo VERB --help` lists a verb's options and their defaults."""


class _HelpFormatter(argparse.HelpFormatter):
    """Each flag's default after its help, unless the default says nothing (None, a switch's False /
    True, an empty list) or the help names it already."""

    @staticmethod
    def _shows_default(action: argparse.Action) -> bool:
        default = action.default
        return not (default is None or default is argparse.SUPPRESS or isinstance(default, bool)
                    or default in ([], "") or not action.option_strings or "default" in (action.help or ""))

    def _get_help_string(self, action: argparse.Action) -> str:
        if not self._shows_default(action):
            return action.help or ""
        return f"{action.help} (default: %(default)s)" if action.help else "default: %(default)s"

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and self._shows_default(action):  # argparse prints no line for a flag without help
            action = copy.copy(action)
            action.help = "default: %(default)s"
        return super()._format_action(action)


class _TopFormatter(_HelpFormatter, argparse.RawDescriptionHelpFormatter):
    """`lmzoo --help`: the description's paragraphs as written."""


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:  # no abbreviations: --max-step is not --max-steps
        super().__init__(*args, **{"allow_abbrev": False, "formatter_class": _HelpFormatter, **kwargs})

    def error(self, message: str):  # argparse's usage errors: one line, exit 2
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


# A verb's main inputs, accepted both ways: `lmzoo eval MODEL` and `lmzoo eval --model MODEL`.
BOTH_FORMS = ("model", "data")


def _both_forms(p: argparse.ArgumentParser) -> None:
    """Give the verb's positional ``model`` / ``data`` a ``--model`` / ``--data`` twin, and a required
    ``--model`` flag a positional twin (only the model: two optional positionals would be ambiguous).
    :func:`_merge_twins` puts the one given into the original destination after parsing."""
    twins = []
    positionals = [a for a in p._actions if not a.option_strings]
    for action in list(p._actions):
        name, many = action.dest, action.nargs in ("+", "*")
        if name not in BOTH_FORMS:
            continue
        if not action.option_strings and f"--{name}" not in p._option_string_actions:
            required = action.nargs in (None, "+")
            action.nargs, action.required = ("*" if many else "?"), False
            p.add_argument(f"--{name}", dest=f"_{name}_flag", metavar=name.upper(),
                           **({"nargs": "+", "action": "extend"} if many else {}),
                           help=f"the same as the positional {name}")
            # with the flag form, `text2text --model M A B` gives A to the (optional) positional model
            after = positionals[positionals.index(action) + 1:]
            spill = after[0].dest if after and after[0].nargs in ("+", "*") else None
            twins.append((name, f"_{name}_flag", required, spill))
        elif name == "model" and action.option_strings and action.required:
            action.required = False
            p.add_argument(f"_{name}_positional", nargs="?", metavar=name, help=f"the same as --{name}")
            twins.append((name, f"_{name}_positional", True, None))
    if twins:
        p.set_defaults(_twins=tuple(twins))


def _merge_twins(args: argparse.Namespace) -> None:
    """One value per input from its two forms: both given with different values, or a required
    input given neither way, is a UserError."""
    for name, twin, required, spill in getattr(args, "_twins", ()):
        first, second = getattr(args, name), getattr(args, twin)
        delattr(args, twin)
        if spill and first is not None and second is not None and first != second:  # it read the first text
            setattr(args, spill, [first, *getattr(args, spill)])
            first = None
        if first not in (None, []) and second not in (None, []) and first != second:
            show = [" ".join(v) if isinstance(v, list) else v for v in (first, second)]
            raise UserError(f"the {name} is given twice, as {show[0]} and as --{name} {show[1]}: give it once")
        value = first if first not in (None, []) else second
        if required and value in (None, []):
            raise UserError(f"give the {name}: {args.verb} {name.upper()} or {args.verb} --{name} {name.upper()}")
        setattr(args, name, value)


class _Version(argparse.Action):
    """``--version``: the installed package's version, looked up only when asked (importlib.metadata
    costs startup time)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print lmzoo's version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            number = version("lmzoo")
        except PackageNotFoundError:  # a source tree that is not installed
            from lmzoo import __version__ as number
        print(f"lmzoo {number}")
        parser.exit(0)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Every verb with its arguments; with ``only``, the other verbs get none: their arguments may
    import what this command never uses (pretrain's objective flags import torch)."""
    parser = _Parser(prog="lmzoo", description=DESCRIPTION, formatter_class=_TopFormatter)
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(title="verbs", dest="verb", required=True, metavar="VERB", parser_class=_Parser)
    for name, (help, arguments, fn) in VERBS.items():
        p = sub.add_parser(name, help=help, description=help)
        if only is None or only == name:
            arguments(p)
            _both_forms(p)
        p.set_defaults(_run=fn, verb=name)
    parser.set_defaults(_verbs=sub.choices)
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    """``lmzoo VERB ...`` parsed by the verb's own parser with positionals and flags in any order
    (``generate MODEL --seed 1 PROMPT``), anything else by the top parser (--help, --version).
    Usage errors exit 2 (argparse); an input given both ways with two values is a UserError."""
    named = next((a for a in argv if not a.startswith("-")), "")  # the verb: `lmzoo` takes no other positional
    parser = build_parser(only=named)
    verbs = parser.get_default("_verbs")
    if argv and argv[0] in verbs:
        args = verbs[argv[0]].parse_intermixed_args(argv[1:])
        args._given = _given_flags(verbs[argv[0]], argv[1:])
    else:
        args = parser.parse_args(argv)
    _merge_twins(args)
    for dest in ("out", "json", "png"):  # "" (an unset shell variable, quoted) would mean the current folder
        if isinstance(getattr(args, dest, None), str) and not getattr(args, dest).strip():
            raise UserError(f"--{dest} is empty: name a {'folder' if dest == 'out' else 'file'}")
    return args


def _writable_place(path: Path) -> bool:
    """Whether ``path``'s folders exist or can be made: its nearest existing ancestor is a folder."""
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    return parent.is_dir()


def _given_flags(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The destinations of the flags typed in ``argv`` (``--flag value`` or ``--flag=value``; no
    abbreviations: see _Parser), also those given at their default value."""
    typed = {a.split("=", 1)[0] for a in argv if a.startswith("-")}
    return {action.dest for action in parser._actions if typed.intersection(action.option_strings)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse_args(argv)
        return int(args._run(args) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
